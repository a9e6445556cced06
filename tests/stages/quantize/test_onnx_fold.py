"""quantize of a model whose weights sit in Constant nodes (as Paddle exports them): the Constants are
folded into initializers first, so INT8 is ~0.3x the size and keeps the float model's answers."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecli.backends.onnx_fold import default_opset, fold_constants
from tests.conftest import run_cli


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value.astype(np.float32), name))


def constant_weight_cnn(seed: int = 0) -> tuple[onnx.ModelProto, int]:
    """A Conv-Relu-Conv-Relu-GlobalAveragePool-MatMul classifier, opset 12 (as Paddle writes it),
    every weight and bias a Constant node. Returns the model and the bytes of its weights."""
    rng = np.random.default_rng(seed)

    def he(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)

    weights = {
        "w1": he(32, 3, 3, 3),
        "b1": rng.normal(0, 0.1, 32),
        "w2": he(64, 32, 3, 3),
        "b2": rng.normal(0, 0.1, 64),
        "fc": he(64, 10),
        "fc_b": rng.normal(0, 0.1, 10),
        "shape": None,
    }
    nodes = [_constant(k, v) for k, v in weights.items() if v is not None]
    nodes.append(helper.make_node("Constant", [], ["shape"], value_ints=[-1, 64]))  # a non-tensor Constant too
    nodes += [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["pool"], name="pool"),
        helper.make_node("Reshape", ["pool", "shape"], ["flat"], name="flat"),
        helper.make_node("MatMul", ["flat", "fc"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "fc_b"], ["logits"], name="fc_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "paddle_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=7)
    onnx.checker.check_model(model)
    weight_bytes = sum(v.size * 4 for v in weights.values() if v is not None) + 2 * 8
    return model, weight_bytes


def test_fold_constants_moves_every_value_into_initializers():
    model, weight_bytes = constant_weight_cnn()
    folded = fold_constants(model)
    assert folded.nodes == 7 and folded.bytes == weight_bytes
    assert not [n for n in model.graph.node if n.op_type == "Constant"]
    assert numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "shape")).tolist() == [-1, 64]
    onnx.checker.check_model(model)
    assert fold_constants(model).nodes == 0  # nothing left to fold


def test_int8_of_constant_weights_is_small_and_keeps_answers(tmp_path):
    model, weight_bytes = constant_weight_cnn()
    source = tmp_path / "paddle_like.onnx"
    onnx.save(model, source)
    x = np.random.default_rng(1).normal(0, 1, (128, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out, report = tmp_path / "int8.onnx", tmp_path / "report.json"
    result = run_cli(
        "quantize", source, "-r", "int8-static", "--data", tmp_path / "calib.npz",
        "--set", "max_accuracy_drop=null", "--set", "min_agreement=0.9", "--set", "speed_check=false",
        "-o", out, "--report", report,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert "7 Constant node(s)" in result.stderr and "folded into initializers" in result.stderr
    metrics = json.loads(report.read_text())["metrics"]
    assert metrics["constants_folded"] == {"nodes": 7, "bytes": weight_bytes}
    ratio = out.stat().st_size / source.stat().st_size
    assert ratio < 0.35, ratio  # before the fold: 1.3x (the weights stayed float, plus Q/DQ pairs)

    quantized = onnx.load(out)
    assert default_opset(quantized) >= 13  # raised for per-channel DequantizeLinear
    ops = Counter(n.op_type for n in quantized.graph.node)
    assert ops["Constant"] == 0 and ops["DequantizeLinear"] >= 5
    producers = {o: n for n in quantized.graph.node for o in n.output}
    for conv in (n for n in quantized.graph.node if n.op_type in ("Conv", "MatMul")):
        assert producers[conv.input[1]].op_type == "DequantizeLinear", conv.name  # INT8 weights

    import onnxruntime as ort

    want = ort.InferenceSession(str(source)).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    assert np.mean(want.argmax(1) == got.argmax(1)) >= 0.9
    cosine = np.sum(want * got, 1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.mean() >= 0.98, cosine.mean()
