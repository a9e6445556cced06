"""stdin and stdout (issue 17): models from pipes, process substitution and FIFOs are read once, in
full and bounded, before detection; a closed stdin or stdout, model bytes onto a terminal, and a reader
that goes away (`-o - | head -c 10`) each end in one line with the documented exit code."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLE, CliResult, leftovers, run_cli_process
from tests.robustness.conftest import assert_refused

MODEL = SAMPLE / "fashion_cnn.onnx"
EDGECLI = f"{shlex.quote(sys.executable)} -m edgecli"


def bash(script: str, **env: str) -> CliResult:
    """A shell line (redirections, process substitution, pipes) with `edgecli` meaning this checkout's CLI;
    `$?` of the edgecli part is the exit code (PIPESTATUS where the line is a pipe)."""
    full_env = {k: v for k, v in os.environ.items() if k != "EDGECLI_DEBUG"}
    full_env.update(env)
    proc = subprocess.run(
        ["bash", "-c", f'edgecli() {{ {EDGECLI} "$@"; }}\n{script}'],
        capture_output=True,
        cwd=ROOT,
        env=full_env,
        timeout=600,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- models from pipes (finding 11)


def test_process_substitution_is_read_whole_before_detection(out):
    result = bash(f"edgecli inspect <(cat {MODEL}) --json -")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["sha256"] == sha256(MODEL)  # every byte, not what detection left
    result = bash(f"edgecli quantize <(cat {MODEL}) -r int8-dynamic -q -o {out / 'q.onnx'}")
    assert result.code == 0, result.stderr
    assert leftovers(out) == ["q.onnx"]


def test_a_named_fifo_model_is_read_once(out, tmp_path):
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(MODEL.read_bytes()))
    writer.start()
    result = run_cli_process("inspect", fifo, "--json", "-")
    writer.join(60)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["sha256"] == sha256(MODEL)


def test_stdin_is_bounded_by_the_memory_a_model_may_use(out):
    result = run_cli_process(
        "quantize",
        "-",
        "-r",
        "int8-dynamic",
        "-o",
        out / "q.onnx",
        stdin=MODEL.read_bytes(),
        env={"EDGECLI_MEMORY_LIMIT_BYTES": "300000"},
    )
    assert_refused(result, 3, "out of memory", out)


def test_an_empty_pipe_is_empty(out):
    assert_refused(bash(f"edgecli inspect <(true) --json {out / 'i.json'}"), 3, "is empty", out)


# ---------------------------------------------------------------- closed stdin and stdout (finding 6)


def test_closed_stdin(out):
    assert_refused(bash(f"edgecli quantize - -r int8-dynamic -o {out / 'q.onnx'} <&-"), 2, "stdin is closed", out)
    assert_refused(bash("edgecli inspect - <&-"), 2, "stdin is closed", out)


@pytest.mark.parametrize(
    "args",
    [
        f"quantize {MODEL} -r int8-dynamic -q -o -",
        f"inspect {MODEL} --json -",
        "recipe schema prune",
        "recipe list",
    ],
    ids=["quantize -o -", "inspect --json -", "recipe schema", "recipe list"],
)
def test_closed_stdout(args, out):
    assert_refused(bash(f"edgecli {args} >&-"), 2, "stdout is closed", out)


def test_closed_stdout_does_not_matter_to_a_file_output(out, tmp_path):
    expected = tmp_path / "q.onnx"
    assert run_cli_process("quantize", MODEL, "-r", "int8-dynamic", "-q", "-o", expected).code == 0
    result = bash(f"edgecli quantize {MODEL} -r int8-dynamic -q -o {out / 'q.onnx'} >&-")
    assert result.code == 0, result.stderr
    assert (out / "q.onnx").read_bytes() == expected.read_bytes()  # no file opened on fd 1 got the bytes


# ---------------------------------------------------------------- a reader that leaves, a terminal (finding 9)


def test_a_reader_that_leaves_is_an_error(out):
    result = bash(f"edgecli quantize {MODEL} -r int8-dynamic -q -o - | head -c 10 > /dev/null; exit ${{PIPESTATUS[0]}}")
    assert result.code == 6, result.stderr
    assert len(result.lines) == 1 and "broken pipe" in result.lines[0] and "Traceback" not in result.stderr, (
        result.stderr
    )
    assert "of 1," in result.lines[0]  # how much of the model got out
    result = bash(f"edgecli inspect {MODEL} --json - | head -c 10 > /dev/null; exit ${{PIPESTATUS[0]}}")
    assert result.code in (0, 6) and "Exception ignored" not in result.stderr and "BrokenPipeError" not in result.stderr


def test_model_bytes_onto_a_terminal_are_refused_before_work(out):
    leader, follower = os.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edgecli", "quantize", str(MODEL), "-r", "int8-dynamic", "-o", "-"],
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            timeout=300,
        )
    finally:
        os.close(follower)
        os.set_blocking(leader, False)
        try:
            shown = os.read(leader, 1 << 16)
        except (BlockingIOError, OSError):
            shown = b""
        os.close(leader)
    result = CliResult(proc.returncode, shown, proc.stderr.decode())
    assert_refused(result, 2, "binary bytes onto the terminal", out)
