"""bench's numbers on known inputs: latency statistics, p50 spread, speedup, gates, honesty warnings,
synthesised inputs, cosine similarity, MACs and sparsity (no timing involved)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgecli.analysis.latency import latency_stats, p50_spread, segment_p50s
from edgecli.analysis.metrics import mean_cosine
from edgecli.analysis.model_stats import macs, onnx_macs, sparsity, topological_nodes
from edgecli.core.errors import RecipeError, UsageError
from edgecli.data.dataset import synthetic_dataset, synthetic_fill, synthetic_sample_shape
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import BenchRecipe, load_recipe
from edgecli.runtimes.base import TensorSpec
from edgecli.stages.bench.honesty import spread_warnings, within_noise_warning
from edgecli.stages.bench.stage import evaluate_gates, gate_metrics
from edgecli.stages.bench.stats import latency_point, speedup

SAMPLE_MACS = 123_057_920

# --- latency statistics ----------------------------------------------------------------------


def test_latency_stats_of_1_to_100():
    stats = latency_stats([float(t) for t in range(1, 101)], batch_size=2)
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p90"] == pytest.approx(90.1)
    assert stats["p99"] == pytest.approx(99.01)
    assert stats["mean"] == pytest.approx(50.5)
    assert stats["std"] == pytest.approx(math.sqrt((100**2 - 1) / 12))  # population std of 1..n
    assert stats["throughput_per_s"] == pytest.approx(2 * 1000 / 50.5)


def test_latency_stats_do_not_depend_on_order():
    times = [float(t) for t in range(1, 101)]
    assert latency_stats(times[::-1], 1) == latency_stats(times, 1)


def test_segment_p50s_follow_run_order():
    times = [1.0] * 20 + [2.0] * 20 + [3.0] * 20 + [4.0] * 20 + [5.0] * 20
    assert segment_p50s(times) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert p50_spread(times) == pytest.approx((5.0 - 1.0) / 3.0)


def test_p50_spread_is_zero_for_steady_runs_whatever_their_order_within_segments():
    times = [1.0, 2.0, 3.0] * 50  # every segment holds the same mix
    assert p50_spread(times) == 0.0


def test_p50_spread_of_a_slow_end():
    times = [10.0] * 80 + [11.0] * 20  # the last fifth 10% slower
    assert p50_spread(times) == pytest.approx(0.1)


def test_p50_spread_with_few_runs():
    assert p50_spread([]) == 0.0 and p50_spread([3.0]) == 0.0
    assert p50_spread([1.0, 2.0]) == pytest.approx((2.0 - 1.0) / 1.5)  # two segments of one run


def test_latency_point_keys_and_values():
    point = latency_point([float(t) for t in range(1, 101)], threads=2, batch_size=4)
    assert point == {
        "threads": 2,
        "batch_size": 4,
        "runs": 100,
        "p50_ms": pytest.approx(50.5),
        "p90_ms": pytest.approx(90.1),
        "p99_ms": pytest.approx(99.01),
        "mean_ms": pytest.approx(50.5),
        "std_ms": pytest.approx(28.866070),
        "throughput_per_s": pytest.approx(4000 / 50.5),
        "p50_spread": pytest.approx((90.5 - 10.5) / 50.5),
    }


def point(p50: float, threads: int = 1, batch: int = 1, spread: float = 0.0) -> dict:
    return {"threads": threads, "batch_size": batch, "p50_ms": p50, "p50_spread": spread}


def test_speedup_compares_the_same_point_per_sample():
    reference = [point(2.0), point(8.0, batch=8), point(1.5, threads=2)]
    assert speedup(reference, point(1.0)) == pytest.approx(2.0)
    assert speedup(reference, point(4.0, batch=8)) == pytest.approx(2.0)
    assert speedup(reference, point(3.0, threads=2)) == pytest.approx(0.5)
    # no matching point (the reference was not timed at 4 threads): its first point, per sample
    assert speedup(reference, point(0.5, threads=4, batch=1)) == pytest.approx(4.0)


# --- gates -----------------------------------------------------------------------------------


def row(path: str, p90: float, size: int, accuracy_drop: float | None, spd: float) -> dict:
    return {
        "path": path,
        "latency": [
            {
                "p50_ms": p90 / 2,
                "p90_ms": p90,
                "p99_ms": p90 * 2,
                "mean_ms": p90 / 2,
                "std_ms": 0.1,
                "throughput_per_s": 1000 / (p90 / 2),
                "p50_spread": 0.01,
            }
        ],
        "size_bytes": size,
        "accuracy_drop": accuracy_drop,
        "speedup": spd,
    }


ROWS = [
    row("float.onnx", 4.0, 2_000_000, 0.0, 1.0),
    row("int8.onnx", 1.0, 500_000, 0.004, 3.0),
    row("pruned.onnx", 4.5, 1_000_000, 0.02, 0.9),
]


def test_gates_pass_and_fail_per_model_never_on_the_reference():
    results = evaluate_gates(
        ROWS, ["p90_ms <= 2", "size_bytes <= 1_000_000", "accuracy_drop <= 0.01", "speedup >= 1.5"]
    )
    verdict = {(r["gate"], r["model"]): r["passed"] for r in results}
    assert verdict == {
        ("p90_ms <= 2", "int8.onnx"): True,
        ("p90_ms <= 2", "pruned.onnx"): False,
        ("size_bytes <= 1_000_000", "int8.onnx"): True,
        ("size_bytes <= 1_000_000", "pruned.onnx"): True,  # <= holds at equality
        ("accuracy_drop <= 0.01", "int8.onnx"): True,
        ("accuracy_drop <= 0.01", "pruned.onnx"): False,
        ("speedup >= 1.5", "int8.onnx"): True,
        ("speedup >= 1.5", "pruned.onnx"): False,
    }
    assert next(r["value"] for r in results if r["model"] == "int8.onnx" and r["gate"].startswith("p90")) == 1.0


def test_gates_skip_the_chosen_reference_and_check_a_lone_model():
    results = evaluate_gates(ROWS, ["speedup >= 1.5"], reference=1)
    assert [(r["model"], r["passed"]) for r in results] == [("float.onnx", False), ("pruned.onnx", False)]
    assert [r["model"] for r in evaluate_gates(ROWS[:1], ["p90_ms <= 5"])] == ["float.onnx"]


def test_gate_metrics_read_the_first_point():
    metrics = gate_metrics(ROWS[1])
    assert metrics["p90_ms"] == 1.0 and metrics["p50_spread"] == 0.01 and metrics["size_bytes"] == 500_000
    assert metrics["cosine"] is None  # not measured


def test_gate_on_a_metric_not_measured_is_a_usage_error():
    with pytest.raises(UsageError, match="cosine was not measured for int8.onnx"):
        evaluate_gates(ROWS, ["cosine >= 0.99"])


def test_unknown_gate_metric_is_a_recipe_error_with_a_suggestion():
    with pytest.raises(RecipeError, match="unknown gate metric 'cosin'.*did you mean 'cosine'"):
        load_recipe("bench", "default", ["gates=['cosin >= 0.99']"])


# --- honesty ---------------------------------------------------------------------------------


def test_spread_warning_names_the_model_and_the_remedy():
    rows = [
        {"path": "a/model.onnx", "latency": [point(1.0, spread=0.08)]},
        {"path": "b.onnx", "latency": [point(1.0, spread=0.01)]},
    ]
    assert spread_warnings(rows, max_spread=0.05) == [
        "p50 of model.onnx varied by 8% across the run: differences under that are noise; close other programs or raise min_time_s"
    ]
    assert spread_warnings(rows, max_spread=0.1) == []


def test_spread_warning_names_the_point_in_a_sweep():
    rows = [{"path": "m.onnx", "latency": [point(1.0, spread=0.01), point(5.0, threads=2, batch=8, spread=0.2)]}]
    [line] = spread_warnings(rows, max_spread=0.05)
    assert line.startswith("p50 of m.onnx (2 threads, batch 8) varied by 20%")


def test_difference_within_noise():
    reference = {"path": "float.onnx", "latency": [point(1.00, spread=0.04)]}
    close = {"path": "pruned.onnx", "latency": [point(1.02, spread=0.01)]}
    far = {"path": "int8.onnx", "latency": [point(0.50, spread=0.01)]}
    assert within_noise_warning(close, reference) == (
        "p50 of pruned.onnx and float.onnx differ by 2.0%, less than their run-to-run spread (4.0%): difference within noise"
    )
    assert within_noise_warning(far, reference) is None


# --- synthesised inputs ------------------------------------------------------------------------

BERT_INPUTS = [
    TensorSpec("input_ids", (None, None), np.dtype(np.int64), dim_names=("batch", "sequence")),
    TensorSpec("attention_mask", (None, None), np.dtype(np.int64), dim_names=("batch", "sequence")),
    TensorSpec("token_type_ids", (None, None), np.dtype(np.int32), dim_names=("batch", "sequence")),
]


def test_integer_inputs_keep_their_dtype_and_range():
    data = synthetic_dataset(BERT_INPUTS, count=3, int_range=(5, 50))
    ids = data.inputs["input_ids"]
    assert ids.dtype == np.int64 and ids.shape == (3, 128)  # dynamic sequence: 128 by default
    assert ids.min() >= 5 and ids.max() < 50 and len(np.unique(ids)) > 20
    assert data.inputs["attention_mask"].dtype == np.int64 and np.all(data.inputs["attention_mask"] == 1)
    assert data.inputs["token_type_ids"].dtype == np.int32 and np.all(data.inputs["token_type_ids"] == 0)


def test_dynamic_dims_by_name_or_axis_and_input_shapes():
    assert synthetic_sample_shape(BERT_INPUTS[0], dims={"sequence": 32}) == (32,)
    assert synthetic_sample_shape(BERT_INPUTS[0], dims={"1": 24}) == (24,)
    assert synthetic_sample_shape(BERT_INPUTS[0], shapes={"input_ids": [7]}, dims={"sequence": 32}) == (7,)
    image = TensorSpec("image", (None, 3, None, None), np.dtype(np.float32))
    assert synthetic_sample_shape(image, dims={"2": 64, "3": 48}) == (3, 64, 48)
    with pytest.raises(UsageError, match=r"input_shapes.image = \[1, 64, 64\] does not fit"):
        synthetic_sample_shape(image, shapes={"image": [1, 64, 64]})


def test_fill_follows_the_input_name():
    assert [
        synthetic_fill(n)
        for n in ("attention_mask", "MASK", "token_type_ids", "segment_ids", "input_ids", "pixel_values")
    ] == ["ones", "ones", "zeros", "zeros", "random", "random"]


def test_recipe_synthesis_fields():
    recipe = BenchRecipe(
        threads=2, batch_size=[1, 8], dynamic_dims={1: 64}, input_shapes={"input_ids": [16]}, int_range=[0, 30522]
    )
    assert recipe.threads == [2] and recipe.batch_size == [1, 8]
    assert recipe.dynamic_dims == {"1": 64} and recipe.int_range == (0, 30522)
    for bad, message in (
        (["threads=[1,1]"], "listed twice"),
        (["int_range=[5,5]"], "is empty"),
        (["threads=0"], "threads.0"),
    ):
        with pytest.raises(RecipeError, match=message):
            load_recipe("bench", "default", bad)


@pytest.mark.parametrize("name", ["default", "ci-gates", "edge-1thread"])
def test_shipped_recipes_load(name):
    recipe, _ = load_recipe("bench", name)
    assert isinstance(recipe, BenchRecipe) and recipe.threads == [1] and recipe.batch_size == [1]


# --- cosine ----------------------------------------------------------------------------------


def test_mean_cosine_on_known_vectors():
    reference = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    candidate = np.array([[0.0, 1.0], [2.0, 2.0], [0.0, 0.0], [1.0, 0.0]])
    # orthogonal 0, parallel 1, both zero 1, one zero 0
    assert mean_cosine(reference, candidate) == pytest.approx(0.5)
    assert mean_cosine(reference[:2], -reference[:2]) == pytest.approx(-1.0)


def test_mean_cosine_flattens_each_sample_and_aligns_layouts():
    rng = np.random.default_rng(0)
    nchw = rng.normal(size=(3, 4, 5, 6))
    assert mean_cosine(nchw, nchw.transpose(0, 2, 3, 1)) == pytest.approx(1.0)  # NHWC output of the same values


# --- size figures ------------------------------------------------------------------------------


def test_macs_of_the_sample_onnx_and_pt2(sample):
    image = {"input": np.zeros((1, 1, 28, 28), np.float32)}
    assert macs(ModelFile.open(sample["onnx"]), image) == SAMPLE_MACS
    assert macs(ModelFile.open(sample["pt2"]), image) == SAMPLE_MACS
    assert macs(ModelFile.open(sample["onnx"]), {"input": np.zeros((2, 1, 28, 28), np.float32)}) == 2 * SAMPLE_MACS


def test_macs_of_a_graph_stored_out_of_order_and_of_a_matmul(tmp_path: Path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((8, 3), np.float32), "w")
    nodes = [helper.make_node("Relu", ["h"], ["y"]), helper.make_node("MatMul", ["x", "w"], ["h"])]  # consumer first
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 3])],
        [weight],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert [n.op_type for n in topological_nodes(list(proto.graph.node))] == ["MatMul", "Relu"]
    assert onnx_macs(proto, {"x": (1, 5, 8)}) == 5 * 8 * 3
    assert [n.op_type for n in proto.graph.node] == ["Relu", "MatMul"]  # the model itself is untouched
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    assert sparsity(ModelFile.open(path)) == 0.0


def test_sparsity_counts_exact_zeros_of_weight_tensors(tmp_path: Path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    weight[weight % 3 == 0] = 0.0  # 0, 3, 6, 9: 4 of 12
    bias = numpy_helper.from_array(np.zeros(3, np.float32), "b")  # rank 1: not a weight tensor
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(weight, "w"), bias],
    )
    path = tmp_path / "gemm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    model = ModelFile.open(path)
    assert sparsity(model) == pytest.approx(4 / 12)
    assert macs(model, {"x": np.zeros((1, 4), np.float32)}) == 12
