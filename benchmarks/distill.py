"""The sample teacher into small students, with and without distillation, measured in one run.

    .venv/bin/python benchmarks/distill.py [--recipes kd kd-half-width] [--seeds 0 1 2] [--out bench-distill]

For each recipe and seed, one `edgecli distill ... --set baseline=true` trains the student from the
sample ONNX teacher on train.npz (5000 images; 10% held out to pick the best epoch) and, with the
same architecture, augmentation, schedule and seed, a baseline on the labels alone; both are scored
on eval.npz (2000 test images). The teacher's outputs are cached, so only the first run of a recipe
pays for them. Teacher and student p50 latencies are timed interleaved in onnxruntime (batch 1, 1
thread). Prints a Markdown table: parameters and size as a fraction of the teacher, p50 ratio,
accuracy of teacher / distilled student / baseline (mean over seeds, min-max), the distilled
student's share of the teacher's accuracy, and the gain over the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "fashion"


def distill(recipe: str, seed: int, out: Path, cache: Path) -> tuple[dict, float]:
    student, report = out / f"{recipe}-seed{seed}.pt2", out / f"{recipe}-seed{seed}.json"
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecli",
            "distill",
            SAMPLE / "fashion_cnn.onnx",
            "-r",
            recipe,
            "--data",
            SAMPLE / "train.npz",
            "--eval-data",
            SAMPLE / "eval.npz",
            "--set",
            "baseline=true",
            "--set",
            f"seed={seed}",
            "-o",
            student,
            "--report",
            report,
            "-q",
        ],
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "EDGECLI_CACHE_DIR": str(cache)},
    )
    if result.returncode != 0:
        sys.exit(f"edgecli distill -r {recipe} failed ({result.returncode}): {result.stderr.decode()[-600:]}")
    return json.loads(report.read_text()), time.perf_counter() - start


def spread(values: list[float], scale: float = 100.0) -> str:
    mean = statistics.mean(values) * scale
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ({min(values) * scale:.2f}-{max(values) * scale:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["kd"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-distill")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        "| recipe | student params (of teacher) | size (of teacher) | p50 ratio | teacher acc % | distilled acc % | "
        "baseline acc % | distilled / teacher | gain over baseline (pt) | seconds per run |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="edgecli-bench-cache-") as cache:
        for recipe in args.recipes:
            runs = [distill(recipe, seed, args.out, Path(cache)) for seed in args.seeds]
            m = [report["metrics"] for report, _ in runs]
            p50 = [report["student_p50_ms"] / report["teacher_p50_ms"] for report, _ in runs]
            gains = [x["accuracy"] - x["baseline_accuracy"] for x in m]
            print(
                f"| `{recipe}` | {m[0]['student_params']:,} ({m[0]['params_ratio']:.1%}) | "
                f"{m[0]['student_bytes'] / m[0]['teacher_bytes']:.1%} | {statistics.median(p50):.3f}x | "
                f"{m[0]['teacher_accuracy'] * 100:.2f} | {spread([x['accuracy'] for x in m])} | "
                f"{spread([x['baseline_accuracy'] for x in m])} | {spread([x['accuracy_ratio'] for x in m])} % | "
                f"{spread(gains)} | {statistics.mean(t for _, t in runs):.0f} |",
                flush=True,
            )
    print(
        f"\nseeds {args.seeds}; figures: mean (min-max) over seeds; p50 ratio: median over seeds of student/teacher "
        "p50 (onnxruntime, batch 1, 1 thread)"
    )


if __name__ == "__main__":
    main()
