"""Every input and output of a command, checked before any work.

A command lists what it reads (model, data, eval data, recipe file, teacher, student.path, pipeline
sources) and what it writes (-o, --report, --json, --markdown, --csv, --plot, --checkpoint, pipeline
outputs) in a CommandFiles, and calls check() before it starts. Refused with exit 2, one line naming
the option and the problem:

- an output that is the same file as an input (same resolved path, or the same inode: a hard or
  symbolic link), or inside an input folder (a SavedModel), or two outputs naming one file;
- an output path that cannot be written: empty, a folder, a missing folder, a file name longer than
  the filesystem allows, a folder edgecli cannot create a file in (read-only, permissions), a block
  device or socket (character devices such as /dev/null and FIFOs are written through, never replaced);
- stdout or stdin a command needs but that is closed (`>&-`, `<&-`), two outputs on stdout, and
  model bytes (`-o -`) onto a terminal.

A write that fails after the work (disk full, ...) is errors.OutputError: exit 6.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgecli.core.errors import UsageError
from edgecli.formats.files import (
    STDIO,
    guard_stdio,
    reason,
    stdin_closed,
    stdout_closed,
    sweep_stale_files,
    sweep_temp_folders,
    temp_name,
)


def startup() -> None:
    """What every edgecli process does first: guard the standard descriptors, sweep dead runs' temporary folders."""
    guard_stdio()
    with contextlib.suppress(OSError):
        sweep_temp_folders()


def require_stdout(what: str) -> None:
    """Refuse (exit 2) a command whose answer is on stdout when stdout is closed."""
    if stdout_closed():
        raise UsageError(
            f"{what} writes to stdout, but stdout is closed", hint="run it without >&-, or redirect stdout to a file"
        )


def _is_stdio(path: str | os.PathLike[str]) -> bool:
    return isinstance(path, str) and path == STDIO


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _probe(folder: Path) -> None:
    """Create (and drop) a file in `folder`, as the real write will: the only test that also holds for
    root, read-only mounts, ACLs and immutable folders. Raises OSError."""
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        try:
            os.close(os.open(folder, flag | os.O_WRONLY | os.O_CLOEXEC, 0o600))
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOTSUP):
                raise
    name = folder / temp_name()
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    os.unlink(name)


def check_output_path(role: str, text: str | os.PathLike[str]) -> None:
    """Refuse (exit 2) an output path edgecli could not write; before any work."""
    text = os.fspath(text)
    if text == "":
        raise UsageError(f"{role} '' is an empty path", hint="give a file path, or - for stdout")
    path = Path(text)
    try:
        found = os.stat(path)
    except FileNotFoundError:
        found = None
    except NotADirectoryError:
        raise UsageError(f"{role} {text}: a part of that path is a file, not a folder") from None
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise UsageError(f"{role} {text}: {reason(exc)}") from None
        found = None  # measured below
    if found is not None:
        mode = found.st_mode
        if stat.S_ISDIR(mode):
            raise UsageError(f"{role} {text} is a folder", hint="give a file path")
        if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
            return  # written through as it is: /dev/null stays a device, a FIFO's reader gets the bytes
        if stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
            kind = "a block device" if stat.S_ISBLK(mode) else "a socket"
            raise UsageError(
                f"{role} {text} is {kind}", hint="edgecli writes files, character devices such as /dev/null and FIFOs"
            )
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        if folder.exists():
            raise UsageError(f"{role} {text}: {folder} is not a folder")
        raise UsageError(f"{role} {text}: folder {folder} does not exist")
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    size = len(os.fsencode(path.name))
    if size > name_max:
        raise UsageError(f"{role} {text}: the file name is {size} bytes long, this filesystem allows {name_max}")
    if len(os.fsencode(os.path.abspath(path))) >= 4096:
        raise UsageError(f"{role} {text}: the path is longer than the 4095 bytes Linux allows")
    try:
        _probe(folder)
    except OSError as exc:
        raise UsageError(f"{role} {text}: cannot create a file in {folder}: {reason(exc)}") from None
    sweep_stale_files(folder)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def same_file(a: Path, b: Path) -> bool:
    """The same file: one inode (hard or symbolic links included), or one resolved path."""
    with contextlib.suppress(OSError):
        if os.path.samefile(a, b):
            return True
    return _resolved(a) == _resolved(b)


