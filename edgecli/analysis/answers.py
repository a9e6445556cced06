"""Answer checks: does a transformed model still give its parent's answers, measured the way each
output is read?

Each output's kind is decided from the parent's (reference) outputs:

- integer outputs (class ids, token ids): exact-match rate;
- [N, C] class scores (logits, softmax or sigmoid probabilities) with C < MANY_CLASSES: top-1 agreement;
- [N, C] class scores with C >= MANY_CLASSES (a 360-bin pitch model, ImageNet): "near" agreement, the
  candidate's top-1 within one bin of the reference's or the reference's top-1 among the candidate's
  top 5; top-1 agreement, within one bin and top-5 containment are reported. Top-1 alone is not
  judged: rounding flips neighbouring bins without changing the answer (measured: an honest INT8 of a
  small 1-D conv pitch model keeps 0.898 top-1 and 1.000 within one bin);
- [N, D] embeddings (L2-normalised rows, or many unpeaked values: not class scores): mean per-sample
  cosine (relative error reported);
- one value per sample: a probability in [0, 1] is a yes/no decision (agreement at 0.5); any other
  value a regression, held to relative error;
- dense maps (ndim >= 3): mean per-sample cosine and, when the values are probabilities (masks,
  heat maps), IoU of the maps thresholded at 0.5.

NaN or Inf in the candidate never passes: the sample counts as a disagreement, a cosine of 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgecli.analysis.metrics import agreement, align, finite_rows, sample_cosines

if TYPE_CHECKING:
    from edgecli.data.dataset import Dataset
    from edgecli.runtimes.base import Runner

MANY_CLASSES = 100  # [N, C] outputs with this many classes or more: top-1 alone is too strict a measure
TOP_K = 5
PEAKED_Z = 5.0  # a row's top score this many standard deviations above its mean: class scores, not an embedding


class Bars(Protocol):
    """The bars an answer check holds outputs to (recipes.AnswersSpec)."""

    min_agreement: float
    min_within_one: float
    min_cosine: float
    min_iou: float
    max_relative_error: float


@dataclass(frozen=True)
class AnswerRecord:
    """One measure of one output: its value and the bar it is held to (None: reported, not judged)."""

    output: str
    kind: str
    measure: str
    value: float
    bar: float | None = None
    field: str | None = None  # the recipe field of the bar, e.g. 'min_cosine'
    lower_is_better: bool = False

    @property
    def passed(self) -> bool:
        if self.bar is None:
            return True
        return bool(self.value <= self.bar) if self.lower_is_better else bool(self.value >= self.bar - 1e-12)

    def describe(self) -> str:
        if self.bar is None:
            return f"output '{self.output}' ({self.kind}): {self.measure} {self.value:.4f}"
        sign = (">" if self.lower_is_better else "<") if not self.passed else ("<=" if self.lower_is_better else ">=")
        return (
            f"output '{self.output}' ({self.kind}): {self.measure} {self.value:.4f} {sign} "
            f"answers.{self.field} {self.bar:g}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "kind": self.kind,
            "measure": self.measure,
            "value": self.value,
            "bar": self.bar,
            "passed": self.passed,
        }


@dataclass
class Answers:
    """Every output's measures, on `samples` samples of `source` (synthesised: random inputs)."""

    records: list[AnswerRecord] = field(default_factory=list)
    samples: int = 0
    source: str = ""
    synthetic: bool = False

    @property
    def collapsed(self) -> bool:
        return any(not r.passed for r in self.records)

    def failed(self) -> list[AnswerRecord]:
        return [r for r in self.records if not r.passed]

    def failure_line(self, hint_flag: str = "--set") -> str | None:
        """One line naming each output, measure, value and bar that failed, or None."""
        failed = self.failed()
        if not failed:
            return None
        on = f"{self.samples} {'synthesised inputs' if self.synthetic else 'samples of ' + self.source}"
        return f"answers collapsed on {on}: " + "; ".join(r.describe() for r in failed)

    def hint(self) -> str:
        failed = self.failed()
        fields = sorted({r.field for r in failed if r.field})
        lowered = " ".join(
            f"--set answers.{f}={_lowered(r.value, r.lower_is_better)}" for f, r in _first(failed, fields)
        )
        return f"if these answers are acceptable, lower the bar: {lowered}"

    def metrics(self) -> dict[str, Any]:
        """Flat figures for the artifact's metrics (and lineage): answers_<output>_<measure>."""
        out: dict[str, Any] = {
            "answers_samples": self.samples,
            "answers_data": "synthesised" if self.synthetic else self.source,
        }
        for r in self.records:
            out[f"answers_{r.output}_{r.measure.replace(' ', '_').replace('-', '_')}"] = round(r.value, 6)
        return out

    def summary(self) -> str:
        shown = [f"{r.output} {r.measure} {r.value:.4f}" for r in self.records if r.bar is not None]
        return ", ".join(shown)


