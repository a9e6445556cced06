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
from edgecli.stages.quantize.layers import LayerError, most_sensitive


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
    """Start from `first` (already evaluated, missing the target) and move the most sensitive layers
    to float, `spec.group_size` per step, for at most `spec.max_steps` steps. Stops at the first
    candidate that meets the target (the one with the fewest float layers); otherwise returns the
    candidate closest to it (ties: fewer float layers)."""
    order = [layer.node for layer in most_sensitive(layers)]
    best = GuardResult(first, [], [_step_record(0, [], first.metrics, target)])
    if first.metrics.get("non_finite_samples_float"):
        console.warn(
            "the float model itself outputs NaN/Inf on the evaluation data: no layer kept in float can help; no search"
        )
        return best
    best_gap = target.shortfall(first.metrics)
    float_nodes: list[str] = []
    for step in range(1, spec.max_steps + 1):
        group = order[(step - 1) * spec.group_size : step * spec.group_size]
        if not group:
            break
        float_nodes = [*float_nodes, *group]
        candidate = quantizer.quantize(float_nodes)
        candidate.metrics.update(evaluate(candidate))
        record = _step_record(step, float_nodes, candidate.metrics, target)
        best.steps.append(record)
        gap = target.shortfall(candidate.metrics)
        console.info(
            f"accuracy guard step {step}: {len(float_nodes)} layer(s) in float ({', '.join(group)}): "
            + ", ".join(f"{k} {record[k]:.4f}" for k in ("agreement", "accuracy_drop") if k in record)
        )
        if gap < best_gap - 1e-12:
            best.artifact, best.float_nodes, best_gap = candidate, float_nodes, gap
        if gap <= 1e-12:
            break
    return best
