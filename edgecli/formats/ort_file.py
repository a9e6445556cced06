"""onnxruntime's ORT format (.ort): the flatbuffer its mobile and minimal builds load. It is made
from an ONNX model by onnxruntime itself; the ONNX metadata_props, lineage included, carry over."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from edgecli.errors import ModelReadError, TransformError
from edgecli.formats import lineage as lin

def from_onnx_bytes(onnx_bytes: bytes, optimization: str = "basic") -> bytes:
    """The ORT-format bytes of a serialized ONNX model, with graph optimisations `optimization`
    (basic/extended: portable to any CPU; all: x86 layout transforms) saved in. Raises TransformError."""
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}

    with tempfile.TemporaryDirectory(prefix="edgecli-ort-") as folder:
        source, target = Path(folder) / "model.onnx", Path(folder) / "model.ort"
        source.write_bytes(onnx_bytes)
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[optimization]
        options.optimized_model_filepath = str(target)
        options.add_session_config_entry("session.save_model_format", "ORT")
        options.log_severity_level = 3
        try:
            ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            lines = [l for l in str(exc).strip().splitlines() if l.strip()]
            raise TransformError(f"onnxruntime cannot save this model in ORT format: {(lines or [type(exc).__name__])[0][:240]}") from None
        return canonical(target.read_bytes())


# The ORT flatbuffer (onnxruntime/core/flatbuffers/schema/ort.fbs) as far as canonical() reads it:
# InferenceSession {ort_version, model, (deprecated session_state), kernel_type_str_resolver}
# KernelTypeStrResolver {op_kernel_type_str_args: [OpIdKernelTypeStrArgsEntry {op_id, kernel_type_str_args:
#   [KernelTypeStrArgsEntry {kernel_type_str, args: [ArgTypeAndIndex {arg_type: int8, index: uint32}]}]}]}
Resolver = list[tuple[str, list[tuple[str, list[tuple[int, int]]]]]]


def canonical(data: bytes) -> bytes:
    """The ORT file with its kernel type string resolver sorted by op and type-string name.

    onnxruntime writes that table by iterating hash maps seeded per process (absl, from an address, so
    ASLR moves it): the same model gives differently ordered bytes in every process. onnxruntime builds
    the file back to front: the version string and the model first (the file's tail, deterministic), then
    the resolver and the root table (its head). The tail is kept byte for byte, the head rebuilt in order.
    A file of another layout is returned as it is."""
    import flatbuffers
    from flatbuffers import encode, packer
    from flatbuffers.table import Table

    buf = bytearray(data)
    root = Table(buf, encode.Get(packer.uoffset, buf, 0))
    if root.Offset(8) or not (root.Offset(4) and root.Offset(6) and root.Offset(10)):
        return data  # a deprecated session_state, or a part missing: not the layout this knows

    def child(table: Table, slot: int) -> Table:
        return Table(buf, table.Indirect(table.Pos + table.Offset(4 + 2 * slot)))

    def items(table: Table, slot: int) -> list[Table]:
        offset = table.Offset(4 + 2 * slot)
        if not offset:
            return []
        start = table.Vector(offset)
        return [Table(buf, table.Indirect(start + 4 * i)) for i in range(table.VectorLen(offset))]

    def text(table: Table, slot: int) -> str:
        return table.String(table.Pos + table.Offset(4 + 2 * slot)).decode()

    def scalar(table: Table, slot: int, flags: Any) -> int:
        offset = table.Offset(4 + 2 * slot)
        return table.Get(flags, table.Pos + offset) if offset else 0

    resolver: Resolver = sorted(
        (text(op, 0), sorted(
            (text(entry, 0), [(scalar(arg, 0, flatbuffers.number_types.Int8Flags), scalar(arg, 1, flatbuffers.number_types.Uint32Flags))
                              for arg in items(entry, 1)])
            for entry in items(op, 1)))
        for op in items(child(root, 3), 0)
    )
    version = root.Indirect(root.Pos + root.Offset(4))
    model = root.Indirect(root.Pos + root.Offset(6))
    tail = min(model, model - encode.Get(packer.soffset, buf, model))  # the model table or its vtable, written last
    if version < tail:
        return data

    builder = flatbuffers.Builder(len(data))
    builder.head -= len(data) - tail  # the tail at the end of the buffer: its offsets from the end stay valid
    builder.Bytes[builder.head:] = data[tail:]
    builder.minalign = 8  # the largest alignment in the schema
    resolver_offset = _write_resolver(builder, resolver)
    builder.StartObject(4)
    builder.PrependUOffsetTRelativeSlot(0, len(data) - version, 0)
    builder.PrependUOffsetTRelativeSlot(1, len(data) - model, 0)
    builder.PrependUOffsetTRelativeSlot(3, resolver_offset, 0)
    builder.Finish(builder.EndObject(), file_identifier=b"ORTM")
    return bytes(builder.Output())


def _write_resolver(builder: Any, resolver: Resolver) -> int:
    def table_vector(offsets: list[int]) -> int:
        builder.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            builder.PrependUOffsetTRelative(offset)
        return builder.EndVector()

    ops = []
    for op_id, entries in resolver:
        written = []
        for type_str, args in entries:
            arg_offsets = []
            for arg_type, index in args:
                builder.StartObject(2)
                builder.PrependUint32Slot(1, index, 0)
                builder.PrependInt8Slot(0, arg_type, 0)
                arg_offsets.append(builder.EndObject())
            args_vector, name = table_vector(arg_offsets), builder.CreateString(type_str)
            builder.StartObject(2)
            builder.PrependUOffsetTRelativeSlot(1, args_vector, 0)
            builder.PrependUOffsetTRelativeSlot(0, name, 0)
            written.append(builder.EndObject())
        entries_vector, name = table_vector(written), builder.CreateString(op_id)
        builder.StartObject(2)
        builder.PrependUOffsetTRelativeSlot(1, entries_vector, 0)
        builder.PrependUOffsetTRelativeSlot(0, name, 0)
        ops.append(builder.EndObject())
    ops_vector = table_vector(ops)
    builder.StartObject(1)
    builder.PrependUOffsetTRelativeSlot(0, ops_vector, 0)
    return builder.EndObject()


def load_options(options: Any) -> Any:
    """Session options told the file is ORT format (whatever its name)."""
    options.add_session_config_entry("session.load_model_format", "ORT")
    return options


def read_lineage(path: Path) -> dict[str, Any] | None:
    import onnxruntime as ort

    options = load_options(ort.SessionOptions())
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelReadError(f"onnxruntime cannot load {path} as ORT format: {str(exc).strip().splitlines()[0][:200]}") from None
    text = session.get_modelmeta().custom_metadata_map.get(lin.LINEAGE_KEY)
    return json.loads(text) if text else None