def _first(records: list[AnswerRecord], fields: list[str]) -> list[tuple[str, AnswerRecord]]:
    return [(f, next(r for r in records if r.field == f)) for f in fields]


def _lowered(value: float, lower_is_better: bool) -> str:
    if not np.isfinite(value):
        return "..."
    return f"{value * 1.1:.2g}" if lower_is_better else f"{max(0.0, np.floor(value * 100) / 100 - 0.01):.2f}"


# ---------------------------------------------------------------- kinds


def output_kind(reference: np.ndarray) -> str:
    """What one output is, from the reference model's values on the check data: 'integer', 'classes',
    'many-classes', 'embedding', 'decision', 'regression' or 'map'."""
    if not np.issubdtype(reference.dtype, np.floating):
        return "integer"
    if reference.ndim <= 1 or reference[0].size == 1:
        return "decision" if _probabilities(reference) else "regression"
    if reference.ndim == 2:
        many = reference.shape[1] >= MANY_CLASSES
        if _probabilities(reference) and _rows_sum_to_one(reference):  # softmax
            return "many-classes" if many else "classes"
        if _unit_rows(reference):  # L2-normalised (also after a ReLU: values in [0, 1])
            return "embedding"
        if _probabilities(reference):  # sigmoid scores
            return "many-classes" if many else "classes"
        if reference.shape[1] < MANY_CLASSES:
            return "classes"
        return "many-classes" if _peaked(reference) else "embedding"
    return "map"


