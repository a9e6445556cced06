"""Parity: does a transformed model compute the same function as its parent, on real inputs?"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecli.analysis.answers import AnswerRecord, Bars, measure_output, output_kind
from edgecli.analysis.metrics import compare, non_finite_samples
from edgecli.analysis.parity_layers import locate, locate_non_finite
from edgecli.core import console
from edgecli.core.errors import ParityError
from edgecli.data.dataset import Dataset
from edgecli.recipes import ParitySpec
from edgecli.recipes.base import AnswersSpec
from edgecli.runtimes.base import Runner


def check_parity(
    parent: Runner,
    child: Runner,
    data: Dataset,
    spec: ParitySpec,
    what: str,
    reduced_precision: bool = False,
    answers: Bars | None = None,
) -> dict[str, Any]:
    """Compare every output of parent and child on `data`; raise ParityError above tolerance.

    Float conversions: max abs diff <= spec.atol + spec.rtol * max|ref| (relative to the output's
    scale), and spec.min_agreement on classifier outputs. Reduced-precision ones (float16, int8): the
    answer check (`answers`, AnswersSpec's defaults when None: the measure that fits each output, as
    quantize judges it), spec.min_agreement on classifiers with fewer than MANY_CLASSES classes, and
    spec.max_relative_error on outputs that are not many-class scores (max abs diff is reported, not
    judged). NaN or Inf in either model's output fails: a difference that cannot be measured never passes."""
    bars = answers if answers is not None else AnswersSpec()
    sample = data.take(spec.samples)
    expected = parent.predict(sample, description=f"parity: {what} (parent)" if len(sample) > 512 else None)
    actual = child.predict(sample, description=f"parity: {what} (converted)" if len(sample) > 512 else None)
    if len(expected) != len(actual):
        raise ParityError(f"{what}: parent has {len(expected)} outputs, converted model has {len(actual)}")
    worst: dict[str, Any] = {}
    records: list[AnswerRecord] = []
    for index, (ref, out) in enumerate(zip(expected, actual)):
        name = parent.outputs[index].name if index < len(parent.outputs) else str(index)
        try:
            result = compare(ref, out)
        except ValueError as exc:
            raise ParityError(f"{what}: output '{name}': {exc}") from None
        _check_finite(parent, child, sample, ref, out, name, what, data.source)
        kind = output_kind(ref)
        problems, fields = [], []
        tolerance = spec.atol + spec.rtol * _scale(ref)
        if reduced_precision:
            measured = measure_output(name, ref, out, bars)
            records.extend(measured)
            for record in measured:
                if not record.passed:
                    problems.append(record.describe().split(": ", 1)[1])
                    fields.append(f"--set answers.{record.field}=...")
            if kind != "many-classes" and not result["relative_error"] <= spec.max_relative_error:
                problems.append(
                    f"relative error {result['relative_error']:.3g} > max_relative_error {spec.max_relative_error:g}"
                )
                fields.append("raise parity.max_relative_error")
        if not reduced_precision and not result["max_abs_diff"] <= tolerance:
            problems.append(
                f"max abs diff {result['max_abs_diff']:.3g} > atol + rtol * max|ref| = {tolerance:.3g} "
                f"(atol {spec.atol:g}, rtol {spec.rtol:g}, max|ref| {_scale(ref):.3g})"
            )
            fields.append("raise parity.atol or parity.rtol")
        judged_top1 = not reduced_precision or kind == "classes"
        if judged_top1 and "agreement" in result and result["agreement"] < spec.min_agreement:
            problems.append(f"top-1 agreement {result['agreement']:.4f} < {spec.min_agreement:g}")
            fields.append("lower parity.min_agreement")
        if problems:
            where = "" if reduced_precision else locate(parent, child, sample, ref, out, spec.atol)
            raise ParityError(
                f"{what}: output '{name}' diverges on {len(sample)} samples of {data.source}: "
                f"{'; '.join(problems)}{where}",
                hint=f"{' / '.join(fields)} in the recipe only if this difference is acceptable",
            )
        if not worst or result["relative_error"] > worst["relative_error"]:
            worst = result
    worst = {f"parity_{k}": v for k, v in worst.items()}
    worst["parity_samples"] = len(sample)
    for record in records:
        worst[f"parity_{record.output}_{record.measure.replace(' ', '_').replace('-', '_')}"] = round(record.value, 6)
    console.info(
        f"parity {what}: max abs diff {worst['parity_max_abs_diff']:.3g}, mean {worst['parity_mean_abs_diff']:.3g}, "
        f"relative error {worst['parity_relative_error']:.3g}"
        + (f", top-1 agreement {worst['parity_agreement']:.4f}" if "parity_agreement" in worst else "")
        + "".join(f", {r.output} {r.measure} {r.value:.4f}" for r in records if r.bar is not None)
        + f" on {len(sample)} samples of {data.source}"
    )
    return worst


def _scale(reference: np.ndarray) -> float:
    """The largest finite magnitude of an output (0 for an empty or non-finite one)."""
    finite = np.abs(reference[np.isfinite(reference)]) if np.issubdtype(reference.dtype, np.floating) else reference
    return float(np.max(np.abs(finite))) if finite.size else 0.0


def _check_finite(parent: Runner, child: Runner, sample: Dataset, ref, out, name: str, what: str, source: str) -> None:
    """Raise ParityError when either output holds NaN or Inf, saying on how many samples and, for an
    ONNX parent, which tensor first turns non-finite."""
    bad_parent, bad_child = non_finite_samples(ref), non_finite_samples(out)
    if not bad_parent and not bad_child:
        return
    if bad_parent:
        who = f"the parent model computes NaN/Inf on {bad_parent} of {len(sample)} samples of {source}"
        who += f" (the converted model on {bad_child})" if bad_child != bad_parent else ""
        where = locate_non_finite(parent, sample, ref)
        hint = "the model itself is not finite on this data (log/sqrt of negatives, division by zero, overflow): fix the model or the data"
    else:
        who = f"the converted model computes NaN/Inf on {bad_child} of {len(sample)} samples of {source} where the parent is finite"
        where = locate_non_finite(child, sample, out)
        hint = "the conversion broke the model's arithmetic on these inputs"
    raise ParityError(f"{what}: output '{name}': {who}: parity cannot be checked{where}", hint=hint)
