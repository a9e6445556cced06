"""Where edgecli talks to people: stderr only, quiet on request, rich progress bars."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_quiet = False
_warnings: list[str] = []


def _own_stderr() -> TextIO:
    """Our own handle on the terminal's stderr, so that muting libraries (fd 2) never mutes us."""
    try:
        if sys.stderr.fileno() == 2:
            return os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    return sys.stderr  # a test runner's captured stream


_console: Console | None = None
_console_for: object = None


def get_console() -> Console:
    """The rich console on stderr; rebuilt if sys.stderr was replaced (e.g. by a test runner)."""
    global _console, _console_for
    if _console is None or _console_for is not sys.stderr:
        _console_for = sys.stderr
        stream = _own_stderr()
        wide = None if stream.isatty() else 160  # logs and CI: don't squeeze tables into 80 columns
        _console = Console(file=stream, highlight=False, width=wide)
    return _console


def error_line(text: str) -> None:
    """The one line that says what went wrong (printed even when quiet)."""
    get_console().print(text, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """Silence what libraries print to stdout/stderr (C and Python level) while they work.

    stdout must carry only model bytes or JSON; exporters and converters print progress there.
    With EDGECLI_DEBUG=1 nothing is muted, and library output goes to stderr.
    """
    if os.environ.get("EDGECLI_DEBUG"):
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    get_console()  # bound to the real stderr before fd 2 is redirected
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(sink):
                yield
        finally:
            for stream in (sys.stdout, sys.stderr):  # what a block-buffered stream holds belongs in the sink
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


def set_quiet(quiet: bool) -> None:
    """Silence progress bars, tables and info lines (errors are still printed)."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def info(message: str) -> None:
    """One informational line on stderr, unless quiet."""
    if not _quiet:
        get_console().print(message)


def warn(message: str) -> None:
    """A warning line on stderr, unless quiet; kept for reports (see `warnings_given`)."""
    _warnings.append(message)
    if not _quiet:
        get_console().print(f"[yellow]warning:[/yellow] {message}")


def warnings_given() -> list[str]:
    """Every warning given so far in this process, in order."""
    return list(_warnings)


def show(renderable: object) -> None:
    """A rich table or panel on stderr, unless quiet."""
    if not _quiet:
        get_console().print(renderable)


class Tracker(Protocol):
    def advance(self, steps: int = 1, **fields: object) -> None: ...


class _Task:
    def __init__(self, progress: Progress | None, task_id: TaskID | None) -> None:
        self._progress = progress
        self._task_id = task_id

    def advance(self, steps: int = 1, **fields: object) -> None:
        if self._progress is not None and self._task_id is not None:
            status = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            self._progress.update(self._task_id, advance=steps, status=status)


@contextlib.contextmanager
def progress(description: str, total: int) -> Iterator[Tracker]:
    """A progress bar on stderr for long work; a no-op when quiet."""
    if _quiet:
        yield _Task(None, None)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    terminal = get_console().is_terminal
    with Progress(*columns, console=get_console(), transient=False, disable=not terminal) as bar:
        task_id = bar.add_task(description, total=total, status="")
        yield _Task(bar, task_id)
    if not terminal:  # a log (CI, a pipe): one line when the work is done, none when it failed
        task = bar.tasks[0]
        status = f"  {task.fields['status']}" if task.fields.get("status") else ""
        get_console().print(
            f"{description}: {task.completed:g}/{total} in {task.finished_time or task.elapsed or 0:.1f} s{status}",
            markup=False,
            highlight=False,
        )
