"""distill: a small student learns from ONNX and TFLite teachers; determinism under a seed."""

from __future__ import annotations

import torch

from edgecli.data import load_dataset
from edgecli.formats.model_file import ModelFile
from edgecli.metrics import accuracy
from edgecli.recipes import DataSpec
from edgecli.runtimes import open_runner
from tests.conftest import data_args, run_cli


def _params(path) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in torch.export.load(str(path)).module().parameters())


def test_student_from_onnx_teacher_learns(sample, tmp_path):
    out = tmp_path / "student.pt2"
    result = run_cli("distill", sample["onnx"], "-r", "kd", *data_args("distill"), "--set", "epochs=3", "-o", out, "-q")
    assert result.code == 0, result.stderr
    teacher_params, student_params = _params(sample["pt2"]), _params(out)
    assert student_params <= 0.25 * teacher_params
    data = load_dataset(DataSpec(path=sample["eval"]))
    student_acc = accuracy(open_runner(ModelFile.open(out)).predict(data)[0], data.labels)
    teacher_acc = accuracy(open_runner(ModelFile.open(sample["onnx"])).predict(data)[0], data.labels)
    assert student_acc >= 0.9 * teacher_acc, (student_acc, teacher_acc)  # measured 0.933 at 3 epochs
    metrics = ModelFile.open(out).lineage["steps"][-1]["metrics"]
    assert abs(metrics["accuracy"] - student_acc) < 1e-9
    assert metrics["student_params"] == student_params


def test_tflite_teacher_and_mlp_student_without_labels(sample, sample_tflite, tmp_path):
    import numpy as np

    unlabeled = tmp_path / "x.npz"
    np.savez(unlabeled, x=np.load(sample["train"])["x"][:1500])
    out = tmp_path / "mlp.pt2"
    result = run_cli("distill", sample_tflite, "-r", "kd", "--data", unlabeled, "--eval-data", sample["eval"], "--set", "student.family=mlp",
                     "--set", "student.hidden=[64]", "--set", "epochs=2", "-o", out, "-q")
    assert result.code == 0, result.stderr
    data = load_dataset(DataSpec(path=sample["eval"]))
    student_acc = accuracy(open_runner(ModelFile.open(out)).predict(data)[0], data.labels)
    assert student_acc > 0.6, student_acc  # soft targets alone teach it (chance is 0.1)


def test_same_seed_gives_identical_students(sample, tmp_path):
    args = ["-r", "kd", *data_args("distill"), "--set", "epochs=1", "--set", "data.limit=800", "--set", "eval_data.limit=100", "-q"]
    a, b = tmp_path / "a.pt2", tmp_path / "b.pt2"
    assert run_cli("distill", sample["onnx"], *args, "-o", a).code == 0
    assert run_cli("distill", sample["onnx"], *args, "-o", b).code == 0
    assert a.read_bytes() == b.read_bytes()
    c = tmp_path / "c.pt2"
    assert run_cli("distill", sample["onnx"], *args, "--set", "seed=1", "-o", c).code == 0
    assert c.read_bytes() != a.read_bytes()
