"""The one exception tree of edgecli; each class carries the exit code the CLI returns.

Exit codes (the command-line contract, see README):
    0 success
    1 a gate or budget in the recipe was not met (artifact and report still written)
    2 bad usage or a bad recipe
    3 a model or data file that cannot be read
    4 the transformation failed (unsupported op, parity check failed)
    5 a missing optional backend
    6 an output could not be written after the work (disk full, read-only, stdout's reader gone)
"""

from __future__ import annotations


class EdgecliError(Exception):
    """Base of every error edgecli reports as one line on stderr."""

    exit_code: int = 4
    label: str = "error"

    def __init__(self, message: str, hint: str | None = None, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details or []  # further lines on purpose (a list of problems), each kept one line

    def line(self) -> str:
        """The single line shown to the user."""
        text = f"{self.label}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class GateFailed(EdgecliError):
    """A gate, budget or target in the recipe was not met; outputs were still written."""

    exit_code = 1
    label = "gate failed"


class UsageError(EdgecliError):
    """Bad command-line usage."""

    exit_code = 2
    label = "usage error"


class RecipeError(UsageError):
    """A recipe that cannot be parsed or does not validate."""

    label = "recipe error"


class InputError(EdgecliError):
    """A model or data file that cannot be read."""

    exit_code = 3
    label = "cannot read input"


class ModelReadError(InputError):
    """A model file that is missing, corrupt, truncated or of an unsupported format."""

    label = "cannot read model"


class ModelTooLarge(InputError):
    """A model file too large for the memory available to load and transform it."""

    label = "out of memory"


class DataError(InputError):
    """A dataset that is missing, unreadable or does not fit the model."""

    label = "cannot read data"


class TransformError(EdgecliError):
    """The transformation itself failed."""

    exit_code = 4
    label = "transformation failed"


class ParityError(TransformError):
    """The transformed model does not compute the same function as its parent."""

    label = "parity check failed"


class OutputError(EdgecliError, OSError):
    """An output that could not be written after the work was done (disk full, read-only, permission,
    stdout closed by its reader). Also an OSError, so callers that tolerate a failed write still do."""

    exit_code = 6
    label = "cannot write output"


class BackendMissing(EdgecliError):
    """An optional backend (TensorFlow, LiteRT, onnx2tf) is not installed."""

    exit_code = 5
    label = "missing backend"


# What runtimes say when a file's structure is broken (onnxruntime for ONNX and ORT files, LiteRT)
DAMAGED_SIGNS = ("verification failed", "not a valid flatbuffer", "protobuf parsing failed")


def damaged_hint(text: str) -> str | None:
    """A hint for a runtime's load error that means the file itself is damaged, else None."""
    return "the file is corrupt or truncated" if any(sign in text.lower() for sign in DAMAGED_SIGNS) else None


def one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped: for names and values from files
    and command lines that a one-line message quotes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def last_line(exc: BaseException, limit: int = 300) -> str:
    """The last non-empty line of a library's exception message (where converters and exporters put
    the actual cause), or the exception's type name."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:limit]
