"""Does `edgecli bench` report the same p50 as a plain onnxruntime timing loop? (issue 5 target)

    .venv/bin/python benchmarks/bench_vs_ort.py [--rounds 3] [--threads 1] [--runs 200] [--min-time 1.0]

Target: bench's p50 for an ONNX model agrees within 10% with a plain onnxruntime timing loop in the
same process settings.

What it does, in one run on one machine: it makes the INT8 model (`edgecli quantize ... -r
int8-static`) in a temporary folder, then for each round
  (a) plain loop, in this process: `onnxruntime.InferenceSession` with the SessionOptions edgecli
      uses (intra-op threads = --threads, inter-op 1, ORT_SEQUENTIAL, ORT_ENABLE_ALL, CPU provider),
      batch 1, the same random input bench synthesises without --data, `warmup` untimed runs, then
      timed `session.run` calls (time.perf_counter_ns) until both --runs calls and --min-time
      seconds are reached, one model after the other; the p50 of those timings.
      The "plain rr" column is the same loop but with the models timed round-robin, as bench does,
      to tell the effect of interleaving apart from bench's own overhead;
  (b) `edgecli bench FLOAT INT8 -r default --set threads=N --json OUT -q` as a subprocess (what users
      run), p50 read from the JSON report (`latency_ms.p50`, or the `latency` list of points with
      `p50_ms` once the report has it).
(a) and (b) alternate, --rounds times; the order inside a round flips every round.

How to read it: one line per round and model, then the summary over rounds (median of each
column). `ratio` = bench p50 / plain-loop p50 ("rr ratio" = bench / plain rr); PASS when
|ratio - 1| <= 10%. The 1-minute load average is printed before, per round and after; the benchmark
itself accounts for about --threads of it. When other jobs add 0.5 or more, they compete for the
CPU, the figures are disturbed (a note says so) and the round-to-round spread shows by how much.
Nothing is written into the repository.
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
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "fashion"
TOLERANCE = 0.10
WARMUP = 10  # edgecli/recipes/shipped/bench/default.yaml


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


def machine() -> str:
    name = platform.processor() or "?"
    try:
        name = next(
            l.split(":", 1)[1].strip()
            for l in Path("/proc/cpuinfo").read_text().splitlines()
            if l.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return f"cpu: {name}; logical cores: {os.cpu_count()} (usable by this process: {affinity}); {platform.platform()}"


def versions() -> str:
    import onnxruntime as ort

    from edgecli import __version__ as edgecli_version

    return f"python {platform.python_version()}, numpy {np.__version__}, onnxruntime {ort.__version__}, edgecli {edgecli_version}"


def plain_options(threads: int):
    """The SessionOptions of edgecli/runtimes/onnx_runner.py, written out here."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def check_options(threads: int) -> str:
    """Compare ours with edgecli's session_options(), so a change there does not go unnoticed."""
    from edgecli.runtimes.onnx_runner import session_options

    fields = (
        "intra_op_num_threads",
        "inter_op_num_threads",
        "execution_mode",
        "graph_optimization_level",
        "enable_cpu_mem_arena",
        "enable_mem_pattern",
        "enable_mem_reuse",
        "use_per_session_threads",
    )
    ours, theirs = plain_options(threads), session_options(threads)
    diff = [
        f"{f}: plain {getattr(ours, f)} vs edgecli {getattr(theirs, f)}"
        for f in fields
        if getattr(ours, f) != getattr(theirs, f)
    ]
    shown = ", ".join(f"{f}={getattr(ours, f)}" for f in fields)
    return f"session options: {shown}" + ("" if not diff else "\nWARNING, differs from edgecli: " + "; ".join(diff))


