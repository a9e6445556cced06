"""Output files (atomic, or written through to a device or FIFO), stdout, models read from stdin or a
pipe, temporary files and folders a killed process cannot leave behind for long, and content hashes.

Temporary names carry the writer's pid: `.edgecli-<pid>-<ns>-<random>.tmp` beside an output (only
between the link and the rename of an O_TMPFILE write, or for the whole write on filesystems without
O_TMPFILE) and `edgecli-<what>-p<pid>-<ns>-<random>` folders in $TMPDIR. `<ns>` tells this machine's
pid namespace from another's (a container sharing the folder). The next edgecli run removes those
whose process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from edgecli.core import interrupts
from edgecli.core.errors import ModelReadError, ModelTooLarge, OutputError, UsageError
from edgecli.core.resources import MEMORY_LIMIT_ENV, available_memory, check_fits

STDIO = "-"
CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, or of every file in a folder in name order."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def utf8_path(path: Path) -> bool:
    """Whether `path` can be handed to a C++ library as a string: a name with bytes that are not UTF-8
    (os.fsdecode's surrogates) makes onnxruntime, LiteRT and TensorFlow fail or raise TypeError."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextlib.contextmanager
def library_path(path: Path) -> Iterator[Path]:
    """`path`, or, when its name is not UTF-8, a symbolic link to it with a UTF-8 name in a private
    temporary folder (removed after the block), for the libraries that read a path themselves."""
    if utf8_path(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="edgecli-path-") as folder:
        link = Path(folder) / ("model" + (path.suffix if utf8_path(Path(path.suffix)) else ""))
        link.symlink_to(path.resolve(), target_is_directory=path.is_dir())
        yield link


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- temporary names and their sweep


def _namespace() -> str:
    """6 hex digits naming this host and pid namespace: a pid is only ever judged dead in its own."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return hashlib.sha256(f"{socket.gethostname()}|{ns}".encode()).hexdigest()[:6]


NAMESPACE = _namespace()
TEMP_FILE = re.compile(r"^\.edgecli-(\d+)-([0-9a-f]{6})-[0-9a-f]+\.tmp$")
TEMP_FOLDER = re.compile(r"^edgecli-(?:.*-)?p(\d+)-([0-9a-f]{6})-[\w]+$")


def temp_name() -> str:
    """A short name for a temporary file beside an output (far below any file name limit)."""
    return f".edgecli-{os.getpid()}-{NAMESPACE}-{secrets.token_hex(4)}.tmp"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _stale(name: str, pattern: re.Pattern[str]) -> bool:
    found = pattern.match(name)
    return found is not None and found.group(2) == NAMESPACE and not _alive(int(found.group(1)))


def _sweep(folder: str | Path, prefix: str, pattern: re.Pattern[str], remove: Callable[[str], None]) -> list[str]:
    """Remove (with `remove`) the entries of `folder` that dead edgecli processes left; their names."""
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if name.startswith(prefix) and _stale(name, pattern):
            with contextlib.suppress(OSError):
                remove(os.path.join(folder, name))
                removed.append(name)
    return removed


def sweep_stale_files(folder: Path) -> list[str]:
    """Remove the temporary files of dead edgecli processes from `folder`; their names."""
    return _sweep(folder, ".edgecli-", TEMP_FILE, os.unlink)


_swept_tempdirs: set[str] = set()


def sweep_temp_folders(root: str | None = None) -> list[str]:
    """Remove the $TMPDIR folders of dead edgecli processes (once per process and folder); their names."""
    root = root or tempfile.gettempdir()
    if root in _swept_tempdirs:
        return []
    _swept_tempdirs.add(root)
    return _sweep(root, "edgecli-", TEMP_FOLDER, lambda path: shutil.rmtree(path, ignore_errors=True))


class TempFolder(tempfile.TemporaryDirectory):
    """tempfile.TemporaryDirectory named `<prefix>p<pid>-<ns>-<random>`: a folder a killed process
    leaves in $TMPDIR is removed by the next edgecli run (which sweeps them when it makes its own)."""

    def __init__(
        self,
        suffix: str | None = None,
        prefix: str | None = None,
        dir: str | os.PathLike[str] | None = None,
        ignore_cleanup_errors: bool = False,
    ) -> None:
        sweep_temp_folders(None if dir is None else os.fspath(dir))
        prefix = prefix or "edgecli-"
        if not prefix.endswith("-"):
            prefix += "-"
        super().__init__(suffix, f"{prefix}p{os.getpid()}-{NAMESPACE}-", dir, ignore_cleanup_errors)


# ---------------------------------------------------------------- writing files


def reason(exc: OSError) -> str:
    """An OSError as a few words, without the (temporary) file name the OS put in it."""
    named = {
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EDQUOT: "disk quota exceeded",
        errno.ENAMETOOLONG: "the name is too long",
        errno.EPIPE: "broken pipe",
        errno.EIO: "input/output error",
    }
    return named.get(exc.errno or -1) or (exc.strerror or type(exc).__name__).lower()


def _write_all(fd: int, data: bytes | memoryview, progress: list[int] | None = None) -> None:
    """os.write until every byte is out (a short write is continued, never taken as done)."""
    view = memoryview(data)
    while view:
        sent = os.write(fd, view[:CHUNK])
        if sent <= 0:
            raise OSError(errno.EIO, "the write made no progress")
        view = view[sent:]
        if progress is not None:
            progress[0] += sent


def _folder_of(dest: Path) -> Path:
    return dest.parent if str(dest.parent) else Path(".")


def is_write_through(dest: Path) -> bool:
    """An existing character device (/dev/null) or FIFO: written to as it is, never replaced."""
    try:
        mode = os.stat(dest).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


def _write_through(dest: Path, data: bytes) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CLOEXEC)  # a FIFO blocks here until a reader opens it
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


_PROC_FD = os.path.isdir("/proc/self/fd")


def _write_unnamed(folder: Path, dest: Path, data: bytes) -> bool:
    """O_TMPFILE: the bytes go into a file with no name until they are complete and synced, then it is
    linked in (onto a short pid-named name and renamed over an existing dest). False where the
    filesystem has no O_TMPFILE."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not _PROC_FD:
        return False
    try:
        fd = os.open(folder, flag | os.O_WRONLY | os.O_CLOEXEC, 0o666)  # the umask applies, as for any new file
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP):
            return False
        raise
    where = None
    try:
        _write_all(fd, data)
        os.fsync(fd)
        # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N; os.link calls plain link() (which does not
        # follow the /proc link) unless a dir_fd is given, hence the folder's descriptor
        where = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        source = f"/proc/self/fd/{fd}"
        try:
            os.link(source, dest.name, dst_dir_fd=where, follow_symlinks=True)  # no such name yet: it appears complete
            return True
        except FileExistsError:
            pass
        tmp = temp_name()
        os.link(source, tmp, dst_dir_fd=where, follow_symlinks=True)
        try:
            os.replace(tmp, dest.name, src_dir_fd=where, dst_dir_fd=where)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=where)
            raise
        return True
    finally:
        os.close(fd)
        if where is not None:
            os.close(where)


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """A temporary path in dest's folder (`.edgecli-<pid>-...tmp`), renamed onto dest only if the block
    succeeds; for writers that need a path. On any exception (including KeyboardInterrupt) the
    temporary file (or folder) is removed and dest is untouched; one a SIGKILL leaves is removed by the
    next write into that folder."""
    dest = Path(dest)
    folder = _folder_of(dest)
    if not folder.is_dir():
        raise UsageError(f"output folder {folder} does not exist")
    sweep_stale_files(folder)
    tmp = folder / temp_name()
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))  # umask applies
    try:
        yield tmp
        interrupts.check()  # a signal a library swallowed: the output must not appear
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            if tmp.is_dir():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        raise


def write_bytes_atomic(dest: Path, data: bytes) -> None:
    """Write `data` to `dest`: whole or not at all (an unnamed O_TMPFILE, else a pid-named temporary
    file, fsync, rename), or through an existing character device or FIFO. A failure is an
    OutputError (exit 6) naming dest."""
    dest = Path(dest)
    folder = _folder_of(dest)
    if not folder.is_dir():
        raise UsageError(f"output folder {folder} does not exist")
    through = is_write_through(dest)
    interrupts.check()  # a signal a library swallowed: the output must not appear (no library runs below)
    try:
        if through:
            _write_through(dest, data)
            return
        sweep_stale_files(folder)
        if _write_unnamed(folder, dest, data):
            return
        with atomic_path(dest) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
    except OutputError:
        raise
    except OSError as exc:
        if isinstance(exc, IsADirectoryError) or dest.is_dir():
            raise OutputError(f"{dest} is a folder", hint="give a file path") from None
        raise OutputError(f"{dest}: {reason(exc)}", hint=None if through else "nothing was written there") from None


# ---------------------------------------------------------------- stdout


_closed: set[int] = set()


def guard_stdio() -> None:
    """At start-up: a closed stdin, stdout or stderr gets /dev/null on its descriptor, so that no file
    edgecli opens later lands on fd 0, 1 or 2 (and gets model bytes or error lines written into it).
    stdin is opened the wrong way round (a read fails); a command that needs stdin or stdout is
    refused by io_guard.CommandFiles.check() first, and what libraries print to a closed stdout or
    stderr vanishes (there is nobody to tell). sys.stdout and sys.stderr are never None: libraries
    flush them, and rich would print error lines on stdout without a stderr."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        _closed.add(fd)
        null = os.open(os.devnull, os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
    if 1 in _closed:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    if 2 in _closed:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115


def stdout_closed() -> bool:
    return 1 in _closed or sys.stdout is None


def stdin_closed() -> bool:
    return 0 in _closed or sys.stdin is None


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null once its reader is gone, so that Python's flush at exit adds no
    'BrokenPipeError' noise and no second message."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)


def write_stdout(data: bytes) -> None:
    """Every byte to stdout, or an OutputError (exit 6) saying how many got there."""
    if stdout_closed():
        raise OutputError("stdout is closed", hint="run without >&-, or write to a file")
    interrupts.check()  # a signal a library swallowed: nothing goes out
    stream = sys.stdout
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    done = [0]
    try:
        if fd is None:  # a test runner's captured stream
            stream.buffer.write(data)
            stream.buffer.flush()
            return
        stream.flush()
        _write_all(fd, data, done)
    except OSError as exc:
        _silence_stdout()
        if exc.errno == errno.EPIPE:
            raise OutputError(
                f"stdout was closed by its reader after {done[0]:,} of {len(data):,} bytes (broken pipe)",
                hint="the output is incomplete",
            ) from None
        raise OutputError(f"stdout: {reason(exc)} after {done[0]:,} of {len(data):,} bytes") from None


def write_output(dest: str, data: bytes) -> None:
    """Write an artifact to a path (atomically, or through a device/FIFO) or, for '-', to stdout."""
    if dest == STDIO:
        write_stdout(data)
    else:
        write_bytes_atomic(Path(dest), data)


# ---------------------------------------------------------------- models: the memory bound, stdin and pipes

# A model takes about 3x its file size in memory while a verb works on it: the parsed model, the
# working copy a transformation makes (or the runtime's session) and the serialized result.
MEMORY_FACTOR = 3


def check_memory(path: Path, size: int) -> None:
    """Refuse, before loading it, a model that needs more memory than is available. Raises ModelTooLarge."""
    check_fits(
        size,
        f"{path} ({size:,} bytes, ~{MEMORY_FACTOR}x that while loaded and transformed)",
        factor=MEMORY_FACTOR,
        error=ModelTooLarge,
        hint=f"free memory or use a larger machine; {MEMORY_LIMIT_ENV} sets the memory edgecli assumes",
    )


def _stream_cap() -> int:
    """Bytes of a piped model worth keeping: what could still be loaded (the memory check's limit)."""
    return available_memory() // MEMORY_FACTOR


def _copy_stream(read, shown: str, target: Path) -> int:
    """Copy a stream into `target`, refusing (like any model too large to load) past the memory bound."""
    cap, total = _stream_cap(), 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        while True:
            chunk = read(CHUNK)
            if not chunk:
                return total
            total += len(chunk)
            if total > cap:
                check_memory(Path(shown), total)  # raises ModelTooLarge (exit 3) with the usual figures
            try:
                _write_all(fd, chunk)
            except OSError as exc:
                raise ModelReadError(
                    f"cannot keep {shown} in {target.parent.parent}: {reason(exc)}",
                    hint="set TMPDIR to a folder with space",
                ) from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def materialize(model_arg: str) -> Iterator[Path]:
    """The model as a path: the argument itself (a file or folder), or, for '-' (stdin), a FIFO,
    /dev/fd/N (process substitution) or another stream, its bytes read once in full (bounded by the
    memory a model may use) into a private temporary file, detected only after that."""
    if model_arg != STDIO:
        path = Path(model_arg)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise ModelReadError(f"{model_arg} does not exist") from None
        except OSError as exc:
            raise ModelReadError(f"{model_arg}: {reason(exc)}") from None
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            yield path
            return
        if stat.S_ISBLK(mode):
            raise ModelReadError(f"{model_arg} is a block device, not a model file")
        with TempFolder(prefix="edgecli-stdin-") as folder:
            target = Path(folder) / (path.name or "pipe-model")
            try:
                with open(path, "rb", buffering=0) as stream:  # a FIFO waits here for its writer
                    size = _copy_stream(stream.read, model_arg, target)
            except OSError as exc:
                raise ModelReadError(f"{model_arg}: {reason(exc)}") from None
            if not size:
                raise ModelReadError(f"{model_arg} is empty: no model bytes came through the pipe")
            yield target
        return
    if stdin_closed():
        raise UsageError("model '-' means stdin, but stdin is closed", hint="pipe a model in")
    if sys.stdin.isatty():
        raise UsageError("model '-' means stdin, but stdin is a terminal; pipe a model in")
    with TempFolder(prefix="edgecli-stdin-") as folder:
        path = Path(folder) / "stdin-model"
        try:
            size = _copy_stream(sys.stdin.buffer.read, "stdin", path)
        except OSError as exc:
            raise ModelReadError(f"stdin: {reason(exc)}") from None
        if not size:
            raise ModelReadError("stdin is empty: no model bytes were piped in")
        yield path
