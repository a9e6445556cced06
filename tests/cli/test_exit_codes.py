"""Every documented exit code, from a real failure, with one clear line and no output left behind."""

from __future__ import annotations

import numpy as np

from tests.conftest import data_args, leftovers, run_cli


def test_corrupt_model_is_3(sample, tmp_path):
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(sample["onnx"].read_bytes()[:5000])
    out = tmp_path / "out.onnx"
    result = run_cli("quantize", truncated, "-r", "int8-static", *data_args("quantize"), "-o", out)
    assert result.code == 3 and result.lines[-1].startswith("cannot read model:")
    assert not out.exists()


def test_random_bytes_are_3(tmp_path):
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    result = run_cli("prune", junk, "-r", "magnitude-50", *data_args("prune"), "-o", tmp_path / "o.pt2")
    assert result.code == 3 and "not a model edgecli knows" in result.lines[-1]


def test_wrong_format_for_the_verb_is_2(sample, tmp_path):
    result = run_cli("prune", sample["onnx"], "-r", "channels-50", *data_args("prune"), "-o", tmp_path / "o.onnx")
    assert result.code == 2 and "structured (channel) pruning needs a .pt2" in result.lines[-1]
    assert leftovers(tmp_path) == []


def test_unknown_recipe_key_is_2_with_suggestion(sample, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sparsty: 0.5\n")
    result = run_cli("prune", sample["pt2"], "-r", recipe, "-o", tmp_path / "o.pt2")
    assert result.code == 2
    assert "unknown key 'sparsty'" in result.lines[-1] and "did you mean 'sparsity'" in result.lines[-1]
    assert leftovers(tmp_path) == ["r.yaml"]


def test_unknown_shipped_recipe_name_is_2(sample, tmp_path):
    result = run_cli("prune", sample["pt2"], "-r", "no-such-recipe", *data_args("prune"), "-o", tmp_path / "o.pt2")
    assert result.code == 2 and "magnitude-50" in result.lines[-1]


def test_missing_data_file_is_3(sample, tmp_path):
    result = run_cli(
        "quantize", sample["onnx"], "-r", "int8-static", "--data", tmp_path / "nope.npz", "-o", tmp_path / "q.onnx"
    )
    assert result.code == 3 and "nope.npz does not exist" in result.lines[-1]
    assert leftovers(tmp_path) == []


def test_no_data_at_all_is_2(sample, tmp_path):
    result = run_cli(
        "quantize",
        sample["onnx"],
        "-r",
        "int8-static",
        "--set",
        "data.path=null",
        "--set",
        "eval_data=null",
        "--set",
        "max_accuracy_drop=null",
        "-o",
        tmp_path / "q.onnx",
    )
    assert result.code == 2 and "calibration data" in result.lines[-1]


def test_out_of_range_recipe_value_is_2(sample, tmp_path):
    result = run_cli(
        "convert",
        sample["pt2"],
        "-r",
        "onnx",
        *data_args("convert"),
        "--set",
        "parity.min_agreement=1.01",
        "-o",
        tmp_path / "m.onnx",
    )
    assert result.code == 2  # refused before any work
    assert "parity.min_agreement" in result.lines[-1]


def test_failed_parity_is_4(sample, tmp_path):
    result = run_cli(
        "convert",
        sample["onnx"],
        "-r",
        "tflite",
        *data_args("convert"),
        "--set",
        "parity.atol=0",
        "--set",
        "parity.rtol=0",  # float32 TFLite differs from onnxruntime by ~3e-6: no tolerance at all fails
        "-o",
        tmp_path / "m.tflite",
    )
    assert result.code == 4 and result.lines[-1].startswith("parity check failed:")
    assert leftovers(tmp_path) == []


def test_missing_backend_is_5(sample, tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "onnx2tf.py").write_text("raise ImportError('onnx2tf is not installed')\n")
    result = run_cli(
        "convert",
        sample["onnx"],
        "-r",
        "tflite",
        *data_args("convert"),
        "-o",
        tmp_path / "m.tflite",
        env={"PYTHONPATH": str(shim)},
    )
    assert (
        result.code == 5 and result.lines[-1].startswith("missing backend:") and "--no-deps onnx2tf" in result.lines[-1]
    )
    assert leftovers(tmp_path) == ["shim"]
