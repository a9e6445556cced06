"""convert ONNX -> TFLite in every precision (float16, dynamic range, full-integer INT8) and ONNX -> ONNX
simplification, each re-measured independently of the parity figures the tool reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edgecli.data.dataset import load_dataset
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import DataSpec
from edgecli.runtimes import open_runner
from tests.conftest import leftovers, run_cli


def _outputs(path: Path, data_path: Path, start: int, stop: int) -> np.ndarray:
    data = load_dataset(DataSpec(path=data_path, limit=stop)).skip(start)
    return open_runner(ModelFile.open(path)).predict(data)[0]


def _weight_dtypes(path: Path) -> set[str]:
    from ai_edge_litert.interpreter import Interpreter

    return {np.dtype(d["dtype"]).name for d in Interpreter(model_path=str(path)).get_tensor_details()}


def test_full_integer_int8_agrees_with_float_on_held_out_samples(sample, tmp_path):
    out = tmp_path / "int8.tflite"
    result = run_cli(
        "convert",
        sample["onnx"],
        "-r",
        "tflite-int8",
        "--data",
        sample["eval"],
        "--set",
        "parity.samples=1000",
        "-o",
        out,
    )
    assert result.code == 0, result.stderr
    step = ModelFile.open(out).lineage["steps"][-1]
    # calibrated on eval[:256], checked on the 1000 samples after them
    assert step["metrics"]["parity_data"].endswith("eval.npz[256:]")
    assert step["metrics"]["parity_samples"] == 1000
    reference = _outputs(sample["onnx"], sample["eval"], 256, 1256)
    converted = _outputs(out, sample["eval"], 256, 1256)
    agreement = np.mean(reference.argmax(1) == converted.argmax(1))
    assert agreement >= 0.99  # the target for the sample model
    assert abs(agreement - step["metrics"]["parity_agreement"]) < 1e-9
    assert np.linalg.norm(converted - reference) / np.linalg.norm(reference) < 0.05
    assert "int8" in _weight_dtypes(out)
    assert out.stat().st_size < 0.3 * sample["onnx"].stat().st_size


def test_dynamic_range_and_float16_shrink_the_weights_and_agree(sample, tmp_path):
    for precision, dtype, ratio, rel in (("dynamic", "int8", 0.3, 0.05), ("float16", "float16", 0.55, 1e-3)):
        out = tmp_path / f"{precision}.tflite"
        result = run_cli(
            "convert",
            sample["onnx"],
            "-r",
            "tflite",
            "--data",
            sample["eval"],
            "--set",
            f"precision={precision}",
            "--set",
            "parity.samples=128",
            "-o",
            out,
            "-q",
        )
        assert result.code == 0, result.stderr
        reference = _outputs(sample["onnx"], sample["eval"], 0, 256)
        converted = _outputs(out, sample["eval"], 0, 256)
        assert np.mean(reference.argmax(1) == converted.argmax(1)) >= 0.99, precision
        assert np.linalg.norm(converted - reference) / np.linalg.norm(reference) < rel, precision
        assert dtype in _weight_dtypes(out), precision
        assert out.stat().st_size < ratio * sample["onnx"].stat().st_size, precision


def test_int8_without_data_is_a_usage_error(sample, tmp_path):
    result = run_cli("convert", sample["onnx"], "-r", "tflite-int8", "-o", tmp_path / "int8.tflite")
    assert result.code == 2
    assert "give --data" in result.lines[-1]
    assert leftovers(tmp_path) == []


def test_recipe_fields_that_do_not_fit_the_target_are_refused_up_front(sample, tmp_path):
    for sets, message in (
        (["precision=float32", "io_type=int8"], "io_type int8 needs precision int8"),
        (["simplify=true"], "simplify applies to targets onnx and ort"),
    ):
        args = [a for s in sets for a in ("--set", s)]
        result = run_cli("convert", sample["onnx"], "-r", "tflite", *args, "-o", tmp_path / "x.tflite")
        assert result.code == 2, result.stderr
        assert message in result.lines[-1]
    assert leftovers(tmp_path) == []


def _redundant_model(path: Path) -> None:
    """relu(identity(x) + a * b): a constant product onnxsim folds and an Identity it removes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    a = numpy_helper.from_array(rng.standard_normal((1, 8)).astype(np.float32), "a")
    b = numpy_helper.from_array(rng.standard_normal((1, 8)).astype(np.float32), "b")
    nodes = [
        helper.make_node("Identity", ["x"], ["x_copy"], name="copy"),
        helper.make_node("Mul", ["a", "b"], ["ab"], name="product"),
        helper.make_node("Add", ["x_copy", "ab"], ["sum"], name="add"),
        helper.make_node("Relu", ["sum"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "redundant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [a, b],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_simplify_folds_constants_and_keeps_the_function(tmp_path):
    source = tmp_path / "redundant.onnx"
    _redundant_model(source)
    x = np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "simple.onnx"
    result = run_cli("convert", source, "-r", "onnx-simplify", "--data", tmp_path / "x.npz", "-o", out)
    assert result.code == 0, result.stderr
    assert "onnxsim: 4 -> 2 nodes" in result.stderr
    proto = onnx.load(str(out))
    assert [n.op_type for n in proto.graph.node] == ["Add", "Relu"]
    metrics = ModelFile.open(out).lineage["steps"][-1]["metrics"]
    assert (metrics["nodes_before"], metrics["nodes_after"]) == (4, 2)
    import onnxruntime as ort

    a, b = (onnx.numpy_helper.to_array(t) for t in onnx.load(str(source)).graph.initializer)
    expected = np.maximum(x + a * b, 0)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(got - expected).max() <= 1e-6


def test_keras_and_saved_model_to_tflite_match_keras(tmp_path):
    from tests.unit_helpers import keras_models

    models = keras_models()
    x = models.calibration[:64]
    np.savez(tmp_path / "x.npz", x=x)
    expected = np.asarray(models.model(x, training=False))
    for name, source in (("keras", models.keras), ("saved_model", models.saved_model)):
        out = tmp_path / f"{name}.tflite"
        result = run_cli("convert", source, "-r", "tflite", "--data", tmp_path / "x.npz", "-o", out)
        assert result.code == 0, result.stderr
        assert f"parity {name} -> tflite float32" in result.stderr
        got = open_runner(ModelFile.open(out)).predict(load_dataset(DataSpec(path=tmp_path / "x.npz")))[0]
        assert np.abs(got - expected).max() <= 1e-5, name
