"""The accuracy guard: when a quantized model misses its accuracy or agreement target, keep its most
sensitive layers in float, one group at a time, until the target holds; the best candidate wins."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from edgecli.core import console
from edgecli.recipes import GuardSpec, QuantizeRecipe
from edgecli.stages.artifact import Artifact
from edgecli.stages.quantize.layers import LayerError, Unit, layer_units, ranked_units


class Quantizer(Protocol):
    def quantize(self, float_nodes: Sequence[str] = ()) -> Artifact: ...

    def layer_errors(self, quantized: Artifact, data: Any) -> list[LayerError]: ...


@dataclass(frozen=True)
class Target:
    """What the recipe asks of the quantized model (None: not asked)."""

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None

    @classmethod
    def of(cls, recipe: QuantizeRecipe) -> Target:
        return cls(recipe.max_accuracy_drop, recipe.min_agreement)

    @property
    def is_set(self) -> bool:
        return self.max_accuracy_drop is not None or self.min_agreement is not None

    def shortfall(self, metrics: dict[str, Any]) -> float:
        """How far the metrics are from the target (0 when met; infinite when the quantized model's
        outputs hold NaN/Inf: such a model never meets a target)."""
        if non_finite_failures(metrics):
            return math.inf
        gaps = [0.0]
        if self.max_accuracy_drop is not None:
            gaps.append(metrics["accuracy_drop"] - self.max_accuracy_drop)
        if self.min_agreement is not None:
            gaps.append(self.min_agreement - metrics["agreement"])
        return max(gaps)

    def met(self, metrics: dict[str, Any]) -> bool:
        return self.shortfall(metrics) <= 1e-12

    def failures(self, metrics: dict[str, Any]) -> list[str]:
        """Why the metrics miss the target; NaN/Inf outputs are a failure with or without a target."""
        missed = non_finite_failures(metrics)
        if self.max_accuracy_drop is not None and not metrics["accuracy_drop"] <= self.max_accuracy_drop + 1e-12:
            missed.append(
                f"accuracy drop {metrics['accuracy_drop']:.4f} > max_accuracy_drop {self.max_accuracy_drop:g}"
            )
        if self.min_agreement is not None and not metrics["agreement"] >= self.min_agreement - 1e-12:
            missed.append(f"agreement {metrics['agreement']:.4f} < min_agreement {self.min_agreement:g}")
        return missed

    def describe(self) -> str:
        parts = []
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop <= {self.max_accuracy_drop:g}")
        if self.min_agreement is not None:
            parts.append(f"agreement >= {self.min_agreement:g}")
        return " and ".join(parts)


def non_finite_failures(metrics: dict[str, Any]) -> list[str]:
    """The evaluation's NaN/Inf findings (metrics 'non_finite_samples' of the quantized model and
    'non_finite_samples_float' of the float one, on 'eval_samples' samples) as failure lines."""
    lines = []
    total = metrics.get("eval_samples", "?")
    if metrics.get("non_finite_samples_float"):
        lines.append(
            f"the float model outputs NaN/Inf on {metrics['non_finite_samples_float']} of {total} samples: "
            "accuracy and agreement cannot be measured"
        )
    if metrics.get("non_finite_samples"):
        lines.append(f"the quantized model outputs NaN/Inf on {metrics['non_finite_samples']} of {total} samples")
    return lines


@dataclass
class GuardResult:
    """The chosen artifact, the layers kept in float for it, and every step tried."""

    artifact: Artifact
    float_nodes: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)


def _step_record(step: int, float_nodes: list[str], metrics: dict[str, Any], target: Target) -> dict[str, Any]:
    keys = ("agreement", "accuracy", "accuracy_drop", "non_finite_samples")
    return {
        "step": step,
        "float_layers": list(float_nodes),
        **{k: metrics[k] for k in keys if k in metrics},
        "meets_target": target.met(metrics),
    }


def search(
    quantizer: Quantizer,
    evaluate: Callable[[Artifact], dict[str, Any]],
    first: Artifact,
    layers: list[LayerError],
    target: Target,
    spec: GuardSpec,
) -> GuardResult:
    """Start from `first` (already evaluated, missing the target) and keep layers or whole op patterns
    (the quantizer's `units`: a decomposed LayerNorm, a softmax, an attention block) in float, for at
    most `spec.max_steps` steps in two phases:

    1. ranked: the units that add the most noise, `spec.group_size` per step, while each step brings
       the candidate closer to the target (at most half the steps when the second phase has units);
    2. from the output back: the last units in float, 1, 2, 4... of them until the target holds,
       then halving between the last miss and the first hit; the unit at that boundary (the culprit)
       is then tried alone.

    Stops at the first candidate that meets the target; the result is the candidate that meets it
    with the fewest float layers, else the one closest to it (ties: fewer float layers)."""
    units_of = getattr(quantizer, "units", None)
    units = units_of(layers) if units_of is not None else layer_units(layers)
    best = GuardResult(first, [], [_step_record(0, [], first.metrics, target)])
    if first.metrics.get("non_finite_samples_float"):
        console.warn(
            "the float model itself outputs NaN/Inf on the evaluation data: no layer kept in float can help; no search"
        )
        return best
    state = _Search(quantizer, evaluate, target, best, target.shortfall(first.metrics))
    ranked = ranked_units(units)
    backward = _top_level(units)
    ranked_steps = spec.max_steps if len(backward) < 2 else max(1, spec.max_steps - spec.max_steps // 2)
    float_nodes: list[str] = []
    gap = state.best_gap
    for _ in range(ranked_steps):
        group = [u for u in ranked if not set(u.nodes) <= set(float_nodes)][: spec.group_size]
        if not group or state.steps_left(spec) == 0:
            break
        float_nodes = list(dict.fromkeys([*float_nodes, *(n for u in group for n in u.nodes)]))
        new_gap = state.try_nodes(float_nodes, "; ".join(u.describe() for u in group))
        if new_gap <= 1e-12 or new_gap >= gap - 1e-12:
            gap = new_gap
            break
        gap = new_gap
    if state.met or len(backward) < 2:
        return state.best
    # from the output back: suffixes of 1, 2, 4... top-level units, then bisection, then the culprit alone
    miss, hit = 0, None
    count = 1
    while state.steps_left(spec) and hit is None:
        count = min(count, len(backward))
        gap = state.try_nodes(_suffix(backward, count), f"the last {count} unit(s) from the output back")
        if gap <= 1e-12:
            hit = count
            break
        miss = count
        if count == len(backward):
            break
        count *= 2
    while hit is not None and hit - miss > 1 and state.steps_left(spec):
        middle = (miss + hit) // 2
        if state.try_nodes(_suffix(backward, middle), f"the last {middle} unit(s) from the output back") <= 1e-12:
            hit = middle
        else:
            miss = middle
    if hit is not None and state.steps_left(spec):
        culprit = backward[-hit]
        if hit > 1:
            state.try_nodes(list(culprit.nodes), f"{culprit.describe()} alone (the boundary of the search)")
    return state.best


@dataclass
class _Search:
    quantizer: Quantizer
    evaluate: Callable[[Artifact], dict[str, Any]]
    target: Target
    best: GuardResult
    best_gap: float
    met: bool = False

    def steps_left(self, spec: GuardSpec) -> int:
        return max(0, spec.max_steps - (len(self.best.steps) - 1))

    def try_nodes(self, float_nodes: list[str], what: str) -> float:
        candidate = self.quantizer.quantize(float_nodes)
        candidate.metrics.update(self.evaluate(candidate))
        step = len(self.best.steps)
        record = _step_record(step, float_nodes, candidate.metrics, self.target)
        record["tried"] = what
        self.best.steps.append(record)
        gap = self.target.shortfall(candidate.metrics)
        console.info(
            f"accuracy guard step {step}: {len(float_nodes)} layer(s) in float ({what}): "
            + ", ".join(f"{k} {record[k]:.4f}" for k in ("agreement", "accuracy_drop") if k in record)
        )
        meets = gap <= 1e-12
        if self.met:  # only a candidate that meets the target with fewer float layers replaces the best
            better = meets and len(float_nodes) < len(self.best.float_nodes)
        else:
            better = (
                meets
                or gap < self.best_gap - 1e-12
                or (gap <= self.best_gap + 1e-12 and len(float_nodes) < len(self.best.float_nodes))
            )
        if better:
            self.best.artifact, self.best.float_nodes, self.best_gap = candidate, list(float_nodes), gap
        self.met = self.met or meets
        return gap


def _top_level(units: list[Unit]) -> list[Unit]:
    """The units no other unit contains (whole patterns, and layers outside any), in graph order."""
    patterns = sorted((u for u in units if u.kind != "layer"), key=lambda u: -len(u.nodes))
    outer: list[Unit] = []
    covered: set[str] = set()
    for unit in patterns:
        if not set(unit.nodes) & covered:
            outer.append(unit)
            covered |= set(unit.nodes)
    outer += [u for u in units if u.kind == "layer" and u.nodes[0] not in covered]
    return sorted(outer, key=lambda u: u.position)


def _suffix(units: list[Unit], count: int) -> list[str]:
    return [n for u in units[len(units) - count :] for n in u.nodes]
