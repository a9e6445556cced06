"""bench, statistics: latency percentiles of timed runs, their stability, and the report's latency points.

Stability is measured, not assumed: a model's timed runs are split into SEGMENTS consecutive
segments (models run interleaved, so segment k of every model covers the same stretch of time) and
`p50_spread` = (largest segment p50 - smallest segment p50) / p50 of all runs. A difference between
two models smaller than their spread is noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SEGMENTS = 5


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


def latency_point(times_ms: list[float], threads: int, batch_size: int) -> dict[str, Any]:
    """One point of a model's `latency` list in the report (speedup is added against the reference)."""
    stats = latency_stats(times_ms, batch_size)
    return {
        "threads": threads,
        "batch_size": batch_size,
        "runs": len(times_ms),
        **{f"{key}_ms": stats[key] for key in ("p50", "p90", "p99", "mean", "std")},
        "throughput_per_s": stats["throughput_per_s"],
        "p50_spread": p50_spread(times_ms),
    }


def per_sample_p50(point: dict[str, Any]) -> float:
    return point["p50_ms"] / point["batch_size"]


def matching_point(points: list[dict[str, Any]], threads: int, batch_size: int) -> dict[str, Any] | None:
    """The point timed at `threads` and `batch_size`, if there is one."""
    return next((p for p in points if p["threads"] == threads and p["batch_size"] == batch_size), None)


def reference_point(reference: list[dict[str, Any]], point: dict[str, Any]) -> dict[str, Any]:
    """The reference's point to compare `point` with: the same threads and batch, else its first."""
    return matching_point(reference, point["threads"], point["batch_size"]) or reference[0]


def speedup(reference: list[dict[str, Any]], point: dict[str, Any]) -> float:
    """Reference p50 per sample / this point's p50 per sample (the plain p50 ratio at equal batch)."""
    mine = per_sample_p50(point)
    return per_sample_p50(reference_point(reference, point)) / mine if mine > 0 else float("inf")
