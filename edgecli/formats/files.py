"""Atomic output files, stdin/stdout models and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgecli.errors import ModelReadError, UsageError

STDIO = "-"


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, or of every file in a folder in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """A temporary path in dest's folder, renamed onto dest only if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary file is removed and dest is untouched.
    """
    dest = Path(dest)
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"output folder {folder} does not exist")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        raise


def write_bytes_atomic(dest: Path, data: bytes) -> None:
    """Write `data` to `dest` atomically (temp file in the same folder, fsync, rename)."""
    with atomic_path(dest) as tmp:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def write_output(dest: str, data: bytes) -> None:
    """Write an artifact to a path (atomically) or, for '-', to stdout."""
    if dest == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_bytes_atomic(Path(dest), data)


def check_output_differs(model_arg: str, output: str) -> None:
    """Refuse to overwrite the input model with the output."""
    if model_arg == STDIO or output == STDIO:
        return
    src, dst = Path(model_arg), Path(output)
    if dst.exists() and src.exists() and src.resolve() == dst.resolve():
        raise UsageError(f"output {output} is the input model; choose another -o path")


@contextlib.contextmanager
def materialize(model_arg: str) -> Iterator[Path]:
    """The model as a path: the argument itself, or the bytes of stdin in a temporary file for '-'."""
    if model_arg != STDIO:
        path = Path(model_arg)
        if not path.exists():
            raise ModelReadError(f"{model_arg} does not exist")
        yield path
        return
    if sys.stdin.isatty():
        raise UsageError("model '-' means stdin, but stdin is a terminal; pipe a model in")
    data = sys.stdin.buffer.read()
    if not data:
        raise ModelReadError("stdin is empty: no model bytes were piped in")
    with tempfile.TemporaryDirectory(prefix="edgecli-stdin-") as folder:
        path = Path(folder) / "stdin-model"
        path.write_bytes(data)
        yield path
