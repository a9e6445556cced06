"""A parity failure names the first tensor where the converted ONNX model parts ways with its parent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgecli.analysis.parity import check_parity
from edgecli.analysis.parity_layers import first_divergence, shared_tensors, worst_samples
from edgecli.core.errors import ParityError
from edgecli.data.dataset import load_dataset
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import DataSpec, ParitySpec
from edgecli.runtimes import open_runner

PERTURBED = "node_Conv_116"  # the fourth of the sample CNN's seven convolutions


def _perturbed_child(parent: Path, folder: Path, node_name: str = PERTURBED, delta: float = 0.05) -> Path:
    """A copy of the parent with one convolution's first filter shifted by `delta`."""
    proto = onnx.load(str(parent))
    node = next(n for n in proto.graph.node if n.name == node_name)
    weight = next(t for t in proto.graph.initializer if t.name == node.input[1])
    values = numpy_helper.to_array(weight).copy()
    values[0] += delta
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    path = folder / "child.onnx"
    onnx.save(proto, str(path))
    return path


def _runner(path: Path):
    return open_runner(ModelFile.open(path))


def _eval(sample, limit: int = 64):
    return load_dataset(DataSpec(path=sample["eval"], limit=limit))


def test_parity_error_names_the_first_divergent_tensor(sample, tmp_path):
    child = _perturbed_child(sample["onnx"], tmp_path)
    with pytest.raises(ParityError) as caught:
        check_parity(_runner(sample["onnx"]), _runner(child), _eval(sample), ParitySpec(), "onnx -> onnx")
    message = caught.value.message
    assert "output 'logits' diverges on 64 samples" in message
    assert "; first divergent tensor: 'getitem_9' (Conv node 'node_Conv_116'), max abs diff " in message
    reported = float(message.rsplit("max abs diff ", 1)[1])
    assert reported > 0.05


def test_divergence_is_measured_not_guessed(sample, tmp_path):
    """The reported diff is the real one: recompute that tensor in both models independently."""
    child = _perturbed_child(sample["onnx"], tmp_path)
    data = _eval(sample, 4)
    found = first_divergence(_runner(sample["onnx"]), _runner(child), data, atol=1e-4)
    assert (found.tensor, found.op_type, found.node) == ("getitem_9", "Conv", "node_Conv_116")
    import onnxruntime as ort

    from edgecli.analysis.parity_layers import with_outputs

    def tensor(path: Path) -> np.ndarray:
        session = ort.InferenceSession(
            with_outputs(onnx.load(str(path)), ["getitem_9"]), providers=["CPUExecutionProvider"]
        )
        return session.run(["getitem_9"], {"input": data.inputs[next(iter(data.inputs))].astype(np.float32)})[0]

    assert found.max_abs_diff == pytest.approx(float(np.abs(tensor(sample["onnx"]) - tensor(child)).max()), rel=1e-4)


def test_identical_models_have_no_divergent_tensor(sample, tmp_path):
    copy = tmp_path / "same.onnx"
    copy.write_bytes(sample["onnx"].read_bytes())
    assert first_divergence(_runner(sample["onnx"]), _runner(copy), _eval(sample, 4), atol=1e-4) is None


def test_earliest_perturbation_wins(sample, tmp_path):
    first = _perturbed_child(sample["onnx"], tmp_path, "node_Conv_112")
    found = first_divergence(_runner(sample["onnx"]), _runner(first), _eval(sample, 4), atol=1e-4)
    assert found.node == "node_Conv_112"


def test_shared_tensors_follow_the_parents_order(sample):
    proto = onnx.load(str(sample["onnx"]))
    names = [name for name, _ in shared_tensors(proto, proto)]
    assert names == [o for n in proto.graph.node for o in n.output]


def test_worst_samples_pick_the_largest_differences():
    reference = np.zeros((6, 3))
    candidate = reference.copy()
    candidate[4, 0], candidate[1, 2] = 5.0, 2.0
    assert worst_samples(reference, candidate, 2) == [1, 4]
