"""distill's report: teacher vs student (vs the baseline student) in parameters, size, p50 latency and
accuracy. Deterministic figures go to the artifact's metrics (lineage); timings to its report only."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from rich.table import Table

from edgecli.analysis.latency import measure_latency
from edgecli.analysis.metrics import accuracy
from edgecli.analysis.model_stats import param_count
from edgecli.core import console
from edgecli.data.dataset import Dataset
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import BenchRecipe, DistillRecipe
from edgecli.runtimes import open_runner
from edgecli.stages.artifact import Artifact, staged
from edgecli.training.loop import batch_outputs


def eager_logits(module: Any, x: Any, batch_size: int = 256) -> np.ndarray:
    """The module's outputs on `x` (an array or rows on disk), 256 float32 samples at a time."""
    import torch

    module.eval()

    def as_float32(rows: Any) -> Any:  # integer ids (token inputs) stay integers
        rows = np.asarray(rows)
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=None if rows.dtype.kind in "iu" else np.float32))

    return batch_outputs(module, x, batch_size, tensor=as_float32).numpy()


@contextlib.contextmanager
def _student_for_timing(artifact: Artifact, teacher: ModelFile):
    """The student in the teacher's runtime where possible (ONNX teacher: the student exported to
    ONNX), so that the two latencies compare like for like; else the student's .pt2 in torch."""
    from edgecli.backends.onnx_export import as_onnx_file

    with staged(artifact) as student_file:
        if teacher.format in (Format.ONNX, Format.ORT):
            with as_onnx_file(student_file) as path:
                yield ModelFile.open(path), "onnxruntime"
        else:
            yield student_file, "torch"


def latencies(teacher: ModelFile, artifact: Artifact, sample: np.ndarray, runs: int) -> dict[str, Any]:
    """p50 batch-1 latency of teacher and student on one thread, timed interleaved in one run."""
    with _student_for_timing(artifact, teacher) as (student_file, student_runtime):
        runners = [open_runner(teacher, threads=1), open_runner(student_file, threads=1)]
        feeds = [runner.feeds({runner.inputs[0].name: sample}) for runner in runners]
        times = measure_latency(
            runners, feeds, BenchRecipe(runs=runs, warmup=10, min_time_s=0.2), "timing teacher and student"
        )
    teacher_runtime = {Format.ONNX: "onnxruntime", Format.ORT: "onnxruntime", Format.PT2: "torch"}.get(
        teacher.format, "litert"
    )
    return {
        "teacher_p50_ms": round(float(np.median(times[0])), 4),
        "student_p50_ms": round(float(np.median(times[1])), 4),
        "latency_runtime": {"teacher": teacher_runtime, "student": student_runtime, "batch": 1, "threads": 1},
    }


def compare(
    teacher: ModelFile,
    artifact: Artifact,
    student: Any,
    sample: np.ndarray,
    eval_data: Dataset | None,
    baseline: tuple[Any, Any] | None,
    recipe: DistillRecipe,
) -> None:
    """Fill the artifact's metrics and report, and show the teacher / student / baseline table."""
    if artifact.report is None:  # distill's stage sets it; the latencies join it here
        artifact.report = {}
    metrics, report = artifact.metrics, artifact.report
    metrics["teacher_params"] = param_count(teacher)
    if metrics["teacher_params"]:
        metrics["params_ratio"] = round(metrics["student_params"] / metrics["teacher_params"], 4)
    metrics["teacher_bytes"] = teacher.size_bytes
    metrics["student_bytes"] = len(artifact.to_bytes(None))
    if baseline is not None:
        metrics.update(baseline[1].metrics("baseline_"))
    labels = None if eval_data is None else eval_data.labels
    if eval_data is not None and labels is not None:
        teacher_logits = open_runner(teacher).predict(eval_data)[0]
        eval_x = next(iter(eval_data.inputs.values()))  # read a batch at a time
        metrics["teacher_accuracy"] = accuracy(teacher_logits, labels)
        metrics["accuracy"] = accuracy(eager_logits(student, eval_x), labels)
        metrics["accuracy_ratio"] = round(metrics["accuracy"] / max(metrics["teacher_accuracy"], 1e-12), 4)
        if baseline is not None:
            metrics["baseline_accuracy"] = accuracy(eager_logits(baseline[0], eval_x), labels)
            metrics["gain_over_baseline"] = round(metrics["accuracy"] - metrics["baseline_accuracy"], 4)
    if recipe.latency_runs:
        report.update(latencies(teacher, artifact, sample, recipe.latency_runs))
    console.show(_table(metrics, report, baseline is not None))


def _table(metrics: dict[str, Any], report: dict[str, Any], with_baseline: bool) -> Table:
    table = Table(title="teacher vs student", title_justify="left")
    for column in ("model", "params", "size", "p50 (batch 1, 1 thread)", "accuracy"):
        table.add_column(column, justify="left" if column == "model" else "right")

    def cell(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    rows = [
        (
            "teacher",
            metrics.get("teacher_params"),
            metrics.get("teacher_bytes"),
            report.get("teacher_p50_ms"),
            metrics.get("teacher_accuracy"),
        ),
        (
            "student (distilled)",
            metrics.get("student_params"),
            metrics.get("student_bytes"),
            report.get("student_p50_ms"),
            metrics.get("accuracy"),
        ),
    ]
    if with_baseline:
        rows.append(
            (
                "student (labels only)",
                metrics.get("student_params"),
                metrics.get("student_bytes"),
                report.get("student_p50_ms"),
                metrics.get("baseline_accuracy"),
            )
        )
    for name, params, size, p50, acc in rows:
        table.add_row(
            name,
            cell(params, ","),
            cell(size, ","),
            cell(p50, ".3f") + (" ms" if p50 is not None else ""),
            cell(acc, ".2%"),
        )
    return table
