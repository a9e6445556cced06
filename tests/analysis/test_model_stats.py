"""model_stats on models from the wild: weights in Constant nodes (Paddle exports) and in If
subgraphs (silero-vad), and recurrent layers' MACs (issue 19, finding 11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecli.analysis import model_stats
from edgecli.formats.model_file import ModelFile

OPSET = [helper.make_opsetid("", 17)]


def _save(graph: onnx.GraphProto, path: Path) -> ModelFile:
    onnx.save(helper.make_model(graph, opset_imports=OPSET), str(path))
    return ModelFile.open(path)


def _constant(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def test_weights_in_constant_nodes_are_counted(tmp_path: Path) -> None:
    """A Paddle-style export: the weight is a Constant node, the reshape target an int64 Constant
    (a shape, not a weight)."""
    rng = np.random.default_rng(0)
    nodes = [
        _constant("w", rng.standard_normal((4, 3)).astype(np.float32)),
        _constant("shape", np.array([1, 3], np.int64)),
        helper.make_node("MatMul", ["x", "w"], ["y0"]),
        helper.make_node("Reshape", ["y0", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constants",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = _save(graph, tmp_path / "constants.onnx")
    assert model_stats.param_count(model) == 12
    assert model_stats.macs(model, {"x": np.zeros((1, 4), np.float32)}) == 12
    assert model_stats.sparsity(model) == 0.0  # the Constant weight is read (no weights: None)


def _branch(name: str, width: int, as_constant: bool) -> onnx.GraphProto:
    weight = np.full((4, width), 0.5, np.float32)
    nodes = [helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"])]
    initializers = []
    if as_constant:
        nodes.insert(0, _constant(f"{name}_w", weight))
    else:
        initializers.append(numpy_helper.from_array(weight, f"{name}_w"))
    return helper.make_graph(
        nodes,
        name,
        [],
        [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1, width])],
        initializers,
    )


def _if_model(tmp_path: Path) -> ModelFile:
    """The whole network inside If branches (as silero-vad): an initializer weight [4, 3] in one,
    a Constant weight [4, 5] in the other; the main graph holds no weight at all."""
    nodes = [
        helper.make_node(
            "If",
            ["cond"],
            ["y"],
            then_branch=_branch("then", 3, as_constant=False),
            else_branch=_branch("else", 5, as_constant=True),
        )
    ]
    graph = helper.make_graph(
        nodes,
        "if",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return _save(graph, tmp_path / "if.onnx")


def test_weights_in_if_subgraphs_are_counted(tmp_path: Path) -> None:
    model = _if_model(tmp_path)
    assert model_stats.param_count(model) == 4 * 3 + 4 * 5
    assert model_stats.op_histogram(model) == {"MatMul": 2, "If": 1, "Constant": 1}
    feeds = {"x": np.ones((1, 4), np.float32), "cond": np.array(True)}
    assert model_stats.macs(model, feeds) == 4 * 5  # statically: the costlier branch
    proto = onnx.load(str(model.path))
    assert model_stats.onnx_run_macs(model.path, proto, feeds) == 4 * 3  # on a run: the branch that ran
    assert model_stats.onnx_run_macs(model.path, proto, {**feeds, "cond": np.array(False)}) == 4 * 5


SEQ, BATCH, INPUT, HIDDEN = 7, 2, 5, 8


def _lstm_model(tmp_path: Path, directions: int = 1) -> ModelFile:
    rng = np.random.default_rng(1)
    weights = [
        numpy_helper.from_array(rng.standard_normal((directions, 4 * HIDDEN, INPUT)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((directions, 4 * HIDDEN, HIDDEN)).astype(np.float32), "R"),
    ]
    direction = "bidirectional" if directions == 2 else "forward"
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=HIDDEN, direction=direction)]
    graph = helper.make_graph(
        nodes,
        "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", INPUT])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        weights,
    )
    return _save(graph, tmp_path / f"lstm{directions}.onnx")


@pytest.mark.parametrize("directions", [1, 2])
def test_lstm_macs_by_hand(tmp_path: Path, directions: int) -> None:
    """4 gates x (input + hidden) x hidden per step, per sequence, per direction."""
    model = _lstm_model(tmp_path, directions)
    by_hand = directions * SEQ * BATCH * 4 * (INPUT + HIDDEN) * HIDDEN  # 2 x 7 x 2 x 4 x 13 x 8
    feeds = {"x": np.zeros((SEQ, BATCH, INPUT), np.float32)}
    assert model_stats.macs(model, feeds) == by_hand
    assert model_stats.onnx_run_macs(model.path, onnx.load(str(model.path)), feeds) == by_hand


def test_pt2_lstm_macs_by_hand(tmp_path: Path) -> None:
    """A 2-layer torch LSTM + Linear head exported to .pt2: FlopCounterMode alone sees only the Linear."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = torch.nn.LSTM(INPUT, HIDDEN, num_layers=2, batch_first=True)
            self.head = torch.nn.Linear(HIDDEN, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.lstm(x)
            return self.head(out[:, -1])

    path = tmp_path / "lstm.pt2"
    torch.export.save(torch.export.export(Encoder().eval(), (torch.zeros(1, SEQ, INPUT),)), str(path))
    layer1 = SEQ * 4 * HIDDEN * (INPUT + HIDDEN)
    layer2 = SEQ * 4 * HIDDEN * (HIDDEN + HIDDEN)
    assert model_stats.macs(ModelFile.open(path), {"x": np.zeros((1, SEQ, INPUT), np.float32)}) == (
        layer1 + layer2 + HIDDEN * 3
    )


def test_silero_vad_from_its_package() -> None:
    """silero-vad's ONNX keeps every weight (Constant nodes) in If branches; `sr` is a rank-0 int64."""
    silero = pytest.importorskip("silero_vad")
    path = Path(silero.__file__).parent / "data" / "silero_vad.onnx"
    model = ModelFile.open(path)
    assert model_stats.param_count(model) > 300_000  # was 0
    assert model_stats.op_histogram(model)["LSTM"] == 4  # 2 per sample-rate branch, inside nested Ifs
    feeds = {"input": np.zeros((1, 576), np.float32), "state": np.zeros((2, 1, 128), np.float32)}
    found = model_stats.macs(model, {**feeds, "sr": np.array(16000, np.int64)})
    # the 16 kHz branch, by hand: STFT conv 258x256 on 4 frames, 4 encoder convs, the LSTM cell, the head
    by_hand = 4 * 258 * 256 + (4 * 128 * 129 * 3 + 2 * 64 * 128 * 3 + 1 * 64 * 64 * 3 + 1 * 128 * 64 * 3)
    by_hand += 4 * 128 * (128 + 128) + 128
    assert found == by_hand


def test_keras_params_are_counted_without_the_optimizer(tmp_path: Path) -> None:
    """A compiled and trained .keras archive: its weights file also holds the optimizer's slots (Adam's
    two moments per variable); the count is Keras's own count_params (batch-norm statistics included)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dense(5),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    model.fit(rng.random((16, 8, 8, 3)), rng.integers(0, 5, 16), verbose=0)
    model.save(tmp_path / "m.keras")
    assert model.count_params() == 3 * 3 * 3 * 4 + 4 + 4 * 4 + 144 * 5 + 5
    assert model_stats.param_count(ModelFile.open(tmp_path / "m.keras")) == model.count_params()
