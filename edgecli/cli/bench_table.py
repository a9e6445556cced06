"""The table `edgecli bench` prints on stderr: one row per model and latency point (threads x batch).

Model facts (size, gzip, params, MACs, zeros = sparsity, peak MiB = peak resident memory, accuracy, agreement, cosine) are shown on a
model's first row only; its other sweep points repeat just the latency columns (thr = threads, /s =
samples per second). Columns no model has a figure for (params, MACs, sparsity, peak memory, cosine; thr and
batch without a sweep) are left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table


def _fixed(pattern: str, scale: float = 1.0, suffix: str = "") -> Callable[[Any], str]:
    def show(value: Any) -> str:
        return "-" if value is None else format(value / scale, pattern) + suffix

    return show


def count(value: Any) -> str:
    """A count with an SI prefix: 352874 -> '352.9k', 123057920 -> '123.1M'."""
    if value is None:
        return "-"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f}{prefix}"
    return f"{value:g}"


def p50_with_spread(point: dict[str, Any]) -> str:
    """'1.147 ±2%': the p50 and how much it moved across the run (p50_spread)."""
    spread = point.get("p50_spread")
    return f"{point['p50_ms']:.3f}" + ("" if spread is None else f" ±{spread * 100:.0f}%")


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[dict[str, Any], dict[str, Any]], Any]  # (row, point) -> raw value
    show: Callable[[Any], str]
    per_point: bool = False  # repeated on every sweep row (latency), else on the model's first row only
    optional: bool = False  # left out when no model has a value


COLUMNS = [
    Column("format", lambda r, p: r["format"], str),
    Column("thr", lambda r, p: p["threads"], str, per_point=True),
    Column("batch", lambda r, p: p["batch_size"], str, per_point=True),
    Column("MB", lambda r, p: r["size_bytes"], _fixed(".2f", 1e6)),
    Column("gzip MB", lambda r, p: r.get("gzip_bytes"), _fixed(".2f", 1e6)),
    Column("params", lambda r, p: r.get("params"), count, optional=True),
    Column("MACs", lambda r, p: r.get("macs"), count, optional=True),
    Column("zeros", lambda r, p: r.get("sparsity"), _fixed(".0%"), optional=True),
    Column("peak MiB", lambda r, p: r.get("peak_mib"), _fixed(".0f"), optional=True),
    Column("p50 ms ±spread", lambda r, p: p, p50_with_spread, per_point=True),
    Column("p90 ms", lambda r, p: p["p90_ms"], _fixed(".3f"), per_point=True),
    Column("p99 ms", lambda r, p: p["p99_ms"], _fixed(".3f"), per_point=True),
    Column("/s", lambda r, p: p["throughput_per_s"], _fixed(".0f"), per_point=True),
    Column("speedup", lambda r, p: p.get("speedup"), _fixed(".2f", suffix="x"), per_point=True),
    Column("accuracy", lambda r, p: r.get("accuracy"), _fixed(".4f")),
    Column("agree", lambda r, p: r.get("agreement"), _fixed(".4f")),
    Column("cosine", lambda r, p: r.get("cosine"), _fixed(".5f"), optional=True),
]


def is_sweep(report: dict[str, Any]) -> bool:
    return any(len(row["latency"]) > 1 for row in report["models"])


def shown_columns(report: dict[str, Any]) -> list[Column]:
    sweep = is_sweep(report)
    kept = []
    for column in COLUMNS:
        if column.header in ("thr", "batch") and not sweep:
            continue
        if column.optional and all(column.value(row, {}) is None for row in report["models"]):
            continue
        kept.append(column)
    return kept


def report_table(report: dict[str, Any]) -> Table:
    title = f"edgecli bench (reference: {Path(report['reference']).name}; data: {report['data']})"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    columns = shown_columns(report)
    table.add_column("model", justify="left", no_wrap=True)
    for column in columns:
        table.add_column(column.header, justify="left" if column.header == "format" else "right", no_wrap=True)
    for row in report["models"]:
        for index, point in enumerate(row["latency"]):
            cells = [c.show(c.value(row, point)) if c.per_point or index == 0 else "" for c in columns]
            table.add_row(Path(row["path"]).name, *cells)
    return table
