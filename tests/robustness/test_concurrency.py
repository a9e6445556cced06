"""Four edgecli processes writing different outputs into one folder at once (as `make -j4` does)
never collide: each output is complete and identical to the one a lone run writes, and no temporary
file is left."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, SAMPLE, leftovers

JOBS = {
    "pruned.onnx": ["prune", str(SAMPLE / "fashion_cnn.onnx"), "-r", "magnitude-50", "--set", "finetune.epochs=0"],
    "dynamic.onnx": ["quantize", str(SAMPLE / "fashion_cnn.onnx"), "-r", "int8-dynamic"],
    "static.onnx": [
        "quantize",
        str(SAMPLE / "fashion_cnn.onnx"),
        "-r",
        "int8-static",
        "--data",
        str(SAMPLE / "calib.npz"),
        "--set",
        "calibration.samples=64",
    ],
    "exported.onnx": ["convert", str(SAMPLE / "fashion_cnn.pt2"), "-r", "onnx", "--data", str(SAMPLE / "eval.npz")],
}


def start(folder, name):
    return subprocess.Popen(
        [sys.executable, "-m", "edgecli", *JOBS[name], "-o", str(folder / name), "-q"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_four_processes_in_one_folder(tmp_path):
    together, alone = tmp_path / "together", tmp_path / "alone"
    together.mkdir()
    alone.mkdir()
    procs = {name: start(together, name) for name in JOBS}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {err.decode()}"
    assert leftovers(together) == sorted(JOBS)  # every output, no temporary file
    for name in JOBS:
        proc = start(alone, name)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()
        assert (together / name).read_bytes() == (alone / name).read_bytes(), name
