"""convert: .pt2 -> ONNX and ONNX -> TFLite on the sample model, with parity measured independently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edgecli.data.dataset import load_dataset
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import DataSpec
from edgecli.runtimes import open_runner
from tests.conftest import data_args, leftovers, run_cli


def _outputs(path: Path, data_path: Path, limit: int = 256) -> np.ndarray:
    data = load_dataset(DataSpec(path=data_path, limit=limit))
    return open_runner(ModelFile.open(path)).predict(data)[0]


def test_pt2_to_onnx_is_self_contained_and_matches(sample, tmp_path):
    out = tmp_path / "cnn.onnx"
    result = run_cli("convert", sample["pt2"], "-r", "onnx", *data_args("convert"), "-o", out)
    assert result.code == 0, result.stderr
    assert leftovers(tmp_path) == ["cnn.onnx"]  # no .onnx.data side file, no temp file
    proto = onnx.load(str(out))
    assert all(not t.external_data for t in proto.graph.initializer)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch kept
    diff = np.abs(_outputs(sample["pt2"], sample["eval"]) - _outputs(out, sample["eval"])).max()
    assert diff <= 1e-5  # the target for .pt2 -> ONNX
    assert "parity pt2 -> onnx" in result.stderr and "top-1 agreement 1.0000" in result.stderr
    step = ModelFile.open(out).lineage["steps"][-1]
    assert step["verb"] == "convert"
    assert step["parent"]["sha256"] == ModelFile.open(sample["pt2"]).sha256
    assert step["metrics"]["parity_max_abs_diff"] <= 1e-5


def test_onnx_to_tflite_records_nhwc_and_matches(sample, sample_tflite):
    model = ModelFile.open(sample_tflite)
    assert model.format.value == "tflite"
    runner = open_runner(model)
    assert runner.inputs[0].shape[1:] == (28, 28, 1)  # channels-last after onnx2tf
    assert model.lineage["steps"][-1]["io"]["input_layout"] == "NHWC"
    reference = _outputs(sample["onnx"], sample["eval"])
    converted = _outputs(sample_tflite, sample["eval"])  # NCHW data fed without the user saying so
    assert np.abs(reference - converted).max() < 1e-4
    assert np.mean(reference.argmax(1) == converted.argmax(1)) == 1.0


def test_pt2_to_tflite_in_one_step(sample, tmp_path):
    out = tmp_path / "cnn.tflite"
    result = run_cli(
        "convert", sample["pt2"], "-r", "tflite", *data_args("convert"), "--set", "parity.samples=64", "-o", out, "-q"
    )
    assert result.code == 0, result.stderr
    assert result.stderr == ""  # -q: nothing on stderr on success
    diff = np.abs(_outputs(sample["pt2"], sample["eval"], 64) - _outputs(out, sample["eval"], 64)).max()
    assert diff < 1e-4


def test_random_inputs_when_no_data_are_announced(sample, tmp_path):
    out = tmp_path / "cnn.onnx"
    result = run_cli("convert", sample["pt2"], "-r", "onnx", "--set", "data.path=null", "-o", out)
    assert result.code == 0, result.stderr
    assert "random inputs" in result.stderr
    assert ModelFile.open(out).lineage["steps"][-1]["metrics"]["parity_data"] == "random inputs"


def test_opset_upgrade_onnx_to_onnx(sample, tmp_path):
    out = tmp_path / "op20.onnx"
    result = run_cli(
        "convert", sample["onnx"], "-r", "onnx", *data_args("convert"), "--set", "opset=20", "-o", out, "-q"
    )
    assert result.code == 0, result.stderr
    proto = onnx.load(str(out))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [20]
    assert np.abs(_outputs(sample["onnx"], sample["eval"], 64) - _outputs(out, sample["eval"], 64)).max() < 1e-5


def test_opset_downgrade_18_to_17_drops_the_attribute_opset_17_lacks(sample, tmp_path):
    # onnx's converter moves ReduceMean's axes to an attribute but keeps noop_with_empty_axes (opset 18
    # only); edgecli drops it because it holds the default, so the older op computes the same.
    out = tmp_path / "op17.onnx"
    result = run_cli("convert", sample["onnx"], "-r", "onnx", *data_args("convert"), "--set", "opset=17", "-o", out)
    assert result.code == 0, result.stderr
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    reduce_mean = next(n for n in proto.graph.node if n.op_type == "ReduceMean")
    assert {a.name for a in reduce_mean.attribute} == {"axes", "keepdims"}
    assert np.abs(_outputs(sample["onnx"], sample["eval"]) - _outputs(out, sample["eval"])).max() <= 1e-6


def test_opset_downgrade_without_an_adapter_names_the_op(sample, tmp_path):
    result = run_cli(
        "convert",
        sample["onnx"],
        "-r",
        "onnx",
        *data_args("convert"),
        "--set",
        "opset=13",
        "-o",
        tmp_path / "op13.onnx",
    )
    assert result.code == 4
    assert "opset 18 -> 13" in result.lines[-1] and "adapter for Relu" in result.lines[-1]
    assert leftovers(tmp_path) == []


def test_opset_downgrade_of_an_attribute_the_target_cannot_express_is_refused(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    axes = helper.make_tensor("axes", TensorProto.INT64, [0], [])
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean_all", noop_with_empty_axes=1)
    graph = helper.make_graph([node], "g", [x], [y], [axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    source = tmp_path / "noop.onnx"
    onnx.save(model, str(source))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run_cli("convert", source, "-r", "onnx", "--set", "opset=17", "-o", out_dir / "op17.onnx")
    assert result.code == 4
    assert "opset 17 cannot express ReduceMean node 'mean_all'" in result.lines[-1]
    assert "noop_with_empty_axes" in result.lines[-1]
    assert leftovers(out_dir) == []
