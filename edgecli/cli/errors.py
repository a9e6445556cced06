"""One place that turns exceptions into one stderr line and an exit code."""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from edgecli.core import console, interrupts
from edgecli.core.errors import EdgecliError, one_line

F = TypeVar("F", bound=Callable[..., Any])
INTERRUPTED = 130

# Exceptions from outside edgecli that mean the same thing everywhere: (type, exit code, label).
FOREIGN: list[tuple[type[BaseException], int, str]] = [
    (MemoryError, 3, "out of memory"),
    (PermissionError, 3, "permission denied"),
    (FileNotFoundError, 3, "file not found"),
    (IsADirectoryError, 2, "is a folder"),
    (OSError, 3, "I/O error"),
]


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit code, one line) for any exception: a line break or control character in a message (a
    user's path, a name read from a file) is escaped, never printed, so the line stays one line."""
    code, line = _describe(exc)
    details = exc.details if isinstance(exc, EdgecliError) else []
    return code, "\n".join(one_line(text) for text in [line, *details])


def _describe(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, EdgecliError):
        return exc.exit_code, exc.line()
    for kind, code, label in FOREIGN:
        if isinstance(exc, kind):
            return code, f"{label}: {exc}"
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return 4, f"internal error: {type(exc).__name__}: {first} (EDGECLI_DEBUG=1 shows the traceback)"


def handle_errors(func: F) -> F:
    """Run a command; report failures as one line and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            console.error_line("interrupted: no output was written")
            raise typer.Exit(INTERRUPTED) from None
        except Exception as exc:
            if interrupts.interrupted():  # a library swallowed the interrupt and then failed for it
                console.error_line("interrupted: no output was written")
                raise typer.Exit(INTERRUPTED) from None
            if os.environ.get("EDGECLI_DEBUG"):
                traceback.print_exc()
            code, line = describe(exc)
            console.error_line(line)
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]
