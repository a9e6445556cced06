"""convert to onnxruntime's ORT format (mobile/minimal builds): detected from its bytes, parity
proven on real data, lineage inside the file, runnable by bench and inspect."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgecli.data.dataset import load_dataset
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import DataSpec
from edgecli.runtimes import open_runner
from tests.conftest import leftovers, run_cli


@pytest.mark.parametrize("source", ["onnx", "pt2"])
def test_ort_format_matches_its_parent_and_keeps_lineage(sample, tmp_path, source):
    out = tmp_path / "model.ort"
    result = run_cli("convert", sample[source], "-r", "ort-mobile", "--data", sample["eval"], "-o", out, "-q")
    assert result.code == 0, result.stderr
    model = ModelFile.open(out)
    assert model.format is Format.ORT and out.read_bytes()[4:8] == b"ORTM"
    step = model.lineage["steps"][-1]
    assert step["verb"] == "convert" and step["parent"]["format"] == source
    assert (
        step["metrics"]["parity_max_abs_diff"] <= 1e-4 and step["metrics"]["parity_agreement"] == 1.0
    )  # 1.9e-6 measured
    data = load_dataset(DataSpec(path=sample["eval"], limit=256))
    reference = open_runner(ModelFile.open(sample["onnx"])).predict(data)[0]
    runner = open_runner(model)
    assert [s.shape for s in runner.inputs] == [(None, 1, 28, 28)]  # dynamic batch kept
    assert np.abs(runner.predict(data)[0] - reference).max() <= 1e-4


def test_ort_file_is_benchmarked_and_inspected(sample, tmp_path):
    out = tmp_path / "model.ort"
    assert run_cli("convert", sample["onnx"], "-r", "ort-mobile", "--data", sample["eval"], "-o", out, "-q").code == 0
    bench = run_cli(
        "bench",
        sample["onnx"],
        out,
        "-r",
        "default",
        "--data",
        sample["eval"],
        "--set",
        "runs=10",
        "--set",
        "min_time_s=0",
        "--json",
        "-",
        "-q",
    )
    assert bench.code == 0, bench.stderr
    rows = json.loads(bench.stdout)["models"]
    assert rows[1]["format"] == "ort" and rows[1]["agreement"] == 1.0 and rows[1]["accuracy"] == rows[0]["accuracy"]
    shown = run_cli("inspect", out, "--json", "-")
    assert shown.code == 0 and json.loads(shown.stdout)["format"] == "ort"


def test_ort_from_tflite_is_refused_with_exit_2(sample_tflite, tmp_path):
    result = run_cli("convert", sample_tflite, "-r", "ort-mobile", "-o", tmp_path / "x.ort")
    assert result.code == 2 and "convert reads .pt2, ONNX, Keras, SavedModel or a state_dict" in result.lines[-1]
    assert leftovers(tmp_path) == []
