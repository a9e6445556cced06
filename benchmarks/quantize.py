"""Float vs every shipped quantize recipe on the sample model, measured in one run on one machine.

    .venv/bin/python benchmarks/quantize.py [--out bench-quantize]

For each recipe: size ratio, p50 latency ratio at 1 and 2 threads (quantized / float, the float
model in its own format's runtime: ONNX for ONNX outputs, float TFLite for TFLite outputs),
accuracy drop on the 2000-image evaluation set. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "fashion"
RECIPES = ["int8-static", "int8-dynamic", "fp16", "tflite-int8", "tflite-dynamic", "tflite-fp16", "tflite-int16"]


def edgecli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecli", *map(str, args)], check=True, capture_output=True, cwd=ROOT)


def bench(models: list[Path], threads: int) -> list[dict]:
    result = edgecli(
        "bench",
        *models,
        "-r",
        "default",
        "--data",
        SAMPLE / "eval.npz",
        "--set",
        f"threads={threads}",
        "--json",
        "-",
        "-q",
    )
    return json.loads(result.stdout)["models"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-quantize")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    float_onnx = SAMPLE / "fashion_cnn.onnx"
    float_tflite = args.out / "float.tflite"
    edgecli("convert", float_onnx, "-r", "tflite", "--data", SAMPLE / "eval.npz", "-o", float_tflite, "-q")
    outputs = {}
    for recipe in RECIPES:
        out = args.out / (f"{recipe}.tflite" if recipe.startswith("tflite") else f"{recipe}.onnx")
        edgecli(
            "quantize",
            float_onnx,
            "-r",
            recipe,
            "--data",
            SAMPLE / "calib.npz",
            "--eval-data",
            SAMPLE / "eval.npz",
            "--set",
            "max_accuracy_drop=null",
            "-o",
            out,
            "-q",
        )
        outputs[recipe] = out
    rows = {}
    for threads in (1, 2):
        onnx_models = [float_onnx] + [p for p in outputs.values() if p.suffix == ".onnx"]
        tflite_models = [float_tflite] + [p for p in outputs.values() if p.suffix == ".tflite"]
        for group in (onnx_models, tflite_models):
            report = bench(group, threads)
            reference = report[0]
            for model in report[1:]:
                row = rows.setdefault(Path(model["path"]).stem, {})
                row["size_ratio"] = model["size_bytes"] / reference["size_bytes"]
                row[f"p50_ratio_{threads}t"] = model["latency_ms"]["p50"] / reference["latency_ms"]["p50"]
                row["accuracy_drop_pt"] = 100 * (reference["accuracy"] - model["accuracy"])
    print("| recipe | size ratio | p50 ratio, 1 thread | p50 ratio, 2 threads | accuracy drop (pt) |")
    print("|---|---|---|---|---|")
    for recipe in RECIPES:
        r = rows[recipe]
        print(
            f"| {recipe} | {r['size_ratio']:.3f} | {r['p50_ratio_1t']:.2f} | {r['p50_ratio_2t']:.2f} | {r['accuracy_drop_pt']:.2f} |"
        )


if __name__ == "__main__":
    main()
