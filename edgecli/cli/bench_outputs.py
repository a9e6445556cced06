"""The bench report as a Markdown summary (CI job summary), a CSV table and a PNG plot.

Every function reads the report dict `edgecli bench --json` writes. Only `path` is required of a
model row; every other figure may be missing (shown as "-" in Markdown, an empty cell in CSV).
A row's latency points come from `row["latency"]` (one point per threads/batch setting of a
sweep) or, in the older shape, from the single `row["latency_ms"]`.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecli.core import jsonout
from edgecli.core.errors import BackendMissing, UsageError
from edgecli.formats.files import STDIO, write_bytes_atomic, write_output

PLOT_HINT = "pip install 'edgecli[plot]'"

# ---------------------------------------------------------------- reading the report


def model_name(row: dict[str, Any]) -> str:
    return Path(row["path"]).name


def latency_points(row: dict[str, Any], report: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The row's latency points with `_ms` keys: `row["latency"]` as is, or the older single
    `row["latency_ms"]` ({p50, p90, ...}) renamed, with threads from the recipe and runs/batch from the row."""
    if row.get("latency"):
        return list(row["latency"])
    old = row.get("latency_ms")
    if not old:
        return []
    point = {f"{key}_ms": old.get(key) for key in ("p50", "p90", "p99", "mean", "std")}
    point["throughput_per_s"] = old.get("throughput_per_s")
    threads = ((report or {}).get("recipe") or {}).get("threads")
    point["threads"] = threads if isinstance(threads, int) else None
    point["batch_size"] = row.get("batch_size")
    point["runs"] = row.get("runs")
    return [point]


def first_point(row: dict[str, Any], report: dict[str, Any] | None = None) -> dict[str, Any]:
    """The headline latency point (the first setting of a sweep); {} when the row has none."""
    points = latency_points(row, report)
    return points[0] if points else {}


def _dig(mapping: dict[str, Any], dotted: str) -> Any:
    value: Any = mapping
    for key in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def first_present(row: dict[str, Any], *names: str) -> Any:
    """The first of several possible fields (dotted for nested ones) that is present and not None."""
    for name in names:
        value = _dig(row, name)
        if value is not None:
            return value
    return None


def peak_memory_mib(row: dict[str, Any]) -> Any:
    """Peak resident memory (MiB) of loading and running the model, measured in a process of its own."""
    return first_present(row, "memory.peak_mib", "peak_mib")


def quality_metric(report: dict[str, Any]) -> str | None:
    """'accuracy' when labelled data gave one, else 'agreement' (with the reference), else None."""
    for metric in ("accuracy", "agreement"):
        if any(row.get(metric) is not None for row in report["models"]):
            return metric
    return None


def is_sweep(report: dict[str, Any]) -> bool:
    """Whether any model was timed at more than one threads/batch setting."""
    return any(len(latency_points(row, report)) > 1 for row in report["models"])


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------- the Pareto front


def pareto_front(points: list[tuple[float, float]], *, minimize_x: bool = True, maximize_y: bool = True) -> list[int]:
    """Indices (ascending) of the points no other point dominates.

    By default x is a cost (size, latency: smaller is better) and y a quality (accuracy: higher is
    better). A point is dominated when another is at least as good on both axes and strictly better
    on one, so identical points are all on the front. Points with a None or non-finite coordinate
    are left out.
    """
    oriented = {
        index: (x if minimize_x else -x, -y if maximize_y else y)
        for index, (x, y) in enumerate(points)
        if is_number(x) and is_number(y)
    }

    def dominated(index: int) -> bool:
        cost = oriented[index]
        return any(other[0] <= cost[0] and other[1] <= cost[1] and other != cost for other in oriented.values())

    return [index for index in oriented if not dominated(index)]


# ---------------------------------------------------------------- Markdown


def _fixed(pattern: str, scale: float = 1.0, suffix: str = "") -> Callable[[Any], str]:
    def show(value: Any) -> str:
        return format(value / scale, pattern) + suffix if is_number(value) else "-"

    return show


def _count(value: Any) -> str:
    """A count with an SI prefix: 358186 -> '358.2 k'."""
    if not is_number(value):
        return "-"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f} {prefix}"
    return f"{value:g}"


def _code(text: str) -> str:
    return "`" + str(text).replace("|", "\\|").replace("`", "'") + "`"


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[dict[str, Any], dict[str, Any]], Any]  # (row, latency point) -> raw value
    show: Callable[[Any], str]
    optional: bool = True  # left out of the Markdown table when no model has it

    def cell(self, row: dict[str, Any], point: dict[str, Any]) -> str:
        return self.show(self.value(row, point))


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


