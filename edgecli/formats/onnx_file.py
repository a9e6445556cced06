"""ONNX: load with validation, serialize as one self-contained file with lineage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecli.core.errors import ModelReadError, TransformError, one_line
from edgecli.formats import lineage as lin

MAX_PROTO_BYTES = 2**31 - 1


def load(path: Path, check: bool = True) -> Any:
    """An onnx.ModelProto with its weights loaded. Raises ModelReadError if corrupt or truncated."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ModelReadError(f"{path} is not a valid ONNX model ({_short(exc)}); corrupt or truncated?") from None
    if check_external_data(path, model):
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(path.parent))
        except (onnx.checker.ValidationError, OSError, ValueError) as exc:  # checked above: a race, or a bad offset
            raise ModelReadError(f"{path}: its external data cannot be read ({_short(exc)})") from None
    check_tensor_sizes(path, model)
    if not model.graph.node and not model.graph.output:
        raise ModelReadError(f"{path} parses as ONNX but has an empty graph; corrupt or truncated?")
    if check:
        try:
            onnx.checker.check_model(model, full_check=False)
        except onnx.checker.ValidationError as exc:
            raise ModelReadError(f"{path} is not a valid ONNX model: {_short(exc)}") from None
    return model


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph and its subgraphs (initializers, Constant values, attributes)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def check_external_data(path: Path, model: Any) -> bool:
    """Refuse external data that lies outside the model's folder (an absolute path, '..', a symbolic
    link), is missing, or is shorter than the tensor says, before anything reads it (onnx and
    onnxruntime would refuse most of these too, each in its own words). Returns whether the model
    has external data. Raises ModelReadError."""
    from onnx import TensorProto

    folder = path.parent.resolve()
    found = False
    for tensor in _tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        found = True
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        where = f"{path}: tensor '{one_line(tensor.name)}' keeps its data in '{one_line(location)}'"
        hint = "external data files must sit in the model's own folder"
        relative = Path(location)
        if not location or relative.is_absolute() or ".." in relative.parts:
            raise ModelReadError(f"{where}, outside the model's folder: edgecli reads no file outside it", hint=hint)
        target = path.parent / relative
        if target.is_symlink() or not target.resolve().is_relative_to(folder):
            raise ModelReadError(
                f"{where}, a symbolic link: edgecli reads no file outside the model's folder", hint=hint
            )
        if not target.is_file():
            raise ModelReadError(f"{where}, which does not exist", hint="copy the data file next to the model")
        try:
            end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        except ValueError:
            raise ModelReadError(f"{where} at an offset or length that is not a number; corrupt?") from None
        if end > target.stat().st_size:
            raise ModelReadError(
                f"{where}, which is shorter ({target.stat().st_size:,} bytes) than the tensor needs ({end:,}); truncated?"
            )
    return found


# bytes per element in raw_data (sub-byte and string types are not checked)
_ITEMSIZE = {
    "FLOAT": 4,
    "UINT8": 1,
    "INT8": 1,
    "UINT16": 2,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "BOOL": 1,
    "FLOAT16": 2,
    "DOUBLE": 8,
    "UINT32": 4,
    "UINT64": 8,
    "COMPLEX64": 8,
    "COMPLEX128": 16,
    "BFLOAT16": 2,
    "FLOAT8E4M3FN": 1,
    "FLOAT8E4M3FNUZ": 1,
    "FLOAT8E5M2": 1,
    "FLOAT8E5M2FNUZ": 1,
}
_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def check_tensor_sizes(path: Path, model: Any) -> None:
    """Refuse a stored tensor whose data does not fill its shape (numpy would fail to reshape it
    wherever it is first read). Raises ModelReadError."""
    from onnx import TensorProto

    for tensor in _tensors(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            continue  # checked against the data file by check_external_data
        kind = TensorProto.DataType.Name(tensor.data_type) if tensor.data_type in TensorProto.DataType.values() else "?"
        if kind not in _ITEMSIZE or any(d < 0 for d in tensor.dims):
            continue
        count = 1
        for dim in tensor.dims:
            count *= dim
        if tensor.HasField("raw_data"):
            got, want, unit = len(tensor.raw_data), count * _ITEMSIZE[kind], "bytes"
        else:
            got = sum(len(getattr(tensor, field)) for field in _TYPED_FIELDS)
            want, unit = count * (2 if kind.startswith("COMPLEX") else 1), "values"
            if got == 0:
                continue  # no data at all: an empty tensor, or data in a field onnx reads another way
        if got != want:
            raise ModelReadError(
                f"{path}: tensor '{one_line(tensor.name)}' holds {got:,} {unit} but its shape {list(tensor.dims)} of "
                f"{kind} needs {want:,}; corrupt or truncated?"
            )


def constant_values(graph: Any) -> dict[str, Any]:
    """{tensor name: numpy array} of the graph's initializers and of the outputs of its Constant nodes
    (those with a `value` tensor attribute)."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


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
