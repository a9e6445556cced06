"""convert to ONNX: .pt2 -> ONNX (torch.onnx dynamo exporter), ONNX -> ONNX (opset change, simplification)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecli import console
from edgecli.errors import TransformError, last_line
from edgecli.formats import onnx_file
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile


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
            raise TransformError(f"torch.onnx could not export {model.path}: {last_line(exc)}") from None
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
            raise TransformError(f"cannot convert opset {current} -> {opset}: {last_line(exc)}") from None
    if not dynamic_batch:
        _fix_batch(proto)
    return proto