MARKDOWN_COLUMNS = [
    Column("format", lambda r, p: r.get("format"), _text, optional=False),
    Column("threads", lambda r, p: p.get("threads"), _text),
    Column("batch", lambda r, p: p.get("batch_size"), _text),
    Column("size MB", lambda r, p: r.get("size_bytes"), _fixed(".2f", 1e6), optional=False),
    Column("gzip MB", lambda r, p: r.get("gzip_bytes"), _fixed(".2f", 1e6)),
    Column("peak MiB", lambda r, p: peak_memory_mib(r), _fixed(".1f")),
    Column("params", lambda r, p: r.get("params"), _count),
    Column("MACs", lambda r, p: r.get("macs"), _count),
    Column("sparsity", lambda r, p: r.get("sparsity"), _fixed(".1%")),
    Column("p50 ms", lambda r, p: p.get("p50_ms"), _fixed(".3f"), optional=False),
    Column("p90 ms", lambda r, p: p.get("p90_ms"), _fixed(".3f"), optional=False),
    Column("p99 ms", lambda r, p: p.get("p99_ms"), _fixed(".3f"), optional=False),
    Column("p50 spread", lambda r, p: p.get("p50_spread"), _fixed(".1%")),
    Column("speedup", lambda r, p: p.get("speedup", r.get("speedup")), _fixed(".2f", suffix="×"), optional=False),
    Column("accuracy", lambda r, p: r.get("accuracy"), _fixed(".4f"), optional=False),
    Column("agreement", lambda r, p: r.get("agreement"), _fixed(".4f"), optional=False),
    Column("cosine", lambda r, p: r.get("cosine"), _fixed(".4f")),
    Column("rel. error", lambda r, p: r.get("relative_error"), _fixed(".2e")),
]


