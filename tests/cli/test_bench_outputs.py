"""bench's Markdown, CSV and PNG outputs: the formatters on a hand-made report, then the real CLI."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest

from edgecli.cli.bench_outputs import (
    CSV_HEADER,
    Destinations,
    check_destinations,
    pareto_front,
    plot,
    plot_png,
    to_csv,
    to_markdown,
)
from edgecli.core.errors import UsageError
from tests.conftest import data_args, run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _point(threads: int, p50: float, **extra: float) -> dict:
    return {
        "threads": threads,
        "batch_size": 1,
        "p50_ms": p50,
        "p90_ms": p50 * 1.5,
        "p99_ms": p50 * 2,
        "mean_ms": p50 * 1.1,
        "std_ms": 0.1,
        "throughput_per_s": 1000.0 / (p50 * 1.1),
        "runs": 200,
        "p50_spread": 0.02,
        **extra,
    }


def make_report() -> dict:
    """Float reference (new shape), an INT8 model timed at 1 and 2 threads, and an old-shape row
    (latency_ms only) that lacks gzip size, params and accuracy."""
    return {
        "reference": "models/float.onnx",
        "data": "eval.npz",
        "passed": False,
        "machine": {
            "cpu": "Test CPU",
            "cpu_count": 8,
            "cpu_flags": ["avx2", "fma"],
            "tools": {"onnxruntime": "1.32.0"},
        },
        "recipe": {"threads": [1, 2]},
        "models": [
            {
                "path": "models/float.onnx",
                "format": "onnx",
                "size_bytes": 4_000_000,
                "gzip_bytes": 3_600_000,
                "params": 1_000_000,
                "memory": {"peak_mib": 52.34},
                "accuracy": 0.92,
                "agreement": 1.0,
                "speedup": 1.0,
                "latency": [_point(1, 2.0), _point(2, 1.25)],
            },
            {
                "path": "models/int8.onnx",
                "format": "onnx",
                "size_bytes": 1_000_000,
                "gzip_bytes": 800_000,
                "params": 1_000_000,
                "accuracy": 0.915,
                "agreement": 0.99,
                "speedup": 2.0,
                "latency": [_point(1, 1.0), _point(2, 0.625)],
            },
            {
                "path": "other/old.tflite",
                "format": "tflite",
                "size_bytes": 2_000_000,
                "agreement": 0.95,
                "batch_size": 1,
                "runs": 50,
                "latency_ms": {"p50": 3.0, "p90": 4.0, "p99": 5.0, "mean": 3.2, "std": 0.5, "throughput_per_s": 312.5},
            },
        ],
        "gates": [
            {"gate": "accuracy_drop <= 0.01", "model": "models/int8.onnx", "value": 0.005, "passed": True},
            {"gate": "p90_ms <= 1", "model": "models/int8.onnx", "value": 1.5, "passed": False},
        ],
    }


# ---------------------------------------------------------------- Markdown


def test_markdown_has_one_row_per_model_and_sweep_point_with_missing_figures_as_dashes() -> None:
    lines = to_markdown(make_report()).splitlines()
    assert lines[0] == "## edgecli bench ❌"
    assert "**Reference** `float.onnx` · **data** `eval.npz`  " in lines
    assert "**Machine** Test CPU · 8 logical CPUs · flags avx2 fma · 1, 2 threads  " in lines
    assert "**Tools** onnxruntime 1.32.0" in lines
    start = lines.index(next(line for line in lines if line.startswith("| model |")))
    table = lines[start : lines.index("", start)]
    del table[1]  # the alignment row
    assert table == [
        "| model | format | threads | batch | size MB | gzip MB | peak MiB | params | p50 ms | p90 ms | p99 ms | p50 spread | speedup | accuracy | agreement |",
        "| `float.onnx` (reference) | onnx | 1 | 1 | 4.00 | 3.60 | 52.3 | 1.0 M | 2.000 | 3.000 | 4.000 | 2.0% | 1.00× | 0.9200 | 1.0000 |",
        "| `float.onnx` (reference) | onnx | 2 | 1 | 4.00 | 3.60 | 52.3 | 1.0 M | 1.250 | 1.875 | 2.500 | 2.0% | 1.00× | 0.9200 | 1.0000 |",
        "| `int8.onnx` | onnx | 1 | 1 | 1.00 | 0.80 | - | 1.0 M | 1.000 | 1.500 | 2.000 | 2.0% | 2.00× | 0.9150 | 0.9900 |",
        "| `int8.onnx` | onnx | 2 | 1 | 1.00 | 0.80 | - | 1.0 M | 0.625 | 0.938 | 1.250 | 2.0% | 2.00× | 0.9150 | 0.9900 |",
        "| `old.tflite` | tflite | - | 1 | 2.00 | - | - | - | 3.000 | 4.000 | 5.000 | - | - | - | 0.9500 |",
    ]


def test_markdown_gates_are_marked_and_the_verdict_counts_failures() -> None:
    lines = to_markdown(make_report()).splitlines()
    assert "### Gates" in lines
    assert "| ✅ | `accuracy_drop <= 0.01` | `int8.onnx` | 0.005 |" in lines
    assert "| ❌ | `p90_ms <= 1` | `int8.onnx` | 1.5 |" in lines
    assert lines[-1] == "**❌ 1 of 2 gate checks failed**"


def test_markdown_without_sweep_or_gates_is_one_row_per_model() -> None:
    report = make_report()
    for row in report["models"][:2]:
        row["latency"] = row["latency"][:1]
    report.update(gates=[], passed=True, recipe={"threads": 1})
    text = to_markdown(report)
    assert text.startswith("## edgecli bench ✅\n")
    assert "· 1 thread  " in text
    assert "threads |" not in text and "### Gates" not in text
    assert sum(line.startswith("| `") for line in text.splitlines()) == 3
    assert text.splitlines()[-1] == "**✅ passed (no gates in the recipe)**"


def test_markdown_escapes_pipes_in_names() -> None:
    report = make_report()
    report["models"][1]["path"] = "models/a|b.onnx"
    assert "| `a\\|b.onnx` | onnx |" in to_markdown(report)


# ---------------------------------------------------------------- CSV


def test_csv_has_a_row_per_model_per_point_with_unrounded_numbers() -> None:
    text = to_csv(make_report())
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == ",".join(CSV_HEADER)
    assert [(r["model"], r["threads"]) for r in rows] == [
        ("float.onnx", "1"),
        ("float.onnx", "2"),
        ("int8.onnx", "1"),
        ("int8.onnx", "2"),
        ("old.tflite", ""),
    ]
    assert [r["is_reference"] for r in rows] == ["1", "1", "0", "0", "0"]
    int8_two_threads = rows[3]
    assert float(int8_two_threads["p90_ms"]) == 0.9375  # not rounded to 0.938
    assert float(int8_two_threads["throughput_per_s"]) == pytest.approx(1000 / 0.6875)
    assert int8_two_threads["size_bytes"] == "1000000"
    assert [r["peak_mib"] for r in rows] == ["52.34", "52.34", "", "", ""]
    old = rows[4]
    assert (old["p50_ms"], old["mean_ms"], old["runs"], old["batch_size"]) == ("3.0", "3.2", "50", "1")
    assert (old["gzip_bytes"], old["accuracy"], old["params"], old["p50_spread"]) == ("", "", "", "")


def test_csv_header_is_stable_whatever_the_report_holds() -> None:
    minimal = {"reference": "m.onnx", "models": [{"path": "m.onnx"}], "gates": []}
    rows = list(csv.reader(io.StringIO(to_csv(minimal))))
    assert rows[0] == CSV_HEADER
    assert rows[1][:4] == ["m.onnx", "m.onnx", "", "1"]
    assert all(cell == "" for cell in rows[1][4:])


# ---------------------------------------------------------------- Pareto front


def test_pareto_front_keeps_ties_and_drops_dominated_and_unmeasured_points() -> None:
    points = [
        (1.0, 0.90),  # 0 front
        (2.0, 0.95),  # 1 front
        (2.0, 0.93),  # 2 dominated by 1: same size, less accurate
        (3.0, 0.95),  # 3 dominated by 1: bigger, as accurate
        (1.0, 0.90),  # 4 tie with 0: neither dominates the other
        (0.5, 0.80),  # 5 front: smallest
        (None, 0.99),  # 6 not measured
        (4.0, 0.97),  # 7 front: most accurate
        (math.nan, 1.0),  # 8 not measured
        (5.0, 0.97),  # 9 dominated by 7
    ]
    assert pareto_front(points) == [0, 1, 4, 5, 7]


def test_pareto_front_with_both_axes_minimised() -> None:
    assert pareto_front([(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (2.0, 3.0)], maximize_y=False) == [0, 1, 3]


def test_pareto_front_of_nothing_or_one_point() -> None:
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5)]) == [0]


# ---------------------------------------------------------------- plot


def _png_shape(path: Path) -> tuple[int, ...]:
    import matplotlib.image

    return matplotlib.image.imread(path).shape


def test_plot_writes_a_png_of_fixed_size(tmp_path: Path) -> None:
    out = tmp_path / "bench.png"
    plot(make_report(), out)
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert _png_shape(out)[:2] == (500, 1200)
    assert [p.name for p in tmp_path.iterdir()] == ["bench.png"]  # no temporary file left


def test_plot_is_deterministic() -> None:
    assert plot_png(make_report()) == plot_png(make_report())


def test_plot_falls_back_to_agreement_then_to_latency_against_size(tmp_path: Path) -> None:
    report = make_report()
    for row in report["models"]:
        row.pop("accuracy", None)
    with_agreement = plot_png(report)
    for row in report["models"]:
        row.pop("agreement", None)
    without_quality = plot_png(report)
    assert with_agreement.startswith(PNG_SIGNATURE) and without_quality.startswith(PNG_SIGNATURE)
    assert with_agreement != without_quality != plot_png(make_report())


# ---------------------------------------------------------------- destinations


@pytest.mark.parametrize(
    "dests, message",
    [
        (Destinations(json="-", markdown="-"), "--json and --markdown both write to stdout"),
        (Destinations(json="-", markdown="-", csv="-"), "--json and --markdown and --csv both write to stdout"),
        (Destinations(plot=Path("bench.jpg")), "must end in .png"),
        (Destinations(plot=Path("no/such/folder/bench.png")), "folder no/such/folder does not exist"),
        (Destinations(csv="no/such/folder/bench.csv"), "folder no/such/folder does not exist"),
    ],
)
def test_bad_destinations_are_usage_errors(dests: Destinations, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_destinations(dests)


def test_good_destinations_pass(tmp_path: Path) -> None:
    check_destinations(
        Destinations(json=str(tmp_path / "r.json"), markdown="-", csv=str(tmp_path / "r.csv"), plot=tmp_path / "r.PNG")
    )


# ---------------------------------------------------------------- the real CLI


def test_bench_writes_markdown_csv_json_and_plot_before_a_failing_gate_exits_1(
    sample: dict[str, Path], sample_int8: Path, tmp_path: Path
) -> None:
    outputs = {"json": tmp_path / "bench.json", "csv": tmp_path / "bench.csv", "plot": tmp_path / "bench.png"}
    result = run_cli(
        "bench", sample["onnx"], sample_int8, "-r", "default", *data_args("bench"),
        "--set", "runs=20", "--set", "min_time_s=0.05", "--set", "warmup=2", "--set", "memory=false",
        "--set", "gates=['accuracy_drop <= 0.5', 'p50_ms <= 0.000001']",
        "--json", outputs["json"], "--csv", outputs["csv"], "--plot", outputs["plot"], "--markdown", "-", "-q",
    )  # fmt: skip
    assert result.code == 1, result.stderr
    assert "gate failed" in result.stderr
    markdown = result.stdout.decode()
    for name in (sample["onnx"].name, sample_int8.name):
        assert f"`{name}`" in markdown
    assert "| ✅ | `accuracy_drop <= 0.5` |" in markdown and "| ❌ | `p50_ms <= 0.000001` |" in markdown
    rows = list(csv.DictReader(outputs["csv"].open()))
    assert [r["model"] for r in rows] == [sample["onnx"].name, sample_int8.name]
    assert all(float(r["p50_ms"]) > 0 and 0.5 < float(r["accuracy"]) <= 1 for r in rows)
    assert outputs["json"].read_text().startswith("{")
    assert outputs["plot"].read_bytes().startswith(PNG_SIGNATURE)
    assert _png_shape(outputs["plot"])[:2] == (500, 1200)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--plot", "bench.svg"], "must end in .png"),
        (["--plot", "missing-folder/bench.png"], "folder missing-folder does not exist"),
        (["--json", "-", "--csv", "-"], "--json and --csv both write to stdout"),
    ],
)
def test_bench_refuses_bad_outputs_before_benchmarking(
    sample: dict[str, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_cli("bench", sample["onnx"], "-r", "default", *args, cwd=tmp_path)
    assert result.code == 2, result.stderr
    assert message in result.stderr
    assert "timing" not in result.stderr
    assert list(tmp_path.iterdir()) == []
