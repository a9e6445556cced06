"""A state_dict (.pt) and its model code (model.factory) through convert (to .pt2 and ONNX) and
quantize, judged against the eager PyTorch module built here without edgecli."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecli.data.dataset import load_dataset
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import DataSpec
from edgecli.runtimes import open_runner
from tests.conftest import SAMPLE, leftovers, run_cli

STATE_DICT = SAMPLE / "fashion_cnn.pt"
FACTORY = "model.factory=sample_models.fashion_cnn:build"
SAMPLES = 500  # of eval.npz's 2000 images: the eager CPU reference is the slow part of these tests


@pytest.fixture(scope="module")
def evaluation() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, labels, eager logits) on eval.npz: the sample CNN built from its own code and the .pt."""
    import torch

    from sample_models.fashion_cnn import build

    with np.load(SAMPLE / "eval.npz") as data:
        x, y = data["x"][:SAMPLES], data["y"][:SAMPLES]
    module = build()
    module.load_state_dict(torch.load(STATE_DICT, weights_only=True))
    with torch.no_grad():
        logits = torch.cat([module.eval()(torch.from_numpy(x[i : i + 64])) for i in range(0, SAMPLES, 64)]).numpy()
    return x, y, logits


def outputs(path: Path, limit: int = SAMPLES) -> np.ndarray:
    return open_runner(ModelFile.open(path)).predict(load_dataset(DataSpec(path=SAMPLE / "eval.npz", limit=limit)))[0]


def assert_parent_is_the_state_dict(path: Path) -> dict:
    step = ModelFile.open(path).lineage["steps"][-1]
    assert step["parent"] == {"sha256": ModelFile.open(STATE_DICT).sha256, "format": "state_dict"}
    assert step["recipe"]["model"]["factory"] == "sample_models.fashion_cnn:build"
    return step


def test_state_dict_to_pt2_with_input_shape(tmp_path: Path, evaluation) -> None:
    out = tmp_path / "cnn.pt2"
    result = run_cli(
        "--trust-code",
        "convert",
        STATE_DICT,
        "-r",
        "onnx",
        "--set",
        "target=pt2",
        "--set",
        FACTORY,
        "--set",
        "model.input_shape=[1,1,28,28]",
        "--data",
        SAMPLE / "eval.npz",
        "--set",
        "parity.samples=32",
        "-o",
        out,
    )
    assert result.code == 0, result.stderr
    assert leftovers(tmp_path) == ["cnn.pt2"]
    model = ModelFile.open(out)
    assert model.format is Format.PT2
    runner = open_runner(model)
    assert runner.inputs[0].shape == (None, 1, 28, 28)  # dynamic batch
    diff = float(np.abs(outputs(out, 128) - evaluation[2][:128]).max())  # torch runs both: 128 images
    assert diff <= 1e-5, diff
    step = assert_parent_is_the_state_dict(out)
    assert step["metrics"]["export_max_abs_diff"] <= 1e-5 and step["metrics"]["export_batch"] == "dynamic"
    assert step["metrics"]["parity_max_abs_diff"] == 0.0


def test_state_dict_to_onnx_matches_the_eager_module(tmp_path: Path, evaluation) -> None:
    out = tmp_path / "cnn.onnx"
    result = run_cli(
        "--trust-code",
        "convert",
        STATE_DICT,
        "-r",
        "onnx",
        "--set",
        FACTORY,
        "--data",
        SAMPLE / "eval.npz",
        "--set",
        "parity.samples=64",
        "-o",
        out,
    )
    assert result.code == 0, result.stderr
    assert leftovers(tmp_path) == ["cnn.onnx"]
    _, labels, eager = evaluation
    converted = outputs(out)
    assert float(np.abs(converted - eager).max()) <= 1e-5
    assert np.mean(converted.argmax(1) == eager.argmax(1)) == 1.0
    assert np.mean(converted.argmax(1) == labels) == np.mean(eager.argmax(1) == labels)
    assert_parent_is_the_state_dict(out)


def test_quantize_a_state_dict(tmp_path: Path) -> None:
    out = tmp_path / "cnn.int8.onnx"
    result = run_cli(
        "--trust-code",
        "quantize",
        STATE_DICT,
        "-r",
        "int8-static",
        "--set",
        FACTORY,
        "--data",
        SAMPLE / "calib.npz",
        "--eval-data",
        SAMPLE / "eval.npz",
        "--set",
        "eval_data.limit=500",
        "--set",
        "calibration.samples=64",
        "--set",
        "speed_check=false",
        "-o",
        out,
    )
    assert result.code == 0, result.stderr
    assert leftovers(tmp_path) == ["cnn.int8.onnx"]
    assert ModelFile.open(out).format is Format.ONNX
    step = assert_parent_is_the_state_dict(out)
    assert step["metrics"]["size_ratio"] < 0.3
    assert step["metrics"]["agreement"] >= 0.98
