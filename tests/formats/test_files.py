"""Atomic output files, stdin/stdout models, input/output clashes and content hashes."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
from pathlib import Path

import pytest

from edgecli.core.errors import ModelReadError, OutputError, UsageError
from edgecli.formats import files
from edgecli.formats.files import (
    TEMP_FILE,
    TempFolder,
    atomic_path,
    materialize,
    sha256_of,
    sweep_stale_files,
    sweep_temp_folders,
    temp_name,
    write_bytes_atomic,
    write_output,
)
from edgecli.formats.io_guard import check_output_differs


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
        assert TEMP_FILE.match(tmp.name) and len(tmp.name) < 40  # pid-named, short: any legal dest name works
        assert tmp.exists() and not dest.exists()  # nothing at the destination until the end
        tmp.write_bytes(b"done")
    assert dest.read_bytes() == b"done"
    assert not tmp.exists()


@pytest.mark.parametrize("error", [RuntimeError("conversion failed"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_failure_leaves_no_output_and_no_temp_file(tmp_path: Path, error: BaseException) -> None:
    with pytest.raises(type(error)), atomic_path(tmp_path / "model.onnx") as tmp:
        tmp.write_bytes(b"half a model")
        raise error
    assert listing(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("conversion failed"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_failure_keeps_an_existing_destination_untouched(tmp_path: Path, error: BaseException) -> None:
    dest = tmp_path / "model.onnx"
    dest.write_bytes(b"previous good model")
    before = dest.stat()
    with pytest.raises(type(error)), atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise error
    assert dest.read_bytes() == b"previous good model"
    assert dest.stat().st_ino == before.st_ino and dest.stat().st_mtime_ns == before.st_mtime_ns
    assert listing(tmp_path) == ["model.onnx"]


def test_failure_after_the_block_replaced_temp_with_a_folder(tmp_path: Path) -> None:
    # A stage may write a folder at the temporary path (e.g. a SavedModel); it is cleaned up too.
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "saved") as tmp:
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


@pytest.fixture(params=["O_TMPFILE", "named"])
def writer(request, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways an output is written: an unnamed O_TMPFILE linked in, and the named fallback."""
    if request.param == "named":
        monkeypatch.setattr(files, "_write_unnamed", lambda *_: False)
    return request.param


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0o027, 0o640)])
def test_permissions_follow_the_umask(tmp_path: Path, umask, writer, mask: int, mode: int) -> None:
    umask(mask)
    write_bytes_atomic(tmp_path / "new.onnx", b"x")  # no such file yet: linked straight in
    assert stat.S_IMODE((tmp_path / "new.onnx").stat().st_mode) == mode
    (tmp_path / "model.onnx").write_bytes(b"old")  # replaced below: the link-then-rename path
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
    with pytest.raises(ModelReadError, match="does not exist"), materialize(str(tmp_path / "nope.onnx")):
        pass
    monkeypatch.setattr(sys, "stdin", FakeStdin(io.BytesIO(b"")))
    with pytest.raises(ModelReadError, match="stdin is empty"), materialize("-"):
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


def test_both_writers_write_exactly_the_bytes(tmp_path: Path, writer: str) -> None:
    data = bytes(range(256)) * 5000
    write_bytes_atomic(tmp_path / "new.onnx", data)
    (tmp_path / "old.onnx").write_bytes(b"old")
    write_bytes_atomic(tmp_path / "old.onnx", data)
    assert (tmp_path / "new.onnx").read_bytes() == data == (tmp_path / "old.onnx").read_bytes()
    assert listing(tmp_path) == ["new.onnx", "old.onnx"]


def test_a_250_byte_name_is_written(tmp_path: Path, writer: str) -> None:
    name = "m" * 245 + ".onnx"  # legal; the old temporary name '.NAME.XXXXXXXX.tmp' passed 255 bytes
    write_bytes_atomic(tmp_path / name, b"x")
    assert listing(tmp_path) == [name]


def dead_pid() -> int:
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_files_of_dead_processes_are_swept(tmp_path: Path) -> None:
    mine = temp_name()
    dead = mine.replace(f"-{os.getpid()}-", f"-{dead_pid()}-")
    foreign = f".edgecli-{dead_pid()}-000000-abcd1234.tmp"  # another pid namespace: never judged
    for name in (mine, dead, foreign, ".model.onnx.abc.tmp"):
        (tmp_path / name).write_bytes(b"half")
    assert sweep_stale_files(tmp_path) == [dead]
    write_bytes_atomic(tmp_path / "m.onnx", b"x")  # every write sweeps its folder too
    assert sorted(listing(tmp_path)) == sorted([mine, foreign, ".model.onnx.abc.tmp", "m.onnx"])


def test_temp_folders_carry_the_pid_and_dead_ones_are_swept(tmp_path: Path) -> None:
    with TempFolder(prefix="edgecli-onnx2tf-", dir=tmp_path) as folder:
        name = Path(folder).name
        assert name.startswith(f"edgecli-onnx2tf-p{os.getpid()}-")
        assert files.TEMP_FOLDER.match(name)
        stale = tmp_path / name.replace(f"-p{os.getpid()}-", f"-p{dead_pid()}-")
        (stale / "sub").mkdir(parents=True)
        (tmp_path / "edgecli-other-thing").mkdir()
        files._swept_tempdirs.discard(str(tmp_path))
        assert sweep_temp_folders(str(tmp_path)) == [stale.name]
        assert sorted(listing(tmp_path)) == sorted([name, "edgecli-other-thing"])
    assert listing(tmp_path) == ["edgecli-other-thing"]


def test_character_devices_and_fifos_are_written_through(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    data = b"z" * 300_000  # more than a pipe holds
    write_bytes_atomic(fifo, data)
    reader.join(10)
    assert got == [data] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    write_output("/dev/null", data)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert listing(tmp_path) == ["pipe"]


def test_a_failed_write_names_the_destination(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"/dev/full: no space left on the device") as caught:
        write_output("/dev/full", b"x" * 10)
    assert caught.value.exit_code == 6 and isinstance(caught.value, OSError)


def test_materialize_a_fifo_reads_it_once(tmp_path: Path, sample) -> None:
    import threading

    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    data = sample["onnx"].read_bytes()
    writer = threading.Thread(target=lambda: fifo.write_bytes(data))
    writer.start()
    with materialize(str(fifo)) as path:
        assert path != fifo and path.read_bytes() == data
        temporary = path
    writer.join(10)
    assert not temporary.exists()


def test_materialize_refuses_a_stream_larger_than_memory_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECLI_MEMORY_LIMIT_BYTES", str(3 * 1000))
    monkeypatch.setattr(sys, "stdin", FakeStdin(io.BytesIO(b"\x08" * (4 << 20))))
    from edgecli.core.errors import ModelTooLarge

    with pytest.raises(ModelTooLarge, match="needs ~"), materialize("-"):
        pass
