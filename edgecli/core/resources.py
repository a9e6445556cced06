"""Memory limits: refuse an input that cannot fit before loading it, with one clear line.

`EDGECLI_MEMORY_LIMIT_BYTES` overrides the memory the machine reports as available, e.g. to
simulate a small device or to keep a CI job within its container's limit.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgecli.core.errors import EdgecliError, InputError, UsageError

MEMORY_LIMIT_ENV = "EDGECLI_MEMORY_LIMIT_BYTES"
GIB = 1024**3


def available_memory() -> int:
    """Bytes of memory this process may use: $EDGECLI_MEMORY_LIMIT_BYTES, else MemAvailable from
    /proc/meminfo, else the free physical pages (sysconf); 2**63 - 1 when nothing tells."""
    override = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if override:
        try:
            value = int(float(override))
        except ValueError:
            value = -1
        if value < 0:
            raise UsageError(f"{MEMORY_LIMIT_ENV}={override!r} is not a number of bytes", hint="e.g. 2000000000")
        return value
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 2**63 - 1


def check_fits(
    nbytes: int, what: str, factor: float = 1.0, error: type[EdgecliError] = InputError, hint: str | None = None
) -> None:
    """Raise `error` (exit 3 by default) when `what` needs more than the available memory: `nbytes`
    (its size once loaded) times `factor` (the working copies the step makes on top)."""
    needed, available = int(nbytes * factor), available_memory()
    if needed > available:
        raise error(f"{what} needs ~{_size(needed)} of memory, {_size(available)} available", hint=hint)


def _size(nbytes: int) -> str:
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB // 100 else f"{nbytes / 2**20:.2f} MiB"
