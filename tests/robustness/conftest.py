"""What every refusal in tests/robustness must look like, and the output folder it must leave empty."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CliResult, leftovers


def assert_refused(result: CliResult, code: int, phrase: str, out: Path, ignore: tuple[str, ...] = ()) -> str:
    """The contract of a failure: exit code, one stderr line with `phrase`, no traceback, nothing on
    stdout, nothing (not even a temporary file) in the output folder but the names in `ignore`.
    Returns the line."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.code == code, result.stderr
    assert len(result.lines) == 1, result.stderr
    assert phrase in result.lines[0], result.lines[0]
    assert result.stdout == b""
    assert [name for name in leftovers(out) if name not in ignore] == []
    return result.lines[0]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder
