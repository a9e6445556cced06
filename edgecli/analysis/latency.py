"""Latency on this machine: interleaved timing of models after warm-up, the statistics of timed runs
and their stability, what the machine is, and the likely reasons a quantized model is not faster.
Shared by bench, quantize's speed check and distill's teacher/student comparison.

Stability is measured, not assumed: a model's timed runs are split into SEGMENTS consecutive
segments (models run interleaved, so segment k of every model covers the same stretch of time) and
`p50_spread` = (largest segment p50 - smallest segment p50) / p50 of all runs. A difference between
two models smaller than their spread is noise.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgecli.core import console
from edgecli.formats.lineage import tool_versions
from edgecli.recipes import BenchRecipe, QuantizeRecipe
from edgecli.runtimes.base import Runner

SEGMENTS = 5
# Not faster than this fraction of the float p50 counts as "not faster" (timing noise is a few %).
NOT_FASTER = 0.95


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


# ---------------------------------------------------------------- timing


def _warm_up(runner: Runner, feed: dict[str, np.ndarray], warmup: int) -> float:
    """Run `warmup` untimed runs, then one timed: the seconds one run takes (an estimate)."""
    for _ in range(warmup):
        runner.run_feeds(feed)
    start = time.perf_counter()
    runner.run_feeds(feed)
    return max(time.perf_counter() - start, 1e-6)


def measure_latency(
    runners: list[Runner], feeds: list[dict[str, np.ndarray]], recipe: BenchRecipe, label: str = "timing"
) -> list[list[float]]:
    """Warm up each (runner, feed) task, then time them interleaved so that machine drift hits all
    alike: in every round each task runs a fixed number of times, chosen from its warm-up estimate so
    that all tasks need about the same number of rounds (a fast model runs several times per round, a
    slow one once). Rounds go on until every task has both `runs` timings and `min_time_s` of timed
    work. Returns each task's timings in milliseconds, in run order."""
    estimates = [_warm_up(runner, feed, recipe.warmup) for runner, feed in zip(runners, feeds)]
    wanted = [max(recipe.runs, math.ceil(recipe.min_time_s / seconds)) for seconds in estimates]
    rounds = min(wanted)
    per_round = [math.ceil(count / rounds) for count in wanted]
    samples: list[list[float]] = [[] for _ in runners]
    spent = [0.0 for _ in runners]
    with console.progress(label, total=rounds) as bar:
        while True:
            pending = [i for i in range(len(runners)) if len(samples[i]) < recipe.runs or spent[i] < recipe.min_time_s]
            if not pending:
                break
            for index in pending:
                for _ in range(per_round[index]):
                    t0 = time.perf_counter_ns()
                    runners[index].run_feeds(feeds[index])
                    elapsed = (time.perf_counter_ns() - t0) / 1e6
                    samples[index].append(elapsed)
                    spent[index] += elapsed / 1000.0
            bar.advance()
    return samples


# ---------------------------------------------------------------- statistics


def latency_stats(times_ms: list[float], batch_size: int) -> dict[str, float]:
    """p50/p90/p99 (linear interpolation between runs), mean, std (population) and throughput
    (samples per second at the mean latency) of timed runs in milliseconds."""
    values = np.asarray(times_ms, dtype=np.float64)
    mean = float(values.mean())
    return {
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "mean": mean,
        "std": float(values.std()),
        "throughput_per_s": batch_size * 1000.0 / mean if mean > 0 else 0.0,
    }


def segment_p50s(times_ms: list[float], segments: int = SEGMENTS) -> list[float]:
    """The median of each of `segments` consecutive, nearly equal parts of the runs (in run order);
    fewer parts when there are fewer runs."""
    values = np.asarray(times_ms, dtype=np.float64)
    parts = np.array_split(values, min(segments, len(values)))
    return [float(np.median(part)) for part in parts]


def p50_spread(times_ms: list[float], segments: int = SEGMENTS) -> float:
    """(max - min) of the segment medians over the median of all runs: 0.05 means the p50 moved by
    5% during the measurement. 0 for fewer than 2 runs."""
    if len(times_ms) < 2:
        return 0.0
    medians = segment_p50s(times_ms, segments)
    overall = float(np.median(np.asarray(times_ms, dtype=np.float64)))
    return (max(medians) - min(medians)) / overall if overall > 0 else 0.0


# ---------------------------------------------------------------- a quantized model that is not faster


def slow_quantization_reasons(
    recipe: QuantizeRecipe, ops: Counter, float_layers: int, float_p50_ms: float
) -> list[str]:
    """Why a quantized model may be no faster than its float parent on this machine (may be empty)."""
    reasons = []
    if ops.get("ConvInteger"):
        reasons.append("ConvInteger (dynamic Conv) has slow CPU kernels; use mode: static for conv nets")
    if recipe.mode == "fp16":
        reasons.append(
            "CPUs run FP16 models through float32 kernels and Cast nodes (ONNX) or dequantize FP16 weights "
            "(TFLite): FP16 halves the size, speed needs a GPU/NPU delegate"
        )
    if recipe.activation_type == "int16" and recipe.mode == "static":
        reasons.append(
            "16-bit activations: LiteRT has no fast 16x8 kernels on CPU (measured about 40x slower than float)"
        )
    if recipe.mode == "dynamic":
        reasons.append(
            "dynamic quantization quantizes activations on every call; for small layers that costs more than INT8 math saves"
        )
    if float_layers:
        reasons.append(f"{float_layers} layer(s) kept in float add quantize/dequantize conversions around them")
    flags = set(machine_info()["cpu_flags"])
    if recipe.mode == "static" and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        reasons.append("this CPU has no VNNI/AMX int8 dot-product instructions")
    if float_p50_ms < 0.05:
        reasons.append(
            f"the float model takes {float_p50_ms * 1000:.0f} us per call: fixed per-call overhead dominates"
        )
    return reasons
