"""SIGINT and SIGTERM: remembered as well as raised.

Some libraries edgecli calls catch everything with a bare `except:` (onnx2tf does, around several of
its conversion steps), so a KeyboardInterrupt raised inside them can be swallowed and the work goes
on to the end. The handler therefore also records the signal, and every place that makes an output
appear (`formats.files`) calls `check()` first: a swallowed interrupt still ends the command with
exit 130 and no output written.
"""

from __future__ import annotations

import signal
from typing import Any

_received: list[int] = []


def _handler(signum: int, _frame: Any) -> None:
    _received.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds like Ctrl-C: temporary files are removed


def install() -> None:
    """Route SIGINT and SIGTERM through the recording handler (from the main thread, at start-up)."""
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def interrupted() -> bool:
    """Whether a SIGINT or SIGTERM arrived in this process since start-up."""
    return bool(_received)


def check() -> None:
    """Raise KeyboardInterrupt if a signal arrived, even one whose exception a library swallowed."""
    if _received:
        raise KeyboardInterrupt(f"signal {_received[0]}")
