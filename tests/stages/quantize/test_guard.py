"""quantize's accuracy guard and --report on the sample CNN: a missed target moves the most sensitive
layers to float until it holds; if it never holds, the best model and its report are still written
and the exit code is 1. Every claim is re-measured on the written file."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest

from edgecli.analysis.metrics import accuracy, agreement
from edgecli.data.dataset import load_dataset
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import DataSpec
from edgecli.runtimes import open_runner
from tests.conftest import data_args, leftovers, run_cli

# Ranges calibrated on one image clip the other images' activations: the drop is measurable
# (0.2-0.25 points on eval.npz), which the guard must win back.
ONE_IMAGE = ("--set", "calibration.samples=1")


@pytest.fixture(scope="module")
def eval_outputs(sample):
    data = load_dataset(DataSpec(path=sample["eval"]))
    return data, open_runner(ModelFile.open(sample["onnx"])).predict(data)[0]


def _measure(path, eval_outputs) -> dict[str, float]:
    data, reference = eval_outputs
    output = open_runner(ModelFile.open(path)).predict(data)[0]
    return {
        "agreement": agreement(reference, output),
        "drop": accuracy(reference, data.labels) - accuracy(output, data.labels),
    }


def _float_nodes(path) -> set[str]:
    """Conv/Gemm nodes of a QDQ model whose weights are float (not a DequantizeLinear output)."""
    proto = onnx.load(str(path))
    dequantized = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] not in dequantized}


def test_guard_keeps_sensitive_layers_float_until_the_drop_budget_holds(sample, tmp_path, eval_outputs):
    out, report = tmp_path / "guarded.onnx", tmp_path / "guard.json"
    result = run_cli(
        "quantize",
        sample["onnx"],
        "-r",
        "int8-static",
        *data_args("quantize"),
        *ONE_IMAGE,
        "--set",
        "max_accuracy_drop=0",
        "--set",
        "guard.max_steps=12",
        "-o",
        out,
        "--report",
        report,
    )
    assert result.code == 0, result.stderr
    document = json.loads(report.read_text())
    steps = document["guard"]["steps"]
    assert steps[0]["meets_target"] is False and steps[-1]["meets_target"] is True
    assert [len(s["float_layers"]) for s in steps] == list(range(len(steps)))  # one layer per step
    kept = document["guard"]["float_layers"]
    assert kept == steps[-1]["float_layers"] and _float_nodes(out) == set(kept)
    measured = _measure(out, eval_outputs)
    assert measured["drop"] <= 1e-9, measured  # the written file meets the target
    assert abs(measured["agreement"] - steps[-1]["agreement"]) < 1e-9
    reasons = {e["node"]: e["reason"] for e in document["excluded"]}
    assert all(reasons[node].startswith("accuracy guard") for node in kept)
    assert "accuracy guard step 1" in result.stderr


def test_guard_that_cannot_meet_the_target_writes_the_best_and_exits_1(sample, tmp_path, eval_outputs):
    out, report = tmp_path / "best.onnx", tmp_path / "best.json"
    result = run_cli(
        "quantize",
        sample["onnx"],
        "-r",
        "int8-static",
        *data_args("quantize"),
        *ONE_IMAGE,
        "--set",
        "min_agreement=1.0",
        "--set",
        "guard.max_steps=2",
        "-o",
        out,
        "--report",
        report,
    )
    assert result.code == 1, result.stderr
    assert result.lines[-1].startswith("gate failed: agreement") and "written anyway" in result.lines[-1]
    document = json.loads(report.read_text())
    steps = document["guard"]["steps"]
    assert len(steps) == 3 and not any(s["meets_target"] for s in steps)
    best = max(steps, key=lambda s: (s["agreement"], -s["step"]))
    assert document["guard"]["float_layers"] == best["float_layers"]
    assert abs(_measure(out, eval_outputs)["agreement"] - best["agreement"]) < 1e-9
    assert document["target_met"] is False


def test_report_has_per_layer_snr_exclusions_size_and_accuracy(sample, tmp_path):
    out, report = tmp_path / "r.onnx", tmp_path / "r.json"
    result = run_cli(
        "quantize",
        sample["onnx"],
        "-r",
        "int8-static",
        *data_args("quantize"),
        "--set",
        "exclude_nodes=[node_Conv_122]",
        "--set",
        "calibration.samples=128",
        "-o",
        out,
        "--report",
        report,
    )
    assert result.code == 0, result.stderr
    document = json.loads(report.read_text())
    layers = {l["node"]: l for l in document["layers"]}
    convs = [l for l in layers.values() if l["op_type"] in ("Conv", "Gemm")]
    assert len(convs) == 8
    for layer in convs:
        if layer["quantized"]:
            assert 20 < layer["snr_db"] < 80 and math.isclose(
                10 ** (-layer["snr_db"] / 10), layer["rel_mse"], rel_tol=1e-3
            )
    assert (
        layers["node_Conv_122"]["quantized"] is False and layers["node_Conv_122"]["reason"] == "recipe: exclude_nodes"
    )
    assert {"node": "node_Conv_122", "op_type": "Conv", "reason": "recipe: exclude_nodes"} in document["excluded"]
    size = document["size"]
    assert size["float_bytes"] == sample["onnx"].stat().st_size
    assert 0 < out.stat().st_size - size["quantized_bytes"] < 4096  # the file adds only its lineage
    assert document["before"]["accuracy"] > 0.9 and document["after"]["agreement"] > 0.97
    assert document["speed"]["float_p50_ms"] > 0 and document["speed"]["quantized_p50_ms"] > 0
    assert "per-layer error" in result.stderr and "node_Conv_122" in result.stderr


def test_fp16_on_cpu_is_reported_not_faster_with_the_reason(sample, tmp_path):
    # onnxruntime's CPU provider runs FP16 graphs through Cast nodes: measured 1.09x the float p50.
    out, report = tmp_path / "h.onnx", tmp_path / "h.json"
    result = run_cli("quantize", sample["onnx"], "-r", "fp16", "--data", sample["eval"], "-o", out, "--report", report)
    assert result.code == 0, result.stderr
    speed = json.loads(report.read_text())["speed"]
    assert speed["faster"] is False and "FP16" in speed["likely_reasons"][0]
    assert "not faster on this machine" in result.stderr


def test_guard_targets_need_the_data_they_measure_on(sample, tmp_path):
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, x=np.load(sample["calib"])["x"][:64])
    no_labels = run_cli(
        "quantize",
        sample["onnx"],
        "-r",
        "int8-static",
        "--data",
        unlabelled,
        "--set",
        "max_accuracy_drop=0.01",
        "-o",
        tmp_path / "x.onnx",
    )
    # issue 19 finding 9: unlabelled data (the usual case) is not refused; the drop cannot be measured, so
    # the answer check against the float model holds the model instead, and says so
    assert no_labels.code == 0, no_labels.stderr
    said = " ".join(no_labels.stderr.split())  # the console wraps long lines
    assert "max_accuracy_drop 0.01 cannot be measured (unlabelled.npz has no labels)" in said
    assert "answers against the float model: logits top-1 agreement" in said
    no_data = run_cli(
        "quantize", sample["onnx"], "-r", "int8-dynamic", "--set", "min_agreement=0.99", "-o", tmp_path / "y.onnx"
    )
    assert no_data.code == 2 and "min_agreement needs data" in no_data.lines[-1]
    assert leftovers(tmp_path) == ["unlabelled.npz", "x.onnx"]


def test_report_path_in_a_missing_folder_is_refused_before_work(sample, tmp_path):
    result = run_cli(
        "quantize",
        sample["onnx"],
        "-r",
        "int8-static",
        *data_args("quantize"),
        "-o",
        tmp_path / "x.onnx",
        "--report",
        tmp_path / "missing" / "r.json",
    )
    assert result.code == 2 and "does not exist" in result.lines[-1]
    assert leftovers(tmp_path) == []
