"""bench: size, latency (interleaved, after warm-up, swept over threads and batch sizes), accuracy and
agreement of models side by side, against a reference model.

The report (what `--json` writes; other outputs read it):
    reference, data, models: [row, ...], gates: [{gate, model, value, passed}], passed, warnings: [str],
    recipe, machine
A model row: path, format, sha256, size_bytes, gzip_bytes, params, macs, sparsity, inputs, batch_fixed,
compressed_by, latency: [point, ...], latency_ms, batch_size, runs, speedup, size_ratio, accuracy,
accuracy_drop, agreement, max_abs_diff, mean_abs_diff, relative_error, cosine, non_finite_samples (samples
whose output holds NaN/Inf: they count as wrong and as disagreements, the differences and cosine are
then NaN, and every quality gate on the model fails).
A latency point: threads, batch_size, runs, p50_ms, p90_ms, p99_ms, mean_ms, std_ms, throughput_per_s,
p50_spread, speedup. The first point (first `threads`, first `batch_size`) is the headline: gates,
the row's speedup and `latency_ms` (the older single-point shape: p50, p90, ... without `_ms`) use it.
"""

from __future__ import annotations

import operator
from typing import Any, cast

import numpy as np

from edgecli.analysis.latency import machine_info, measure_latency
from edgecli.analysis.metrics import accuracy as top1_accuracy
from edgecli.analysis.metrics import align, check_labels, compare, is_classifier_output, mean_cosine, non_finite_samples
from edgecli.analysis.model_stats import gzip_size
from edgecli.analysis.synth_inputs import InputPlan, plan_inputs
from edgecli.core import console
from edgecli.core.errors import UsageError
from edgecli.data.dataset import Dataset, synthetic_dataset
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import GATE_METRICS, BenchRecipe, parse_gate
from edgecli.runtimes import open_runner
from edgecli.runtimes.base import Runner
from edgecli.stages.bench import honesty
from edgecli.stages.bench.stats import latency_point, speedup

OPERATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
POINT_GATE_METRICS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput_per_s", "p50_spread")
QUALITY_KEYS = (
    "accuracy",
    "agreement",
    "max_abs_diff",
    "mean_abs_diff",
    "relative_error",
    "cosine",
    "non_finite_samples",
)
# Gate metrics computed from a model's outputs: a gate on them fails when the outputs hold NaN/Inf.
OUTPUT_GATE_METRICS = (
    "accuracy",
    "accuracy_drop",
    "agreement",
    "max_abs_diff",
    "mean_abs_diff",
    "relative_error",
    "cosine",
)


# ---------------------------------------------------------------- inputs


def data_batch(data: Dataset, size: int) -> dict[str, np.ndarray]:
    """The first `size` samples of the data, repeated from the start when it holds fewer."""
    if len(data) >= size:
        return data.batch(0, size)
    index = np.arange(size) % len(data)
    return {name: array[index] for name, array in data.inputs.items()}


def timing_feeds(
    runner: Runner, data: Dataset | None, recipe: BenchRecipe, size: int, plan: InputPlan | None = None
) -> dict[str, np.ndarray]:
    """One batch of `size` samples in the model's own names, layout and dtypes: from the data, or
    synthesised by `plan` (see analysis.synth_inputs), or from the model's signature alone (recipe
    input_shapes, dynamic_dims, int_range)."""
    if data is not None:
        return runner.feeds(data_batch(data, size))
    if plan is not None:
        return plan.feeds(size)
    source = synthetic_dataset(
        runner.inputs, size, shapes=recipe.input_shapes, dims=recipe.dynamic_dims, int_range=recipe.int_range
    )
    return runner.feeds(source.batch(0, size))


def timed_batch_sizes(runner: Runner, wanted: list[int]) -> list[int]:
    """The recipe's batch sizes, or [1] for a model whose signature fixes the batch."""
    return list(wanted) if runner.dynamic_batch else [1]


