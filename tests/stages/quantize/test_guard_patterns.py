"""The accuracy guard keeps whole op patterns in float: a LayerNorm decomposed as jax2tf writes it
(var = E[x^2] - E[x]^2, then Max/Sqrt/Reciprocal) collapses in INT8 (the two means cancel), and no
single layer of it is enough to keep in float (magika's model: agreement 0.015 after 8 steps)."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecli.stages.quantize.onnx import op_patterns
from tests.conftest import run_cli

NORM_OPS = ["norm_sum", "norm_sq", "norm_sum2", "norm_mean", "norm_mean2", "norm_meansq", "norm_var", "norm_max",
            "norm_add", "norm_mean_reshape", "norm_var_reshape", "norm_sqrt", "norm_rcp", "norm_center", "norm_scale", "norm_gamma", "norm_beta"]  # fmt: skip


def decomposed_layernorm_model(seed: int = 0) -> onnx.ModelProto:
    """Dense(32->64, a large offset) -> decomposed LayerNorm -> Dense(64->10)."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.normal(0, 0.2, (32, 64)),
        "b1": 1000.0 + rng.normal(0, 0.5, 64),  # mean >> std: E[x^2] - E[x]^2 cancels in INT8
        "axes": np.array([-1], np.int64),
        "column": np.array([-1, 1], np.int64),
        "inv_n": np.array(1 / 64),
        "eps": np.array(1e-6),
        "gamma": 1 + rng.normal(0, 0.1, 64),
        "beta": rng.normal(0, 0.1, 64),
        "w2": rng.normal(0, 0.5, (64, 10)),
        "b2": rng.normal(0, 0.1, 10),
    }
    tensors = [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k) for k, v in inits.items()]
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "w1"], ["h0"], name="dense1"),
        n("Add", ["h0", "b1"], ["h"], name="dense1_bias"),
        n("ReduceSum", ["h", "axes"], ["s"], name="norm_sum"),
        n("Mul", ["h", "h"], ["sq"], name="norm_sq"),
        n("ReduceSum", ["sq", "axes"], ["s2"], name="norm_sum2"),
        n("Mul", ["s", "inv_n"], ["mean"], name="norm_mean"),
        n("Mul", ["s2", "inv_n"], ["mean2"], name="norm_mean2"),
        n("Reshape", ["mean", "column"], ["mean_r"], name="norm_mean_reshape"),  # as jax2tf writes it
        n("Mul", ["mean", "mean"], ["meansq"], name="norm_meansq"),
        n("Sub", ["mean2", "meansq"], ["var"], name="norm_var"),
        n("Max", ["var", "eps"], ["var_pos"], name="norm_max"),
        n("Reshape", ["var_pos", "column"], ["var_r"], name="norm_var_reshape"),
        n("Add", ["var_r", "eps"], ["var_eps"], name="norm_add"),
        n("Sqrt", ["var_eps"], ["std"], name="norm_sqrt"),
        n("Reciprocal", ["std"], ["rstd"], name="norm_rcp"),
        n("Sub", ["h", "mean_r"], ["centered"], name="norm_center"),
        n("Mul", ["centered", "rstd"], ["normed"], name="norm_scale"),
        n("Mul", ["normed", "gamma"], ["scaled"], name="norm_gamma"),
        n("Add", ["scaled", "beta"], ["ln"], name="norm_beta"),
        n("MatMul", ["ln", "w2"], ["o0"], name="dense2"),
        n("Add", ["o0", "b2"], ["logits"], name="dense2_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "decomposed_ln",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        tensors,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def test_op_patterns_find_the_decomposed_norm():
    model = decomposed_layernorm_model()
    names = [n.name for n in model.graph.node]
    norms = [{names[k] for k in region} for kind, region in op_patterns(model) if kind == "norm"]
    assert set(NORM_OPS) in norms  # the whole norm, scale and shift included


def test_guard_keeps_the_decomposed_norm_float_and_wins_the_answers_back(tmp_path):
    source = tmp_path / "ln.onnx"
    onnx.save(decomposed_layernorm_model(), source)
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(1).normal(0, 1, (256, 32)).astype(np.float32))
    out, report = tmp_path / "int8.onnx", tmp_path / "report.json"
    result = run_cli(
        "quantize", source, "-r", "int8-static", "--data", tmp_path / "data.npz",
        "--set", "max_accuracy_drop=null", "--set", "min_agreement=0.9", "--set", "speed_check=false",
        "--set", "guard.max_steps=8", "-o", out, "--report", report,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    guard = json.loads(report.read_text())["guard"]
    assert guard["steps"][0]["agreement"] < 0.6  # INT8 of the whole model collapses
    assert set(NORM_OPS) <= set(guard["float_layers"])  # the pattern, not one layer of it
    # here the offset also ruins dense1's INT8 output, so the search (from the output back) keeps
    # dense1 + norm + dense2 float: whole units, found within the budget
    chosen = next(s for s in guard["steps"] if s["float_layers"] == guard["float_layers"])
    assert chosen["meets_target"] and chosen["agreement"] >= 0.9
    assert len(guard["steps"]) - 1 <= 8
