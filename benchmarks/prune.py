"""Dense vs every shipped prune recipe on the sample model, measured in one run on one machine.

    .venv/bin/python benchmarks/prune.py [--out bench-prune] [--recipes channels-50 macs-2x ...]

Each recipe prunes the sample .pt2 (fine-tuning on train.npz as the recipe says), the result is
converted to ONNX, and one `edgecli bench` call times the dense ONNX model and every pruned one
together (1 thread, batch 1, interleaved). Per recipe: MACs ratio, parameter ratio, gzip-size ratio,
p50 latency ratio (pruned / dense), accuracy drop on the 2000-image evaluation set, and the time the
prune step took (fine-tuning included). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "fashion"
RECIPES = ["channels-50", "macs-2x", "magnitude-50", "magnitude-80", "sparse-2of4"]


def edgecli(*args: object) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "edgecli", *map(str, args)], capture_output=True, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(
            f"edgecli {' '.join(map(str, args[:2]))} failed ({result.returncode}): {result.stderr.decode()[-600:]}"
        )
    return result


def prune(recipe: str, out: Path) -> tuple[Path, float]:
    """The pruned model as ONNX, and the seconds the prune step took."""
    pruned = out / f"{recipe}.pt2"
    start = time.perf_counter()
    edgecli(
        "prune",
        SAMPLE / "fashion_cnn.pt2",
        "-r",
        recipe,
        "--data",
        SAMPLE / "train.npz",
        "--eval-data",
        SAMPLE / "eval.npz",
        "-o",
        pruned,
        "-q",
    )
    seconds = time.perf_counter() - start
    onnx = out / f"{recipe}.onnx"
    edgecli("convert", pruned, "-r", "onnx", "--data", SAMPLE / "eval.npz", "-o", onnx, "-q")
    return onnx, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-prune")
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dense = SAMPLE / "fashion_cnn.onnx"
    pruned = {recipe: prune(recipe, args.out) for recipe in args.recipes}
    report = json.loads(
        edgecli(
            "bench",
            dense,
            *(path for path, _ in pruned.values()),
            "-r",
            "default",
            "--data",
            SAMPLE / "eval.npz",
            "--set",
            "min_time_s=2",
            "--set",
            "memory=false",
            "--json",
            "-",
            "-q",
        ).stdout
    )
    reference, rows = report["models"][0], report["models"][1:]
    print(f"machine: {report['machine']['cpu']}, {report['machine']['cpu_count']} cores; 1 thread, batch 1")
    print("| recipe | MACs ratio | params ratio | gzip ratio | p50 ratio (±spread) | accuracy drop (pt) | prune time |")
    print("|---|---|---|---|---|---|---|")
    for (recipe, (_, seconds)), row in zip(pruned.items(), rows):
        point = row["latency"][0]
        print(
            f"| {recipe} | {row['macs'] / reference['macs']:.3f} | {row['params'] / reference['params']:.3f} "
            f"| {row['gzip_bytes'] / reference['gzip_bytes']:.3f} "
            f"| {point['p50_ms'] / reference['latency'][0]['p50_ms']:.3f} (±{point['p50_spread']:.0%}) "
            f"| {100 * (reference['accuracy'] - row['accuracy']):.2f} | {seconds:.0f} s |"
        )
    for warning in report["warnings"]:
        print(f"warning: {warning}")


if __name__ == "__main__":
    main()