def synthetic_feed(session) -> dict[str, np.ndarray]:
    """What edgecli.data.dataset.synthetic_dataset gives bench without --data (seed 0, batch 1)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for arg in session.get_inputs():
        shape = (1, *[d if isinstance(d, int) else 1 for d in arg.shape[1:]])
        assert arg.type == "tensor(float)", f"this script feeds float inputs only, {arg.name} is {arg.type}"
        feeds[arg.name] = rng.random(shape, dtype=np.float32)
    return feeds


def plain_loop(paths: list[Path], threads: int, runs: int, min_time_s: float, interleaved: bool) -> list[float]:
    """p50 (ms) per model of a plain `session.run` loop."""
    import onnxruntime as ort

    sessions = [
        ort.InferenceSession(str(p), sess_options=plain_options(threads), providers=["CPUExecutionProvider"])
        for p in paths
    ]
    feeds = [synthetic_feed(s) for s in sessions]
    for session, feed in zip(sessions, feeds):
        for _ in range(WARMUP):
            session.run(None, feed)
    samples: list[list[int]] = [[] for _ in paths]
    spent = [0 for _ in paths]
    limit_ns = int(min_time_s * 1e9)

    def pending(i: int) -> bool:
        return len(samples[i]) < runs or spent[i] < limit_ns

    def once(i: int) -> None:
        t0 = time.perf_counter_ns()
        sessions[i].run(None, feeds[i])
        elapsed = time.perf_counter_ns() - t0
        samples[i].append(elapsed)
        spent[i] += elapsed

    if interleaved:
        while any(pending(i) for i in range(len(paths))):
            for i in [i for i in range(len(paths)) if pending(i)]:
                once(i)
    else:
        for i in range(len(paths)):
            while pending(i):
                once(i)
    return [float(np.percentile(np.asarray(s) / 1e6, 50)) for s in samples]


def report_p50(row: dict, threads: int) -> float:
    """p50 (ms) of a model row: the `latency` points (p50_ms) if present, else latency_ms.p50."""
    points = row.get("latency")
    if isinstance(points, list) and points:
        matching = [p for p in points if p.get("threads", threads) == threads and p.get("batch_size", 1) == 1] or points
        return float(matching[0]["p50_ms"])
    return float(row["latency_ms"]["p50"])


def bench_p50(
    paths: list[Path], threads: int, runs: int, min_time_s: float, out: Path
) -> tuple[list[float], list[int]]:
    edgecli(
        "bench",
        *paths,
        "-r",
        "default",
        "--set",
        f"threads={threads}",
        "--set",
        f"runs={runs}",
        "--set",
        f"min_time_s={min_time_s}",
        "--set",
        f"warmup={WARMUP}",
        "--json",
        out,
        "-q",
    )
    rows = json.loads(out.read_text())["models"]
    return [report_p50(r, threads) for r in rows], [r.get("runs", -1) for r in rows]


def verdict(ratio: float) -> str:
    return "PASS" if abs(ratio - 1) <= TOLERANCE else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternations of plain loop and bench (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for both (default 1)")
    parser.add_argument(
        "--runs", type=int, default=200, help="minimum timed runs per model (default 200, as default.yaml)"
    )
    parser.add_argument("--min-time", type=float, default=1.0, help="minimum timed seconds per model (default 1.0)")
    args = parser.parse_args()

    print(machine())
    print(versions())
    print(check_options(args.threads))
    print(
        f"batch 1, {args.threads} thread(s), warm-up {WARMUP}, >= {args.runs} runs and >= {args.min_time} s per model, "
        f"{args.rounds} rounds"
    )
    print("before:", load())
    with tempfile.TemporaryDirectory(prefix="bench_vs_ort-") as tmp:
        int8 = Path(tmp) / "int8.onnx"
        edgecli(
            "quantize",
            SAMPLE / "fashion_cnn.onnx",
            "-r",
            "int8-static",
            "--data",
            SAMPLE / "calib.npz",
            "-o",
            int8,
            "-q",
        )
        paths = [SAMPLE / "fashion_cnn.onnx", int8]
        names = ["fashion_cnn.onnx (float)", "int8.onnx (int8-static)"]
        results: dict[str, list[list[float]]] = {n: [] for n in names}  # per model: [plain, plain rr, bench] per round
        print()
        print(
            f"{'round':<6}{'model':<26}{'plain p50':>11}{'plain rr':>11}{'bench p50':>11}{'runs':>6}{'ratio':>8}  verdict  load(1m)"
        )
        loads: list[float] = []
        for rnd in range(args.rounds):
            order = ["plain", "bench"] if rnd % 2 == 0 else ["bench", "plain"]
            got: dict[str, list[float]] = {}
            for step in order:
                if step == "plain":
                    got["plain"] = plain_loop(paths, args.threads, args.runs, args.min_time, interleaved=False)
                    got["rr"] = plain_loop(paths, args.threads, args.runs, args.min_time, interleaved=True)
                else:
                    got["bench"], bench_runs = bench_p50(
                        paths, args.threads, args.runs, args.min_time, Path(tmp) / f"r{rnd}.json"
                    )
            loads.append(os.getloadavg()[0])
            for i, name in enumerate(names):
                plain, rr, bench = got["plain"][i], got["rr"][i], got["bench"][i]
                results[name].append([plain, rr, bench])
                ratio = bench / plain
                print(
                    f"{rnd + 1:<6}{name:<26}{plain:>9.4f}ms{rr:>9.4f}ms{bench:>9.4f}ms{bench_runs[i]:>6}{ratio:>8.3f}  {verdict(ratio):<7}  "
                    f"{loads[-1]:.2f}"
                )
    print()
    print(
        f"summary (median over {args.rounds} rounds; PASS when bench p50 is within {TOLERANCE:.0%} of the plain loop's)"
    )
    print(
        f"{'model':<26}{'plain p50':>11}{'plain rr':>11}{'bench p50':>11}{'ratio':>8}{'rr ratio':>10}  verdict  round-to-round spread (plain, bench)"
    )
    passed = True
    for name, rounds in results.items():
        plain, rr, bench = (statistics.median(col) for col in zip(*rounds))
        ratio = bench / plain
        passed &= verdict(ratio) == "PASS"
        spread = [(max(col) - min(col)) / statistics.median(col) for col in zip(*rounds)]
        print(
            f"{name:<26}{plain:>9.4f}ms{rr:>9.4f}ms{bench:>9.4f}ms{ratio:>8.3f}{bench / rr:>10.3f}  {verdict(ratio):<7}  "
            f"{spread[0]:.1%}, {spread[2]:.1%}"
        )
    print("after:", load())
    print(busy_note(loads, args.threads))
    print("overall:", "PASS" if passed else "FAIL")


if __name__ == "__main__":
    main()
