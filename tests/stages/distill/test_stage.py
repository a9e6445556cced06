"""distill: students learn from ONNX, .pt2 and TFLite teachers; caching, resume, determinism, errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecli.analysis.metrics import accuracy
from edgecli.data.dataset import load_dataset
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import DataSpec
from edgecli.runtimes import open_runner
from tests.conftest import ROOT, data_args, leftovers, run_cli

# Small runs: 1500 training samples, 2 augmented views.
SMALL = ["--set", "data.limit=1500", "--set", "augment.views=2", "--set", "latency_runs=20"]


def _params(path) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in torch.export.load(str(path)).module().parameters())


def _eval_accuracy(path, eval_path) -> float:
    data = load_dataset(DataSpec(path=eval_path))
    return accuracy(open_runner(ModelFile.open(path)).predict(data)[0], data.labels)


def _last_step(path) -> dict:
    return ModelFile.open(path).lineage["steps"][-1]


@pytest.fixture
def cache(tmp_path):
    return {"EDGECLI_CACHE_DIR": str(tmp_path / "cache")}


def test_onnx_teacher_student_learns_is_cached_and_deterministic(sample, tmp_path, cache):
    """A first run computes the teacher's outputs on each view; a second run with the same teacher,
    data and augmentation reads them all from the cache and writes the same bytes."""
    args = ["distill", sample["onnx"], "-r", "kd", *data_args("distill"), *SMALL, "--set", "epochs=4", "-q"]
    a, b = tmp_path / "a.pt2", tmp_path / "b.pt2"
    first = run_cli(*args, "-o", a, "--report", tmp_path / "a.json", env=cache)
    assert first.code == 0, first.stderr
    second = run_cli(*args, "-o", b, "--report", tmp_path / "b.json", env=cache)
    assert second.code == 0, second.stderr
    report_a, report_b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert report_a["teacher_cache"] == {"views": 2, "computed": 2, "read": 0}
    assert report_b["teacher_cache"] == {"views": 2, "computed": 0, "read": 2}
    assert len(list((tmp_path / "cache" / "teacher-outputs").glob("*.npz"))) == 2
    assert a.read_bytes() == b.read_bytes()

    metrics = _last_step(a)["metrics"]
    student_acc = _eval_accuracy(a, sample["eval"])
    assert abs(metrics["accuracy"] - student_acc) < 1e-9
    assert student_acc >= 0.75, (
        student_acc
    )  # 4 epochs on 1350 images: measured 0.7985 with one torch thread (teacher 0.9185; chance 0.1)
    assert metrics["student_params"] == _params(a) <= 0.25 * _params(sample["pt2"])
    assert metrics["teacher_accuracy"] == pytest.approx(0.9185, abs=1e-4)
    assert report_a["student_p50_ms"] < report_a["teacher_p50_ms"]  # ~60x fewer MACs
    assert report_a["latency_runtime"]["student"] == "onnxruntime"

    c = tmp_path / "c.pt2"
    assert run_cli(*args, "--set", "seed=1", "-o", c, env=cache).code == 0
    assert c.read_bytes() != a.read_bytes()


def test_tflite_teacher_and_mlp_student_without_labels(sample, sample_tflite, tmp_path, cache):
    unlabeled = tmp_path / "x.npz"
    np.savez(unlabeled, x=np.load(sample["train"])["x"][:1500])
    out = tmp_path / "mlp.pt2"
    result = run_cli(
        "distill",
        sample_tflite,
        "-r",
        "kd-unlabelled",
        "--data",
        unlabeled,
        "--eval-data",
        sample["eval"],
        "--set",
        "student={family: mlp, hidden: [64]}",
        "--set",
        "augment=null",
        "--set",
        "epochs=3",
        "--set",
        "latency_runs=0",
        "-o",
        out,
        "-q",
        env=cache,
    )
    assert result.code == 0, result.stderr
    student_acc = _eval_accuracy(out, sample["eval"])
    assert student_acc > 0.65, student_acc  # soft targets alone teach it (chance is 0.1)
    steps = _last_step(out)["metrics"]
    assert steps["val_score"] and all(0.5 < v <= 1 for v in steps["val_score"])  # agreement with the teacher


def test_pt2_teacher_with_hint_loss(sample, tmp_path, cache):
    """The hint pulls a student feature map (through a learned 1x1 conv) towards a teacher layer
    named by its .pt2 graph node; the run must learn and the hint must change the student."""
    common = [
        "distill",
        sample["pt2"],
        "-r",
        "kd",
        *data_args("distill"),
        *SMALL,
        "--set",
        "epochs=2",
        "--set",
        "latency_runs=0",
        "-q",
    ]
    hinted, plain = tmp_path / "hint.pt2", tmp_path / "plain.pt2"
    result = run_cli(
        *common, "--set", "hint={teacher_layer: relu__5, student_layer: '6', weight: 0.5}", "-o", hinted, env=cache
    )
    # relu__5: the teacher's 128 x 14 x 14 map after its sixth conv; '6': the student's 48 x 14 x 14 ReLU
    assert result.code == 0, result.stderr
    assert run_cli(*common, "-o", plain, env=cache).code == 0
    assert _eval_accuracy(hinted, sample["eval"]) > 0.7  # measured 0.749 after 2 epochs (2 torch threads)
    hint_losses = _last_step(hinted)["metrics"]["hint_loss"]
    assert len(hint_losses) == 2 and hint_losses[1] < 0.8 * hint_losses[0], (
        hint_losses
    )  # the features move to the teacher's
    assert "hint_loss" not in _last_step(plain)["metrics"]
    assert _last_step(hinted)["recipe"]["hint"]["teacher_layer"] == "relu__5"

    bad = run_cli(
        *common, "--set", "hint={teacher_layer: relu__55, student_layer: '6'}", "-o", tmp_path / "x.pt2", env=cache
    )
    assert bad.code == 2 and "relu__55" in bad.stderr and "relu__5" in bad.stderr, bad.stderr
    assert not (tmp_path / "x.pt2").exists()


def test_student_from_pt2_file_and_from_factory(sample, tmp_path, cache):
    from edgecli.models.students import build_student
    from edgecli.recipes import StudentSpec

    init = tmp_path / "init.pt2"
    module = build_student(StudentSpec(channels=[8, 16]), (1, 28, 28), 10).eval()
    torch.export.save(
        torch.export.export(module, (torch.zeros(2, 1, 28, 28),), dynamic_shapes=({0: torch.export.Dim("batch")},)),
        str(init),
    )
    args = [
        "distill",
        sample["onnx"],
        "-r",
        "kd",
        *data_args("distill"),
        *SMALL,
        "--set",
        "epochs=2",
        "--set",
        "latency_runs=0",
        "-q",
    ]
    from_file = tmp_path / "from_file.pt2"
    result = run_cli(*args, "--set", f"student={{path: {init}}}", "-o", from_file, env=cache)
    assert result.code == 0, result.stderr
    assert _params(from_file) == _params(init)
    assert _eval_accuracy(from_file, sample["eval"]) > 0.7

    factory = tmp_path / "my_students.py"
    factory.write_text(
        "import torch.nn as nn\n\ndef tiny(hidden=32):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))\n"
    )
    from_code = tmp_path / "from_code.pt2"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecli",
            "--trust-code",
            *map(str, args),
            "--set",
            "student={factory: 'my_students:tiny', kwargs: {hidden: 24}}",
            "-o",
            from_code,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**_env(), **cache},
    )
    assert result.returncode == 0, result.stderr
    assert _params(from_code) == 784 * 24 + 24 + 24 * 10 + 10


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_sigint_then_resume_gives_the_uninterrupted_student(sample, tmp_path, cache):
    args = [
        sys.executable,
        "-m",
        "edgecli",
        "distill",
        str(sample["onnx"]),
        "-r",
        "kd",
        *map(str, data_args("distill")),
        "--set",
        "data.limit=1000",
        "--set",
        "augment.views=2",
        "--set",
        "epochs=6",
        "--set",
        "latency_runs=0",
        "-q",
    ]
    env = {**_env(), **cache}
    reference = tmp_path / "reference.pt2"
    assert subprocess.run([*args, "-o", str(reference)], env=env, capture_output=True).returncode == 0

    out, ckpt = tmp_path / "out" / "student.pt2", tmp_path / "out" / "run.ckpt"
    out.parent.mkdir()
    proc = subprocess.Popen([*args, "-o", str(out), "--checkpoint", str(ckpt)], env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before its first checkpoint was seen"
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert leftovers(out.parent) == ["run.ckpt"]  # no output, no temporary file: only the checkpoint
    saved = tmp_path / "saved.ckpt"
    saved.write_bytes(ckpt.read_bytes())

    resumed = subprocess.run(
        [*args, "-o", str(out), "--checkpoint", str(ckpt), "--report", str(tmp_path / "r.json")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "r.json").read_text())["resumed_from_epoch"] >= 1
    assert out.read_bytes() == reference.read_bytes()
    assert leftovers(out.parent) == ["student.pt2"]  # the checkpoint is removed once the student is written

    other = subprocess.run(
        [*args, "--set", "seed=3", "-o", str(tmp_path / "x.pt2"), "--checkpoint", str(saved)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert other.returncode == 2 and "belongs to another run" in other.stderr, other.stderr
    not_one = subprocess.run(
        [*args, "-o", str(tmp_path / "x.pt2"), "--checkpoint", str(reference)], env=env, capture_output=True, text=True
    )
    assert not_one.returncode == 3 and "cannot be read" in not_one.stderr, not_one.stderr
    assert not (tmp_path / "x.pt2").exists()


def test_baseline_and_bad_inputs(sample, tmp_path, cache):
    args = [
        "distill",
        sample["onnx"],
        "-r",
        "kd",
        *data_args("distill"),
        "--set",
        "data.limit=600",
        "--set",
        "augment=null",
        "--set",
        "epochs=1",
        "--set",
        "latency_runs=0",
        "--set",
        "answers.min_agreement=0",  # one epoch on 600 images (agreement ~0.36): the subject is the baseline
        "-q",
    ]
    out = tmp_path / "s.pt2"
    result = run_cli(*args, "--set", "baseline=true", "-o", out, env=cache)
    assert result.code == 0, result.stderr
    metrics = _last_step(out)["metrics"]
    assert 0.1 < metrics["baseline_accuracy"] < 1 and metrics["baseline_epochs_run"] == 1
    assert metrics["gain_over_baseline"] == pytest.approx(metrics["accuracy"] - metrics["baseline_accuracy"], abs=1e-4)

    bad_labels = tmp_path / "bad.npz"
    train = np.load(sample["train"])
    np.savez(bad_labels, x=train["x"][:100], y=np.where(np.arange(100) == 7, 12, train["y"][:100]))
    unlabeled = tmp_path / "x.npz"
    np.savez(unlabeled, x=train["x"][:100])
    wrong_head = tmp_path / "five.py"
    wrong_head.write_text(
        "import torch.nn as nn\n\ndef five():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 5))\n"
    )
    cases = [
        (["--data", bad_labels], 3, "hold values outside 0..9 (e.g. 12 at row 7): the model has 10 classes"),
        (["--data", unlabeled, "--set", "baseline=true"], 2, "baseline: true needs labels"),
        (["--set", "student={factory: 'five:five'}"], 2, "outputs [2, 5] but the teacher's logits are [N, 10]"),
        (
            ["--set", "student={family: mlp, path: x.pt2}"],
            2,
            "give one of student.family, student.path, student.factory",
        ),
        (["--set", "hint={teacher_layer: x, student_layer: '1'}"], 2, "is not a tensor of the ONNX teacher"),
        (["--set", "augment={views: 0}"], 2, "augment.views"),
        (["--checkpoint", sample["onnx"]], 2, "is the teacher model"),  # never written over the input
    ]
    for extra, code, message in cases:
        bad_out = tmp_path / "bad.pt2"
        trust = {"EDGECLI_TRUST_CODE": "1"} if "factory" in str(extra) else {}  # five.py is code the test trusts
        result = run_cli(*args, *extra, "-o", bad_out, env={**cache, **trust}, cwd=tmp_path)
        assert result.code == code and message in result.stderr, (extra, result.code, result.stderr)
        assert len(result.lines) == 1 and not bad_out.exists(), result.stderr


def test_runs_under_torchrun_with_two_processes(sample, tmp_path, cache):
    """DistributedDataParallel over 2 processes (gloo, CPU): each trains on half of every global
    batch; only rank 0 writes the student and the report."""
    torchrun = Path(sys.executable).parent / "torchrun"
    out, report = tmp_path / "ddp.pt2", tmp_path / "ddp.json"
    result = subprocess.run(
        [
            str(torchrun),
            "--nproc-per-node",
            "2",
            "-m",
            "edgecli",
            "distill",
            str(sample["onnx"]),
            "-r",
            "kd",
            *map(str, data_args("distill")),
            "--set",
            "data.limit=2000",
            "--set",
            "augment.views=2",
            "--set",
            "epochs=3",
            "--set",
            "latency_runs=0",
            "-o",
            str(out),
            "--report",
            str(report),
            "-q",
        ],
        env={**_env(), **cache},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(report.read_text())["processes"] == 2
    assert leftovers(tmp_path) == sorted(["cache", "ddp.json", "ddp.pt2"])
    assert _eval_accuracy(out, sample["eval"]) > 0.72  # measured 0.80 (3 epochs on 1800 samples)
