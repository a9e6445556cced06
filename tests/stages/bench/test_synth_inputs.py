"""bench on models from the wild without data (issue 19, finding 11): inputs synthesised from the
model's own constraints (a rank-0 input is a scalar with a value the model checks, a dynamic height
the network accepts, an RNN state's batch on its first dynamic axis), said in the report; with
--data, the peak-memory child runs the data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecli.analysis.synth_inputs import plan_inputs
from edgecli.formats.model_file import ModelFile
from edgecli.runtimes import open_runner
from tests.conftest import run_cli

TIMING = ["--set", "runs=10", "--set", "min_time_s=0.02", "--set", "warmup=1"]
OPSET = [helper.make_opsetid("", 17)]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    onnx.save(helper.make_model(graph, opset_imports=OPSET), str(path))
    return path


def sample_rate_model(path: Path) -> Path:
    """silero-vad's shape: x float32 [?, ?], a state [2, ?, 4] (batch on axis 1) and a rank-0 int64
    `sr`; `Equal(sr, 16000)` picks the branch that runs, the other one cannot (a reshape to 3 rows)."""
    then_branch = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["then_y"], keepdims=1)],
        "then",
        [],
        [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, None)],
    )
    bad_shape = numpy_helper.from_array(np.array([3, -1, 7], np.int64), "bad_shape")
    else_branch = helper.make_graph(
        [helper.make_node("Reshape", ["x", "bad_shape"], ["else_y"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, None)],
        [bad_shape],
    )
    rate = helper.make_node("Constant", [], ["rate"], value=numpy_helper.from_array(np.array(16000, np.int64)))
    nodes = [
        rate,
        helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
        helper.make_node("If", ["is16k"], ["y"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Identity", ["state"], ["state_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vad",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "samples"]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, "batch", 4]),
        ],
    )
    return _save(graph, path)


def text_line_model(path: Path) -> Path:
    """A recogniser's shape: x float32 [?, 3, ?, ?] whose height must be 48 (added to a [1, 1, 48, 1]
    constant: broadcasting refuses 128)."""
    bias = numpy_helper.from_array(np.full((1, 1, 48, 1), 0.5, np.float32), "bias")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        "rec",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [bias],
    )
    return _save(graph, path)


def test_rank0_input_is_a_scalar_with_the_value_the_model_checks(tmp_path: Path) -> None:
    runner = open_runner(ModelFile.open(sample_rate_model(tmp_path / "vad.onnx")))
    plan = plan_inputs(runner)
    feeds = plan.feeds(1)
    assert plan.accepted
    assert feeds["sr"].shape == () and feeds["sr"].dtype == np.int64 and int(feeds["sr"]) == 16000
    assert feeds["state"].shape == (2, 1, 4)  # the fixed first axis kept, the batch on axis 1
    assert feeds["x"].shape == (1, 128)
    assert plan.feeds(3)["state"].shape == (2, 3, 4) and plan.feeds(3)["x"].shape == (3, 128)
    runner.run_feeds(feeds)
    assert any("rank-0" in note and "16000" in note for note in plan.notes)


def test_dynamic_height_gets_a_size_the_model_accepts(tmp_path: Path) -> None:
    runner = open_runner(ModelFile.open(text_line_model(tmp_path / "rec.onnx")))
    plan = plan_inputs(runner)
    assert plan.accepted and plan.feeds(2)["x"].shape == (2, 3, 48, 128)
    assert any("refused" in note and "x axis 2 = 48" in note for note in plan.notes)


def test_recipe_dims_are_kept(tmp_path: Path) -> None:
    """A size the recipe sets is not probed away: the model refuses it, and the plan says so."""
    runner = open_runner(ModelFile.open(text_line_model(tmp_path / "rec.onnx")))
    plan = plan_inputs(runner, dims={"h": 96, "w": 40})
    assert not plan.accepted and plan.feeds(1)["x"].shape == (1, 3, 96, 40)


def test_bench_without_data_says_what_it_synthesised(tmp_path: Path) -> None:
    """End to end: timing, MACs and the peak-memory child all run the synthesised scalar/state/height."""
    vad, rec = sample_rate_model(tmp_path / "vad.onnx"), text_line_model(tmp_path / "rec.onnx")
    for model in (vad, rec):
        out = tmp_path / f"{model.stem}.json"
        result = run_cli("bench", model, *TIMING, "--json", out)
        assert result.code == 0, result.stderr
        row = json.loads(out.read_text())["models"][0]
        assert row["memory"]["peak_mib"] > 0
        warnings = json.loads(out.read_text())["warnings"]
        assert any(f"{model.name}: synthesised" in line for line in warnings), warnings
        if model == vad:
            assert row["inputs"]["sr"] == {"shape": [], "dtype": "int64"}
            assert row["inputs"]["state"]["shape"] == [2, 1, 4]
        else:
            assert row["inputs"]["x"]["shape"][2] == 48
        assert row["synthesised"]


def test_bench_memory_child_runs_the_data(tmp_path: Path) -> None:
    """With --data, the peak-memory child runs the data's batch (it synthesised 128 x 128 before,
    which the model refuses, and failed after the timing had succeeded)."""
    rec = text_line_model(tmp_path / "rec.onnx")
    data = tmp_path / "lines.npz"
    np.savez(data, x=np.random.default_rng(0).random((6, 3, 48, 20), dtype=np.float32))
    out = tmp_path / "report.json"
    result = run_cli("bench", rec, "--data", data, *TIMING, "--set", "batch_size=[2]", "--json", out)
    assert result.code == 0, result.stderr
    row = json.loads(out.read_text())["models"][0]
    assert row["inputs"]["x"]["shape"] == [2, 3, 48, 20]
    assert row["memory"]["batch"] == 2 and row["memory"]["peak_mib"] > 0
    assert row["synthesised"] is None


def test_silero_vad_from_its_package(tmp_path: Path) -> None:
    """The real silero-vad: `sr` a scalar 16000 (its Equal node), the state [2, 1, 128], and a chunk
    length the 16 kHz branch accepts."""
    silero = pytest.importorskip("silero_vad")
    model = ModelFile.open(Path(silero.__file__).parent / "data" / "silero_vad.onnx")
    plan = plan_inputs(open_runner(model))
    feeds = plan.feeds(1)
    assert plan.accepted and int(feeds["sr"]) == 16000 and feeds["sr"].shape == ()
    assert feeds["state"].shape == (2, 1, 128) and feeds["input"].shape[0] == 1
    outputs = open_runner(model).run_feeds(feeds)
    assert outputs[0].shape == (1, 1) and 0.0 <= float(outputs[0][0, 0]) <= 1.0
