"""TensorFlow Lite Micro (TFLM) plumbing: prove a full-integer TFLite model runs under TFLM and measure
what the microcontroller needs, the tensor arena (RAM) and the flatbuffer (flash); open TFLM
interpreters for runtimes/micro_runner.py. convert's target tflite-micro (stages/convert/micro.py) uses it.

The proof is TFLM itself, through the `tflite-micro` Python package (its reference kernels and the op
resolver of its Python interpreter, which registers every builtin op TFLM has):
- every op's kernel is looked up (TFLM names only the first op it lacks; each op is probed alone so
  that the error names them all);
- the arena figure is the smallest `arena_size` with which the interpreter allocates (and invokes) the
  model: TFLM's recording allocator gives a first figure (the Python wrapper has no API for it, it
  prints to the C stderr), checked and bisected in a child process, since TFLM crashes on some arenas
  that are too small instead of failing;
- the model is then invoked in this process with exactly that arena, and convert's parity check runs
  every sample through TFLM with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

import edgecli
from edgecli.core.errors import BackendMissing, TransformError
from edgecli.formats.files import TempFolder
from edgecli.formats.tflite_file import builtin_code, builtin_names

TFLM_HINT = "pip install 'edgecli[tflite]' (the tflite-micro package) or run make install"
ARENA_LIMIT = 1 << 31  # give up doubling the arena here (TFLM's arena size is a 32-bit figure)

_SENTINEL_CODE = 1 << 20  # a builtin code beyond any TFLM knows: its lookup fails with the words below
_SENTINEL_SEEN = "out of range"
_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_ARENA_SHORT = ("too small", "Failed to allocate", "missing:", "available")


def runtime() -> Any:
    """The tflite_micro Python runtime (imported only when a step needs it)."""
    try:
        from tflite_micro.python.tflite_micro import runtime as tflm
    except ImportError:
        raise BackendMissing(
            "target tflite-micro needs TensorFlow Lite Micro's Python interpreter", hint=TFLM_HINT
        ) from None
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
    code = builtin_code(opcode)
    if code == schema.BuiltinOperator.CUSTOM:
        return (opcode.CustomCode() or b"CUSTOM").decode("utf-8", "replace")
    return names.get(code, str(code))


def model_ops(data: bytes) -> dict[str, int]:
    """Every op of the model (builtin name, or the custom code of a custom op) and how many nodes use
    it, in order of first use, over all subgraphs."""
    schema = _schema()
    model = schema.Model.GetRootAsModel(data, 0)
    names = builtin_names(schema)
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
    names = builtin_names(schema)
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
    def arena_too_small(self) -> bool:
        return not self.ok and any(word in line for line in self.log for word in _ARENA_SHORT)

    def cause(self) -> str:
        lines = [line.strip() for line in self.log if line.strip()]
        return "; ".join(lines[-2:])[:300] if lines else (self.error or "unknown error")


def open_interpreter(data: bytes, arena: int, invoke: bool = True) -> Any:
    """A TFLM interpreter for the model with an arena known to be big enough (measure_arena), invoked
    once on zeros if asked. Raises TransformError quoting TFLM."""
    attempt = _Attempt(data, arena, invoke)
    if not attempt.ok:
        raise TransformError(
            f"TensorFlow Lite Micro cannot run the model with a {arena:,}-byte arena: {attempt.cause()}"
        )
    return attempt.interpreter


_WORKER = """
import sys
sys.path.insert(0, sys.argv[2])
from edgecli.backends.micro import _TOTAL, _Attempt, c_stderr
data = open(sys.argv[1], "rb").read()
for line in sys.stdin:
    arena, invoke = (int(word) for word in line.split())
    attempt = _Attempt(data, arena, invoke=bool(invoke))
    if attempt.ok:
        with c_stderr() as log:
            attempt.interpreter.print_allocations()
        totals = [m.group(1) for text in log for m in [_TOTAL.search(text)] if m]
        print("ok", totals[0] if totals else 0, flush=True)
    else:
        print("small" if attempt.arena_too_small else "fail", attempt.cause(), flush=True)
