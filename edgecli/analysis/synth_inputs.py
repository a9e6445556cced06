"""Inputs synthesised from a model's own constraints, for benchmarking a model without data.

The signature alone is not enough for models from the wild:
  - a rank-0 input (silero-vad's `sr int64[]`) is a scalar, not an array of one sample per batch row,
    and takes a value the model checks (`Equal(sr, 16000)` picks the 16 kHz branch);
  - an input whose first axis is fixed (an RNN state [layers, batch, hidden]) has its batch on its first
    dynamic axis;
  - dynamic spatial or sequence dimensions must fit the network (PP-OCR's recogniser needs a height of
    at most 64, an audio front end needs enough samples for its STFT window).

`plan_inputs` starts from the signature (the recipe's input_shapes and dynamic_dims first, other dynamic
dimensions at DEFAULT_DYNAMIC_DIM), values for scalars read from the graph's comparisons, and runs the
model once; when it refuses, it tries other sizes one dimension (then one input's dimensions together)
at a time, and other scalar values, until a run succeeds. Every choice that is not the plain signature
is a note for the report.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecli.data.dataset import synthetic_fill, synthetic_sample_shape
from edgecli.recipes import DEFAULT_INT_RANGE
from edgecli.runtimes.base import Runner

# Sizes tried for a dynamic dimension the model refuses at its first size: common image heights and
# widths (multiples of a CNN's stride 16/32, the 48-pixel text line), then audio and sequence lengths.
DIM_CANDIDATES = (48, 32, 64, 96, 160, 224, 256, 320, 512, 640, 1024, 16, 8, 2048, 4096, 16000, 1)
# Values tried for a scalar input after those the graph compares it with (sample rates, flags, counts).
SCALAR_CANDIDATES = (1, 0, 16000, 8000, 22050, 44100, 48000)
COMPARE_OPS = ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Sub", "Div", "Mod")
PASS_THROUGH_OPS = ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape")
MAX_PROBES = 120


@dataclass
class InputPlan:
    """How to build one batch of synthesised inputs: per input the full shape with the batch axis
    (None: no batch axis) and, for rank-0 inputs, the scalar value."""

    shapes: dict[str, list[int]]
    batch_axes: dict[str, int | None]
    scalars: dict[str, float | int | bool]
    dtypes: dict[str, str]
    int_range: tuple[int, int] = DEFAULT_INT_RANGE
    notes: list[str] = field(default_factory=list)
    accepted: bool = True  # False: no probed plan ran (the model's own error shows on the first run)

    def feeds(self, size: int, seed: int = 0) -> dict[str, np.ndarray]:
        """One batch of `size` samples (size only sets the batch axes), in the model's own names,
        layout and dtypes."""
        rng = np.random.default_rng(seed)
        out: dict[str, np.ndarray] = {}
        for name, shape in self.shapes.items():
            dtype = np.dtype(self.dtypes[name])
            if name in self.scalars:
                out[name] = np.array(self.scalars[name], dtype=dtype)
                continue
            full = list(shape)
            axis = self.batch_axes[name]
            if axis is not None:
                full[axis] = size
            out[name] = _random(name, tuple(full), dtype, rng, self.int_range)
        return out

    def describe(self) -> str:
        """'x float32[1,3,48,128]; sr int64 scalar 16000' at batch 1."""
        parts = []
        for name, array in self.feeds(1).items():
            if array.ndim == 0:
                parts.append(f"{name} {array.dtype} scalar {array.item()}")
            else:
                parts.append(f"{name} {array.dtype}[{','.join(str(d) for d in array.shape)}]")
        return "; ".join(parts)


def _random(name: str, shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator, int_range: tuple) -> Any:
    fill = synthetic_fill(name)
    if fill == "ones":
        return np.ones(shape, dtype=dtype)
    if fill == "zeros":
        return np.zeros(shape, dtype=dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.random(shape, dtype=np.float32).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    info = np.iinfo(dtype)
    low, high = max(int(int_range[0]), int(info.min)), min(int(int_range[1]), int(info.max) + 1)
    return rng.integers(low, max(high, low + 1), size=shape).astype(dtype)


# ---------------------------------------------------------------- what the graph says


def scalar_hints(model_path: Any, names: list[str]) -> dict[str, list[float]]:
    """For each rank-0 input of an ONNX model: the constants the graph compares it with or divides it
    by (through Cast/Squeeze/...), in graph order, every subgraph included; {} for other formats or an
    unreadable graph."""
    try:
        from onnx import numpy_helper

        from edgecli.analysis.model_stats import onnx_graphs
        from edgecli.formats import onnx_file

        proto = onnx_file.load(model_path, check=False)
    except Exception:  # not an ONNX file, or unreadable: no hints
        return {}
    graphs = list(onnx_graphs(proto.graph))
    constants: dict[str, np.ndarray] = {}
    for sub in graphs:
        constants.update({t.name: numpy_helper.to_array(t) for t in sub.initializer if np.prod(t.dims) == 1})
        for node in sub.node:
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value" and attribute.HasField("t") and np.prod(attribute.t.dims) == 1:
                        constants[node.output[0]] = numpy_helper.to_array(attribute.t)
    nodes = [node for sub in graphs for node in sub.node]
    hints: dict[str, list[float]] = {}
    for name in names:
        aliases, found = {name}, []
        for node in nodes:  # graph order: a pass-through's output is an alias from then on
            if not aliases.intersection(node.input):
                continue
            if node.op_type in PASS_THROUGH_OPS:
                aliases.update(node.output)
            elif node.op_type in COMPARE_OPS:
                found += [constants[i].item() for i in node.input if i in constants and i not in aliases]
        hints[name] = list(dict.fromkeys(found))
    return hints


# ---------------------------------------------------------------- the plan


def initial_plan(
    runner: Runner,
    shapes: dict[str, list[int]] | None = None,
    dims: dict[str, int] | None = None,
    int_range: tuple[int, int] = DEFAULT_INT_RANGE,
) -> tuple[InputPlan, list[tuple[str, int]], list[str]]:
    """The plan from the signature, the (input, axis) dimensions a probe may change (dynamic, not
    set by the recipe) and the notes on what was decided without running the model."""
    plan = InputPlan({}, {}, {}, {}, (int(int_range[0]), int(int_range[1])))
    knobs: list[tuple[str, int]] = []
    notes: list[str] = []
    scalar_names = [spec.name for spec in runner.inputs if len(spec.shape) == 0]
    hints = scalar_hints(runner.model.path, scalar_names) if scalar_names else {}
    for spec in runner.inputs:
        plan.dtypes[spec.name] = np.dtype(spec.dtype).name
        if len(spec.shape) == 0:
            value = _scalar_default(spec.dtype, hints.get(spec.name, []))
            plan.shapes[spec.name], plan.batch_axes[spec.name] = [], None
            plan.scalars[spec.name] = value
            where = "a constant the model compares it with" if hints.get(spec.name) else "no constant in the graph"
            notes.append(f"{spec.name} is a rank-0 input: a scalar {np.dtype(spec.dtype).name} {value} ({where})")
            continue
        sample = list(synthetic_sample_shape(spec, shapes, dims))
        if spec.shape[0] is None or (shapes and spec.name in shapes):
            plan.shapes[spec.name], plan.batch_axes[spec.name] = [1, *sample], 0
            axes = range(1, len(spec.shape))
        else:  # a fixed first axis ([layers, batch, hidden] states): the batch is the first dynamic axis
            full = [int(spec.shape[0]), *sample]
            dynamic = [axis for axis in range(1, len(spec.shape)) if spec.shape[axis] is None]
            batch = dynamic[0] if dynamic else None
            if batch is not None:
                full[batch] = 1
                notes.append(f"{spec.name}'s first axis is fixed at {spec.shape[0]}: its batch is axis {batch}")
            plan.shapes[spec.name], plan.batch_axes[spec.name] = full, batch
            axes = range(1, len(spec.shape))
        if shapes and spec.name in shapes:
            continue
        names = spec.dim_names if len(spec.dim_names) == len(spec.shape) else (None,) * len(spec.shape)
        for axis in axes:
            set_by_recipe = dims and ((names[axis] and names[axis] in dims) or str(axis) in dims)
            if spec.shape[axis] is None and axis != plan.batch_axes[spec.name] and not set_by_recipe:
                knobs.append((spec.name, axis))
    return plan, knobs, notes


def _scalar_default(dtype: Any, hints: list[float]) -> float | int | bool:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return bool(hints[0]) if hints else True
    if np.issubdtype(dtype, np.integer):
        return int(hints[0]) if hints else 1
    return float(hints[0]) if hints else 1.0


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Runtimes log the errors of refused probes on fd 2 (onnxruntime's '[E:onnxruntime...]')."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _runs(runner: Runner, plan: InputPlan) -> bool:
    try:
        with _quiet_stderr():
            runner.run_feeds(plan.feeds(1))
        return True
    except Exception:  # the runtime's own errors: this plan is refused
        return False


def plan_inputs(
    runner: Runner,
    shapes: dict[str, list[int]] | None = None,
    dims: dict[str, int] | None = None,
    int_range: tuple[int, int] = DEFAULT_INT_RANGE,
) -> InputPlan:
    """Inputs for `runner`'s model that it accepts (see the module doc); plan.notes say what was
    chosen beyond the signature, plan.accepted is False when no tried plan ran."""
    plan, knobs, notes = initial_plan(runner, shapes, dims, int_range)
    plan.notes = notes
    if _runs(runner, plan):
        return plan
    first = plan.describe()
    probes = 0
    for trial, change in _trials(plan, knobs, scalar_hints(runner.model.path, list(plan.scalars))):
        probes += 1
        if probes > MAX_PROBES:
            break
        if _runs(runner, trial):
            trial.notes = [*notes, f"the model refused the first sizes tried ({first}); it runs with {change}"]
            return trial
    plan.accepted = False
    plan.notes = [*notes, f"the model refused {first} and every other size tried ({probes} runs)"]
    return plan


def _trials(plan: InputPlan, knobs: list[tuple[str, int]], hints: dict[str, list[float]]) -> Iterator[tuple]:
    """(changed plan, what changed) to try in turn: each dimension alone at each candidate size, each
    input's dimensions together at each size, each scalar at each candidate value; then the scalar
    values combined with each single-dimension change."""

    def with_dims(changes: dict[tuple[str, int], int], base: InputPlan | None = None) -> InputPlan:
        source = base or plan
        trial = InputPlan(
            {k: list(v) for k, v in source.shapes.items()},
            dict(source.batch_axes),
            dict(source.scalars),
            dict(source.dtypes),
            source.int_range,
        )
        for (name, axis), value in changes.items():
            trial.shapes[name][axis] = value
        return trial

    def text(changes: dict[tuple[str, int], int]) -> str:
        return ", ".join(f"{name} axis {axis} = {value}" for (name, axis), value in changes.items())

    for knob in knobs:
        for value in DIM_CANDIDATES:
            if value != plan.shapes[knob[0]][knob[1]]:
                yield with_dims({knob: value}), text({knob: value})
    by_input: dict[str, list[tuple[str, int]]] = {}
    for knob in knobs:
        by_input.setdefault(knob[0], []).append(knob)
    for group in (g for g in by_input.values() if len(g) > 1):
        for value in DIM_CANDIDATES:
            yield with_dims(dict.fromkeys(group, value)), text(dict.fromkeys(group, value))
    scalar_trials = []
    for name, current in plan.scalars.items():
        candidates: list[float] = [*hints.get(name, []), *SCALAR_CANDIDATES]
        for candidate in candidates:
            if candidate != current:
                trial = with_dims({})
                trial.scalars[name] = _scalar_default(np.dtype(plan.dtypes[name]), [candidate])
                scalar_trials.append((trial, f"{name} = {trial.scalars[name]}"))
    yield from scalar_trials
    for scalar_trial, scalar_text in scalar_trials:
        for knob in knobs:
            for value in DIM_CANDIDATES:
                yield with_dims({knob: value}, scalar_trial), f"{scalar_text}, {text({knob: value})}"
