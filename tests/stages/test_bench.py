"""bench: the report's figures, gates and outputs on the sample model and its variants."""

from __future__ import annotations

import json

import pytest

from edgecli.data import load_dataset
from edgecli.formats.model_file import ModelFile
from edgecli.metrics import accuracy
from edgecli.recipes import BenchRecipe, DataSpec
from edgecli.stages.bench import latency_stats, measure_latency
from edgecli.runtimes import open_runner
from tests.conftest import data_args, run_cli

FAST = ["--set", "runs=30", "--set", "min_time_s=0", "--set", "warmup=3"]


@pytest.fixture(scope="module")
def report(sample, sample_int8, sample_tflite, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "report.json"
    result = run_cli("bench", sample["onnx"], sample_int8, sample_tflite, sample["pt2"], "-r", "default", *data_args("bench"), *FAST, "--json", path)
    assert result.code == 0, result.stderr
    return json.loads(path.read_text()), result


def test_report_has_the_documented_fields(report):
    data, _ = report
    assert data["passed"] is True
    assert [m["format"] for m in data["models"]] == ["onnx", "onnx", "tflite", "pt2"]
    for model in data["models"]:
        assert {"path", "format", "size_bytes", "latency_ms", "accuracy", "agreement"} <= set(model)
        latency = model["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
        assert model["runs"] >= 30
        assert model["size_bytes"] == ModelFile.open(model["path"]).size_bytes
    assert data["machine"]["cpu_count"] >= 1 and "onnxruntime" in data["machine"]["tools"]


def test_accuracy_and_agreement_are_real(report, sample):
    data, _ = report
    dataset = load_dataset(DataSpec(path=sample["eval"]))
    for model in data["models"]:
        measured = accuracy(open_runner(ModelFile.open(model["path"])).predict(dataset)[0], dataset.labels)
        assert abs(model["accuracy"] - measured) < 1e-9
    reference = data["models"][0]
    assert reference["agreement"] == 1.0 and reference["speedup"] == 1.0
    assert data["models"][2]["agreement"] == 1.0  # float TFLite answers like the float ONNX
    assert data["models"][1]["agreement"] >= 0.97  # INT8


def test_table_on_stderr_lists_every_model(report):
    _, result = report
    for name in ("fashion_cnn.onnx", "fashion.int8.onnx", "fashion.tflite", "fashion_cnn.pt2"):
        assert name in result.stderr
    assert result.stdout == b""


def test_broken_gate_exits_1_after_writing_the_report(sample, sample_int8, tmp_path):
    path = tmp_path / "r.json"
    result = run_cli("bench", sample["onnx"], sample_int8, "-r", "default", *data_args("bench"), *FAST, "--set", "data.limit=200",
                     "--set", "gates=['size_bytes <= 1000', 'accuracy_drop <= 0.05']", "--json", path)
    assert result.code == 1
    data = json.loads(path.read_text())
    assert data["passed"] is False
    verdict = {g["gate"]: g["passed"] for g in data["gates"]}
    assert verdict == {"size_bytes <= 1000": False, "accuracy_drop <= 0.05": True}
    assert result.lines[-1].startswith("gate failed: 1 gate(s) failed: size_bytes <= 1000")


def test_json_to_stdout_is_pure_json(sample, tmp_path):
    result = run_cli("bench", sample["onnx"], "-r", "default", *data_args("bench"), *FAST, "--set", "data.limit=100", "--json", "-")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["models"][0]["format"] == "onnx"


def test_without_data_times_on_synthetic_inputs(sample):
    result = run_cli("bench", sample["onnx"], "-r", "default", *FAST, "--set", "data.path=null", "--json", "-", "-q")
    assert result.code == 0, result.stderr
    model = json.loads(result.stdout)["models"][0]
    assert model["accuracy"] is None and model["latency_ms"]["p50"] > 0


def test_interleaved_timing_counts(sample):
    runner = open_runner(ModelFile.open(sample["onnx"]))
    data = load_dataset(DataSpec(path=sample["eval"], limit=1))
    feeds = runner.feeds(data.batch(0, 1))
    recipe = BenchRecipe(warmup=1, runs=7, min_time_s=0)
    samples = measure_latency([runner, runner], [feeds, feeds], recipe)
    assert [len(s) for s in samples] == [7, 7]
    stats = latency_stats(samples[0], 1)
    assert stats["p50"] <= stats["p99"] and stats["throughput_per_s"] > 0
