"""TFLite / LiteRT flatbuffers: lineage in the model's metadata table (no TensorFlow needed)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from edgecli.core.errors import BackendMissing, ModelReadError
from edgecli.formats import lineage as lin


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise BackendMissing(
            "TFLite support needs ai-edge-litert", hint="pip install 'edgecli[tflite]' or run make install"
        ) from None
    return schema


def _model(data: bytes, source: object = "the model") -> Any:
    """The flatbuffer's root Model table, every table and vector it refers to checked to lie inside
    `data` (flatbuffers reads lazily: a truncated file would otherwise fail in whichever reader
    touches its end first). Raises ModelReadError."""
    schema = _schema()
    if data[4:8] != b"TFL3":
        raise ModelReadError(f"{source} is not a TFLite flatbuffer (no TFL3 identifier)")
    try:
        model = schema.Model.GetRootAsModel(data, 0)
        _touch(model)
    except Exception as exc:  # struct.error, ValueError (numpy views past the end), IndexError, ...
        raise ModelReadError(f"{source} is a corrupt or truncated TFLite flatbuffer ({str(exc)[:160]})") from None
    return model


def _touch(model: Any) -> None:
    """Read every offset the readers follow (no copies: numpy views of the buffers)."""
    for i in range(model.OperatorCodesLength()):
        model.OperatorCodes(i).BuiltinCode()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            tensor.Name(), tensor.ShapeAsNumpy(), tensor.Buffer()
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            op.InputsAsNumpy(), op.OutputsAsNumpy()
    for b in range(model.BuffersLength()):
        model.Buffers(b).DataAsNumpy()
    for m in range(model.MetadataLength()):
        model.Metadata(m).Name()


def builtin_names(schema: Any | None = None) -> dict[int, str]:
    """{builtin operator code: its BuiltinOperator name} of the TFLite schema: LiteRT's, or the one
    given (TensorFlow Lite Micro's package carries its own copy)."""
    schema = schema or _schema()
    return {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


def builtin_code(opcode: Any) -> int:
    """An OperatorCode table's builtin code (the larger of the field and its deprecated 8-bit twin)."""
    return max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())


def op_names(model: Any) -> list[str]:
    """The builtin operator name of each of a root Model table's operator codes ("CUSTOM" for codes
    the schema does not name); index it with an operator's OpcodeIndex()."""
    names = builtin_names()
    return [names.get(builtin_code(model.OperatorCodes(i)), "CUSTOM") for i in range(model.OperatorCodesLength())]


def load(path: Path) -> tuple[bytes, Any]:
    """(the file's bytes, its checked root Model table). Raises ModelReadError."""
    data = path.read_bytes()
    return data, _model(data, path)


def read_lineage(path: Path) -> dict[str, Any] | None:
    data = path.read_bytes()
    try:
        model = _model(data)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() and entry.Name().decode() == lin.LINEAGE_KEY:
                buffer = model.Buffers(entry.Buffer())
                return lin.loads(buffer.DataAsNumpy().tobytes())
    except (ModelReadError, IndexError, AttributeError, ValueError, struct.error):  # struct.error: truncated
        return None
    return None


def to_bytes(data: bytes, lineage: dict[str, Any] | None) -> bytes:
    """The flatbuffer with the lineage stored as metadata entry 'edgecli.lineage'."""
    import flatbuffers
    import numpy as np

    schema = _schema()
    if lineage is None:
        return data
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    model.metadata = [m for m in (model.metadata or []) if m.name not in (lin.LINEAGE_KEY, lin.LINEAGE_KEY.encode())]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(lin.dumps(lineage).encode(), dtype=np.uint8)
    model.buffers = [*(model.buffers or []), buffer]
    entry = schema.MetadataT()
    entry.name = lin.LINEAGE_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
