"""Where a converted ONNX model parts ways with its ONNX parent: the first intermediate tensor, in the
parent's topological order, that both models compute and that differs above the tolerance.

Both models are run with onnxruntime, every shared tensor exposed as an extra graph output, on the few
samples where the diverging output differs most.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecli.data.dataset import Dataset
from edgecli.formats import onnx_file
from edgecli.formats.detect import Format
from edgecli.runtimes.base import Runner
from edgecli.runtimes.onnx_runner import unoptimized_session

LOCATE_SAMPLES = 4
TENSORS_PER_RUN = 128  # bounds the memory of exposed activations; runs stop at the first divergence


@dataclass(frozen=True)
class Divergence:
    """The first tensor both models compute differently."""

    tensor: str
    op_type: str
    node: str
    max_abs_diff: float

    def describe(self) -> str:
        return f"first divergent tensor: '{self.tensor}' ({self.op_type} node '{self.node}'), max abs diff {self.max_abs_diff:.3g}"


def shared_tensors(parent: Any, child: Any) -> list[tuple[str, Any]]:
    """(tensor, parent node producing it) for every node output of the parent's main graph that the
    child's main graph also produces, in the parent's (topological) node order."""
    produced = {name for node in child.graph.node for name in node.output}
    return [(name, node) for node in parent.graph.node for name in node.output if name and name in produced]


def with_outputs(proto: Any, names: list[str]) -> bytes:
    """The model serialized with `names` added as graph outputs (onnxruntime infers their types)."""
    import onnx

    copy = onnx.ModelProto.FromString(proto.SerializeToString())
    existing = {value.name for value in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in existing)
    return copy.SerializeToString()


def _run(proto: Any, names: list[str], feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The tensors `names`, concatenated over the feeds, from one unoptimised onnxruntime session
    (graph optimisations would fuse away the very tensors asked for)."""
    session = unoptimized_session(with_outputs(proto, names))
    runs = [session.run(names, feed) for feed in feeds]
    return {name: np.concatenate([run[i] for run in runs]) for i, name in enumerate(names)}


def _feeds(runner: Runner, sample: Dataset) -> list[dict[str, np.ndarray]]:
    """The sample as feeds for the runner: one batch, or one feed per sample for a fixed batch."""
    if runner.dynamic_batch:
        return [runner.feeds(sample.batch(0, len(sample)))]
    return [runner.feeds(sample.batch(i, i + 1)) for i in range(len(sample))]


def differs(reference: np.ndarray, candidate: np.ndarray, atol: float) -> float | None:
    """The max abs diff when it exceeds atol scaled to the tensor's magnitude (activations can be far
    larger than outputs), else None. Tensors of different shape or kind are not comparable: None.
    NaN in both at the same place, or the same Inf, is equal; NaN or Inf on one side only is an
    infinite difference."""
    if reference.shape != candidate.shape or not np.issubdtype(reference.dtype, np.number):
        return None
    if not reference.size:
        return None
    reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
    with np.errstate(invalid="ignore"):
        gap = np.abs(reference - candidate)
    same = (np.isnan(reference) & np.isnan(candidate)) | (np.isinf(reference) & (reference == candidate))
    gap = np.where(same, 0.0, np.where(np.isnan(gap), np.inf, gap))
    diff = float(gap.max())
    finite = np.abs(reference[np.isfinite(reference)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    return diff if not diff <= atol * scale else None


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def worst_samples(reference: np.ndarray, candidate: np.ndarray, count: int = LOCATE_SAMPLES) -> list[int]:
    """Indices of the samples where a diverging output differs most (the first ones if the shapes differ)."""
    if reference.shape != candidate.shape or reference.ndim == 0:
        return list(range(min(count, len(reference))))
    with np.errstate(invalid="ignore"):
        gap = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    per_sample = np.nan_to_num(gap, nan=np.inf).reshape(len(reference), -1).max(1)
    return sorted(int(i) for i in np.argsort(-per_sample, kind="stable")[:count])


def _subset(data: Dataset, indices: list[int]) -> Dataset:
    labels = None if data.labels is None else data.labels[indices]
    return Dataset({name: array[indices] for name, array in data.inputs.items()}, labels, data.source)


def first_divergence(parent: Runner, child: Runner, sample: Dataset, atol: float) -> Divergence | None:
    """The first tensor, in the parent's order, that parent and child (both ONNX) compute differently on
    `sample`; None when the models are not both ONNX or no shared tensor differs."""
    if parent.model.format is not Format.ONNX or child.model.format is not Format.ONNX:
        return None
    parent_proto = onnx_file.load(parent.model.path, check=False)
    child_proto = onnx_file.load(child.model.path, check=False)
    parent_feeds, child_feeds = _feeds(parent, sample), _feeds(child, sample)
    for chunk in _chunks(shared_tensors(parent_proto, child_proto), TENSORS_PER_RUN):
        names = [name for name, _ in chunk]
        expected, actual = _run(parent_proto, names, parent_feeds), _run(child_proto, names, child_feeds)
        for name, node in chunk:
            diff = differs(expected[name], actual[name], atol)
            if diff is not None:
                return Divergence(name, node.op_type, node.name, diff)
    return None


def first_non_finite(runner: Runner, sample: Dataset) -> Divergence | None:
    """The first tensor, in the (ONNX) model's order, that holds NaN or Inf on `sample`; None when
    the model is not ONNX or no node output does."""
    if runner.model.format is not Format.ONNX:
        return None
    proto = onnx_file.load(runner.model.path, check=False)
    feeds = _feeds(runner, sample)
    produced = [(name, node) for node in proto.graph.node for name in node.output if name]
    for chunk in _chunks(produced, TENSORS_PER_RUN):
        values = _run(proto, [name for name, _ in chunk], feeds)
        for name, node in chunk:
            value = values[name]
            if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                return Divergence(name, node.op_type, node.name, float("nan"))
    return None


def locate_non_finite(runner: Runner, sample: Dataset, output: np.ndarray) -> str:
    """'; first non-finite tensor: ...' for a parity error message, or ''. Never raises."""
    try:
        rows = np.flatnonzero(~np.isfinite(output.reshape(len(output), -1)).all(axis=1))[:LOCATE_SAMPLES]
        found = first_non_finite(runner, _subset(sample, [int(i) for i in rows]))
    except Exception:
        return ""
    if found is None:
        return ""
    return f"; first non-finite tensor: '{found.tensor}' ({found.op_type} node '{found.node}')"


def locate(
    parent: Runner, child: Runner, sample: Dataset, reference: np.ndarray, candidate: np.ndarray, atol: float
) -> str:
    """'; first divergent tensor: ...' for a parity error message, or '' when it cannot be found.
    Never raises: locating is a help for the error, not a reason for another one."""
    try:
        found = first_divergence(parent, child, _subset(sample, worst_samples(reference, candidate)), atol)
    except Exception:  # a model onnxruntime cannot run with extra outputs, an unreadable file, ...
        return ""
    return f"; {found.describe()}" if found else ""