"""


class _ArenaProbe:
    """Tries arena sizes in a child process: TFLM dereferences a null pointer (SIGSEGV) on some arenas
    that are too small instead of failing, which must not take the edgecli process down with it. A size
    whose child crashes counts as too small, and a new child takes the next size."""

    def __init__(self, data: bytes) -> None:
        self._folder = TempFolder(prefix="edgecli-tflm-")
        self._model = os.path.join(self._folder.name, "model.tflite")
        with open(self._model, "wb") as handle:
            handle.write(data)
        self._child: subprocess.Popen[str] | None = None

    def ask(self, arena: int, invoke: bool = False) -> tuple[str, str]:
        """("ok", the arena total TFLM recorded), ("small" or "fail", TFLM's message) or ("crash", "")."""
        if self._child is None:
            package_root = os.path.dirname(os.path.dirname(os.path.abspath(edgecli.__file__)))
            self._child = subprocess.Popen(
                [sys.executable, "-c", _WORKER, self._model, package_root],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        assert self._child.stdin is not None and self._child.stdout is not None
        try:
            self._child.stdin.write(f"{arena} {int(invoke)}\n")
            self._child.stdin.flush()
            verdict, _, detail = self._child.stdout.readline().strip().partition(" ")
        except OSError:  # BrokenPipeError: the child is gone
            verdict, detail = "", ""
        if verdict not in ("ok", "small", "fail"):
            self.close()
            return "crash", ""
        return verdict, detail

    def works(self, arena: int) -> bool:
        return self.ask(arena)[0] == "ok"

    def close(self) -> None:
        if self._child is not None:
            with contextlib.suppress(OSError):
                self._child.stdin.close()  # type: ignore[union-attr]
            self._child.kill()
            self._child.wait()
            self._child = None

    def __enter__(self) -> _ArenaProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._folder.cleanup()


def _first_fit(probe: _ArenaProbe, data: bytes) -> tuple[int, int]:
    """(an arena the model allocates and invokes with, the total TFLM recorded for it): ten times the
    model size (TFLM's own default) or 64 KiB, doubled while too small."""
    size, crashes = max(len(data) * 10, 1 << 16), 0
    while size <= ARENA_LIMIT:
        verdict, detail = probe.ask(size, invoke=True)
        if verdict == "ok":
            return size, int(detail or 0)
        if verdict == "fail":
            raise TransformError(f"TensorFlow Lite Micro cannot run the model: {detail}")
        crashes = crashes + 1 if verdict == "crash" else 0
        if crashes == 2:  # one crash can be an arena too small, two in a row with twice the arena cannot
            raise TransformError(
                f"TensorFlow Lite Micro crashed loading or invoking the model (arenas of {size // 2:,} and {size:,} bytes)"
            )
        size *= 2
    raise TransformError(f"TensorFlow Lite Micro cannot fit the model in a {ARENA_LIMIT:,}-byte arena")


def measure_arena(data: bytes) -> int:
    """The smallest tensor arena, in bytes, with which TFLM allocates and invokes the model. TFLM's
    recording allocator reports a total, which is usually that figure but not always (it misses
    temporary allocations made while kernels prepare): it is checked (it, and one byte less), and the
    figure bisected when it is off. Every try runs in a child process (see _ArenaProbe)."""
    with _ArenaProbe(data) as probe:
        works, recorded = _first_fit(probe, data)
        low, high = 0, works  # the smallest working size is in (low, high]
        if 0 < recorded < works:
            if probe.works(recorded):
                high = recorded
                low = high - 1 if not probe.works(high - 1) else 0
            else:
                low = recorded
        while high - low > 1:
            middle = (low + high) // 2
            if probe.works(middle):
                high = middle
            else:
                low = middle
        if high != works and probe.ask(high, invoke=True)[0] != "ok":  # allocating is not all: invoke too
            high = works
    return high


def check_kernels(data: bytes) -> None:
    """Raise TransformError naming every op of the model TFLM has no kernel for."""
    ops = missing_ops(data)
    if ops:
        counts = model_ops(data)
        listed = ", ".join(f"{op} ({counts.get(op, 1)} node{'s' if counts.get(op, 1) > 1 else ''})" for op in ops)
        raise TransformError(
            f"TensorFlow Lite Micro has no kernel for {listed}: the model cannot run on a microcontroller",
            hint="change the layers that make them, or use target: tflite for LiteRT",
        )


def micro_check(data: bytes) -> dict[str, Any]:
    """Prove the TFLite flatbuffer runs under TFLM and measure it: every op has a TFLM kernel (else
    TransformError, exit 4, naming them), the smallest arena it allocates and invokes with (arena_bytes),
    the flatbuffer's size (model_bytes: flash), its ops and node count. The final proof runs in this
    process: the model, invoked with exactly arena_bytes."""
    check_kernels(data)
    ops = model_ops(data)
    arena = measure_arena(data)
    open_interpreter(data, arena, invoke=True)
    return {"arena_bytes": arena, "model_bytes": len(data), "ops": list(ops), "op_nodes": sum(ops.values())}