def describe_inputs(feeds: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """{input name: {shape, dtype}} of the arrays a model was timed on."""
    return {name: {"shape": list(array.shape), "dtype": str(array.dtype)} for name, array in feeds.items()}


def check_input_names(runners: list[Runner], recipe: BenchRecipe) -> None:
    """Refuse recipe input_shapes for inputs no model has (a typo would silently be ignored)."""
    known = {spec.name for runner in runners for spec in runner.inputs}
    unknown = sorted(set(recipe.input_shapes) - known)
    if unknown:
        raise UsageError(
            f"input_shapes names {', '.join(unknown)}, which no model has",
            hint=f"model inputs: {', '.join(sorted(known))}",
        )


def synthesis_plan(runner: Runner, recipe: BenchRecipe) -> InputPlan:
    """Inputs synthesised from the model's own constraints (rank-0 scalars, fixed first axes, sizes
    the model accepts), the recipe's input_shapes and dynamic_dims first."""
    return plan_inputs(runner, shapes=recipe.input_shapes, dims=recipe.dynamic_dims, int_range=recipe.int_range)


def synthesis_warnings(models: list[ModelFile], plans: list[InputPlan | None]) -> list[str]:
    """One line per model whose synthesised inputs go beyond its signature: what was chosen, and why."""
    lines = []
    for model, plan in zip(models, plans):
        if plan is not None and plan.notes:
            hint = "" if plan.accepted else "; give input_shapes or dynamic_dims in the recipe, or --data"
            lines.append(f"{model.path.name}: synthesised {plan.describe()}: {'; '.join(plan.notes)}{hint}")
    return lines


# ---------------------------------------------------------------- timing


def time_thread_group(
    runners: list[Runner],
    threads: int,
    data: Dataset | None,
    recipe: BenchRecipe,
    plans: list[InputPlan | None] | None = None,
) -> list[list[dict[str, Any]]]:
    """Every model (runners opened with `threads`) at every batch size, interleaved in one rotation;
    the latency points of each model."""
    tasks = [
        (index, size) for index, runner in enumerate(runners) for size in timed_batch_sizes(runner, recipe.batch_size)
    ]
    plans = plans or [None] * len(runners)
    feeds = [timing_feeds(runners[index], data, recipe, size, plans[index]) for index, size in tasks]
    label = f"timing ({threads} thread{'s' if threads > 1 else ''})"
    timings = measure_latency([runners[index] for index, _ in tasks], feeds, recipe, label)
    points: list[list[dict[str, Any]]] = [[] for _ in runners]
    for (index, size), times in zip(tasks, timings):
        points[index].append(latency_point(times, threads, size))
    return points


# ---------------------------------------------------------------- quality


def compare_outputs(reference: np.ndarray, output: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """Accuracy (labelled data, classifier outputs) and the output's differences from the reference:
    top-1 agreement (classifiers), max/mean abs diff, relative error, mean per-sample cosine, and how
    many samples' outputs hold NaN/Inf (see metrics: they never look fine).
    Raises ValueError when the outputs cannot be compared (different sizes)."""
    aligned = align(reference, output)
    diff = compare(reference, aligned)
    return {
        "accuracy": top1_accuracy(aligned, labels) if labels is not None and is_classifier_output(aligned) else None,
        "agreement": diff.get("agreement"),
        "max_abs_diff": diff["max_abs_diff"],
        "mean_abs_diff": diff["mean_abs_diff"],
        "relative_error": diff["relative_error"],
        "cosine": mean_cosine(reference, aligned),
        "non_finite_samples": non_finite_samples(aligned),
    }


def quality(
    runners: list[Runner], models: list[ModelFile], reference: int, data: Dataset, batch_size: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """Each model's quality figures on `data` against the reference's first output; warnings for
    models whose outputs cannot be compared."""
    outputs = [r.predict(data, batch_size, description=f"evaluating {m.path.name}")[0] for r, m in zip(runners, models)]
    rows, warnings = [], []
    for model, output in zip(models, outputs):
        try:
            rows.append(compare_outputs(outputs[reference], output, data.labels))
        except ValueError:
            rows.append({**dict.fromkeys(QUALITY_KEYS), "non_finite_samples": non_finite_samples(output)})
            warnings.append(
                f"{model.path.name}'s output {list(output.shape)} cannot be compared with the reference's "
                f"{list(outputs[reference].shape)}: no accuracy, agreement or differences"
            )
    for model, row in zip(models, rows):
        if row["non_finite_samples"]:
            warnings.append(
                f"{model.path.name} outputs NaN/Inf on {row['non_finite_samples']} of {len(data)} samples of "
                f"{data.name}: they count as wrong predictions and disagreements, its differences and cosine are "
                "NaN, and gates on its quality fail"
            )
    if outputs[reference].size and non_finite_samples(outputs[reference]):
        warnings.append(
            f"the reference {models[reference].path.name} outputs NaN/Inf: every model's agreement, "
            "differences and cosine against it are unreliable"
        )
    return rows, warnings


def label_warnings(runners: list[Runner], models: list[ModelFile], data: Dataset) -> list[str]:
    """Refuse labels outside any model's classes (DataError, before timing); a warning for each model
    that is not a classifier (labels unused for it)."""
    notes = []
    for runner, model in zip(runners, models):
        note = check_labels(runner, data)
        if note:
            notes.append(f"{model.path.name}: {note}")
    return notes


# ---------------------------------------------------------------- the report


def non_finite_warnings(models: list[ModelFile]) -> list[str]:
    """A model with NaN/Inf weights is measured (bench does not change it), with a warning."""
    from edgecli.analysis.model_stats import non_finite, stored_floats

    found = [(model, non_finite(stored_floats(model) or [])) for model in models]
    return [
        f"{m.path.name} has non-finite weights ({text}): its outputs are NaN and its accuracy means nothing"
        for m, text in found
        if text
    ]


def static_facts(model: ModelFile) -> dict[str, Any]:
    """What the file says without running it: size, download size, parameters, sparsity."""
    from edgecli.analysis.model_stats import param_count, sparsity

    return {
        "path": str(model.path),
        "format": model.format.value,
        "sha256": model.sha256,
        "size_bytes": model.size_bytes,
        "gzip_bytes": gzip_size(model.path),
        "params": param_count(model),
        "sparsity": sparsity(model),
    }


def first_group_facts(
    models: list[ModelFile],
    runners: list[Runner],
    data: Dataset | None,
    recipe: BenchRecipe,
    plans: list[InputPlan | None] | None = None,
) -> list[dict[str, Any]]:
    """From the first threads setting's runners: MACs per sample (on one sample of the timing
    inputs), the inputs the headline point is timed on, whether the model fixes the batch, and what
    was synthesised beyond the signature (None with data)."""
    from edgecli.analysis.model_stats import macs

    facts = []
    for model, runner, plan in zip(models, runners, plans or [None] * len(models)):
        first_batch = timed_batch_sizes(runner, recipe.batch_size)[0]
        facts.append(
            {
                "macs": macs(model, timing_feeds(runner, data, recipe, 1, plan)),
                "inputs": describe_inputs(timing_feeds(runner, data, recipe, first_batch, plan)),
                "batch_fixed": not runner.dynamic_batch,
                "synthesised": None if plan is None else list(plan.notes),
            }
        )
        if not runner.dynamic_batch and recipe.batch_size != [1]:
            console.info(f"{model.path.name}: its signature fixes the batch at 1, so it is timed at batch 1 only")
    return facts


def headline(row: dict[str, Any], reference: dict[str, Any]) -> None:
    """Add each point's speedup and the row's headline figures (from its first point) to `row`."""
    for point in row["latency"]:
        point["speedup"] = speedup(reference["latency"], point)
    first = row["latency"][0]
    row["latency_ms"] = {key.removesuffix("_ms"): first[key] for key in POINT_GATE_METRICS}
    row["batch_size"] = first["batch_size"]
    row["runs"] = first["runs"]
    row["speedup"] = first["speedup"]
    row["size_ratio"] = row["size_bytes"] / reference["size_bytes"]
    both = row["accuracy"] is not None and reference["accuracy"] is not None
    row["accuracy_drop"] = reference["accuracy"] - row["accuracy"] if both else None


def gate_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """Every gate metric's value for a row (None where not measured)."""
    first = row["latency"][0]
    return {metric: first[metric] if metric in POINT_GATE_METRICS else row.get(metric) for metric in GATE_METRICS}


def evaluate_gates(rows: list[dict[str, Any]], gates: list[str], reference: int = 0) -> list[dict[str, Any]]:
    """Each gate on each model but the reference (on the only model if there is one), at its first
    latency point. A metric that was not measured (accuracy without labels) is a UsageError. A gate on
    a quality metric fails when the model's (or the reference's) outputs hold NaN/Inf, whatever the
    figure, and so does any comparison with a NaN figure."""
    results = []
    targets = [row for index, row in enumerate(rows) if index != reference] or rows
    for gate in gates:
        metric, op, threshold = parse_gate(gate)
        for row in targets:
            value = gate_metrics(row).get(metric)
            if value is None:
                raise UsageError(
                    f"gate '{gate}': {metric} was not measured for {row['path']}",
                    hint="labelled --data gives accuracy; --data gives agreement, differences and cosine",
                )
            tainted = metric in OUTPUT_GATE_METRICS and _non_finite(row, rows[reference])
            passed = bool(OPERATORS[op](value, threshold)) and not tainted
            results.append({"gate": gate, "model": row["path"], "value": value, "passed": passed})
    return results


def _non_finite(row: dict[str, Any], reference: dict[str, Any]) -> bool:
    return bool(row.get("non_finite_samples")) or bool(reference.get("non_finite_samples"))


def honesty_warnings(
    models: list[ModelFile], rows: list[dict[str, Any]], reference: int, recipe: BenchRecipe
) -> list[str]:
    """Spread, compressed-but-not-faster and within-noise warnings (see bench_honesty)."""
    warnings = honesty.spread_warnings(rows, recipe.max_spread)
    for index, (model, row) in enumerate(zip(models, rows)):
        if index == reference:
            continue
        steps = honesty.compression_steps(model, models[reference])
        row["compressed_by"] = list(dict.fromkeys(step["verb"] for step in steps))
        for line in (
            honesty.not_faster_warning(steps, model, row, rows[reference]),
            honesty.within_noise_warning(row, rows[reference]),
        ):
            if line:
                warnings.append(line)
    rows[reference]["compressed_by"] = []
    return warnings


def measure_memories(
    models: list[ModelFile], recipe: BenchRecipe, feeds: list[tuple[dict[str, np.ndarray], int]]
) -> list[dict[str, Any]]:
    """Each model's peak memory, measured in a child process of its own (see bench_memory), on the
    batch its headline latency was timed on (`feeds`: the data's, or the synthesised inputs)."""
    import tempfile
    from pathlib import Path

    from edgecli.stages.bench.memory import measure_memory

    results = []
    with (
        tempfile.TemporaryDirectory(prefix="edgecli-bench-") as folder,
        console.progress("peak memory", total=len(models)) as bar,
    ):
        for index, (model, (batch, size)) in enumerate(zip(models, feeds)):
            path = Path(folder) / f"feeds{index}.npz"
            np.savez(path, **cast(dict[str, Any], batch))  # numpy stubs type **kwds as allow_pickle
            results.append(measure_memory(model.path, recipe.threads[0], size, feeds_path=path))
            bar.advance()
    return results


def bench(models: list[ModelFile], recipe: BenchRecipe, data: Dataset | None, reference: int = 0) -> dict[str, Any]:
    """Benchmark `models` against `models[reference]` and return the report (see the module doc).
    Warnings are in report['warnings'], not printed."""
    rows = [static_facts(model) for model in models]
    points: list[list[dict[str, Any]]] = [[] for _ in models]
    warnings: list[str] = []
    plans: list[InputPlan | None] = [None] * len(models)
    memory_feeds: list[tuple[dict[str, np.ndarray], int]] = []
    for group, threads in enumerate(recipe.threads):
        runners = [
            open_runner(model, threads=threads) for model in models
        ]  # torch's thread count is global: open per group
        if group == 0:
            check_input_names(runners, recipe)
            label_notes = label_warnings(runners, models, data) if data is not None else []
            if data is None:  # said once every model has opened, so that an unreadable model's error is the only line
                console.warn("no --data given: latency only, on random inputs; no accuracy or agreement")
                plans = [synthesis_plan(runner, recipe) for runner in runners]
                warnings += synthesis_warnings(models, plans)
            for row, facts in zip(rows, first_group_facts(models, runners, data, recipe, plans)):
                row.update(facts)
            sizes = [timed_batch_sizes(runner, recipe.batch_size)[0] for runner in runners]
            memory_feeds = [
                (timing_feeds(runner, data, recipe, size, plan), size)
                for runner, plan, size in zip(runners, plans, sizes)
            ]
            scores = [dict.fromkeys(QUALITY_KEYS) for _ in models]
            if data is not None:
                scores, warnings = quality(runners, models, reference, data, recipe.eval_batch_size)
                warnings = label_notes + warnings
            for row, score in zip(rows, scores):
                row.update(score)
        for index, found in enumerate(time_thread_group(runners, threads, data, recipe, plans)):
            points[index].extend(found)
        del runners
    for row, found in zip(rows, points):
        row["latency"] = found
    if recipe.memory:
        for row, memory in zip(rows, measure_memories(models, recipe, memory_feeds)):
            row["memory"] = memory
            row["peak_mib"], row["model_mib"] = memory["peak_mib"], memory["model_mib"]
    for row in rows:
        headline(row, rows[reference])
    warnings += honesty_warnings(models, rows, reference, recipe) + non_finite_warnings(models)
    gates = evaluate_gates(rows, recipe.gates, reference)
    return {
        "reference": rows[reference]["path"],
        "data": data.source if data is not None else "random inputs",
        "models": rows,
        "gates": gates,
        "passed": all(g["passed"] for g in gates),
        "warnings": warnings,
        "recipe": recipe.model_dump(mode="json"),
        "machine": machine_info(),
    }
