"""bench, statistics: the report's latency points and speedups (the statistics of timed runs and their
stability, p50_spread, are in analysis/latency.py)."""

from __future__ import annotations

from typing import Any

from edgecli.analysis.latency import latency_stats, p50_spread


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
