"""convert to ONNX: .pt2 -> ONNX (torch.onnx dynamo exporter), ONNX -> ONNX (opset change, simplification)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecli.core import console
from edgecli.core.errors import BackendMissing, TransformError, last_line
from edgecli.formats import onnx_file
from edgecli.formats.detect import Format
from edgecli.formats.files import TempFolder
from edgecli.formats.model_file import ModelFile


def pt2_to_onnx(model: ModelFile, opset: int, dynamic_batch: bool) -> Any:
    """Export a .pt2 program with the torch.onnx dynamo exporter into one self-contained ModelProto.
    Called through to_onnx, the entry point."""
    import torch

    from edgecli.formats import pt2_file

    program = pt2_file.load(model.path)
    with TempFolder(prefix="edgecli-onnx-") as folder:
        target = Path(folder) / "model.onnx"
        try:
            with console.muted():
                torch.onnx.export(program, (), str(target), dynamo=True, external_data=False, opset_version=opset)
        except Exception as exc:
            raise TransformError(
                f"torch.onnx could not export {model.path}: {export_problem(exc)}",
                hint="rewrite that part of the model with ops torch.onnx can translate, then export it again",
            ) from None
        proto = onnx_file.load(target)
    if not dynamic_batch:
        _fix_batch(proto)
    return proto


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NO_TRANSLATION = re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>")
_FAILED_NODE = re.compile(r"Error when translating node %(\S+) : .*?target=(?:torch\.ops\.)?([\w.]+)")


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def export_problem(exc: BaseException) -> str:
    """torch.onnx's failure as one sentence naming the op it could not translate. (Its own last line
    is '(Refer to the full stack trace above for more information.)'; the op is in the exception
    summary and in the chained DispatchError / ConversionError.)"""
    chain = _causes(exc)
    texts = [_ANSI.sub("", str(e)) for e in chain]
    node = next((found for text in texts if (found := _FAILED_NODE.search(text))), None)
    where = f" (graph node %{node.group(1)})" if node else ""
    untranslated = next((found for text in texts if (found := _NO_TRANSLATION.search(text))), None)
    if untranslated:
        op, overload = untranslated.groups()
        return f"no ONNX translation for {op}.{overload}{where}"
    if node:
        return f"cannot translate {node.group(2)}{where}: {last_line(chain[-1])}"
    return last_line(chain[-1])


def to_onnx(model: ModelFile, opset: int = 18, dynamic_batch: bool = True, retarget: bool = True) -> Any:
    """The one way edgecli makes an ONNX ModelProto of a model: a .pt2 program exported with torch.onnx
    at `opset`; an ONNX model loaded and, with `retarget`, moved to `opset` (onnx_to_onnx). The batch
    dimension is pinned to 1 unless `dynamic_batch` (an ONNX model loaded without retarget keeps its
    own). Anything else is a TransformError (callers that can say more check the format first)."""
    if model.format is Format.PT2:
        return pt2_to_onnx(model, opset, dynamic_batch)
    if model.format is Format.ONNX:
        return onnx_to_onnx(model, opset, dynamic_batch) if retarget else onnx_file.load(model.path)
    raise TransformError(f"no conversion from {model.format.value} to ONNX")


@contextlib.contextmanager
def as_onnx_file(model: ModelFile, opset: int = 18) -> Iterator[Path]:
    """The model as an ONNX file: its own path, or a temporary export of a .pt2 program (to_onnx)."""
    if model.format is Format.ONNX:
        yield model.path
        return
    if model.format is not Format.PT2:
        raise TransformError(f"no conversion from {model.format.value} through ONNX")
    with TempFolder(prefix="edgecli-pt2-onnx-") as folder:
        onnx_path = Path(folder) / "model.onnx"
        onnx_path.write_bytes(onnx_file.to_bytes(to_onnx(model, opset, dynamic_batch=True), None))
        yield onnx_path


@contextlib.contextmanager
def checked_onnx_file(model: ModelFile, data: Any | None, samples: int = 64) -> Iterator[ModelFile]:
    """A .pt2 model as a temporary ONNX ModelFile for steps that read ONNX (quantize to ONNX), checked
    for parity with the program on `samples` of `data` when there is data (ParitySpec defaults)."""
    from edgecli.analysis.parity import check_parity
    from edgecli.recipes import ParitySpec
    from edgecli.runtimes import open_runner

    with as_onnx_file(model) as path:
        onnx_model = ModelFile.open(path)
        if data is not None:
            spec = ParitySpec(samples=samples)
            check_parity(open_runner(model), open_runner(onnx_model), data, spec, "pt2 -> onnx")
        yield onnx_model


def _fix_batch(proto: Any) -> None:
    """Pin the batch dimension of every graph input and output to 1."""
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1


def _default_domain_opset(proto: Any) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _drop_attributes_the_target_lacks(proto: Any, source: int, target: int) -> None:
    """onnx's version converter keeps attributes a downgraded op does not have at the target opset
    (ReduceMean 18 -> 13..17 keeps `noop_with_empty_axes`). Such an attribute is dropped when it holds
    the source opset's default (the older op behaves the same without it); otherwise the target opset
    cannot express the node, which is a TransformError naming it."""
    from onnx import defs, helper

    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            known = defs.get_schema(node.op_type, target).attributes
            before = defs.get_schema(node.op_type, source).attributes
        except defs.SchemaError:
            continue
        kept = []
        for attribute in node.attribute:
            if attribute.name in known:
                kept.append(attribute)
                continue
            default = before.get(attribute.name)
            if (
                default is None
                or default.default_value.type == 0  # no default in the source opset
                or helper.get_attribute_value(attribute) != helper.get_attribute_value(default.default_value)
            ):
                raise TransformError(
                    f"opset {target} cannot express {node.op_type} node '{node.name}': its attribute "
                    f"'{attribute.name}' exists only from a later opset",
                    hint=f"keep opset {source}",
                )
        del node.attribute[:]
        node.attribute.extend(kept)


def _adapter_problem(exc: Exception) -> str:
    """onnx's version-converter assertion as a sentence naming the op."""
    found = re.search(r"No Adapter (From|To) Version \$(\d+) for (\w+)", str(exc))
    if found:
        direction, version, op = found.groups()
        return f"onnx's version converter has no adapter for {op} {direction.lower()} its opset-{version} version"
    return last_line(exc)


