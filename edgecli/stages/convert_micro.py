"""target tflite-micro: prove a full-integer TFLite model runs under TensorFlow Lite Micro (TFLM) and
measure what the microcontroller needs: the tensor arena (RAM) and the flatbuffer (flash).

The proof is TFLM itself, through the `tflite-micro` Python package (the reference kernels, with the
op resolver of its Python interpreter, which registers every builtin op TFLM has): the interpreter
is created, which looks up a kernel for every op and plans the arena, then invoked. The arena figure
is the smallest `arena_size` with which that works, found by bisection below the total TFLM's
RecordingMicroAllocator reports (the Python wrapper has no API for it: it prints to the C stderr)."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from edgecli.errors import BackendMissing, TransformError

ARENA_NOTE = (
    "measured with this TFLM build on x86-64 (64-bit pointers); a 32-bit MCU build usually needs slightly "
    "less, its port's alignment may add a little: keep a margin"
)
TFLM_HINT = "pip install 'edgecli[tflite]' (the tflite-micro package) or run make install"
ARENA_LIMIT = 1 << 31  # give up doubling the arena here (TFLM's arena size is a 32-bit figure)

_NO_KERNEL = ("Didn't find op", "Failed to get registration")  # TFLM's words when an op has no kernel
_SENTINEL_CODE = 1 << 20  # a builtin code beyond any TFLM knows: its lookup fails with the words below
_SENTINEL_SEEN = "out of range"
_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_ARENA_SHORT = ("too small", "Failed to allocate", "missing:", "available")


def runtime() -> Any:
    """The tflite_micro Python runtime (imported only when a step needs it)."""
    try:
        from tflite_micro.python.tflite_micro import runtime as tflm
    except ImportError:
        raise BackendMissing("target tflite-micro needs TensorFlow Lite Micro's Python interpreter", hint=TFLM_HINT) from None
    return tflm


def _schema() -> Any:
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    return schema


@contextlib.contextmanager
def c_stderr() -> Iterator[list[str]]:
    """Capture what C code writes to file descriptor 2 (TFLM's MicroPrintf) into the yielded list,
    filled when the block exits; nothing of it reaches the user's terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    lines: list[str] = []
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip())


def _opcode_name(schema: Any, model: Any, index: int, names: dict[int, str]) -> str:
    opcode = model.OperatorCodes(index)
    code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
    if code == schema.BuiltinOperator.CUSTOM:
        return (opcode.CustomCode() or b"CUSTOM").decode("utf-8", "replace")
    return names.get(code, str(code))


def model_ops(data: bytes) -> dict[str, int]:
    """Every op of the model (builtin name, or the custom code of a custom op) and how many nodes use
    it, in order of first use, over all subgraphs."""
    schema = _schema()
    model = schema.Model.GetRootAsModel(data, 0)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    counts: dict[str, int] = {}
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            name = _opcode_name(schema, model, subgraph.Operators(o).OpcodeIndex(), names)
            counts[name] = counts.get(name, 0) + 1
    return counts


def io_tensors(data: bytes) -> tuple[list[tuple[str, tuple[int, ...]]], list[tuple[str, tuple[int, ...]]]]:
    """(name, shape) of the main subgraph's inputs and outputs, in the interpreter's order."""
    schema = _schema()
    subgraph = schema.Model.GetRootAsModel(data, 0).Subgraphs(0)

    def describe(index: int) -> tuple[str, tuple[int, ...]]:
        tensor = subgraph.Tensors(index)
        return (tensor.Name() or b"").decode("utf-8", "replace"), tuple(int(d) for d in tensor.ShapeAsNumpy())

    inputs = [describe(int(i)) for i in subgraph.InputsAsNumpy()] if subgraph.InputsLength() else []
    outputs = [describe(int(i)) for i in subgraph.OutputsAsNumpy()] if subgraph.OutputsLength() else []
    return inputs, outputs


