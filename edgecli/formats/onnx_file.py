"""ONNX: load with validation, serialize as one self-contained file with lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecli.errors import ModelReadError, TransformError
from edgecli.formats import lineage as lin

MAX_PROTO_BYTES = 2**31 - 1


def load(path: Path, check: bool = True) -> Any:
    """An onnx.ModelProto with its weights loaded. Raises ModelReadError if corrupt or truncated."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=True)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ModelReadError(f"{path} is not a valid ONNX model ({_short(exc)}); corrupt or truncated?") from None
    if not model.graph.node and not model.graph.output:
        raise ModelReadError(f"{path} parses as ONNX but has an empty graph; corrupt or truncated?")
    if check:
        try:
            onnx.checker.check_model(model, full_check=False)
        except onnx.checker.ValidationError as exc:
            raise ModelReadError(f"{path} is not a valid ONNX model: {_short(exc)}") from None
    return model


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def read_lineage(model: Any) -> dict[str, Any] | None:
    for prop in model.metadata_props:
        if prop.key == lin.LINEAGE_KEY:
            return lin.loads(prop.value)
    return None


def to_bytes(model: Any, lineage: dict[str, Any] | None) -> bytes:
    """Serialize with all weights inline and the lineage in metadata_props."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())  # never mutate the caller's model
    kept = [p for p in model.metadata_props if p.key != lin.LINEAGE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if lineage is not None:
        model.metadata_props.add(key=lin.LINEAGE_KEY, value=lin.dumps(lineage))
    data = model.SerializeToString()
    if len(data) > MAX_PROTO_BYTES:
        raise TransformError("the ONNX model is larger than 2 GB and cannot be one self-contained file")
    return data
