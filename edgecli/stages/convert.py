"""convert: .pt2 -> ONNX, ONNX -> TFLite (onnx2tf), .pt2 -> TFLite, Keras -> TFLite; each checked for parity."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecli import console
from edgecli.data import Dataset, synthetic_dataset
from edgecli.errors import BackendMissing, TransformError
from edgecli.formats import onnx_file
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import ConvertRecipe
from edgecli.runtimes import open_runner
from edgecli.stages.artifact import Artifact, staged
from edgecli.stages.parity import check_parity

ONNX2TF_HINT = "pip install --no-deps onnx2tf==1.29.24 tf-keras==2.21.0 (make install does it)"


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def pt2_to_onnx(model: ModelFile, opset: int, dynamic_batch: bool) -> Any:
    """Export a .pt2 program with the torch.onnx dynamo exporter into one self-contained ModelProto."""
    import torch

    from edgecli.formats import pt2_file

    program = pt2_file.load(model.path)
    with tempfile.TemporaryDirectory(prefix="edgecli-onnx-") as folder:
        target = Path(folder) / "model.onnx"
        try:
            with console.muted():
                torch.onnx.export(program, (), str(target), dynamo=True, external_data=False, opset_version=opset)
        except Exception as exc:
            raise TransformError(f"torch.onnx could not export {model.path}: {_first_line(exc)}") from None
        proto = onnx_file.load(target)
    if not dynamic_batch:
        _fix_batch(proto)
    return proto


@contextlib.contextmanager
def as_onnx_file(model: ModelFile, opset: int = 18) -> Iterator[Path]:
    """The model as an ONNX file: its own path, or a temporary export of a .pt2 program."""
    if model.format is Format.ONNX:
        yield model.path
        return
    if model.format is not Format.PT2:
        raise TransformError(f"no conversion from {model.format.value} through ONNX")
    with tempfile.TemporaryDirectory(prefix="edgecli-pt2-onnx-") as folder:
        onnx_path = Path(folder) / "model.onnx"
        onnx_path.write_bytes(onnx_file.to_bytes(pt2_to_onnx(model, opset, True), None))
        yield onnx_path


def _fix_batch(proto: Any) -> None:
    """Pin the batch dimension of every graph input and output to 1."""
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1


def onnx_to_onnx(model: ModelFile, opset: int, dynamic_batch: bool) -> Any:
    """Re-target an ONNX model to another opset with onnx's version converter."""
    import onnx
    from onnx import version_converter

    proto = onnx_file.load(model.path)
    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if current != opset:
        try:
            proto = version_converter.convert_version(proto, opset)
            onnx.checker.check_model(proto)
        except Exception as exc:
            raise TransformError(f"cannot convert opset {current} -> {opset}: {_first_line(exc)}") from None
    if not dynamic_batch:
        _fix_batch(proto)
    return proto


@contextlib.contextmanager
def onnx2tf_output(onnx_path: Path) -> Iterator[Path]:
    """Run onnx2tf on a private copy of the model (it rewrites its input with onnxsim) and yield its
    output folder: a SavedModel (NHWC inputs) plus float32 and float16 .tflite files."""
    try:
        with console.muted():
            import onnx2tf
    except ImportError:
        raise BackendMissing("ONNX -> TFLite needs onnx2tf and TensorFlow", hint=ONNX2TF_HINT) from None
    with tempfile.TemporaryDirectory(prefix="edgecli-onnx2tf-") as folder:
        work = Path(folder)
        source = work / "model.onnx"
        shutil.copyfile(onnx_path, source)
        cwd = os.getcwd()
        try:
            os.chdir(work)  # onnx2tf drops helper files in the working folder
            with console.muted():
                onnx2tf.convert(
                    input_onnx_file_path=str(source),
                    output_folder_path=str(work / "out"),
                    copy_onnx_input_output_names_to_tflite=True,
                    non_verbose=True,
                )
        except SystemExit as exc:  # onnx2tf calls sys.exit on unsupported ops
            raise TransformError(f"onnx2tf could not convert {onnx_path} (exit {exc.code}); see EDGECLI_DEBUG=1") from None
        except Exception as exc:
            raise TransformError(f"onnx2tf could not convert {onnx_path}: {_first_line(exc)}") from None
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
    with console.muted():
        if model.format is Format.SAVED_MODEL:
            converter = tf.lite.TFLiteConverter.from_saved_model(str(model.path))
        else:
            converter = tf.lite.TFLiteConverter.from_keras_model(load_keras(model.path))
        if precision == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        try:
            return converter.convert()
        except Exception as exc:
            raise TransformError(f"TFLite converter failed on {model.path}: {_first_line(exc)}") from None


def _to_tflite(model: ModelFile, recipe: ConvertRecipe) -> bytes:
    if model.format in (Format.KERAS, Format.SAVED_MODEL):
        return keras_to_tflite(model, recipe.precision)
    with as_onnx_file(model, recipe.opset) as onnx_path:
        return onnx_to_tflite(onnx_path, recipe.precision)


def _input_layout(parent_specs: list, child_specs: list) -> str | None:
    """'NHWC' when the converted model takes 4-D inputs channels-last while the parent took NCHW."""
    for parent, child in zip(parent_specs, child_specs):
        if len(parent.shape) == 4 and parent.shape[1:] != child.shape[1:]:
            if (parent.shape[2], parent.shape[3], parent.shape[1]) == tuple(child.shape[1:]):
                return "NHWC"
    return None


def convert(model: ModelFile, recipe: ConvertRecipe, data: Dataset | None) -> Artifact:
    """Convert `model` to recipe.target and prove parity on `data` (random inputs if None)."""
    if recipe.target == "onnx":
        if model.format is Format.PT2:
            artifact = Artifact(Format.ONNX, pt2_to_onnx(model, recipe.opset, recipe.dynamic_batch))
        elif model.format is Format.ONNX:
            artifact = Artifact(Format.ONNX, onnx_to_onnx(model, recipe.opset, recipe.dynamic_batch))
        else:
            raise TransformError(
                f"converting {model.format.value} to ONNX is not supported yet",
                hint="export Keras models to TFLite with target: tflite",
            )
    else:
        artifact = Artifact(Format.TFLITE, _to_tflite(model, recipe))
    parent = open_runner(model)
    with staged(artifact) as candidate:
        child = open_runner(candidate)
        layout = _input_layout(parent.inputs, child.inputs)
        if layout:
            artifact.io["input_layout"] = layout
            child.input_layout = layout
        if data is None:
            data = synthetic_dataset(parent.inputs, count=min(recipe.parity.samples, 32))
            console.warn("no --data given: parity is checked on random inputs, not real ones")
        artifact.metrics.update(check_parity(parent, child, data, recipe.parity, f"{model.format.value} -> {recipe.target}"))
    artifact.metrics["size_bytes_parent"] = model.size_bytes
    artifact.metrics["parity_data"] = data.source
    return artifact

