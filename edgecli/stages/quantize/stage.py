"""quantize: INT8 or FP16 as ONNX (onnxruntime) or TFLite (TensorFlow Lite converter), measured
against the float model, with an accuracy guard and a per-layer diagnosis."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.table import Table

from edgecli.analysis.answers import MANY_CLASSES
from edgecli.analysis.metrics import (
    accuracy,
    agreement,
    check_labels,
    is_classifier_output,
    non_finite_samples,
    output_classes,
)
from edgecli.analysis.model_stats import check_finite_weights
from edgecli.core import console
from edgecli.core.errors import RecipeError, UsageError
from edgecli.data.dataset import Dataset
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import QuantizeRecipe
from edgecli.runtimes import open_runner
from edgecli.runtimes.base import Runner
from edgecli.stages.artifact import Artifact, check_answers, open_candidate, staged
from edgecli.stages.quantize.guard import GuardResult, Quantizer, Target, search
from edgecli.stages.quantize.layers import LayerError, most_sensitive

TABLE_ROWS = 25  # layers shown on stderr; the JSON report has all of them


class Evaluator:
    """Float outputs on the check data, computed once; each candidate is compared with them."""

    def __init__(self, float_runner: Runner, data: Dataset) -> None:
        self.data = data
        self.reference = float_runner.predict(data, description="evaluating float")[0]
        self.float_accuracy = accuracy(self.reference, data.labels) if data.labels is not None else None
        self.float_non_finite = non_finite_samples(self.reference)

    def __call__(self, artifact: Artifact) -> dict[str, Any]:
        with staged(artifact) as candidate:
            output = open_candidate(candidate, "quantize").predict(self.data, description="evaluating quantized")[0]
        metrics: dict[str, Any] = {"eval_samples": len(self.data)}
        if is_classifier_output(self.reference):  # top-1 of [N, classes]; other outputs: the answer check
            metrics["agreement"] = agreement(self.reference, output)
        # NaN/Inf outputs fail the guard (quant_guard.non_finite_failures); recorded only when found
        if non_finite_samples(output):
            metrics["non_finite_samples"] = non_finite_samples(output)
        if self.float_non_finite:
            metrics["non_finite_samples_float"] = self.float_non_finite
        if self.float_accuracy is not None and self.data.labels is not None:  # both, or neither
            metrics["accuracy_float"] = self.float_accuracy
            metrics["accuracy"] = accuracy(output, self.data.labels)
            metrics["accuracy_drop"] = metrics["accuracy_float"] - metrics["accuracy"]
        return metrics


def _check_request(model: ModelFile, recipe: QuantizeRecipe, calib: Dataset | None, check: Dataset | None) -> None:
    """Refuse what cannot work before any long step runs. The types one output format cannot take
    its quantizer refuses as it opens, before its own work."""
    if recipe.format == "onnx" and model.format not in (Format.ONNX, Format.PT2):
        raise UsageError(
            f"quantize to ONNX reads ONNX and .pt2 models; {model.path} is {model.format.value}",
            hint="quantize it to TFLite with format: tflite",
        )
    if recipe.mode == "static" and calib is None:
        raise UsageError("static quantization needs calibration data", hint="pass --data calib.npz or set data.path")
    if recipe.min_agreement is not None and check is None:
        raise UsageError(
            "min_agreement needs data to compare float and quantized outputs", hint="pass --data or --eval-data"
        )
    if recipe.min_agreement is not None and check is not None:
        classes, described = output_classes(open_runner(model), check)
        if classes is None:
            raise RecipeError(
                f"min_agreement is top-1 agreement of class scores [N, classes]; the model's first output is {described}",
                hint="unset min_agreement: the answer check (answers.min_cosine, min_iou, ...) judges this output",
            )


def _checked_labels(model: ModelFile, recipe: QuantizeRecipe, check: Dataset | None) -> Dataset | None:
    """Refuse labels outside the model's classes before calibrating (DataError); labels for a model
    that is not a classifier are dropped with a warning (max_accuracy_drop then cannot be measured)."""
    if check is None or check.labels is None:
        return check
    note = check_labels(open_runner(model), check)
    if note is None:
        return check
    console.warn(note)
    return check.without_labels()


def _without_unmeasurable_drop(model: ModelFile, recipe: QuantizeRecipe, check: Dataset | None) -> QuantizeRecipe:
    """The recipe the guard works to. max_accuracy_drop needs labels on a classifier output; without
    them (the usual calibration data) the drop cannot be measured, so the answer check holds the model
    instead, and the guard searches on answers.min_agreement when the first output is class scores."""
    if recipe.max_accuracy_drop is None or (check is not None and check.labels is not None):
        return recipe
    update: dict[str, Any] = {"max_accuracy_drop": None}
    why = "no data" if check is None else f"{check.name} has no labels"
    classes = check is not None and (output_classes(open_runner(model), check)[0] or MANY_CLASSES) < MANY_CLASSES
    if recipe.min_agreement is None and classes:
        update["min_agreement"] = recipe.answers.min_agreement
    console.warn(
        f"max_accuracy_drop {recipe.max_accuracy_drop:g} cannot be measured ({why}): the answer check "
        f"against the float model holds the model instead"
        + (f" (the guard works to top-1 agreement >= {update['min_agreement']:g})" if "min_agreement" in update else "")
    )
    return recipe.model_copy(update=update)


@contextlib.contextmanager
def _quantizer(model: ModelFile, recipe: QuantizeRecipe, runner: Runner, calib: Dataset | None) -> Iterator[Quantizer]:
    if recipe.format == "tflite":
        from edgecli.stages.quantize.tflite import tflite_quantizer

        with tflite_quantizer(model, recipe, runner, calib) as quantizer:
            yield quantizer
    else:
        from edgecli.stages.quantize.onnx import onnx_quantizer

        with onnx_quantizer(model, recipe, runner, calib) as quantizer:
            yield quantizer


def _layer_table(layers: list[LayerError]) -> Table:
    table = Table(title="per-layer error (float vs quantized activations)", title_justify="left", box=None)
    for name in ("layer", "op", "SNR dB", "rel. MSE", "added noise", "status"):
        table.add_column(name, justify="left" if name in ("layer", "op", "status") else "right")
    shown = most_sensitive(layers)[:TABLE_ROWS] + [l for l in layers if not l.quantized][:TABLE_ROWS]
    for layer in shown:
        status = "int" if layer.quantized else f"float: {layer.reason}"
        table.add_row(
            layer.node.split(";")[0][-48:],
            layer.op_type,
            f"{layer.snr_db:.1f}",
            f"{layer.rel_mse:.2e}",
            f"{layer.sensitivity:.2e}",
            status,
        )
    if len(layers) > len(shown):
        table.caption = f"{len(shown)} of {len(layers)} layers, most sensitive first; all are in --report"
    return table


def _mark_guarded(layers: list[LayerError], result: GuardResult) -> None:
    step_of: dict[str, int] = {}
    for step in result.steps:
        for node in step["float_layers"]:
            step_of.setdefault(node, step["step"])
    for layer in layers:
        if layer.node in result.float_nodes:
            layer.quantized = False
            layer.reason = f"accuracy guard, step {step_of[layer.node]}: adds {layer.sensitivity:.2e} relative noise"


def quantize(
    model: ModelFile, recipe: QuantizeRecipe, calib: Dataset | None, eval_data: Dataset | None, diagnose: bool = False
) -> Artifact:
    """Quantize to ONNX or TFLite; measure agreement and accuracy against the float model; if a target
    is missed, keep the most sensitive layers in float until it holds (or give the best found)."""
    check = eval_data if eval_data is not None else calib
    _check_request(model, recipe, calib, check)
    check_finite_weights(model)
    check = _checked_labels(model, recipe, check)
    recipe = _without_unmeasurable_drop(model, recipe, check)
    if recipe.format == "onnx" and model.format is Format.PT2:
        from edgecli.backends.onnx_export import checked_onnx_file

        with checked_onnx_file(model, check) as onnx_model:
            return _quantize(onnx_model, recipe, calib, eval_data, check, diagnose)
    return _quantize(model, recipe, calib, eval_data, check, diagnose)


def _quantize(
    model: ModelFile,
    recipe: QuantizeRecipe,
    calib: Dataset | None,
    eval_data: Dataset | None,
    check: Dataset | None,
    diagnose: bool,
) -> Artifact:
    target = Target.of(recipe)
    float_runner = open_runner(model)
    layers: list[LayerError] = []
    with _quantizer(model, recipe, float_runner, calib) as quantizer:
        evaluate = Evaluator(float_runner, check) if check is not None else None
        first = quantizer.quantize()
        if evaluate is not None:
            first.metrics.update(evaluate(first))
        missed = target.is_set and not target.met(first.metrics)
        layer_data = calib if calib is not None else eval_data
        if (diagnose or missed) and layer_data is not None:
            layers = quantizer.layer_errors(first, layer_data.take(recipe.guard.samples))
        result = GuardResult(first)
        if missed:
            console.info(
                f"the quantized model misses the target ({'; '.join(target.failures(first.metrics))}); searching"
            )
            if not getattr(quantizer, "float_fallback", True):
                console.warn(
                    f"{recipe.format} {recipe.mode} quantization cannot keep single layers in float; no fallback searched"
                )
            elif recipe.guard.max_steps and evaluate is not None:
                result = search(quantizer, evaluate, first, layers, target, recipe.guard)
        from edgecli.stages.quantize.speed import latency_fallback  # INT8 measured slower: keep slow ops float

        result = latency_fallback(quantizer, model, result, evaluate, target, recipe, calib or eval_data)
    artifact = result.artifact
    _mark_guarded(layers, result)
    size = len(artifact.to_bytes(None))
    artifact.metrics = {
        "mode": recipe.mode,
        "size_bytes_float": model.size_bytes,
        "size_ratio": size / model.size_bytes,
        **artifact.metrics,
        "float_layers": result.float_nodes,
    }
    if check is not None:
        artifact.metrics["eval_data"] = check.name
    artifact.gate_failures.extend(target.failures(artifact.metrics))  # NaN/Inf outputs fail without a target too
    answers = check_answers(
        artifact, float_runner, check, recipe.answers, recipe.answers.samples, "quantize", "the float model"
    )
    if layers:
        console.show(_layer_table(layers))
    speed = None
    if recipe.speed_check:
        from edgecli.stages.quantize.speed import speed_check

        speed = speed_check(model, artifact, recipe, calib if calib is not None else eval_data, len(result.float_nodes))
    artifact.report = _report(model, recipe, artifact, size, layers, result, target, speed)
    artifact.report["answers"] = [record.to_json() for record in answers.records]
    return artifact


def _report(
    model: ModelFile,
    recipe: QuantizeRecipe,
    artifact: Artifact,
    size: int,
    layers: list[LayerError],
    result: GuardResult,
    target: Target,
    speed: dict[str, Any] | None,
) -> dict[str, Any]:
    metrics = artifact.metrics
    excluded = [{"node": l.node, "op_type": l.op_type, "reason": l.reason} for l in layers if not l.quantized] or [
        {"node": n, "reason": "recipe: exclude_nodes"} for n in recipe.exclude_nodes
    ]
    return {
        "mode": recipe.mode,
        "format": recipe.format,
        "size": {"float_bytes": model.size_bytes, "quantized_bytes": size, "ratio": size / model.size_bytes},
        "before": {"accuracy": metrics.get("accuracy_float")},
        "after": {k: metrics.get(k) for k in ("accuracy", "accuracy_drop", "agreement")},
        "eval_data": metrics.get("eval_data"),
        "target": target.describe() or None,
        "target_met": target.met(metrics) if target.is_set and "agreement" in metrics else None,
        "guard": {"float_layers": result.float_nodes, "steps": result.steps},
        "excluded": excluded,
        "layers": [l.to_json() for l in layers],
        "layer_samples": recipe.guard.samples if layers else 0,
        "speed": speed,
        "warnings": console.warnings_given(),
    }
