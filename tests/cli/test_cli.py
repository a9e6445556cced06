"""The command-line contract: fast help, version, pipes, quiet mode, one-line errors, exit codes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx

from edgecli.formats.model_file import ModelFile
from tests.conftest import ROOT, data_args, leftovers, run_cli


def test_help_imports_no_heavy_framework():
    probe = "import sys, edgecli.cli.app; print(sorted(m for m in ('torch','tensorflow','onnxruntime','onnx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
    result = run_cli("--help")
    assert result.code == 0
    for verb in ("prune", "distill", "quantize", "convert", "bench", "inspect"):
        assert verb in result.stdout.decode()


def test_version():
    import edgecli

    result = run_cli("--version")
    assert result.code == 0 and result.stdout.decode().strip() == f"edgecli {edgecli.__version__}"


def test_pipe_convert_into_quantize(sample, tmp_path):
    first = run_cli("convert", sample["pt2"], "-r", "onnx", *data_args("convert"), "-o", "-", "-q")
    assert first.code == 0, first.stderr
    proto = onnx.load_from_string(first.stdout)  # stdout carries nothing but the model bytes
    assert proto.graph.node
    out = tmp_path / "int8.onnx"
    second = run_cli(
        "quantize",
        "-",
        "-r",
        "int8-static",
        *data_args("quantize"),
        "--set",
        "calibration.samples=64",
        "-o",
        out,
        "-q",
        stdin=first.stdout,
    )
    assert second.code == 0, second.stderr
    steps = ModelFile.open(out).lineage["steps"]
    assert [s["verb"] for s in steps] == ["convert", "quantize"]  # lineage survives the pipe
    assert steps[0]["parent"] == {"sha256": ModelFile.open(sample["pt2"]).sha256, "format": "pt2"}
    assert steps[1]["parent"] == {"sha256": hashlib.sha256(first.stdout).hexdigest(), "format": "onnx"}


def test_stdin_model_for_inspect(sample):
    result = run_cli("inspect", "-", "--json", "-", stdin=sample["onnx"].read_bytes())
    assert result.code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["format"] == "onnx" and info["inputs"] == ["input float32[?,1,28,28]"]


def test_inspect_shows_lineage_chain(sample, sample_int8):
    result = run_cli("inspect", sample_int8)
    assert result.code == 0, result.stderr
    assert "quantize" in result.stderr and "lineage" in result.stderr and "QuantizeLinear" in result.stderr


def test_error_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07" + bytes(range(200)))
    result = run_cli("inspect", bad)
    assert result.code == 3
    assert len(result.lines) == 1 and result.lines[0].startswith("cannot read model:")
    assert "Traceback" not in result.stderr
    debug = run_cli("inspect", bad, env={"EDGECLI_DEBUG": "1"})
    assert debug.code == 3 and "Traceback" in debug.stderr


def test_output_equal_to_input_is_refused(sample, tmp_path):
    copy = tmp_path / "m.onnx"
    copy.write_bytes(sample["onnx"].read_bytes())
    result = run_cli("convert", copy, "-r", "onnx", *data_args("convert"), "-o", copy)
    assert result.code == 2 and "is the input model" in result.lines[-1]
    assert copy.read_bytes() == sample["onnx"].read_bytes()


def test_output_suffix_must_match_target(sample, tmp_path):
    result = run_cli("convert", sample["onnx"], "-r", "tflite", *data_args("convert"), "-o", tmp_path / "m.onnx")
    assert result.code == 2 and "writes tflite" in result.lines[-1]
    assert leftovers(tmp_path) == []


def test_quiet_success_prints_nothing(sample, tmp_path):
    result = run_cli(
        "convert",
        sample["pt2"],
        "-r",
        "onnx",
        *data_args("convert"),
        "--set",
        "parity.samples=16",
        "-o",
        tmp_path / "m.onnx",
        "-q",
    )
    assert result.code == 0 and result.stderr == "" and result.stdout == b""


def test_data_shape_mismatch_is_exit_3(sample, tmp_path):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 3, 32, 32), np.float32), y=np.zeros(4, np.int64))
    result = run_cli("convert", sample["pt2"], "-r", "onnx", "--data", wrong, "-o", tmp_path / "m.onnx")
    assert result.code == 3
    assert "shape [4, 3, 32, 32]" in result.lines[-1]
    assert leftovers(tmp_path) == ["wrong.npz"]


def test_sigterm_during_work_leaves_nothing(sample, tmp_path):
    import signal
    import time

    out = tmp_path / "student.pt2"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecli",
            "distill",
            str(sample["onnx"]),
            "-r",
            "kd",
            *data_args("distill"),
            "-o",
            str(out),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(6)  # inside teacher inference or training by now
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert "interrupted: no output was written" in err.decode()
    assert leftovers(tmp_path) == []