def _inside(path: Path, folder: Path) -> bool:
    return _resolved(path).is_relative_to(_resolved(folder))


def _default_clash(out_role: str, out: str, in_role: str, source: str) -> str:
    also = "" if source == out else f" ({source})"
    return f"{out_role} {out} is {in_role}{also}; choose another {out_role} path"


@dataclass
class CommandFiles:
    """What a command reads and writes. Roles: inputs as nouns ("the input model", "the --data
    file"), outputs as options ("-o", "--report")."""

    inputs: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[tuple[str, str]] = field(default_factory=list)
    binary: set[str] = field(default_factory=set)  # output roles whose stdout bytes are binary (a model)
    clash: Callable[[str, str, str, str], str] = _default_clash

    def input(self, role: str, path: str | os.PathLike[str] | None) -> None:
        if path is not None:
            self.inputs.append((role, os.fspath(path)))

    def output(self, role: str, path: str | os.PathLike[str] | None, binary: bool = False) -> None:
        if path is not None:
            self.outputs.append((role, os.fspath(path)))
            if binary:
                self.binary.add(role)

    def check(self) -> None:
        """Every refusal, before any work (exit 2)."""
        self.check_stdio()
        for role, path in self.outputs:
            if path != STDIO:
                check_output_path(role, path)
        self.check_clashes()

    def check_stdio(self) -> None:
        for role, path in self.inputs:
            if path == STDIO and stdin_closed():
                raise UsageError(f"{role} '-' means stdin, but stdin is closed", hint="pipe a model in")
        on_stdout = [role for role, path in self.outputs if path == STDIO]
        if len(on_stdout) > 1:
            raise UsageError(
                f"{' and '.join(f'{r} -' for r in on_stdout)} all want stdout", hint="write all but one to a file"
            )
        if not on_stdout:
            return
        role = on_stdout[0]
        if stdout_closed():
            raise UsageError(
                f"{role} - writes to stdout, but stdout is closed", hint="run without >&-, or give a file path"
            )
        if role in self.binary and os.isatty(1):
            raise UsageError(
                f"{role} - would write the model's binary bytes onto the terminal",
                hint="redirect stdout to a file or pipe it into another command",
            )

    def check_clashes(self) -> None:
        """An output is never an input, nor inside an input folder, nor another output."""
        kept: list[tuple[str, str]] = []
        for role, text in self.outputs:
            if text == "" or text == STDIO:
                continue
            path = Path(text)
            found = _stat(path)
            if found is not None and (stat.S_ISCHR(found.st_mode) or stat.S_ISFIFO(found.st_mode)):
                continue  # written through, never replaced: many outputs may share /dev/null
            for in_role, source in self.inputs:
                if source == STDIO or source == "":
                    continue
                origin = Path(source)
                if same_file(path, origin):
                    raise UsageError(self.clash(role, text, in_role, source))
                if origin.is_dir() and _inside(path, origin):
                    raise UsageError(f"{role} {text} is inside {in_role} {source}; choose a path outside it")
            for other_role, other in kept:
                if same_file(path, Path(other)):
                    raise UsageError(f"{role} and {other_role} name the same file ({text})")
            kept.append((role, text))


def check_output_differs(model_arg: str, output: str) -> None:
    """Refuse to overwrite the input model with the output (CommandFiles.check does the whole check)."""
    files = CommandFiles()
    files.input("the input model", model_arg)
    files.output("-o", output)
    files.check_clashes()
