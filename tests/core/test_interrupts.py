"""A SIGINT that a library swallows (onnx2tf's bare `except:`) still keeps the output from appearing:
the handler remembers the signal and every output path checks it before the file shows."""

from __future__ import annotations

import os
import signal

import pytest

from edgecli.core import interrupts
from edgecli.formats.files import atomic_path, write_bytes_atomic


@pytest.fixture
def recording_handler():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    interrupts.install()
    yield
    interrupts._received.clear()
    signal.signal(signal.SIGINT, before[0])
    signal.signal(signal.SIGTERM, before[1])


def _swallowing_library(signum: int) -> None:
    try:
        os.kill(os.getpid(), signum)
        for _ in range(1000):  # the handler runs between bytecodes
            pass
    except:  # noqa: E722 - what onnx2tf does
        pass


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_swallowed_signal_keeps_the_output_from_appearing(recording_handler, signum, tmp_path):
    _swallowing_library(signum)
    assert interrupts.interrupted()
    dest = tmp_path / "model.onnx"
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(dest, b"model bytes")
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "other.tflite") as tmp:
        tmp.write_bytes(b"converter output")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_without_a_signal_outputs_are_written(recording_handler, tmp_path):
    assert not interrupts.interrupted()
    interrupts.check()
    write_bytes_atomic(tmp_path / "model.onnx", b"model bytes")
    assert (tmp_path / "model.onnx").read_bytes() == b"model bytes"
