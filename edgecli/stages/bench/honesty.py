"""bench, honesty: warnings for figures that do not say what a reader would assume.

- a p50 that moved during the run by more than the recipe's `max_spread` (see analysis/latency.py);
- a model whose lineage says it was compressed (quantize, prune or distill steps its reference does
  not have) but that is not faster than the reference: "faster" means a p50 per sample below 95% of
  the reference's (speedup > 1/0.95 = 1.053), the rule quantize's own speed check uses; the likely
  reasons are named;
- two models (a model and the reference) whose p50 differ by less than their run-to-run spread.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from edgecli.analysis.latency import NOT_FASTER, slow_quantization_reasons
from edgecli.formats.model_file import ModelFile
from edgecli.stages.bench.stats import reference_point

COMPRESSION_VERBS = ("quantize", "prune", "distill")
NOT_FASTER_SPEEDUP = 1 / NOT_FASTER  # a speedup at or below 1.053 is "not faster"


def _steps(model: ModelFile) -> list[dict[str, Any]]:
    return list((model.lineage or {}).get("steps", []))


def _step_key(step: dict[str, Any]) -> tuple[str, str]:
    return step.get("verb", ""), (step.get("parent") or {}).get("sha256", "")


def compression_steps(model: ModelFile, reference: ModelFile) -> list[dict[str, Any]]:
    """The model's quantize/prune/distill lineage steps that the reference's lineage does not hold
    (a step is known by its verb and its parent's hash)."""
    shared = {_step_key(step) for step in _steps(reference)}
    return [s for s in _steps(model) if s.get("verb") in COMPRESSION_VERBS and _step_key(s) not in shared]


def _name(row: dict[str, Any]) -> str:
    return Path(row["path"]).name


def _where(point: dict[str, Any], sweep: bool) -> str:
    return (
        f" ({point['threads']} thread{'s' if point['threads'] > 1 else ''}, batch {point['batch_size']})"
        if sweep
        else ""
    )


def spread_warnings(rows: list[dict[str, Any]], max_spread: float) -> list[str]:
    """One line per model and point whose p50 moved during the run by more than `max_spread`."""
    sweep = any(len(row["latency"]) > 1 for row in rows)
    lines = []
    for row in rows:
        for point in row["latency"]:
            if point["p50_spread"] > max_spread:
                lines.append(
                    f"p50 of {_name(row)}{_where(point, sweep)} varied by {point['p50_spread']:.0%} across the run: "
                    "differences under that are noise; close other programs or raise min_time_s"
                )
    return lines


def within_noise_warning(row: dict[str, Any], reference: dict[str, Any]) -> str | None:
    """A line when the model's headline p50 and the reference's differ by less than their spread."""
    mine = row["latency"][0]
    theirs = reference_point(reference["latency"], mine)
    if mine["batch_size"] != theirs["batch_size"] or theirs["p50_ms"] <= 0:
        return None
    difference = abs(mine["p50_ms"] - theirs["p50_ms"]) / theirs["p50_ms"]
    noise = max(mine["p50_spread"], theirs["p50_spread"])
    if difference >= noise:
        return None
    return (
        f"p50 of {_name(row)} and {_name(reference)} differ by {difference:.1%}, less than their run-to-run spread "
        f"({noise:.1%}): difference within noise"
    )


def _quantize_reasons(step: dict[str, Any], model: ModelFile, reference_p50_ms: float) -> list[str]:
    from pydantic import ValidationError

    from edgecli.analysis.model_stats import op_histogram
    from edgecli.recipes import QuantizeRecipe

    try:
        recipe = QuantizeRecipe.model_validate(step.get("recipe") or {})
    except ValidationError:  # a lineage written by another edgecli version
        return []
    float_layers = len((step.get("metrics") or {}).get("float_layers") or [])
    return slow_quantization_reasons(recipe, Counter(op_histogram(model)), float_layers, reference_p50_ms)


def _prune_reasons(row: dict[str, Any]) -> list[str]:
    zeros = f" ({row['sparsity']:.0%} zeros)" if row.get("sparsity") is not None else ""
    return [
        f"unstructured sparsity{zeros} saves download size, not time: dense CPU kernels multiply zeros like any other "
        "number; structured (channel) pruning makes models faster"
    ]


def _distill_reasons(row: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    if row.get("macs") and reference.get("macs"):
        return [
            f"the student needs {row['macs'] / reference['macs']:.0%} of the reference's MACs: per-call overhead dominates"
        ]
    return ["the student is not cheaper to run than the reference on this runtime"]


def likely_reasons(
    steps: list[dict[str, Any]], model: ModelFile, row: dict[str, Any], reference: dict[str, Any]
) -> list[str]:
    """Why a compressed model may not be faster, newest compression step first."""
    reasons: list[str] = []
    for step in reversed(steps):
        verb = step.get("verb")
        if verb == "quantize":
            reasons += _quantize_reasons(step, model, reference["latency"][0]["p50_ms"])
        elif verb == "prune":
            reasons += _prune_reasons(row)
        elif verb == "distill":
            reasons += _distill_reasons(row, reference)
    return reasons or ["unknown: compare with more runs, other thread counts or batch sizes"]


def not_faster_warning(
    steps: list[dict[str, Any]], model: ModelFile, row: dict[str, Any], reference: dict[str, Any]
) -> str | None:
    """A line when a model compressed relative to the reference has speedup <= 1/0.95."""
    if not steps or row["speedup"] > NOT_FASTER_SPEEDUP:
        return None
    verbs = ", ".join(dict.fromkeys(step["verb"] for step in steps))
    reasons = likely_reasons(steps, model, row, reference)
    return (
        f"{_name(row)} is compressed ({verbs}) but not faster than {_name(reference)} "
        f"(speedup {row['speedup']:.2f}x); likely: {'; '.join(reasons[:2])}"
    )
