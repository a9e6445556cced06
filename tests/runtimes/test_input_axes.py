"""Inputs that are not [batch, ...] (issue 19, silero VAD): a rank-0 `sr` and a `state` whose batch
axis is the second ([2, batch, 128]). bench with --data exited 3 ("data 'sr' has shape [1] but the
model input is sr int64[]"), then onnxruntime's own refusal of the state was an internal error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgecli.core.errors import DataError
from edgecli.data.dataset import load_dataset
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import DataSpec
from edgecli.runtimes import open_runner
from tests.conftest import run_cli

ROWS = 6


def stateful_model(path: Path) -> None:
    """y = sum(x) * sr + sum(state); state_out = state * 2 (state [2, batch, 4], sr a scalar)."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["sx"], keepdims=1),  # [batch, 1]
            helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["sx", "srf"], ["scaled"]),
            helper.make_node("ReduceSum", ["state", "axes"], ["ss"], keepdims=0),  # over axes 0, 2: [batch]
            helper.make_node("Unsqueeze", ["ss", "one"], ["ss1"]),  # [batch, 1]
            helper.make_node("Add", ["scaled", "ss1"], ["y"]),
            helper.make_node("Add", ["state", "state"], ["state_out"]),
        ],
        "stateful",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, "batch", 4]),
        ],
        [
            helper.make_tensor("axes", TensorProto.INT64, [2], [0, 2]),
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def stateful(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("stateful")
    stateful_model(folder / "vad.onnx")
    rng = np.random.default_rng(0)
    rows = {
        "x": rng.normal(size=(ROWS, 8)).astype(np.float32),
        "state": rng.normal(size=(ROWS, 2, 4)).astype(np.float32),  # one [2, 4] state per row
        "sr": np.full(ROWS, 16000, dtype=np.int64),  # one scalar per row
    }
    np.savez(folder / "rows.npz", **rows)
    return {"model": folder / "vad.onnx", "data": folder / "rows.npz"}


def test_a_scalar_input_and_a_second_axis_batch_are_fed_row_by_row(stateful: dict[str, Path]) -> None:
    runner = open_runner(ModelFile.open(stateful["model"]))
    assert not runner.dynamic_batch  # a scalar input has no batch axis: one row at a time
    y, state_out = runner.predict(load_dataset(DataSpec(path=stateful["data"])))
    rows = np.load(stateful["data"])
    expected = rows["x"].sum(1) * 16000 + rows["state"].sum((1, 2))
    np.testing.assert_allclose(y[:, 0], expected, rtol=1e-5)
    # each row's state came back doubled, batch first as the rows are stored (the model's batch axis is the second)
    assert state_out.shape == (ROWS, 2, 4)
    np.testing.assert_allclose(state_out, rows["state"] * 2, rtol=1e-6)


def test_bench_with_data_runs_such_a_model(stateful: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    result = run_cli(
        "bench", stateful["model"], "--data", stateful["data"], "--set", "runs=5", "--set", "warmup=1",
        "--set", "min_time_s=0.01", "--set", "memory=false", "--json", report, "-q",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert report.stat().st_size > 0


def test_what_onnxruntime_refuses_at_run_time_is_a_data_error(stateful: dict[str, Path]) -> None:
    runner = open_runner(ModelFile.open(stateful["model"]))
    feeds = {
        "x": np.zeros((1, 8), np.float64),  # float64 where the graph takes float32, past feeds()' casts
        "state": np.zeros((2, 1, 4), np.float32),
        "sr": np.array(16000, np.int64),
    }
    with pytest.raises(DataError, match="onnxruntime refused the data") as caught:
        runner.run_feeds(feeds)
    assert "x [1, 8]" in caught.value.message and caught.value.exit_code == 3
