"""Float TFLite: ONNX (and .pt2 through ONNX) with onnx2tf, Keras / SavedModel with TensorFlow's converter.
INT8 TFLite is quantize's TFLite quantizer (stages/quantize/tflite.py), which builds on onnx2tf_output."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecli.backends.onnx_export import as_onnx_file
from edgecli.backends.op_support import require_onnx2tf_support
from edgecli.core import console
from edgecli.core.errors import BackendMissing, ModelReadError, TransformError, last_line, one_line
from edgecli.formats import onnx_file
from edgecli.formats.detect import Format
from edgecli.formats.files import TempFolder, library_path
from edgecli.formats.model_file import ModelFile

ONNX2TF_HINT = "pip install --no-deps onnx2tf==1.29.24 tf-keras==2.21.0 (make install does it)"


SQRT2 = 1.4142135381698608  # float32(sqrt(2))


def _scalar(values: dict[str, Any], name: str) -> float | None:
    value = values.get(name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def gelu_for_onnx2tf(proto: Any) -> int:
    """Rewrite every exact GELU, `0.5 * (1 + erf(x / sqrt(2))) * x` in any of the orders exporters write
    it, as the one chain onnx2tf fuses into TFLite's builtin GELU: `Div(x, sqrt2) -> Erf -> Add(., 1) ->
    Mul(x, .) -> Mul(., 0.5)`, with sqrt2 from a Constant node (onnx2tf matches the divisor only when it
    is a Constant node's output, never an initializer). Unfused, Erf becomes a TensorFlow Select op
    that LiteRT cannot run (torch.onnx writes `Mul(0.5, .) -> Mul(x, .)`). Returns the GELUs rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = proto.graph
    values = onnx_file.constant_values(graph)
    graph_outputs = {value.name for value in graph.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(name: str, op: str) -> Any:
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    def other_input(node: Any, constant: float) -> str | None:
        """The non-constant input of a binary node whose other input is the scalar `constant`."""
        for mine, other in ((1, 0), (0, 1)):
            value = _scalar(values, node.input[mine])
            if value is not None and abs(value - constant) <= 1e-6 * max(1.0, abs(constant)):
                return node.input[other]
        return None

    def chain(head: Any) -> tuple[str, Any, Any, Any, Any, str] | None:
        """(x, erf, add, first mul, second mul, the 0.5 input) when `head` starts an exact GELU."""
        if head.op_type not in ("Div", "Mul") or len(head.input) != 2:
            return None
        x = other_input(head, SQRT2 if head.op_type == "Div" else 1 / SQRT2)
        if x is None or (head.op_type == "Div" and x != head.input[0]):
            return None
        erf = only_consumer(head.output[0], "Erf")
        add = only_consumer(erf.output[0], "Add") if erf is not None else None
        if add is None or other_input(add, 1.0) != erf.output[0]:
            return None
        first = only_consumer(add.output[0], "Mul")
        second = only_consumer(first.output[0], "Mul") if first is not None else None
        if second is None or first.output[0] in graph_outputs:  # the rewrite changes what `first` computes
            return None
        if other_input(first, 0.5) == add.output[0] and set(second.input) == {x, first.output[0]}:
            return x, erf, add, first, second, next(n for n in first.input if n != add.output[0])  # 0.5 * (1 + erf) * x
        if set(first.input) == {x, add.output[0]} and other_input(second, 0.5) == first.output[0]:
            return (
                x,
                erf,
                add,
                first,
                second,
                next(n for n in second.input if n != first.output[0]),
            )  # x * (1 + erf) * 0.5
        return None

    nodes, rewritten = [], 0
    for head in graph.node:
        found = chain(head)
        if found is not None:
            x, erf, add, first, second, half = found
            divisor = f"{head.name or head.output[0]}_sqrt2"
            value = numpy_helper.from_array(np.array(SQRT2, np.float32), divisor)
            nodes.append(helper.make_node("Constant", [], [divisor], name=divisor, value=value))
            head.op_type = "Div"
            head.input[:] = [x, divisor]
            add.input[:] = [erf.output[0], next(name for name in add.input if name != erf.output[0])]
            first.input[:] = [x, add.output[0]]
            second.input[:] = [first.output[0], half]
            rewritten += 1
        nodes.append(head)
    if rewritten:
        copies = [type(node).FromString(node.SerializeToString()) for node in nodes]
        del graph.node[:]
        graph.node.extend(copies)
    return rewritten


def _prepare_for_onnx2tf(path: Path) -> None:
    """Rewrite onnx2tf's private copy of the model where its output would not run on LiteRT."""
    proto = onnx_file.load(path, check=False)
    if any(node.op_type == "Erf" for node in proto.graph.node) and gelu_for_onnx2tf(proto):
        path.write_bytes(proto.SerializeToString())


@contextlib.contextmanager
def onnx2tf_output(onnx_path: Path) -> Iterator[Path]:
    """Run onnx2tf on a private copy of the model (it rewrites its input with onnxsim) and yield its
    output folder: a SavedModel (NHWC inputs) plus float32 and float16 .tflite files."""
    require_onnx2tf_support(onnx_file.load(onnx_path, check=False), "ONNX -> TFLite (onnx2tf)")
    try:
        with console.muted():
            import onnx2tf
    except ImportError:
        raise BackendMissing("ONNX -> TFLite needs onnx2tf and TensorFlow", hint=ONNX2TF_HINT) from None
    with TempFolder(prefix="edgecli-onnx2tf-") as folder:
        work = Path(folder)
        source = work / "model.onnx"
        shutil.copyfile(onnx_path, source)
        _prepare_for_onnx2tf(source)
        cwd = os.getcwd()
        try:
            os.chdir(work)  # onnx2tf drops helper files in the working folder
            with console.muted():
                onnx2tf.convert(
                    input_onnx_file_path=str(source),
                    output_folder_path=str(work / "out"),
                    copy_onnx_input_output_names_to_tflite=True,
                    replace_to_pseudo_operators=["erf"],  # an Erf outside a GELU: builtin ops, not a Select op
                    non_verbose=True,
                )
        except SystemExit as exc:  # onnx2tf calls sys.exit on unsupported ops
            raise TransformError(
                f"onnx2tf could not convert {onnx_path} (exit {exc.code}); see EDGECLI_DEBUG=1"
            ) from None
        except Exception as exc:
            raise TransformError(f"onnx2tf could not convert {onnx_path}: {last_line(exc)}") from None
        finally:
            os.chdir(cwd)
        yield work / "out"


def onnx_to_tflite(onnx_path: Path, precision: str) -> bytes:
    """ONNX -> TFLite float32 or float16 with onnx2tf."""
    with onnx2tf_output(onnx_path) as out:
        produced = out / f"model_{precision}.tflite"
        if not produced.is_file():
            raise TransformError(f"onnx2tf wrote no {precision} TFLite model for {onnx_path}")
        return produced.read_bytes()


def keras_to_tflite(model: ModelFile, precision: str) -> bytes:
    """Keras (.keras) or SavedModel -> TFLite with TensorFlow's converter."""
    from edgecli.formats.keras_file import import_tensorflow, load_keras

    tf = import_tensorflow()
    with console.muted(), library_path(model.path) as path:
        if model.format is Format.SAVED_MODEL:
            converter = saved_model_converter(tf, path, model.path)
        else:
            converter = tf.lite.TFLiteConverter.from_keras_model(load_keras(model.path))
        if precision == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        try:
            return converter.convert()
        except Exception as exc:
            raise TransformError(f"TFLite converter failed on {model.path}: {converter_reason(exc)}") from None


def saved_model_converter(tf: Any, path: Path, shown: Path) -> Any:
    """TFLiteConverter.from_saved_model, which reads the SavedModel's variables and signatures at once:
    a damaged variables file or a SavedModel without signatures is a file that cannot be read (exit 3)."""
    try:
        return tf.lite.TFLiteConverter.from_saved_model(str(path))
    except ValueError as exc:
        if "signature" in str(exc):
            raise ModelReadError(
                f"{shown} has no signature to convert",
                hint="save it with tf.saved_model.save(..., signatures=...) or model.export()",
            ) from None
        raise ModelReadError(f"{shown} is not a loadable SavedModel ({last_line(exc)})") from None
    except (tf.errors.OpError, OSError) as exc:  # e.g. "not an sstable (bad magic number)": damaged variables
        raise ModelReadError(f"{shown} is not a loadable SavedModel ({one_line(last_line(exc))})") from None


_MLIR_ERROR = re.compile(r"(?:<unknown>|\S+):\d+(?::\d+)?: error: (.*)")


def _strip_loc(text: str) -> str:
    """'loc(callsite(...)): message' -> 'message' (MLIR locations nest parentheses)."""
    if not text.startswith("loc("):
        return text
    depth = 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return text[index + 1 :].lstrip(": ").strip()
    return text


def converter_reason(exc: BaseException) -> str:
    """One line from TensorFlow's converter error (MLIR diagnostics, then a dump of the MLIR module):
    the ops TFLite has no builtin kernel for, else its first error, never the MLIR text."""
    text = str(exc)
    needs = [
        f"{ops.strip()[:200]} ({'TensorFlow Select/Flex ops' if kind == 'TF Select' else 'custom ops'})"
        for kind, ops in re.findall(r"(TF Select|Custom) ops: ([^\n]+)", text)
    ]
    if needs:
        return one_line(f"ops TFLite has no builtin kernel for: {'; '.join(dict.fromkeys(needs))}")
    errors = [_strip_loc(found.group(1).strip()) for found in _MLIR_ERROR.finditer(text)]
    errors = [error for error in errors if error and not error.startswith("failed while converting")]
    return one_line((errors[0] if errors else last_line(exc))[:300])


def float_tflite(model: ModelFile, precision: str, opset: int = 18) -> bytes:
    """The model as float32 or float16 TFLite: onnx2tf (ONNX, and .pt2 through its ONNX export at
    `opset`), or TensorFlow's converter for Keras and SavedModel."""
    if model.format in (Format.KERAS, Format.SAVED_MODEL):
        return keras_to_tflite(model, precision)
    with as_onnx_file(model, opset) as onnx_path:
        return onnx_to_tflite(onnx_path, precision)