def _probe(schema: Any, model: Any, opcode_index: int) -> bytes:
    """A model of two nodes for TFLM's kernel lookup: one with the opcode (and the options of the first
    node that uses it), then a sentinel with an out-of-range builtin code. The interpreter looks up the
    kernel of every node before it prepares any, so it stops at the first node if TFLM has no kernel for
    that op, else at the sentinel, and never runs a kernel on these empty nodes."""
    import flatbuffers

    sentinel = schema.OperatorCodeT()
    sentinel.builtinCode, sentinel.deprecatedBuiltinCode, sentinel.version = _SENTINEL_CODE, 127, 1
    source = next(op for sg in model.subgraphs for op in sg.operators or [] if op.opcodeIndex == opcode_index)
    nodes = []
    for index, like in ((0, source), (1, None)):
        node = schema.OperatorT()
        node.opcodeIndex, node.inputs, node.outputs = index, [], []
        if like is not None:
            node.builtinOptionsType, node.builtinOptions = like.builtinOptionsType, like.builtinOptions
            node.customOptions = like.customOptions
        nodes.append(node)
    subgraph = schema.SubGraphT()
    subgraph.tensors, subgraph.inputs, subgraph.outputs, subgraph.operators = [], [], [], nodes
    probe = schema.ModelT()
    probe.version, probe.operatorCodes = 3, [model.operatorCodes[opcode_index], sentinel]
    probe.subgraphs, probe.buffers = [subgraph], [schema.BufferT()]
    builder = flatbuffers.Builder(1024)
    builder.Finish(probe.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def missing_ops(data: bytes) -> list[str]:
    """The model's ops for which TFLM has no kernel (TFLM itself reports only the first one)."""
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    reader = schema.Model.GetRootAsModel(data, 0)
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    used = {op.opcodeIndex for sg in model.subgraphs for op in sg.operators or []}
    missing = []
    for index in sorted(used):
        attempt = _Attempt(_probe(schema, model, index), 1 << 14, invoke=False)
        if not any(_SENTINEL_SEEN in line for line in attempt.log):
            missing.append(_opcode_name(schema, reader, index, names))
    return list(dict.fromkeys(missing))


class _Attempt:
    """One try to create a TFLM interpreter (and invoke it once on zeros)."""

    def __init__(self, data: bytes, arena: int, invoke: bool) -> None:
        tflm = runtime()
        self.interpreter: Any = None
        self.error: str | None = None
        with c_stderr() as self.log:
            try:
                interpreter = tflm.Interpreter.from_bytes(data, arena_size=arena)
                if invoke:
                    inputs, _ = io_tensors(data)
                    for index in range(len(inputs)):
                        detail = interpreter.get_input_details(index)
                        interpreter.set_input(np.zeros(detail["shape"], detail["dtype"]), index)
                    interpreter.invoke()
                self.interpreter = interpreter
            except (RuntimeError, ValueError) as exc:
                self.error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

    @property
    def ok(self) -> bool:
        return self.interpreter is not None

    @property
    def no_kernel(self) -> bool:
        return not self.ok and any(words in line for line in self.log for words in _NO_KERNEL)

    @property
    def arena_too_small(self) -> bool:
        return not self.ok and any(word in line for line in self.log for word in _ARENA_SHORT)

    def cause(self) -> str:
        lines = [line.strip() for line in self.log if line.strip()]
        return "; ".join(lines[-2:])[:300] if lines else (self.error or "unknown error")


def open_interpreter(data: bytes, arena: int | None = None, invoke: bool = True) -> tuple[Any, int]:
    """A TFLM interpreter for the model and the arena size it was made with: `arena`, or ten times the
    model size (TFLM's own default), doubled while that is too small. Raises TransformError naming the
    ops TFLM has no kernel for, or quoting TFLM's own message."""
    size = arena or max(len(data) * 10, 1 << 16)
    while True:
        attempt = _Attempt(data, size, invoke)
        if attempt.ok:
            return attempt.interpreter, size
        ops = missing_ops(data) if attempt.no_kernel else []
        if ops:
            counts = model_ops(data)
            listed = ", ".join(f"{op} ({counts.get(op, 1)} node{'s' if counts.get(op, 1) > 1 else ''})" for op in ops)
            raise TransformError(
                f"TensorFlow Lite Micro has no kernel for {listed}: the model cannot run on a microcontroller",
                hint="replace or remove that layer in the model, or use target: tflite for LiteRT",
            )
        if not attempt.arena_too_small or arena is not None or size >= ARENA_LIMIT:
            raise TransformError(f"TensorFlow Lite Micro cannot run the model: {attempt.cause()}")
        size *= 2


def measure_arena(data: bytes) -> int:
    """The smallest tensor arena, in bytes, with which TFLM allocates and invokes the model: the total
    TFLM's recording allocator reports, checked (it and one byte less), or bisected if it is off."""
    interpreter, works = open_interpreter(data)
    with c_stderr() as log:
        interpreter.print_allocations()
    totals = [int(m.group(1)) for line in log for m in [_TOTAL.search(line)] if m]
    low, high = 0, works  # the smallest working size is in (low, high]
    if totals and totals[0] < works:
        if _Attempt(data, totals[0], invoke=False).ok:
            high = totals[0]
            low = high - 1 if not _Attempt(data, high - 1, invoke=False).ok else 0
        else:
            low = totals[0]
    while high - low > 1:
        middle = (low + high) // 2
        if _Attempt(data, middle, invoke=False).ok:
            high = middle
        else:
            low = middle
    open_interpreter(data, high)  # the figure reported is one the model was invoked with
    return high


def micro_check(data: bytes, max_arena_bytes: int | None = None, max_model_bytes: int | None = None) -> dict[str, Any]:
    """Prove the TFLite flatbuffer runs under TFLM and measure it.

    Returns the metrics (arena_bytes, model_bytes, ops, op nodes, arena note) and, under "budget_failures",
    the MicroSpec budgets the model exceeds (the caller still writes it, then exits 1).
    Raises TransformError (exit 4) when TFLM lacks a kernel for one of the model's ops."""
    ops = model_ops(data)
    arena = measure_arena(data)
    failures = []
    if max_arena_bytes is not None and arena > max_arena_bytes:
        failures.append(f"tensor arena {arena:,} bytes > micro.max_arena_bytes {max_arena_bytes:,}")
    if max_model_bytes is not None and len(data) > max_model_bytes:
        failures.append(f"model {len(data):,} bytes > micro.max_model_bytes {max_model_bytes:,}")
    return {
        "metrics": {
            "arena_bytes": arena,
            "model_bytes": len(data),
            "ops": list(ops),
            "op_nodes": sum(ops.values()),
            "arena_note": ARENA_NOTE,
        },
        "budget_failures": failures,
    }
