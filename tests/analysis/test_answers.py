"""Answer checks: each output's kind decided from the reference outputs, and the measure that fits it."""

from __future__ import annotations

import numpy as np
import pytest

from edgecli.analysis.answers import check_answers, measure_output, output_kind
from edgecli.recipes.base import AnswersSpec

RNG = np.random.default_rng(0)
BARS = AnswersSpec()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (RNG.normal(size=(64, 10)).astype(np.float32), "classes"),  # logits
        (_softmax(RNG.normal(size=(64, 10))).astype(np.float32), "classes"),
        (_softmax(4 * RNG.normal(size=(64, 360))).astype(np.float32), "many-classes"),
        (1 / (1 + np.exp(-RNG.normal(size=(64, 360)))), "many-classes"),  # sigmoid bins (pitch)
        (_unit(RNG.normal(size=(64, 256))), "embedding"),
        (_unit(np.abs(RNG.normal(size=(64, 256)))), "embedding"),  # ReLU then L2: values in [0, 1], still an embedding
        (RNG.normal(size=(64, 384)), "embedding"),  # many unpeaked values: not class scores
        (np.where(np.arange(1000) == 7, 12.0, 0.0) + RNG.normal(size=(64, 1000)), "many-classes"),  # peaked logits
        (RNG.uniform(size=(64, 1)), "decision"),
        (RNG.normal(size=(64,)) * 30, "regression"),
        (RNG.uniform(size=(8, 1, 16, 16)), "map"),
        (RNG.integers(0, 5, size=(64, 3)), "integer"),
    ],
)
def test_kind_from_the_reference_values(values, kind):
    assert output_kind(np.asarray(values)) == kind


def test_classes_judged_by_top1_agreement():
    ref = RNG.normal(size=(100, 10))
    cand = ref.copy()
    cand[:20] = RNG.normal(size=(20, 10))  # 20 samples answered anew
    (record,) = measure_output("logits", ref, cand, BARS)
    expected = np.mean(ref.argmax(1) == cand.argmax(1))
    assert record.measure == "top-1 agreement" and record.value == pytest.approx(expected) and 0.8 <= expected < 0.9
    assert not record.passed and record.bar == 0.9


def test_many_classes_pass_when_top1_moves_to_a_neighbouring_bin():
    """A 360-bin output whose top-1 moved one bin on 10% of samples: near agreement 1.0 passes;
    top-1 (0.9) is reported."""
    ref = np.zeros((100, 360))
    bins = RNG.integers(1, 359, size=100)
    ref[np.arange(100), bins] = 1.0
    cand = np.zeros_like(ref)
    moved = bins + (np.arange(100) < 10)
    cand[np.arange(100), moved] = 1.0
    records = {r.measure: r for r in measure_output("pitch", ref + 0.01, cand + 0.01, BARS)}
    assert records["top-1 agreement"].value == pytest.approx(0.9) and records["top-1 agreement"].bar is None
    assert records["within one bin"].value == 1.0 and records["near agreement"].value == 1.0
    assert records["near agreement"].passed
    far = np.zeros_like(ref)
    far[np.arange(100), (bins + 180) % 360] = 1.0  # answers elsewhere: collapse
    near = {r.measure: r for r in measure_output("pitch", ref + 0.01, far + 0.01, BARS)}["near agreement"]
    assert near.value < 0.1 and not near.passed


def test_embeddings_judged_by_cosine_and_collapse_is_named():
    ref = _unit(RNG.normal(size=(50, 32)))
    noisy = ref + 0.02 * RNG.normal(size=ref.shape)  # relative noise 0.11: cosine 0.994
    answers = check_answers([ref], [noisy], ["embedding"], BARS, "eval.npz")
    assert not answers.collapsed and answers.records[0].value > 0.98
    collapsed = check_answers([ref], [_unit(RNG.normal(size=ref.shape))], ["embedding"], BARS, "eval.npz")
    assert collapsed.collapsed
    line = collapsed.failure_line()
    assert line.startswith("answers collapsed on 50 samples of eval.npz: output 'embedding' (embedding): cosine ")
    assert "< answers.min_cosine 0.95" in line and "--set answers.min_cosine=" in collapsed.hint()


def test_every_output_of_a_multi_output_model_is_measured():
    """The second output collapsing fails the check although the first keeps its answers."""
    logits, mask = RNG.normal(size=(20, 10)), RNG.uniform(size=(20, 1, 8, 8))
    answers = check_answers([logits, mask], [logits, 1 - mask], ["logits", "mask"], BARS, "d")
    failed = [(r.output, r.measure) for r in answers.failed()]
    assert ("mask", "IoU") in failed and all(o == "mask" for o, _ in failed)


def test_non_finite_candidates_never_pass():
    ref = _unit(RNG.normal(size=(10, 8)))
    cand = ref.copy()
    cand[0, 0] = np.nan
    (cosine, error) = measure_output("e", ref, cand, BARS)
    assert cosine.value == pytest.approx(0.9) and error.value == np.inf


def test_integer_outputs_exact_match_and_regression_relative_error():
    ids = RNG.integers(0, 9, size=(40, 4))
    changed = ids.copy()
    changed[:8, 0] += 1
    (record,) = measure_output("ids", ids, changed, BARS)
    assert record.measure == "exact match" and record.value == pytest.approx(0.8) and not record.passed
    value = RNG.normal(size=(40,)) * 10
    (error,) = measure_output("age", value, value * 1.02, BARS)
    assert error.measure == "relative error" and error.value == pytest.approx(0.02) and error.passed
