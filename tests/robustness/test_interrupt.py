"""SIGINT or SIGTERM in the middle of real work (fine-tuning, calibration, conversion) ends with exit
130 and one line, and leaves no output file and no temporary file, in the output folder or in TMPDIR."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, SAMPLE, leftovers

CASES = {
    # verb arguments, a stderr line that appears just before the long part, seconds to wait after it
    "fine-tuning": (
        [
            "prune",
            str(SAMPLE / "fashion_cnn.pt2"),
            "-r",
            "magnitude-50",
            "--data",
            str(SAMPLE / "train.npz"),
            "--set",
            "finetune.epochs=3",
            "-o",
            "{out}.pt2",
        ],
        None,
        8.0,
    ),  # 3 epochs take over 30 s
    "calibration": (
        [
            "quantize",
            str(SAMPLE / "fashion_cnn.onnx"),
            "-r",
            "int8-static",
            "--data",
            str(SAMPLE / "calib.npz"),
            "--eval-data",
            str(SAMPLE / "eval.npz"),
            "--set",
            "calibration.batch_size=1",
            "-o",
            "{out}.onnx",
        ],
        "evaluating float",
        0.3,
    ),
    "conversion": (
        [
            "convert",
            str(SAMPLE / "fashion_cnn.onnx"),
            "-r",
            "tflite",
            "--data",
            str(SAMPLE / "eval.npz"),
            "-o",
            "{out}.tflite",
        ],
        None,
        7.0,
    ),
}


def wait_for(proc: subprocess.Popen, marker: str | None, delay: float) -> str:
    """Read stderr until `marker` shows (the long part starts), then wait `delay` seconds."""
    seen = ""
    if marker is not None:
        deadline = time.monotonic() + 120
        while marker not in seen and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line.decode("utf-8", "replace")
        assert marker in seen, seen
    time.sleep(delay)
    assert proc.poll() is None, "the work ended before the signal"
    return seen


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("case", list(CASES))
def test_signal_during_work_leaves_nothing(case, signum, tmp_path):
    args, marker, delay = CASES[case]
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    scratch.mkdir()
    argv = [a.format(out=out / "model") for a in args]
    env = dict(os.environ, TMPDIR=str(scratch))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecli", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    seen = wait_for(proc, marker, delay)
    proc.send_signal(signum)
    stdout, rest = proc.communicate(timeout=120)
    err = seen + rest.decode("utf-8", "replace")
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted: no output was written"
    assert "Traceback" not in err and stdout == b""
    assert leftovers(out) == []
    # no temporary folder (stdin copy, onnx2tf work, staged checks) left behind. Two names are the
    # frameworks' own caches, kept on purpose across runs: onnxruntime's session id file `.ses` (written
    # when it is imported) and torch's compile cache `torchinductor_<user>` (made by torch.export)
    assert [name for name in leftovers(scratch) if name != ".ses" and not name.startswith("torchinductor_")] == []