def onnx_to_onnx(model: ModelFile, opset: int, dynamic_batch: bool) -> Any:
    """Re-target an ONNX model to another opset with onnx's version converter (up or down)."""
    import onnx
    from onnx import version_converter

    proto = onnx_file.load(model.path)
    current = _default_domain_opset(proto)
    if current is not None and current != opset:
        try:
            with console.muted():
                proto = version_converter.convert_version(proto, opset)
        except Exception as exc:
            raise TransformError(f"cannot convert opset {current} -> {opset}: {_adapter_problem(exc)}") from None
        _drop_attributes_the_target_lacks(proto, current, opset)
        try:
            onnx.checker.check_model(proto)
        except Exception as exc:
            raise TransformError(
                f"the opset {current} -> {opset} conversion gave an invalid model: {last_line(exc)}"
            ) from None
    if not dynamic_batch:
        _fix_batch(proto)
    return proto


def simplify_onnx(proto: Any) -> tuple[Any, dict[str, int]]:
    """Fold constants and remove redundant nodes with onnxsim (onnx-simplifier). Its own random-input
    check is off: convert's parity check on real inputs judges the result. Returns the model and
    node counts before and after."""
    try:
        import onnxsim
    except ImportError:
        raise BackendMissing("simplify needs onnx-simplifier", hint="pip install 'onnxsim>=0.8,<0.9'") from None
    before = len(proto.graph.node)
    try:
        with console.muted():
            simplified, _ = onnxsim.simplify(proto, check_n=0)
    except Exception as exc:
        raise TransformError(f"onnxsim could not simplify the model: {last_line(exc)}") from None
    return simplified, {"nodes_before": before, "nodes_after": len(simplified.graph.node)}
