"""Outputs (issue 17): an output never overwrites an input, unusable output paths are refused before
any work (exit 2), devices and FIFOs are written through, a write that fails after the work names the
user's path (exit 6), and what a SIGKILL leaves (temporary files beside the output, folders in
TMPDIR) is removed by the next run. Every case runs the real CLI, each command in a process of its own:
forked from a warm interpreter (tests/conftest.py, run_cli), or started for real (run_cli_process: the
-o = --data clash, the SIGKILL case); inputs are hashed before and after."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, SAMPLE, leftovers, run_cli, run_cli_process
from tests.robustness.conftest import assert_refused

QUICK = ["-r", "int8-dynamic", "-q"]  # quantize: MatMul/Gemm only, about a second on the sample model


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """Copies of the sample model, its data and a recipe, in a folder of their own."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLE / "fashion_cnn.onnx", folder / "m.onnx")
    shutil.copy(SAMPLE / "calib.npz", folder / "calib.npz")
    shutil.copy(SAMPLE / "eval.npz", folder / "eval.npz")
    (folder / "my.yaml").write_text("mode: dynamic\n")
    return {
        "folder": folder,
        "onnx": folder / "m.onnx",
        "calib": folder / "calib.npz",
        "eval": folder / "eval.npz",
        "recipe": folder / "my.yaml",
    }


@contextlib.contextmanager
def unchanged(*paths: Path):
    before = {path: digest(path) for path in paths}
    yield
    assert {path: digest(path) for path in paths} == before


# ---------------------------------------------------------------- finding 3: outputs overwrite inputs


def clash_cases(i: dict[str, Path]) -> dict[str, tuple[list[object], str]]:
    m, calib, evaluation, recipe = i["onnx"], i["calib"], i["eval"], i["recipe"]
    return {
        "inspect --json = the model": (["inspect", m, "--json", m], "is the inspected model"),
        "-o = --data": (["quantize", m, *QUICK, "--data", calib, "-o", calib], "is the --data file"),
        "-o = the recipe file": (["quantize", m, "-r", recipe, "-o", recipe], "is the recipe file"),
        "--report = --eval-data": (
            ["quantize", m, *QUICK, "--eval-data", evaluation, "--report", evaluation, "-o", i["folder"] / "q.onnx"],
            "is the --eval-data file",
        ),
        "-o = the model, spelled otherwise": (
            ["quantize", m, *QUICK, "-o", i["folder"] / ".." / "in" / "m.onnx"],
            "is the input model",
        ),
        "bench --json = a benched model": (["bench", m, "-r", "default", "--json", m], "is a benched model"),
        "bench --csv = its data": (
            ["bench", m, "-r", "default", "--data", evaluation, "--csv", evaluation],
            "is the --data file",
        ),
        "bench --markdown = --reference": (["bench", m, "--reference", m, "--markdown", m], "is a benched model"),
        "distill --checkpoint = the teacher": (
            ["distill", m, "-r", "kd", "--data", calib, "--checkpoint", m, "-o", i["folder"] / "s.pt2"],
            "is the teacher model",
        ),
        "distill -o = the teacher": (["distill", m, "-r", "kd", "--data", calib, "-o", m], "is the teacher model"),
        "--report = -o": (
            ["quantize", m, *QUICK, "--report", i["folder"] / "x.json", "-o", i["folder"] / "x.json"],
            "name the same file",
        ),
    }


CLASHES = list(clash_cases({k: Path(k) for k in ("folder", "onnx", "calib", "eval", "recipe")}))


@pytest.mark.parametrize("case", CLASHES)
def test_an_output_that_is_an_input_is_refused_before_work(case, inputs):
    args, phrase = clash_cases(inputs)[case]
    names = tuple(leftovers(inputs["folder"]))
    with unchanged(inputs["onnx"], inputs["calib"], inputs["eval"], inputs["recipe"]):
        run = run_cli_process if case == "-o = --data" else run_cli  # one real process
        line = assert_refused(run(*args), 2, phrase, inputs["folder"], ignore=names)
    assert ".tmp" not in line and "Traceback" not in line


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_a_link_to_the_input_is_the_input(link, inputs, out):
    alias = out / "alias.onnx"
    (os.link if link == "hard" else os.symlink)(inputs["onnx"], alias)
    with unchanged(inputs["onnx"]):
        assert_refused(
            run_cli("quantize", inputs["onnx"], *QUICK, "-o", alias),
            2,
            "is the input model",
            out,
            ignore=("alias.onnx",),
        )
    assert os.path.samefile(alias, inputs["onnx"])


def test_a_pipeline_json_onto_its_source_model_is_refused(inputs, out):
    pipeline = inputs["folder"] / "p.yaml"
    pipeline.write_text(
        yaml.safe_dump(
            {"model": "m.onnx", "steps": [{"name": "q", "verb": "quantize", "recipe": "int8-dynamic"}], "bench": None}
        )
    )
    with unchanged(inputs["onnx"], pipeline):
        assert_refused(run_cli("run", pipeline, "--out", out, "--json", inputs["onnx"]), 2, "is the source model", out)


# ---------------------------------------------------------------- finding 4: devices and FIFOs


