"""Numbers that compare models: accuracy, top-1 agreement, output differences.

Non-finite outputs never look fine: a sample whose output holds NaN or Inf is a wrong prediction
(accuracy) and a disagreement (agreement), and the differences and cosine of outputs holding NaN/Inf
are NaN, which every threshold comparison fails."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgecli.runtimes.base import NCHW_TO_NHWC

if TYPE_CHECKING:
    from edgecli.data.dataset import Dataset
    from edgecli.runtimes.base import Runner


def is_classifier_output(output: np.ndarray) -> bool:
    """A [N, classes] output with 2 or more classes."""
    return output.ndim == 2 and output.shape[1] >= 2


def finite_rows(output: np.ndarray) -> np.ndarray:
    """Per sample: whether all of its output values are finite (integer outputs always are)."""
    if not np.issubdtype(output.dtype, np.floating):
        return np.ones(len(output), dtype=bool)
    return np.isfinite(output.reshape(len(output), -1)).all(axis=1)


def non_finite_samples(output: np.ndarray) -> int:
    """How many samples' outputs hold NaN or Inf."""
    return int(len(output) - np.count_nonzero(finite_rows(output))) if output.ndim else int(not np.isfinite(output))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy; a sample whose output holds NaN/Inf counts as wrong."""
    return float(np.mean((np.argmax(logits, axis=1) == labels) & finite_rows(logits)))


def agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of samples whose top-1 class is the same in both outputs (a sample whose output holds
    NaN/Inf in either model counts as a disagreement)."""
    same = np.argmax(reference, axis=1) == np.argmax(candidate, axis=1)
    return float(np.mean(same & finite_rows(reference) & finite_rows(candidate)))


def output_classes(runner: Runner, data: Dataset) -> tuple[int | None, str]:
    """The number of classes of the model's first output, and that output described: its last
    dimension when the output is [N, classes >= 2]; None when it is not a classifier output
    (embeddings, feature maps, one score). From the model's signature when it is static there, else
    from the output on the first sample of `data`."""
    spec = runner.outputs[0] if runner.outputs else None
    if spec is not None and len(spec.shape) == 2 and spec.shape[1] is not None:
        return (spec.shape[1] if spec.shape[1] >= 2 else None), spec.describe()
    if spec is not None and len(spec.shape) not in (0, 2):
        return None, spec.describe()
    output = runner.run_feeds(runner.feeds(data.batch(0, 1)))[0]
    name = spec.name if spec is not None else "0"
    described = f"{name} {output.dtype}[?,{','.join(map(str, output.shape[1:]))}]"
    return (output.shape[1] if is_classifier_output(output) else None), described


def check_labels(runner: Runner, data: Dataset | None) -> str | None:
    """Refuse labels the model's classes cannot hold (DataError, before any work). Returns a warning
    when the data has labels but the model is not a classifier (no accuracy can be measured: the
    caller drops them), else None."""
    if data is None or data.labels is None:
        return None
    classes, described = output_classes(runner, data)
    if classes is None:
        return (
            f"labels 'y' of {data.source} are not used: the model's output {described} is not "
            "[N, classes], so there is no accuracy"
        )
    data.check_labels(classes)
    return None


def align(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """The candidate in the reference's layout (an NHWC output compared with an NCHW one)."""
    if candidate.shape == reference.shape:
        return candidate
    if candidate.ndim == 4 and candidate.transpose(0, 3, 1, 2).shape == reference.shape:
        return candidate.transpose(0, 3, 1, 2)
    if reference.ndim == 4 and candidate.transpose(NCHW_TO_NHWC).shape == reference.shape:
        return candidate.transpose(NCHW_TO_NHWC)
    if candidate.size == reference.size:
        return candidate.reshape(reference.shape)
    raise ValueError(f"output shapes differ: {list(reference.shape)} vs {list(candidate.shape)}")


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """max/mean abs diff, relative error ||candidate - reference|| / ||reference|| and, for classifier
    outputs, top-1 agreement."""
    candidate = align(reference, candidate).astype(np.float64)
    reference = reference.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # Inf - Inf: NaN, on purpose
        return _compare(reference, candidate)


def _compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    diff = np.abs(reference - candidate)
    scale = float(np.linalg.norm(reference))
    if not (np.isfinite(scale) and np.all(np.isfinite(candidate))):
        relative = float("nan")  # NaN/Inf on either side: not measurable, never "0"
    else:
        relative = float(np.linalg.norm(reference - candidate)) / scale if scale > 0 else float(diff.max() > 0)
    result = {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "relative_error": relative,
    }
    if is_classifier_output(reference):
        result["agreement"] = agreement(reference, candidate)
    return result


def mean_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine similarity of each sample's flattened outputs, averaged over samples (embeddings,
    logits, any output). Two all-zero samples count as identical (1), one all-zero sample as 0; a
    sample holding NaN/Inf on either side makes the mean NaN."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = align(reference, candidate).reshape(len(reference), -1).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # NaN/Inf samples: NaN, on purpose
        return float(sample_cosines(ref, cand).mean())


def sample_cosines(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Per sample (rows of two [N, D] arrays): the cosine of the two rows, clipped to [-1, 1]; 1 for two
    all-zero rows, 0 for one; NaN where either row holds NaN/Inf. Call under np.errstate (NaN on purpose)."""
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(cand, axis=1) == 0)
    dots = np.einsum("ij,ij->i", ref, cand)
    cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    finite = np.isfinite(ref).all(axis=1) & np.isfinite(cand).all(axis=1)
    cosines = np.where(finite, cosines, np.nan)
    return np.clip(cosines, -1.0, 1.0)