def _probabilities(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    return bool(finite.size) and float(finite.min()) >= 0.0 and float(finite.max()) <= 1.0


def _rows_sum_to_one(values: np.ndarray) -> bool:
    sums = values[finite_rows(values)].astype(np.float64).sum(axis=1)
    return bool(sums.size) and bool(np.all(np.abs(sums - 1.0) < 1e-3))


def _unit_rows(values: np.ndarray) -> bool:
    norms = np.linalg.norm(values[finite_rows(values)].astype(np.float64), axis=1)
    return bool(norms.size) and bool(np.all(np.abs(norms - 1.0) < 1e-2))


def _peaked(values: np.ndarray) -> bool:
    rows = values[finite_rows(values)].astype(np.float64)
    if not len(rows):
        return False
    std = rows.std(axis=1)
    z = (rows.max(axis=1) - rows.mean(axis=1)) / np.where(std > 0, std, 1.0)
    return bool(np.median(z) >= PEAKED_Z)


# ---------------------------------------------------------------- measures


def near_agreement(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float, float]:
    """(near, within one bin, top-5 containment): per sample, whether the candidate's top-1 is within
    one bin of the reference's, whether the reference's top-1 is among the candidate's top 5, and
    whether either holds."""
    finite = finite_rows(ref) & finite_rows(cand)
    top_ref, top_cand = np.argmax(ref, axis=1), np.argmax(cand, axis=1)
    within = (np.abs(top_ref - top_cand) <= 1) & finite
    k = min(TOP_K, ref.shape[1])
    top_k = np.argpartition(-np.nan_to_num(cand, nan=-np.inf), k - 1, axis=1)[:, :k]
    contained = (top_k == top_ref[:, None]).any(axis=1) & finite
    return float(np.mean(within | contained)), float(np.mean(within)), float(np.mean(contained))


def sample_cosine(ref: np.ndarray, cand: np.ndarray) -> float:
    """Mean per-sample cosine of the flattened outputs; a sample with NaN/Inf counts 0; two all-zero
    samples 1, one all-zero sample 0."""
    r = ref.reshape(len(ref), -1).astype(np.float64)
    c = cand.reshape(len(cand), -1).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # NaN/Inf samples: NaN, then 0
        return float(np.nan_to_num(sample_cosines(r, c), nan=0.0).mean())


def relative_error(ref: np.ndarray, cand: np.ndarray) -> float:
    """||cand - ref|| / ||ref|| over all samples (inf when the candidate holds NaN/Inf)."""
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    if not np.isfinite(c).all():
        return float("inf")
    scale = float(np.linalg.norm(r))
    diff = float(np.linalg.norm(r - c))
    return diff / scale if scale > 0 else float(diff > 0)


def thresholded_iou(ref: np.ndarray, cand: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of the two maps thresholded at `threshold`, over all samples (1 when both are empty)."""
    a = ref > threshold
    b = np.nan_to_num(cand.astype(np.float64), nan=-np.inf) > threshold
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def exact_match(ref: np.ndarray, cand: np.ndarray) -> float:
    r, c = ref.reshape(len(ref), -1), cand.reshape(len(cand), -1)
    return float(np.mean((r == c).all(axis=1)))


def measure_output(name: str, ref: np.ndarray, cand: np.ndarray, bars: Bars) -> list[AnswerRecord]:
    """The records of one output: every measure of its kind, each with its bar."""
    cand = align(ref, cand)
    kind = output_kind(ref)
    if ref.ndim == 0:
        ref, cand = ref.reshape(1), cand.reshape(1)
    rec = _Recorder(name, kind)
    if kind == "integer":
        rec.add("exact match", exact_match(ref, cand), bars.min_agreement, "min_agreement")
    elif kind == "classes":
        rec.add("top-1 agreement", agreement(ref, cand), bars.min_agreement, "min_agreement")
    elif kind == "many-classes":
        near, within, top5 = near_agreement(ref, cand)
        rec.add("near agreement", near, bars.min_within_one, "min_within_one")
        rec.add("top-1 agreement", agreement(ref, cand))  # reported: rounding flips neighbouring bins
        rec.add("within one bin", within)
        rec.add("top-5 containment", top5)
    elif kind == "decision":
        flat_r, flat_c = ref.reshape(len(ref)), cand.reshape(len(cand)).astype(np.float64)
        same = (flat_r > 0.5) == (np.nan_to_num(flat_c, nan=-1.0) > 0.5)
        rec.add("decision agreement", float(np.mean(same & np.isfinite(flat_c))), bars.min_agreement, "min_agreement")
    elif kind == "regression":
        rec.add("relative error", relative_error(ref, cand), bars.max_relative_error, "max_relative_error", True)
    else:  # embedding, map
        rec.add("cosine", sample_cosine(ref, cand), bars.min_cosine, "min_cosine")
        rec.add("relative error", relative_error(ref, cand))
        if kind == "map" and _probabilities(ref):
            rec.add("IoU", thresholded_iou(ref, cand), bars.min_iou, "min_iou")
    return rec.records


@dataclass
class _Recorder:
    output: str
    kind: str
    records: list[AnswerRecord] = field(default_factory=list)

    def add(
        self, measure: str, value: float, bar: float | None = None, key: str | None = None, lower: bool = False
    ) -> None:
        self.records.append(AnswerRecord(self.output, self.kind, measure, value, bar, key, lower))


def check_answers(
    references: list[np.ndarray],
    candidates: list[np.ndarray],
    names: list[str],
    bars: Bars,
    source: str,
    synthetic: bool = False,
) -> Answers:
    """Measure every output of the candidate against the reference's; ValueError when the outputs do
    not correspond (count or shape)."""
    if len(references) != len(candidates):
        raise ValueError(f"the parent has {len(references)} outputs, the new model {len(candidates)}")
    answers = Answers(samples=len(references[0]) if references and references[0].ndim else 1, source=source)
    answers.synthetic = synthetic
    for index, (ref, cand) in enumerate(zip(references, candidates)):
        name = names[index] if index < len(names) else str(index)
        answers.records.extend(measure_output(name, ref, cand, bars))
    return answers


def answers_of(parent: Runner, child: Runner, data: Dataset | None, bars: Bars, samples: int, what: str) -> Answers:
    """Run parent and child on the first `samples` of `data` (synthesised inputs from the parent's
    signature when None, with a warning) and measure every output."""
    from edgecli.core import console
    from edgecli.data.dataset import synthetic_dataset

    synthetic = data is None
    if data is None:
        data = synthetic_dataset(parent.inputs, count=min(samples, 32))
        console.warn(f"{what}: no data given: answers are checked on synthesised inputs, not real ones")
    sample = data.take(samples)
    expected = parent.predict(sample, description=f"{what}: answers (parent)" if len(sample) > 512 else None)
    actual = child.predict(sample, description=f"{what}: answers (new model)" if len(sample) > 512 else None)
    names = [spec.name for spec in parent.outputs]
    return check_answers(expected, actual, names, bars, data.name, synthetic)
