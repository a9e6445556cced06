"""convert TFLite -> ONNX with tf2onnx (issue 19: the zoo's published LiteRT models, fer's INT8
face-expression model and basic-pitch, were refused with exit 2). The ONNX model answers as the
TFLite model does, keeps its NHWC inputs and output order, and names the TFLite file as its parent."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecli.data.dataset import load_dataset
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import DataSpec
from edgecli.runtimes import open_runner
from tests.conftest import SAMPLE, data_args, run_cli


def test_a_float_tflite_model_converts_to_onnx_with_its_answers(sample_tflite: Path, tmp_path: Path) -> None:
    out = tmp_path / "from_tflite.onnx"
    result = run_cli("convert", sample_tflite, "-r", "onnx", *data_args("convert"), "-o", out, "-q")
    assert result.code == 0, result.stderr
    data = load_dataset(DataSpec(path=SAMPLE / "eval.npz"))
    tflite, onnx = open_runner(ModelFile.open(sample_tflite)), open_runner(ModelFile.open(out))
    assert [s.shape[1:] for s in onnx.inputs] == [s.shape[1:] for s in tflite.inputs] == [(28, 28, 1)]  # NHWC kept
    expected, got = tflite.predict(data)[0], onnx.predict(data)[0]
    assert np.abs(expected - got).max() < 1e-4 * max(1.0, float(np.abs(expected).max()))
    original = open_runner(ModelFile.open(SAMPLE / "fashion_cnn.onnx")).predict(data)[0]
    assert float((got.argmax(1) == original.argmax(1)).mean()) >= 0.999  # the sample's answers, through two converters
    step = ModelFile.open(out).lineage["steps"][-1]
    assert step["parent"]["sha256"] == ModelFile.open(sample_tflite).sha256
    assert step["metrics"]["parent_quantized"] is False and step["metrics"]["parity_max_abs_diff"] < 1e-4


def test_tflite_to_another_target_says_to_convert_to_onnx_first(sample_tflite: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.tflite"
    result = run_cli("convert", sample_tflite, "-r", "tflite", *data_args("convert"), "-o", out, "-q")
    assert result.code == 2, result.stderr
    assert "convert it to ONNX first (-r onnx)" in " ".join(result.stderr.split())
    assert not out.exists()


def test_a_dynamic_range_int8_tflite_model_is_held_to_reduced_precision_parity(tmp_path: Path) -> None:
    """int8 weights, activations quantized on the fly by LiteRT's kernels: the ONNX model (weights
    behind DequantizeLinear, float activations) is judged by top-1 agreement, as INT8 is."""
    dynamic = tmp_path / "dynamic.tflite"
    made = run_cli(
        "quantize", SAMPLE / "fashion_cnn.onnx", "-r", "tflite-dynamic", *data_args("quantize"), "-o", dynamic, "-q"
    )
    assert made.code == 0, made.stderr
    out = tmp_path / "dynamic.onnx"
    result = run_cli("convert", dynamic, "-r", "onnx", *data_args("convert"), "-o", out, "-q")
    assert result.code == 0, result.stderr
    metrics = ModelFile.open(out).lineage["steps"][-1]["metrics"]
    assert metrics["parent_quantized"] is True and metrics["parity_agreement"] >= 0.99, metrics
    assert out.stat().st_size < 0.4 * (SAMPLE / "fashion_cnn.onnx").stat().st_size  # the int8 weights stay int8
    data = load_dataset(DataSpec(path=SAMPLE / "eval.npz"))
    expected = open_runner(ModelFile.open(dynamic)).predict(data)[0]
    got = open_runner(ModelFile.open(out)).predict(data)[0]
    assert abs(float((expected.argmax(1) == got.argmax(1)).mean()) - metrics["parity_agreement"]) < 0.02
