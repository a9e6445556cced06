"""Atomic output files, stdin/stdout models, input/output clashes and content hashes."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
from pathlib import Path

import pytest

from edgecli.errors import ModelReadError, UsageError
from edgecli.formats.files import (
    atomic_path,
    check_output_differs,
    materialize,
    sha256_of,
    write_bytes_atomic,
    write_output,
)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


def test_write_bytes_atomic_writes_exactly_the_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    write_bytes_atomic(tmp_path / "model.onnx", data)
    assert (tmp_path / "model.onnx").read_bytes() == data
    assert listing(tmp_path) == ["model.onnx"]  # no temporary file left


def test_write_bytes_atomic_replaces_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"old")
    write_bytes_atomic(tmp_path / "model.onnx", b"new")
    assert (tmp_path / "model.onnx").read_bytes() == b"new"
    assert listing(tmp_path) == ["model.onnx"]


def test_relative_destination_in_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_bytes_atomic(Path("out.tflite"), b"abc")
    assert (tmp_path / "out.tflite").read_bytes() == b"abc"
    assert listing(tmp_path) == ["out.tflite"]


def test_temp_file_lives_next_to_the_destination(tmp_path: Path) -> None:
    dest = tmp_path / "model.onnx"
    with atomic_path(dest) as tmp:
        assert tmp.parent == tmp_path  # same filesystem, so the final rename is atomic
        assert tmp.name.startswith(".model.onnx.") and tmp.name.endswith(".tmp")
        assert tmp.exists() and not dest.exists()  # nothing at the destination until the end
        tmp.write_bytes(b"done")
    assert dest.read_bytes() == b"done"
    assert not tmp.exists()


@pytest.mark.parametrize("error", [RuntimeError("conversion failed"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_failure_leaves_no_output_and_no_temp_file(tmp_path: Path, error: BaseException) -> None:
    with pytest.raises(type(error)):
        with atomic_path(tmp_path / "model.onnx") as tmp:
            tmp.write_bytes(b"half a model")
            raise error
    assert listing(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("conversion failed"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_failure_keeps_an_existing_destination_untouched(tmp_path: Path, error: BaseException) -> None:
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"previous good model")
    before = dest.stat()
    with pytest.raises(type(error)):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise error
    assert dest.read_bytes() == b"previous good model"
    assert dest.stat().st_ino == before.st_ino and dest.stat().st_mtime_ns == before.st_mtime_ns
    assert listing(tmp_path) == ["model.onnx"]


def test_failure_after_the_block_replaced_temp_with_a_folder(tmp_path: Path) -> None:
    # A stage may write a folder at the temporary path (e.g. a SavedModel); it is cleaned up too.
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "saved") as tmp:
            tmp.unlink()
            (tmp / "variables").mkdir(parents=True)
            (tmp / "saved_model.pb").write_bytes(b"x")
            raise RuntimeError("boom")
    assert listing(tmp_path) == []


def test_rename_failure_cleans_up(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep").write_bytes(b"k")
    with pytest.raises(OSError):
        write_bytes_atomic(tmp_path / "taken", b"data")  # a file cannot replace a non-empty folder
    assert listing(tmp_path) == ["taken"]
    assert listing(tmp_path / "taken") == ["keep"]


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0o027, 0o640)])
def test_permissions_follow_the_umask(tmp_path: Path, umask, mask: int, mode: int) -> None:
    umask(mask)
    write_bytes_atomic(tmp_path / "model.onnx", b"x")
    assert stat.S_IMODE((tmp_path / "model.onnx").stat().st_mode) == mode
    assert os.umask(mask) == mask  # the umask itself is left as it was


def test_missing_output_folder_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="output folder .*missing.* does not exist") as caught:
        write_bytes_atomic(tmp_path / "missing" / "model.onnx", b"x")
    assert caught.value.exit_code == 2
    assert not (tmp_path / "missing").exists()


def test_check_output_differs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"m")
    with pytest.raises(UsageError, match="is the input model") as caught:
        check_output_differs(str(model), str(model))
    assert caught.value.exit_code == 2
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError):
        check_output_differs("model.onnx", "./model.onnx")  # same file, spelled differently
    with pytest.raises(UsageError):
        check_output_differs("model.onnx", str(model))
    (tmp_path / "link.onnx").symlink_to(model)
    with pytest.raises(UsageError):
        check_output_differs("model.onnx", "link.onnx")  # writing through a link would still replace the input
    # Different files, a new output, or stdio are fine.
    (tmp_path / "other.onnx").write_bytes(b"o")
    check_output_differs("model.onnx", "other.onnx")
    check_output_differs("model.onnx", "new.onnx")
    check_output_differs("-", "model.onnx")
    check_output_differs("model.onnx", "-")
    assert model.read_bytes() == b"m"


def test_write_output_to_stdout(capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path) -> None:
    payload = b"\x00\x01TFL3\xff model bytes"
    write_output("-", payload)
    assert capsysbinary.readouterr().out == payload
    assert listing(tmp_path) == []
    write_output(str(tmp_path / "m.bin"), payload)
    assert (tmp_path / "m.bin").read_bytes() == payload
    assert capsysbinary.readouterr().out == b""


class FakeStdin(io.TextIOWrapper):
    """Piped stdin: a text wrapper over bytes, not a terminal."""

    def isatty(self) -> bool:
        return False


def test_materialize_a_path_and_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07bytes")
    with materialize(str(model)) as path:
        assert path == model
    monkeypatch.setattr(sys, "stdin", FakeStdin(io.BytesIO(b"\x08\x07piped bytes")))
    with materialize("-") as path:
        assert path.read_bytes() == b"\x08\x07piped bytes"
        temporary = path
    assert not temporary.exists() and not temporary.parent.exists()


def test_materialize_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelReadError, match="does not exist"):
        with materialize(str(tmp_path / "nope.onnx")):
            pass
    monkeypatch.setattr(sys, "stdin", FakeStdin(io.BytesIO(b"")))
    with pytest.raises(ModelReadError, match="stdin is empty"):
        with materialize("-"):
            pass


def test_sha256_of_file_and_folder(tmp_path: Path) -> None:
    data = b"model" * 1000
    (tmp_path / "m.onnx").write_bytes(data)
    assert sha256_of(tmp_path / "m.onnx") == hashlib.sha256(data).hexdigest()
    folder = tmp_path / "saved"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "v.data").write_bytes(b"weights")
    first = sha256_of(folder)
    assert first == hashlib.sha256(b"graph" + b"weights").hexdigest()  # files in sorted path order
    (folder / "variables" / "v.data").write_bytes(b"weights2")
    assert sha256_of(folder) != first
