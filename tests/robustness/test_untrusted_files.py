"""Untrusted files never run code: a pickle is refused (and its payload never executes) unless the
user passes --trust-pickle; with it, a whole pickled nn.Module is read and converted. The malicious
pickle meets a real process (run_cli_process); the other cases a process forked from a warm interpreter
(tests/conftest.py, run_cli)."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import leftovers, run_cli, run_cli_process


class Payload:
    """Unpickling this runs os.system: the classic malicious model file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def sequential(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    path = tmp_path / "whole.pt"
    torch.save(module, path)
    return module, path


def test_a_malicious_pickle_is_refused_and_its_code_never_runs(sample, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "x": Payload(str(marker))}, evil)
    for args in (
        ("inspect", evil),
        ("convert", evil, "-r", "onnx", "--data", sample["eval"], "-o", tmp_path / "out.onnx"),
    ):
        result = run_cli_process(*args)
        assert result.code == 3, result.stderr
        assert (
            len(result.lines) == 1
            and "edgecli does not unpickle it" in result.lines[0]
            and "--trust-pickle" in result.lines[0]
        )
        assert "Traceback" not in result.stderr
    assert not marker.exists()  # the payload never ran
    assert leftovers(tmp_path) == ["evil.pt"]


def test_a_whole_pickled_module_needs_trust_pickle_then_converts(sequential, sample, tmp_path):
    module, path = sequential
    out = tmp_path / "m.onnx"
    refused = run_cli("convert", path, "-r", "onnx", "--data", sample["eval"], "-o", out)
    assert refused.code == 3 and "torch.nn.modules.container.Sequential" in refused.lines[0] and not out.exists()
    result = run_cli("--trust-pickle", "convert", path, "-r", "onnx", "--data", sample["eval"], "-o", out)
    assert result.code == 0, result.stderr
    x = np.load(sample["eval"])["x"][:32].astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    env_trusted = run_cli("inspect", path, env={"EDGECLI_TRUST_PICKLE": "1"})
    assert env_trusted.code == 0 and "7,850" in env_trusted.stderr  # 784*10 + 10 parameters


def test_npz_with_pickled_objects_is_refused(sample, tmp_path):
    data = tmp_path / "objects.npz"
    np.savez(data, x=np.array([{"a": 1}, None], dtype=object))
    result = run_cli("convert", sample["onnx"], "-r", "onnx", "--data", data, "-o", tmp_path / "m.onnx")
    assert result.code == 3 and len(result.lines) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "m.onnx").exists()
