"""bench: the report's figures, sweeps, reference, synthesised inputs, gates and outputs on the
sample model, its variants and the tiny integer-input transformer (through the real CLI)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecli.analysis.latency import latency_stats, measure_latency
from edgecli.analysis.metrics import accuracy
from edgecli.data.dataset import load_dataset
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import BenchRecipe, DataSpec
from edgecli.runtimes import open_runner
from tests.conftest import data_args, run_cli

TIMING = ["--set", "runs=20", "--set", "min_time_s=0.05", "--set", "warmup=2"]
FAST = [*TIMING, "--set", "memory=false"]  # peak memory (a process per model) is measured in `report` only
SAMPLE_MACS = 123_057_920  # sample_models/README.md: MACs per image
POINT_KEYS = {
    "threads",
    "batch_size",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "std_ms",
    "throughput_per_s",
    "runs",
    "p50_spread",
    "speedup",
}


def fixed_batch_onnx(path: Path) -> Path:
    """A one-node ONNX model whose input is float32 [1, 4]: its batch cannot change."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.fixture(scope="module")
def report(sample, sample_int8, sample_tflite, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    path = folder / "report.json"
    result = run_cli(
        "bench",
        sample["onnx"],
        sample_int8,
        sample_tflite,
        sample["pt2"],
        "-r",
        "default",
        *data_args("bench"),
        *TIMING,
        "--json",
        path,
        "--markdown",
        folder / "report.md",
        "--csv",
        folder / "report.csv",
        "--plot",
        folder / "report.png",
    )
    assert result.code == 0, result.stderr
    return json.loads(path.read_text()), result, folder


def test_one_call_over_float_int8_and_tflite_writes_table_json_markdown_csv_and_plot(report):
    data, result, folder = report
    names = [Path(m["path"]).name for m in data["models"]]
    assert all(name in result.stderr for name in names)  # the table
    markdown = (folder / "report.md").read_text()
    assert all(f"`{name}`" in markdown for name in names)
    rows = list(csv.DictReader((folder / "report.csv").open()))
    assert [r["model"] for r in rows] == names
    assert [float(r["p50_ms"]) for r in rows] == pytest.approx([m["latency"][0]["p50_ms"] for m in data["models"]])
    assert (folder / "report.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_report_has_the_documented_fields(report):
    data, _, _ = report
    assert data["passed"] is True
    assert {"reference", "data", "models", "gates", "passed", "warnings", "recipe", "machine"} <= set(data)
    assert [m["format"] for m in data["models"]] == ["onnx", "onnx", "tflite", "pt2"]
    for model in data["models"]:
        assert {
            "path",
            "format",
            "size_bytes",
            "gzip_bytes",
            "params",
            "macs",
            "sparsity",
            "latency",
            "latency_ms",
            "speedup",
            "size_ratio",
            "accuracy",
            "accuracy_drop",
            "agreement",
            "cosine",
            "relative_error",
        } <= set(model)
        memory = model["memory"]  # measured in a process of its own per model
        assert model["peak_mib"] == memory["peak_mib"] >= memory["baseline_mib"] > 0
        assert 0 <= model["model_mib"] < memory["peak_mib"]
        [point] = model["latency"]  # no sweep: one point
        assert set(point) == POINT_KEYS
        assert (point["threads"], point["batch_size"]) == (1, 1)
        assert 0 < point["p50_ms"] <= point["p90_ms"] <= point["p99_ms"]
        assert point["runs"] >= 20 and point["p50_spread"] >= 0
        assert model["latency_ms"]["p50"] == point["p50_ms"] and model["speedup"] == point["speedup"]
        assert model["size_bytes"] == ModelFile.open(model["path"]).size_bytes
        assert 0 < model["gzip_bytes"] < model["size_bytes"]
    assert data["machine"]["cpu_count"] >= 1 and "onnxruntime" in data["machine"]["tools"]
    assert data["recipe"]["threads"] == [1] and data["recipe"]["batch_size"] == [1]


def test_macs_of_the_sample_are_exact_in_every_format(report):
    data, _, _ = report
    assert [m["macs"] for m in data["models"]] == [SAMPLE_MACS] * 4  # float ONNX, INT8 ONNX, TFLite, .pt2


def test_params_and_sparsity(report):
    data, _, _ = report
    params = {m["format"]: m["params"] for m in data["models"]}
    assert 352_000 <= params["onnx"] <= 356_000 and 352_000 <= params["pt2"] <= 356_000  # 352,874 trained parameters
    float_onnx, int8, tflite, pt2 = data["models"]
    assert float_onnx["sparsity"] == tflite["sparsity"] == pt2["sparsity"] == 0.0  # dense float weights
    assert 0 < int8["sparsity"] < 0.05  # a few weights round to int8 zero


def test_accuracy_and_agreement_are_real(report, sample):
    data, _, _ = report
    dataset = load_dataset(DataSpec(path=sample["eval"]))
    for model in data["models"]:
        measured = accuracy(open_runner(ModelFile.open(model["path"])).predict(dataset)[0], dataset.labels)
        assert abs(model["accuracy"] - measured) < 1e-9
    reference = data["models"][0]
    assert reference["agreement"] == 1.0 and reference["speedup"] == 1.0 and reference["cosine"] == 1.0
    assert reference["accuracy_drop"] == 0.0 and reference["max_abs_diff"] == 0.0
    assert data["models"][2]["agreement"] == 1.0  # float TFLite answers like the float ONNX
    assert data["models"][2]["cosine"] > 0.99999 and data["models"][2]["max_abs_diff"] < 1e-4
    int8 = data["models"][1]
    assert int8["agreement"] >= 0.97 and 0.99 < int8["cosine"] < 1.0 and 0 < int8["relative_error"] < 0.1
    assert int8["accuracy_drop"] == pytest.approx(reference["accuracy"] - int8["accuracy"])
    assert int8["size_ratio"] == pytest.approx(int8["size_bytes"] / reference["size_bytes"])
    assert int8["compressed_by"] == ["quantize"] and data["models"][2]["compressed_by"] == []


def test_table_on_stderr_lists_every_model(report):
    _, result, _ = report
    for name in ("fashion_cnn.onnx", "fashion.int8.onnx", "fashion.tflite", "fashion_cnn.pt2"):
        assert name in result.stderr
    for header in ("gzip MB", "params", "MACs", "p50 ms ±spread", "/s", "cosine"):
        assert header in result.stderr
    assert "123.1M" in result.stderr
    assert result.stdout == b""


def test_broken_gate_exits_1_after_writing_the_report(sample, sample_int8, tmp_path):
    path = tmp_path / "r.json"
    result = run_cli(
        "bench",
        sample["onnx"],
        sample_int8,
        "-r",
        "default",
        *data_args("bench"),
        *FAST,
        "--set",
        "data.limit=200",
        "--set",
        "gates=['size_bytes <= 1000', 'accuracy_drop <= 0.05', 'cosine >= 0.99', 'macs <= 2e8']",
        "--json",
        path,
    )
    assert result.code == 1
    data = json.loads(path.read_text())
    assert data["passed"] is False
    verdict = {g["gate"]: g["passed"] for g in data["gates"]}
    assert verdict == {
        "size_bytes <= 1000": False,
        "accuracy_drop <= 0.05": True,
        "cosine >= 0.99": True,
        "macs <= 2e8": True,
    }
    assert [g["model"] for g in data["gates"]] == [str(sample_int8)] * 4  # never the reference
    assert result.lines[-1].startswith("gate failed: 1 gate(s) failed: size_bytes <= 1000")


def test_shipped_ci_gates_hold_for_int8_against_float_size_and_accuracy(sample, sample_int8):
    result = run_cli(
        "bench", sample["onnx"], sample_int8, "-r", "ci-gates", *data_args("bench"), *FAST, "--json", "-", "-q"
    )
    data = json.loads(result.stdout)
    verdict = {g["gate"]: g["passed"] for g in data["gates"]}
    assert set(verdict) == {"p90_ms <= 1.0", "size_bytes <= 500_000", "accuracy_drop <= 0.01", "speedup >= 1.5"}
    assert verdict["size_bytes <= 500_000"] and verdict["accuracy_drop <= 0.01"]  # timing gates depend on the machine
    assert result.code == (0 if data["passed"] else 1)


def test_unknown_gate_metric_exits_2_before_any_work(sample):
    result = run_cli("bench", sample["onnx"], "-r", "default", "--set", "gates=['p95_ms <= 3']")
    assert result.code == 2
    assert "unknown gate metric 'p95_ms'" in result.stderr and "did you mean" in result.stderr


def test_gate_on_a_metric_not_measured_exits_2(sample):
    result = run_cli("bench", sample["onnx"], "-r", "default", *FAST, "--set", "gates=['accuracy >= 0.5']", "-q")
    assert result.code == 2
    assert "accuracy was not measured" in result.stderr


def test_json_to_stdout_is_pure_json(sample, tmp_path):
    result = run_cli(
        "bench", sample["onnx"], "-r", "default", *data_args("bench"), *FAST, "--set", "data.limit=100", "--json", "-"
    )
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["models"][0]["format"] == "onnx"


def test_without_data_times_on_synthetic_inputs(sample):
    result = run_cli("bench", sample["onnx"], "-r", "default", *FAST, "--set", "data.path=null", "--json", "-", "-q")
    assert result.code == 0, result.stderr
    model = json.loads(result.stdout)["models"][0]
    assert model["accuracy"] is None and model["cosine"] is None and model["latency_ms"]["p50"] > 0
    assert model["inputs"] == {"input": {"shape": [1, 1, 28, 28], "dtype": "float32"}}
    assert model["macs"] == SAMPLE_MACS


def test_multi_input_integer_transformer_without_data(tiny_transformer):
    result = run_cli(
        "bench",
        tiny_transformer.onnx,
        tiny_transformer.pt2,
        "-r",
        "default",
        *FAST,
        "--set",
        "batch_size=[1,4]",
        "--json",
        "-",
        "-q",
    )
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["data"] == "random inputs"
    for model in data["models"]:
        assert model["inputs"] == {
            name: {"shape": [1, 16], "dtype": "int64"} for name in ("input_ids", "attention_mask", "token_type_ids")
        }
        assert [p["batch_size"] for p in model["latency"]] == [1, 4]
    onnx_row, pt2_row = data["models"]
    assert onnx_row["macs"] == pt2_row["macs"] > 1_000_000  # the same network counted two ways


def test_sweep_times_every_threads_and_batch_point(sample, tmp_path):
    fixed = fixed_batch_onnx(tmp_path / "fixed.onnx")
    result = run_cli(
        "bench",
        sample["onnx"],
        fixed,
        "-r",
        "default",
        *FAST,
        "--set",
        "threads=[1,2]",
        "--set",
        "batch_size=[1,4]",
        "--json",
        "-",
    )
    assert result.code == 0, result.stderr
    sample_row, fixed_row = json.loads(result.stdout)["models"]
    assert [(p["threads"], p["batch_size"]) for p in sample_row["latency"]] == [(1, 1), (1, 4), (2, 1), (2, 4)]
    assert [(p["threads"], p["batch_size"]) for p in fixed_row["latency"]] == [
        (1, 1),
        (2, 1),
    ]  # its batch is fixed at 1
    assert fixed_row["batch_fixed"] is True and sample_row["batch_fixed"] is False
    assert "fixed.onnx: its signature fixes the batch at 1" in result.stderr
    for point in sample_row["latency"]:
        assert set(point) == POINT_KEYS and point["speedup"] == 1.0  # the reference against itself
        assert point["throughput_per_s"] == pytest.approx(point["batch_size"] * 1000 / point["mean_ms"])
    assert sample_row["latency_ms"]["p50"] == sample_row["latency"][0]["p50_ms"]  # the headline is the first point
    assert fixed_row["macs"] == 0  # Relu: no multiply-accumulates
    assert fixed_row["inputs"] == {"x": {"shape": [1, 4], "dtype": "float32"}}


def test_reference_option_adds_a_model_not_given_and_identical_models_agree_fully(sample, tmp_path):
    copy = tmp_path / "copy.onnx"
    shutil.copyfile(sample["onnx"], copy)
    result = run_cli(
        "bench",
        copy,
        "--reference",
        sample["onnx"],
        "-r",
        "default",
        *data_args("bench"),
        *FAST,
        "--set",
        "data.limit=100",
        "--set",
        "gates=['cosine >= 0.999999']",
        "--json",
        "-",
    )
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["reference"] == str(sample["onnx"])
    assert [Path(m["path"]).name for m in data["models"]] == ["fashion_cnn.onnx", "copy.onnx"]
    same = data["models"][1]
    assert same["cosine"] == pytest.approx(1.0, abs=1e-12) and same["agreement"] == 1.0
    assert same["max_abs_diff"] == 0.0 and same["relative_error"] == 0.0 and same["accuracy_drop"] == 0.0
    assert [g["model"] for g in data["gates"]] == [str(copy)]
    assert "is not among the models" in result.stderr


def test_reference_option_picks_one_of_the_models(sample, sample_int8):
    result = run_cli(
        "bench",
        sample["onnx"],
        sample_int8,
        "--reference",
        sample_int8,
        "-r",
        "default",
        *data_args("bench"),
        *FAST,
        "--set",
        "data.limit=100",
        "--set",
        "gates=['accuracy_drop <= 0.5']",
        "--json",
        "-",
        "-q",
    )
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    float_row, int8_row = data["models"]
    assert data["reference"] == str(sample_int8)
    assert int8_row["speedup"] == 1.0 and int8_row["agreement"] == 1.0 and int8_row["accuracy_drop"] == 0.0
    assert float_row["size_ratio"] > 3  # the float model is the bigger one now
    assert float_row["compressed_by"] == []  # the float model is the int8 model's parent, not compressed
    assert [g["model"] for g in data["gates"]] == [str(sample["onnx"])]


def test_compressed_but_not_faster_is_called_out(sample, tmp_path):
    fp16 = tmp_path / "fp16.onnx"
    made = run_cli("quantize", sample["onnx"], "-r", "fp16", "--set", "speed_check=false", "-o", fp16, "-q")
    assert made.code == 0, made.stderr
    result = run_cli("bench", sample["onnx"], fp16, "-r", "default", *FAST, "--json", "-")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    row = data["models"][1]
    assert row["compressed_by"] == ["quantize"] and row["macs"] == SAMPLE_MACS
    assert row["size_ratio"] == pytest.approx(0.5, abs=0.02)
    warned = [w for w in data["warnings"] if "is compressed (quantize) but not faster" in w]
    if row["speedup"] <= 1 / 0.95:  # FP16 on a CPU: float32 kernels behind Cast nodes (measured 0.93x)
        assert len(warned) == 1 and "FP16" in warned[0]
        assert "fp16.onnx is compressed (quantize) but not faster" in result.stderr
    else:
        assert warned == []


def test_bad_input_shapes_name_the_input(sample):
    result = run_cli("bench", sample["onnx"], "-r", "default", *FAST, "--set", "input_shapes.imput=[1,28,28]", "-q")
    assert result.code == 2
    assert "input_shapes names imput, which no model has" in result.stderr and "model inputs: input" in result.stderr
    result = run_cli("bench", sample["onnx"], "-r", "default", *FAST, "--set", "input_shapes.input=[1,1,28,28]", "-q")
    assert result.code == 2
    assert "does not fit the model input" in result.stderr and "without the batch axis" in result.stderr


def test_interleaved_timing_counts(sample):
    runner = open_runner(ModelFile.open(sample["onnx"]))
    data = load_dataset(DataSpec(path=sample["eval"], limit=1))
    feeds = runner.feeds(data.batch(0, 1))
    recipe = BenchRecipe(warmup=1, runs=7, min_time_s=0)
    samples = measure_latency([runner, runner], [feeds, feeds], recipe)
    assert [len(s) for s in samples] == [7, 7]
    stats = latency_stats(samples[0], 1)
    assert stats["p50"] <= stats["p99"] and stats["throughput_per_s"] > 0


def test_every_task_gets_its_runs_and_its_time(sample):
    """A fast and a slow task timed together: both reach the minimum count and the minimum time."""
    runner = open_runner(ModelFile.open(sample["onnx"]), threads=1)
    small = {"input": np.zeros((1, 1, 28, 28), np.float32)}
    large = {"input": np.zeros((8, 1, 28, 28), np.float32)}
    recipe = BenchRecipe(warmup=1, runs=10, min_time_s=0.1)
    fast, slow = measure_latency([runner, runner], [small, large], recipe)
    for times in (fast, slow):
        assert len(times) >= 10 and sum(times) >= 99.999  # 0.1 s in ms (float sums)
