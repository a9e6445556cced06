"""onnxruntime's ORT format (.ort): the flatbuffer its mobile and minimal builds load. It is made
from an ONNX model by onnxruntime itself; the ONNX metadata_props, lineage included, carry over."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgecli.core.errors import ModelReadError, TransformError, damaged_hint
from edgecli.formats import lineage as lin
from edgecli.formats.files import TempFolder


def from_onnx_bytes(onnx_bytes: bytes, optimization: str = "basic") -> bytes:
    """The ORT-format bytes of a serialized ONNX model, with graph optimisations `optimization`
    (basic/extended: portable to any CPU; all: x86 layout transforms) saved in. Raises TransformError."""
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }

    with TempFolder(prefix="edgecli-ort-") as folder:
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
            raise TransformError(
                f"onnxruntime cannot save this model in ORT format: {(lines or [type(exc).__name__])[0][:240]}"
            ) from None
        return canonical(target.read_bytes())


# The part of the ORT flatbuffer (onnxruntime/core/flatbuffers/schema/ort.fbs) canonical() rewrites:
#   InferenceSession {0 ort_version: string, 1 model: Model, 2 (deprecated), 3 kernel_type_str_resolver}
#   KernelTypeStrResolver {0 op_kernel_type_str_args: [OpIdKernelTypeStrArgsEntry]}
#   OpIdKernelTypeStrArgsEntry {0 op_id: string, 1 kernel_type_str_args: [KernelTypeStrArgsEntry]}
#   KernelTypeStrArgsEntry {0 kernel_type_str: string, 1 args: [ArgTypeAndIndex]}
#   ArgTypeAndIndex {0 arg_type: int8, 1 index: uint32}
Resolver = list[tuple[str, list[tuple[str, list[tuple[int, int]]]]]]


def canonical(data: bytes) -> bytes:
    """The ORT file with its kernel type string resolver in sorted order, so that the same model gives
    the same bytes in every process.

    onnxruntime writes that table from hash maps whose seed is an address (absl), which ASLR moves:
    each process orders it differently. It builds the file back to front, the version string and the
    model first (the file's tail), then the resolver and the root table (its head). The tail is kept
    byte for byte, at the same distance from the end, so its offsets stay valid; the head is rebuilt.
    A file of another layout is returned unchanged."""
    import flatbuffers
    from flatbuffers import encode, packer

    buf = bytearray(data)
    root = _Table(buf, encode.Get(packer.uoffset, buf, 0))
    if root.has(2) or not all(root.has(slot) for slot in (0, 1, 3)):
        return data
    version, model = root.position(0), root.position(1)
    tail = min(model, model - encode.Get(packer.soffset, buf, model))  # the model table or its vtable: written last
    if version < tail:
        return data
    resolver: Resolver = sorted(
        (
            op.text(0),
            sorted(
                (
                    entry.text(0),
                    [
                        (
                            arg.number(0, flatbuffers.number_types.Int8Flags),
                            arg.number(1, flatbuffers.number_types.Uint32Flags),
                        )
                        for arg in entry.tables(1)
                    ],
                )
                for entry in op.tables(1)
            ),
        )
        for op in root.table(3).tables(0)
    )
    builder = flatbuffers.Builder(len(data))
    builder.head -= len(data) - tail
    builder.Bytes[builder.head :] = data[tail:]
    builder.minalign = 8  # the largest alignment in the schema
    resolver_offset = _write_resolver(builder, resolver)
    builder.StartObject(4)
    builder.PrependUOffsetTRelativeSlot(0, len(data) - version, 0)  # builder offsets count from the end
    builder.PrependUOffsetTRelativeSlot(1, len(data) - model, 0)
    builder.PrependUOffsetTRelativeSlot(3, resolver_offset, 0)
    builder.Finish(builder.EndObject(), file_identifier=b"ORTM")
    return bytes(builder.Output())


class _Table:
    """A flatbuffer table read by field slot."""

    def __init__(self, buf: bytearray, pos: int) -> None:
        from flatbuffers.table import Table

        self.fb = Table(buf, pos)

    def _field(self, slot: int) -> int:
        return self.fb.Offset(4 + 2 * slot)

    def has(self, slot: int) -> bool:
        return self._field(slot) != 0

    def position(self, slot: int) -> int:
        """Where the table, vector or string the field refers to starts."""
        return self.fb.Indirect(self.fb.Pos + self._field(slot))

    def table(self, slot: int) -> _Table:
        return _Table(self.fb.Bytes, self.position(slot))

    def tables(self, slot: int) -> list[_Table]:
        field = self._field(slot)
        if not field:
            return []
        start = self.fb.Vector(field)
        return [_Table(self.fb.Bytes, self.fb.Indirect(start + 4 * i)) for i in range(self.fb.VectorLen(field))]

    def text(self, slot: int) -> str:
        return self.fb.String(self.fb.Pos + self._field(slot)).decode()

    def number(self, slot: int, flags: Any) -> int:
        field = self._field(slot)
        return self.fb.Get(flags, self.fb.Pos + field) if field else 0


def _write_resolver(builder: Any, resolver: Resolver) -> int:
    def table(fields: list[tuple[int, int]]) -> int:  # (slot, offset of a string, vector or table)
        builder.StartObject(len(fields))
        for slot, offset in reversed(fields):
            builder.PrependUOffsetTRelativeSlot(slot, offset, 0)
        return builder.EndObject()

    def vector(offsets: list[int]) -> int:
        builder.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            builder.PrependUOffsetTRelative(offset)
        return builder.EndVector()

    ops = []
    for op_id, entries in resolver:
        written = []
        for type_str, args in entries:
            arg_tables = []
            for arg_type, index in args:
                builder.StartObject(2)
                builder.PrependUint32Slot(1, index, 0)
                builder.PrependInt8Slot(0, arg_type, 0)
                arg_tables.append(builder.EndObject())
            args_vector = vector(arg_tables)
            written.append(table([(0, builder.CreateString(type_str)), (1, args_vector)]))
        entries_vector = vector(written)
        ops.append(table([(0, builder.CreateString(op_id)), (1, entries_vector)]))
    return table([(0, vector(ops))])


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
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelReadError(
            f"onnxruntime cannot load {path} as ORT format: {first}", hint=damaged_hint(first)
        ) from None
    text = session.get_modelmeta().custom_metadata_map.get(lin.LINEAGE_KEY)
    return json.loads(text) if text else None
