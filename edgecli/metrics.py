"""Numbers that compare models: accuracy, top-1 agreement, output differences."""

from __future__ import annotations

import numpy as np

from edgecli.runtimes.base import NCHW_TO_NHWC


def is_classifier_output(output: np.ndarray) -> bool:
    """A [N, classes] output with 2 or more classes."""
    return output.ndim == 2 and output.shape[1] >= 2


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of samples whose top-1 class is the same in both outputs."""
    return float(np.mean(np.argmax(reference, axis=1) == np.argmax(candidate, axis=1)))


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
    diff = np.abs(reference - candidate)
    scale = float(np.linalg.norm(reference))
    result = {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "relative_error": float(np.linalg.norm(reference - candidate)) / scale if scale > 0 else float(diff.max() > 0),
    }
    if is_classifier_output(reference):
        result["agreement"] = agreement(reference, candidate)
    return result


def mean_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine similarity of each sample's flattened outputs, averaged over samples (embeddings,
    logits, any output). Two all-zero samples count as identical (1), one all-zero sample as 0."""
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = align(reference, candidate).reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(cand, axis=1) == 0)
    dots = np.einsum("ij,ij->i", ref, cand)
    cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    return float(np.clip(cosines, -1.0, 1.0).mean())
