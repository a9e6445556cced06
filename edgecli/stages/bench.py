"""bench: size, latency (interleaved, after warm-up), accuracy and agreement of models side by side."""

from __future__ import annotations

import gzip
import math
import operator
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecli import console
from edgecli.data import Dataset, synthetic_dataset
from edgecli.errors import UsageError
from edgecli.formats.lineage import tool_versions
from edgecli.formats.model_file import ModelFile
from edgecli.metrics import accuracy, align, compare, is_classifier_output
from edgecli.recipes import BenchRecipe, parse_gate
from edgecli.runtimes import open_runner
from edgecli.runtimes.base import Runner

OPERATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    wanted = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "f16c", "amx_int8"}
    flags = next((sorted(set(l.split(":", 1)[1].split()) & wanted) for l in cpuinfo if l.startswith("flags")), [])
    name = next((l.split(":", 1)[1].strip() for l in cpuinfo if l.startswith("model name")), platform.processor())
    return {
        "cpu": name,
        "cpu_count": os.cpu_count(),
        "cpu_flags": flags,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tools": tool_versions(),
    }


def gzip_size(path: Path) -> int | None:
    """Bytes an over-the-air update downloads (gzip -6); None for folders."""
    return None if path.is_dir() else len(gzip.compress(path.read_bytes(), compresslevel=6, mtime=0))


def _timing_feeds(runner: Runner, data: Dataset | None, batch_size: int) -> dict[str, np.ndarray]:
    size = batch_size if runner.dynamic_batch else 1
    source = data if data is not None else synthetic_dataset(runner.inputs, size)
    return runner.feeds(source.batch(0, size))


def measure_latency(runners: list[Runner], feeds: list[dict[str, np.ndarray]], recipe: BenchRecipe) -> list[list[float]]:
    """Warm up each model, then time them interleaved (round-robin) so that machine drift hits all
    alike. Each model runs until it has both `runs` timings and `min_time_s` of timed work; a model
    that is done drops out of the rotation."""
    estimates = []
    for runner, feed in zip(runners, feeds):
        for _ in range(recipe.warmup):
            runner.run_feeds(feed)
        start = time.perf_counter()
        runner.run_feeds(feed)
        estimates.append(max(time.perf_counter() - start, 1e-6))
    planned = max(max(recipe.runs, math.ceil(recipe.min_time_s / t)) for t in estimates)
    samples: list[list[float]] = [[] for _ in runners]
    spent = [0.0 for _ in runners]
    with console.progress("timing", total=planned) as bar:
        while True:
            pending = [i for i in range(len(runners)) if len(samples[i]) < recipe.runs or spent[i] < recipe.min_time_s]
            if not pending:
                break
            for index in pending:
                t0 = time.perf_counter_ns()
                runners[index].run_feeds(feeds[index])
                elapsed = (time.perf_counter_ns() - t0) / 1e6
                samples[index].append(elapsed)
                spent[index] += elapsed / 1000.0
            bar.advance()
    return samples


def latency_stats(times_ms: list[float], batch_size: int) -> dict[str, float]:
    values = np.asarray(times_ms)
    mean = float(values.mean())
    return {
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "mean": mean,
        "std": float(values.std()),
        "throughput_per_s": batch_size * 1000.0 / mean if mean > 0 else 0.0,
    }


def _quality(runners: list[Runner], models: list[ModelFile], data: Dataset, batch_size: int) -> list[dict[str, Any]]:
    """Accuracy (labelled data) and agreement / max abs diff against the first model."""
    outputs = [r.predict(data, batch_size, description=f"evaluating {m.path.name}")[0] for r, m in zip(runners, models)]
    rows = []
    for output in outputs:
        diff = compare(outputs[0], output)
        labelled = data.labels is not None and is_classifier_output(outputs[0])
        rows.append(
            {
                "accuracy": accuracy(align(outputs[0], output), data.labels) if labelled else None,
                "agreement": diff.get("agreement"),
                "max_abs_diff": diff["max_abs_diff"],
            }
        )
    return rows


def evaluate_gates(rows: list[dict[str, Any]], gates: list[str]) -> list[dict[str, Any]]:
    """Each gate on each non-reference model (the only model if there is one)."""
    results = []
    targets = rows[1:] if len(rows) > 1 else rows
    for gate in gates:
        metric, op, threshold = parse_gate(gate)
        for row in targets:
            value = row["gate_metrics"].get(metric)
            if value is None:
                raise UsageError(f"gate '{gate}': {metric} was not measured for {row['path']}", hint="labelled --data gives accuracy")
            results.append(
                {"gate": gate, "model": row["path"], "value": value, "passed": bool(OPERATORS[op](value, threshold))}
            )
    return results


def bench(models: list[ModelFile], recipe: BenchRecipe, data: Dataset | None) -> dict[str, Any]:
    """Benchmark `models` (the first is the reference) and return the report."""
    runners = [open_runner(m, threads=recipe.threads) for m in models]
    quality = _quality(runners, models, data, recipe.eval_batch_size) if data is not None else [{} for _ in models]
    feeds = [_timing_feeds(r, data, recipe.batch_size) for r in runners]
    timings = measure_latency(runners, feeds, recipe)
    rows: list[dict[str, Any]] = []
    for model, runner, feed, times, q in zip(models, runners, feeds, timings, quality):
        batch = next(iter(feed.values())).shape[0]
        rows.append(
            {
                "path": str(model.path),
                "format": model.format.value,
                "sha256": model.sha256,
                "size_bytes": model.size_bytes,
                "gzip_bytes": gzip_size(model.path),
                "batch_size": batch,
                "runs": len(times),
                "latency_ms": latency_stats(times, batch),
                "accuracy": q.get("accuracy"),
                "agreement": q.get("agreement"),
                "max_abs_diff": q.get("max_abs_diff"),
            }
        )
    reference = rows[0]
    for row in rows:
        row["speedup"] = reference["latency_ms"]["p50"] / row["latency_ms"]["p50"]
        row["size_ratio"] = row["size_bytes"] / reference["size_bytes"]
        drop = None
        if row["accuracy"] is not None and reference["accuracy"] is not None:
            drop = reference["accuracy"] - row["accuracy"]
        row["gate_metrics"] = {
            **{f"{k}_ms": row["latency_ms"][k] for k in ("p50", "p90", "p99", "mean")},
            **{k: row[k] for k in ("size_bytes", "gzip_bytes", "accuracy", "agreement", "speedup", "size_ratio", "max_abs_diff")},
            "accuracy_drop": drop,
        }
    gates = evaluate_gates(rows, recipe.gates)
    for row in rows:
        row.pop("gate_metrics")
    return {
        "reference": reference["path"],
        "data": data.source if data is not None else "random inputs",
        "models": rows,
        "gates": gates,
        "passed": all(g["passed"] for g in gates),
        "recipe": recipe.model_dump(mode="json"),
        "machine": machine_info(),
    }