def test_a_character_device_is_written_through_and_stays_a_device(inputs, out):
    null = out / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a second /dev/null (root only, which the tests run as)
    result = run_cli("quantize", inputs["onnx"], *QUICK, "-o", null)
    assert result.code == 0, result.stderr
    assert stat.S_ISCHR(os.stat(null).st_mode) and leftovers(out) == ["null"]
    result = run_cli(
        "quantize", inputs["onnx"], *QUICK, "-o", "/dev/null", "--report", "/dev/null"
    )  # two outputs, one device
    assert result.code == 0, result.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_fifo_output_gives_its_reader_every_byte(inputs, out, tmp_path):
    reference = tmp_path / "file.onnx"
    assert run_cli("quantize", inputs["onnx"], *QUICK, "-o", reference).code == 0
    fifo = out / "model.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    result = run_cli("quantize", inputs["onnx"], *QUICK, "-o", fifo)
    reader.join(60)
    assert result.code == 0, result.stderr
    assert got == [reference.read_bytes()]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and leftovers(out) == ["model.fifo"]


def test_block_devices_and_sockets_are_refused(inputs, out):
    block = out / "blk"
    os.mknod(block, stat.S_IFBLK | 0o600, os.makedev(7, 200))  # a loop device number nothing uses
    assert_refused(
        run_cli("quantize", inputs["onnx"], *QUICK, "-o", block), 2, "is a block device", out, ignore=("blk",)
    )
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(out / "sock"))
        assert_refused(
            run_cli("quantize", inputs["onnx"], *QUICK, "-o", out / "sock"),
            2,
            "is a socket",
            out,
            ignore=("blk", "sock"),
        )


# ---------------------------------------------------------------- finding 7: output paths checked before the work


@pytest.mark.parametrize(
    ("where", "phrase"),
    [
        ("missing/m.onnx", "folder"),  # ... missing does not exist
        ("", "is a folder"),
        ("EMPTY", "'' is an empty path"),
        ("n" * 300 + ".onnx", "the file name is 305 bytes long, this filesystem allows 255"),
    ],
)
def test_an_unusable_output_path_is_refused_before_work(where, phrase, inputs, out):
    target = "" if where == "EMPTY" else out / where
    with unchanged(inputs["onnx"]):
        line = assert_refused(run_cli("quantize", inputs["onnx"], *QUICK, "-o", target), 2, phrase, out)
    assert ".edgecli-" not in line


@pytest.mark.parametrize(
    ("option", "folder_phrase"), [("--report", "is not a JSON file path"), ("--checkpoint", "is a folder")]
)
def test_other_outputs_are_checked_too(option, folder_phrase, inputs, out):
    args = (
        ["distill", inputs["onnx"], "-r", "kd", "--data", inputs["calib"]]
        if option == "--checkpoint"
        else ["quantize", inputs["onnx"], *QUICK]
    )
    assert_refused(run_cli(*args, option, out, "-o", out / "m.out"), 2, folder_phrase, out)
    assert_refused(run_cli(*args, option, out / "no" / "r", "-o", out / "m.out"), 2, "does not exist", out)


def test_a_250_byte_name_is_written(inputs, out):
    name = "m" * 245 + ".onnx"  # legal; the old temporary name beside it passed 255 bytes
    result = run_cli("quantize", inputs["onnx"], *QUICK, "-o", out / name)
    assert result.code == 0, result.stderr
    assert leftovers(out) == [name]


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_read_only_folder_is_refused_before_work(inputs, tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        line = assert_refused(
            run_cli("quantize", inputs["onnx"], *QUICK, "-o", folder / "m.onnx"), 2, "read-only", folder
        )
    assert "cannot create a file in" in line


def test_a_full_disk_fails_after_the_work_naming_the_users_path(inputs, tmp_path):
    with tmpfs(tmp_path / "full", "size=64k") as folder, unchanged(inputs["onnx"]):
        line = assert_refused(
            run_cli("quantize", inputs["onnx"], *QUICK, "-o", folder / "m.onnx"), 6, "no space left", folder
        )
    assert f"{folder / 'm.onnx'}" in line and ".tmp" not in line and line.startswith("cannot write output:")


def test_a_device_that_fails_the_write_is_exit_6(inputs):
    result = run_cli("quantize", inputs["onnx"], *QUICK, "-o", "/dev/full")
    assert result.code == 6 and result.lines == ["cannot write output: /dev/full: no space left on the device"], (
        result.stderr
    )
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


# ---------------------------------------------------------------- finding 10: what SIGKILL leaves


def test_sigkill_leaves_nothing_the_next_run_does_not_remove(inputs, out, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecli",
            "convert",
            str(inputs["onnx"]),
            "-r",
            "tflite",
            "--data",
            str(inputs["eval"]),
            "-o",
            str(out / "m.tflite"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not any(name.startswith("edgecli-onnx2tf-") for name in os.listdir(scratch)):  # onnx2tf at work
        assert proc.poll() is None and time.monotonic() < deadline, "the conversion ended before it was killed"
        time.sleep(0.1)
    time.sleep(1.0)
    proc.kill()
    proc.wait(60)
    left = [name for name in os.listdir(scratch) if name.startswith("edgecli-")]
    assert left and all(f"-p{proc.pid}-" in name for name in left)  # named after the dead process
    # a write the kill could interrupt in the fallback (named) path leaves `.edgecli-<pid>-...tmp`:
    # one of this dead process, as it would be named, is removed by the next write into the folder
    from edgecli.formats.files import NAMESPACE

    stale = out / f".edgecli-{proc.pid}-{NAMESPACE}-0badf00d.tmp"
    stale.write_bytes(b"half a model")
    assert (
        run_cli_process("quantize", inputs["onnx"], *QUICK, "-o", out / "next.onnx", env={"TMPDIR": str(scratch)}).code
        == 0
    )
    assert leftovers(out) == ["next.onnx"]  # no m.tflite, no temporary file
    assert [name for name in os.listdir(scratch) if name.startswith("edgecli-")] == []
