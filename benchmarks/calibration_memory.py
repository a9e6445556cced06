"""Peak memory of static-INT8 calibration against the number of calibration samples, measured in one
run on one machine: `edgecli quantize` (streamed, one batch of activations at a time) next to
onnxruntime's default `quantize_static` path (every batch's activations kept until the end).

    .venv/bin/python benchmarks/calibration_memory.py [--samples 256 1024 4096]

Each figure is the peak resident set (ru_maxrss) of a fresh child process, so runs do not share
memory. Both paths read the same 5000-image file (train.npz), so the data itself costs the same
in every run; only the calibration differs. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "fashion"

# onnxruntime's documented usage: a reader over in-memory batches, quantize_static with defaults.
ORT_DEFAULT = """
import sys, numpy as np
from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
x = np.load(sys.argv[1])["x"][: int(sys.argv[3])]
class Reader:
    def __init__(self):
        self.batches = iter([{"input": x[i : i + 32]} for i in range(0, len(x), 32)])
    def get_next(self):
        return next(self.batches, None)
quantize_static(sys.argv[2], sys.argv[4], Reader(), quant_format=QuantFormat.QDQ, per_channel=True, calibrate_method=getattr(CalibrationMethod, sys.argv[5]))
"""


def peak_rss_mb(command: list[str]) -> float:
    """Run `command` in a child process and return its peak resident memory in MiB."""
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{command[:4]} failed: {proc.stderr.read().decode()[-400:]}")
    return usage.ru_maxrss / 1024.0  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument(
        "--methods", nargs="+", default=["minmax", "entropy"], choices=["minmax", "entropy", "percentile"]
    )
    args = parser.parse_args()
    model, data = SAMPLE / "fashion_cnn.onnx", SAMPLE / "train.npz"
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "q.onnx"
        for method in args.methods:
            for samples in args.samples:
                ours = peak_rss_mb(
                    [
                        sys.executable,
                        "-m",
                        "edgecli",
                        "quantize",
                        str(model),
                        "-r",
                        "int8-static",
                        "--data",
                        str(data),
                        "--set",
                        f"calibration.samples={samples}",
                        "--set",
                        f"calibration.method={method}",
                        "--set",
                        "max_accuracy_drop=null",
                        "--set",
                        "speed_check=false",
                        "-o",
                        str(out),
                        "-q",
                    ]
                )
                ort_method = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}[method]
                ort = peak_rss_mb(
                    [sys.executable, "-c", ORT_DEFAULT, str(data), str(model), str(samples), str(out), ort_method]
                )
                rows.append((method, samples, ours, ort))
    print(
        "| method | calibration samples | edgecli quantize peak RSS (MiB) | onnxruntime quantize_static default (MiB) |"
    )
    print("|---|---|---|---|")
    for method, samples, ours, ort in rows:
        print(f"| {method} | {samples} | {ours:.0f} | {ort:.0f} |")
    for method in args.methods:
        runs = [r for r in rows if r[0] == method]
        first, last = runs[0], runs[-1]
        print(
            f"{method}: growth from {first[1]} to {last[1]} samples: edgecli {last[2] - first[2]:+.0f} MiB, "
            f"onnxruntime default {last[3] - first[3]:+.0f} MiB"
        )


if __name__ == "__main__":
    main()