def _table_rows(report: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(row, latency point) pairs: one per model, or one per model per point in a sweep."""
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for row in report["models"]:
        points = latency_points(row, report) or [{}]
        pairs.extend((row, point) for point in (points if is_sweep(report) else points[:1]))
    return pairs


def _columns_with_values(pairs: list[tuple[dict[str, Any], dict[str, Any]]], sweep: bool) -> list[Column]:
    kept = []
    for column in MARKDOWN_COLUMNS:
        if column.header in ("threads", "batch"):
            if sweep:
                kept.append(column)
        elif not column.optional or any(column.value(row, point) is not None for row, point in pairs):
            kept.append(column)
    return kept


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def models_table(report: dict[str, Any]) -> list[str]:
    pairs = _table_rows(report)
    columns = _columns_with_values(pairs, is_sweep(report))
    lines = [
        _markdown_row(["model"] + [c.header for c in columns]),
        _markdown_row([":--"] + [":--" if c.header == "format" else "--:" for c in columns]),
    ]
    for row, point in pairs:
        name = _code(model_name(row)) + (" (reference)" if row["path"] == report.get("reference") else "")
        lines.append(_markdown_row([name] + [c.cell(row, point) for c in columns]))
    return lines


def _threads_text(report: dict[str, Any]) -> str | None:
    threads = (report.get("recipe") or {}).get("threads")
    if threads is None:
        return None
    values = threads if isinstance(threads, list) else [threads]
    label = "thread" if values == [1] else "threads"
    return f"{', '.join(map(str, values))} {label}"


def machine_line(report: dict[str, Any]) -> str:
    """cpu · logical CPUs · flags · threads, as one line."""
    machine = report.get("machine") or {}
    parts = [machine.get("cpu") or "unknown CPU"]
    if machine.get("cpu_count"):
        parts.append(f"{machine['cpu_count']} logical CPUs")
    if machine.get("cpu_flags"):
        parts.append("flags " + " ".join(machine["cpu_flags"]))
    threads = _threads_text(report)
    if threads:
        parts.append(threads)
    return " · ".join(parts)


def tools_line(report: dict[str, Any]) -> str | None:
    tools = (report.get("machine") or {}).get("tools") or {}
    return ", ".join(f"{name} {version}" for name, version in sorted(tools.items())) or None


def verdict(report: dict[str, Any]) -> str:
    gates = report.get("gates") or []
    failed = sum(not gate["passed"] for gate in gates)
    if not gates:
        return "✅ passed (no gates in the recipe)"
    if failed:
        return f"❌ {failed} of {len(gates)} gate checks failed"
    return f"✅ all {len(gates)} gate checks passed"


def gates_table(report: dict[str, Any]) -> list[str]:
    lines = [_markdown_row(["", "gate", "model", "value"]), _markdown_row([":-:", ":--", ":--", "--:"])]
    for gate in report.get("gates") or []:
        mark = "✅" if gate["passed"] else "❌"
        value = format(gate["value"], ".4g") if is_number(gate.get("value")) else "-"
        lines.append(_markdown_row([mark, _code(gate["gate"]), _code(Path(gate["model"]).name), value]))
    return lines


def _warning_text(warning: Any) -> str:
    return warning if isinstance(warning, str) else str(warning.get("message", warning))


def to_markdown(report: dict[str, Any]) -> str:
    """A GitHub-flavoured Markdown summary, for $GITHUB_STEP_SUMMARY or a pull-request comment."""
    passed = report.get("passed", True)
    lines = [f"## edgecli bench {'✅' if passed else '❌'}", ""]
    lines.append(f"**Reference** {_code(Path(report['reference']).name)} · **data** {_code(report.get('data', '-'))}  ")
    lines.append(f"**Machine** {machine_line(report)}  ")
    tools = tools_line(report)
    if tools:
        lines.append(f"**Tools** {tools}")
    lines += ["", *models_table(report), ""]
    warnings = report.get("warnings") or []
    if warnings:
        lines += ["### Warnings", "", *(f"- ⚠️ {_warning_text(w)}" for w in warnings), ""]
    if report.get("gates"):
        lines += ["### Gates", "", *gates_table(report), ""]
    lines += [f"**{verdict(report)}**", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- CSV

CSV_MEASURES: list[tuple[str, Callable[[dict[str, Any], dict[str, Any]], Any]]] = [
    ("threads", lambda r, p: p.get("threads")),
    ("batch_size", lambda r, p: p.get("batch_size")),
    ("runs", lambda r, p: p.get("runs")),
    ("p50_ms", lambda r, p: p.get("p50_ms")),
    ("p90_ms", lambda r, p: p.get("p90_ms")),
    ("p99_ms", lambda r, p: p.get("p99_ms")),
    ("mean_ms", lambda r, p: p.get("mean_ms")),
    ("std_ms", lambda r, p: p.get("std_ms")),
    ("throughput_per_s", lambda r, p: p.get("throughput_per_s")),
    ("p50_spread", lambda r, p: p.get("p50_spread")),
    ("speedup", lambda r, p: p.get("speedup", r.get("speedup"))),
    ("size_bytes", lambda r, p: r.get("size_bytes")),
    ("gzip_bytes", lambda r, p: r.get("gzip_bytes")),
    ("size_ratio", lambda r, p: r.get("size_ratio")),
    ("params", lambda r, p: r.get("params")),
    ("macs", lambda r, p: r.get("macs")),
    ("sparsity", lambda r, p: r.get("sparsity")),
    ("peak_mib", lambda r, p: peak_memory_mib(r)),
    ("accuracy", lambda r, p: r.get("accuracy")),
    ("agreement", lambda r, p: r.get("agreement")),
    ("max_abs_diff", lambda r, p: r.get("max_abs_diff")),
    ("mean_abs_diff", lambda r, p: r.get("mean_abs_diff")),
    ("cosine", lambda r, p: r.get("cosine")),
    ("relative_error", lambda r, p: r.get("relative_error")),
    ("sha256", lambda r, p: r.get("sha256")),
]
CSV_HEADER = ["model", "path", "format", "is_reference", *(name for name, _ in CSV_MEASURES)]


def _csv_identity(row: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": model_name(row),
        "path": row["path"],
        "format": row.get("format"),
        "is_reference": int(row["path"] == report.get("reference")),
    }


def csv_records(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per model per latency point (a model without latency still gets one)."""
    records = []
    for row in report["models"]:
        for point in latency_points(row, report) or [{}]:
            records.append({**_csv_identity(row, report), **{name: value(row, point) for name, value in CSV_MEASURES}})
    return records


def to_csv(report: dict[str, Any]) -> str:
    """CSV with a header row and a fixed column order; numbers as measured (unrounded), empty
    cells for figures not measured."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_records(report))
    return buffer.getvalue()


# ---------------------------------------------------------------- plot


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def require_matplotlib() -> None:
    """Raise BackendMissing (exit 5) when matplotlib is not installed; cheap (no import)."""
    if not has_matplotlib():
        raise BackendMissing("--plot needs matplotlib", hint=PLOT_HINT)


def quality_label(metric: str | None) -> str:
    if metric == "accuracy":
        return "accuracy (labelled data)"
    if metric == "agreement":
        return "top-1 agreement with reference (no labels)"
    return "p50 latency (ms)"


def plot_title(report: dict[str, Any]) -> str:
    return f"edgecli bench · reference {Path(report['reference']).name}\n{machine_line(report)}"


def _draw_panel(axes: Any, xs: list[Any], ys: list[Any], names: list[str], *, maximize_y: bool) -> None:
    front = pareto_front(list(zip(xs, ys)), maximize_y=maximize_y)
    shown = [i for i in range(len(xs)) if is_number(xs[i]) and is_number(ys[i])]
    axes.scatter([xs[i] for i in shown], [ys[i] for i in shown], color="tab:blue", s=36, zorder=2, label="model")
    ordered = sorted(front, key=lambda i: (xs[i], ys[i]))
    axes.plot(  # a staircase: the best quality (or latency) reachable at each size (or latency)
        [xs[i] for i in ordered],
        [ys[i] for i in ordered],
        drawstyle="steps-post",
        color="tab:red",
        linewidth=1.2,
        zorder=1,
    )
    axes.scatter(
        [xs[i] for i in ordered],
        [ys[i] for i in ordered],
        s=110,
        facecolors="none",
        edgecolors="tab:red",
        linewidths=1.6,
        zorder=3,
        label="Pareto front",
    )
    for rank, i in enumerate(sorted(shown, key=lambda i: (xs[i], ys[i]))):
        below = rank % 2  # neighbours in x alternate above and below their marker, so close names stay apart
        axes.annotate(
            names[i],
            (xs[i], ys[i]),
            xytext=(5, -12 if below else 5),
            textcoords="offset points",
            fontsize=8,
            va="bottom",
        )
    axes.grid(True, alpha=0.3)
    axes.margins(0.15)
    axes.legend(loc="best", fontsize=8)


def plot_png(report: dict[str, Any]) -> bytes:
    """The PNG: quality (accuracy, else agreement) against size and against p50 latency, with the
    Pareto front marked. Without any quality figure, p50 latency against size (both minimised)."""
    if not has_matplotlib():
        raise BackendMissing("--plot needs matplotlib", hint=PLOT_HINT)
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = report["models"]
    names = [model_name(row) for row in rows]
    sizes = [row["size_bytes"] / 1e6 if is_number(row.get("size_bytes")) else None for row in rows]
    p50s = [first_point(row, report).get("p50_ms") for row in rows]
    metric = quality_metric(report)
    with matplotlib.style.context("default"):  # not the user's matplotlibrc: same input, same picture
        figure = Figure(figsize=(12, 5), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        if metric is None:
            axes = figure.subplots(1, 1)
            _draw_panel(axes, sizes, p50s, names, maximize_y=False)
            axes.set_xlabel("size (MB)")
            axes.set_ylabel("p50 latency (ms)")
            axes.set_title("no accuracy or agreement: run with --data", fontsize=9)
        else:
            quality = [row.get(metric) for row in rows]
            by_size, by_latency = figure.subplots(1, 2)
            for axes, xs, label in ((by_size, sizes, "size (MB)"), (by_latency, p50s, "p50 latency (ms)")):
                _draw_panel(axes, xs, quality, names, maximize_y=True)
                axes.set_xlabel(label)
                axes.set_ylabel(quality_label(metric))
        figure.suptitle(plot_title(report), fontsize=10)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def plot(report: dict[str, Any], path: Path | str) -> None:
    """Write plot_png(report) to `path` atomically."""
    write_bytes_atomic(Path(path), plot_png(report))


# ---------------------------------------------------------------- where the outputs go


@dataclass(frozen=True)
class Destinations:
    """Where `edgecli bench` writes its report: paths, or '-' (stdout) for the text ones."""

    json: str | None = None
    markdown: str | None = None
    csv: str | None = None
    plot: Path | None = None

    def texts(self) -> dict[str, str]:
        return {
            f"--{name}": dest
            for name, dest in (("json", self.json), ("markdown", self.markdown), ("csv", self.csv))
            if dest
        }


def _check_folder(option: str, dest: Path) -> None:
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{option} {dest}: folder {folder} does not exist")


def check_destinations(dests: Destinations) -> None:
    """Refuse bad output paths before any benchmarking: more than one output on stdout, a plot
    path not ending in .png, a missing folder (exit 2); --plot without matplotlib (exit 5)."""
    on_stdout = [option for option, dest in dests.texts().items() if dest == STDIO]
    if len(on_stdout) > 1:
        raise UsageError(
            f"{' and '.join(on_stdout)} both write to stdout (-)", hint="give all but one of them a file path"
        )
    for option, dest in dests.texts().items():
        if dest != STDIO:
            _check_folder(option, Path(dest))
    if dests.plot is not None:
        if dests.plot.suffix.lower() != ".png":
            raise UsageError(f"--plot {dests.plot}: the plot is a PNG, its path must end in .png")
        _check_folder("--plot", dests.plot)
        require_matplotlib()


def to_json(report: dict[str, Any]) -> str:
    return jsonout.dumps(report, sort_keys=True) + "\n"


def write_outputs(report: dict[str, Any], dests: Destinations) -> None:
    """Write every requested output (each atomically, or to stdout)."""
    for dest, render in ((dests.json, to_json), (dests.markdown, to_markdown), (dests.csv, to_csv)):
        if dest:
            write_output(dest, render(report).encode())
    if dests.plot is not None:
        plot(report, dests.plot)
