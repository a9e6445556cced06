"""How much does `edgecli bench`'s p50 move from one run to the next? (issue 5 target)

    .venv/bin/python benchmarks/bench_repeatability.py [--repeats 5] [--threads 1]

Target: on repeated runs of the same model, p50 varies by <= 5% (measured and reported by the tool).

What it does, in one run on one machine: in a temporary folder it makes the INT8 ONNX model
(`edgecli quantize ... -r int8-static`) and the TFLite conversion (`edgecli convert ... -r tflite`)
of sample_models/fashion/fashion_cnn.onnx, then runs
    edgecli bench FLOAT.onnx INT8.onnx FLOAT.tflite -r default --set threads=N --json OUT -q
--repeats times, each a fresh process (as a user or a CI job would), and reads each model's p50
from the JSON report (`latency_ms.p50`, or the `latency` list of points with `p50_ms`).

How to read it: per model, the K p50s in run order, then
  spread = (max - min) / median of those K p50s: PASS when <= 5%;
  tool   = the range (lowest..highest over the K runs) of the spread bench itself reports,
           `p50_spread` (a fraction, read from the `latency` point, `latency_ms` or the model row):
           within ONE run, (max - min) of the p50s of 5 consecutive segments of the timed runs over
           the run's p50; "-" if this version of the tool does not report it. It measures drift
           during a run; the `spread` column measures run-to-run movement (fresh processes).
The 1-minute load average is printed before, per run and after; the benchmark itself accounts for
about --threads of it. When other jobs add 0.5 or more, they compete for the CPU and the spread
measured here is disturbed (larger than on an idle machine; a note says so). Nothing is written
into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "fashion"
TOLERANCE = 0.05


def edgecli(*args: object) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "edgecli", *map(str, args)]
    result = subprocess.run(argv, capture_output=True, cwd=ROOT)
    if result.returncode != 0:
        last = (result.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"])[-1]
        raise SystemExit(f"edgecli {args[0]} exited {result.returncode}: {last}\n  command: {' '.join(argv)}")
    return result


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} logical cores"


def busy_note(loads: list[float], threads: int) -> str:
    """Judge the 1-min load seen during the measurement; the benchmark's own timing thread(s) count
    for about `threads` of it (one process times at a time)."""
    others = max(loads) - threads
    head = f"1-min load peaked at {max(loads):.2f}, of which ~{threads} is this benchmark: other jobs ~{max(others, 0):.2f}"
    if others >= 0.5:
        return (
            f"{head}.\nNOTE: the machine was busy while measuring: other jobs compete for the CPU and the figures are "
            "disturbed; re-run on an idle machine before quoting them."
        )
    return f"{head} (quiet enough)."


def cpu_name() -> str:
    try:
        return next(
            l.split(":", 1)[1].strip()
            for l in Path("/proc/cpuinfo").read_text().splitlines()
            if l.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or "?"


def point(row: dict[str, Any], threads: int) -> dict[str, Any] | None:
    """The `latency` point for `threads` threads and batch 1, if the report has the list."""
    points = row.get("latency")
    if isinstance(points, list) and points:
        matching = [p for p in points if p.get("threads", threads) == threads and p.get("batch_size", 1) == 1] or points
        return matching[0]
    return None


def report_p50(row: dict[str, Any], threads: int) -> float:
    found = point(row, threads)
    return float(found["p50_ms"]) if found is not None else float(row["latency_ms"]["p50"])


def tool_spread(row: dict[str, Any], threads: int) -> float | None:
    """The tool's own p50 spread as a fraction, wherever this version of the report puts it."""
    for place in (point(row, threads), row.get("latency_ms"), row):
        if not isinstance(place, dict):
            continue
        if place.get("p50_spread") is not None:
            return float(place["p50_spread"])
        if place.get("p50_spread_pct") is not None:
            return float(place["p50_spread_pct"]) / 100
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="bench runs (fresh processes), default 5")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1, as default.yaml)")
    args = parser.parse_args()

    import onnxruntime

    from edgecli import __version__

    print(f"cpu: {cpu_name()}; logical cores: {os.cpu_count()}; {platform.platform()}")
    print(f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, edgecli {__version__}")
    print(
        f"edgecli bench -r default (warm-up 10, >= 200 runs and >= 1 s per model, batch 1), {args.threads} thread(s), "
        f"{args.repeats} repeats"
    )
    print("before:", load())
    with tempfile.TemporaryDirectory(prefix="bench_repeatability-") as tmp:
        folder = Path(tmp)
        float_onnx = SAMPLE / "fashion_cnn.onnx"
        int8 = folder / "int8.onnx"
        tflite = folder / "float.tflite"
        edgecli("quantize", float_onnx, "-r", "int8-static", "--data", SAMPLE / "calib.npz", "-o", int8, "-q")
        edgecli("convert", float_onnx, "-r", "tflite", "--data", SAMPLE / "eval.npz", "-o", tflite, "-q")
        models = {"fashion_cnn.onnx (float)": float_onnx, "int8.onnx (int8-static)": int8, "float.tflite": tflite}
        p50s: dict[str, list[float]] = {name: [] for name in models}
        spreads: dict[str, list[float | None]] = {name: [] for name in models}
        print()
        loads: list[float] = []
        for repeat in range(args.repeats):
            out = folder / f"run{repeat}.json"
            edgecli("bench", *models.values(), "-r", "default", "--set", f"threads={args.threads}", "--json", out, "-q")
            rows = json.loads(out.read_text())["models"]
            for name, row in zip(models, rows):
                p50s[name].append(report_p50(row, args.threads))
                spreads[name].append(tool_spread(row, args.threads))
            shown = ", ".join(
                f"{Path(r['path']).name} {p50s[n][-1]:.4f} ms"
                + ("" if spreads[n][-1] is None else f" (tool spread {spreads[n][-1]:.1%})")
                for r, n in zip(rows, models)
            )
            loads.append(os.getloadavg()[0])
            print(f"run {repeat + 1}: {shown}   (1-min load {loads[-1]:.2f})")
    print()
    print(
        f"{'model':<26}{'p50 per run (ms)':<{10 * args.repeats + 2}}{'median':>9}{'spread':>8}{'tool':>16}  verdict (<= {TOLERANCE:.0%})"
    )
    passed = True
    for name in models:
        values = p50s[name]
        median = statistics.median(values)
        spread = (max(values) - min(values)) / median
        ok = spread <= TOLERANCE
        passed &= ok
        reported = [s for s in spreads[name] if s is not None]
        tool = "-" if not reported else f"{min(reported):.1%}..{max(reported):.1%}"
        runs = " ".join(f"{v:9.4f}" for v in values)
        print(
            f"{name:<26}{runs:<{10 * args.repeats + 2}}{median:>9.4f}{spread:>8.1%}{tool:>16}  {'PASS' if ok else 'FAIL'}"
        )
    print("after:", load())
    print(busy_note(loads, args.threads))
    if all(s is None for v in spreads.values() for s in v):
        print("the tool does not report p50_spread in this version of the JSON report")
    print("overall:", "PASS" if passed else "FAIL")


if __name__ == "__main__":
    main()
