"""Running a planned pipeline: skip what is up to date, run the rest in this process, record successes.

A step is up to date when its outputs exist with the bytes recorded after its last successful run,
and its key has not changed: the hashes of every file it depends on (input model, recipe, data,
referenced outputs), its settings and the tool versions. Content, not timestamps: a step rerun that
gives the same bytes leaves the next steps up to date. The record is OUT/.edgecli-run.json, written
atomically after each success; a failed or interrupted step records nothing, so it runs again.

How a step runs is the caller's: `edgecli run` (cli/run_cmd.py) gives a function that runs an
argument list as the root command would, in this process. Nothing here imports the CLI.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecli.core import console
from edgecli.core.errors import UsageError
from edgecli.formats import lineage as lin
from edgecli.formats.files import sha256_of, write_bytes_atomic
from edgecli.pipeline.plan import Command, shown

STATE_FILE = ".edgecli-run.json"
LOCK_FILE = ".edgecli-run.lock"


@dataclass
class Outcome:
    name: str
    verb: str
    status: str  # "ran" or "up to date"
    outputs: dict[str, str]  # file -> sha256
    seconds: float
    command: str


def step_key(command: Command) -> str:
    """What decides a step's result, hashed: files by content, settings, output names, tool versions."""
    document = {
        "verb": command.verb,
        "depends_on": [sha256_of(path) for path in command.depends_on],
        "settings": command.settings,
        "outputs": [path.name for path in command.outputs],
        "options": [arg for arg in command.argv if arg.startswith("-")],  # paths are in depends_on, by content
        "tools": lin.tool_versions(),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


class State:
    """The record of successful steps in the output folder."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / STATE_FILE
        try:
            loaded = json.loads(self.path.read_text())
            self.steps: dict[str, Any] = (
                loaded["steps"] if isinstance(loaded, dict) and isinstance(loaded.get("steps"), dict) else {}
            )
        except (OSError, ValueError):
            self.steps = {}  # none yet, or damaged: everything runs

    def up_to_date(self, command: Command, key: str) -> bool:
        record = self.steps.get(command.name) or {}
        if record.get("key") != key:
            return False
        recorded = record.get("outputs") or {}
        return all(path.is_file() and recorded.get(path.name) == sha256_of(path) for path in command.outputs)

    def record(self, command: Command, key: str) -> dict[str, str]:
        outputs = {path.name: sha256_of(path) for path in command.outputs}
        self.steps[command.name] = {"key": key, "verb": command.verb, "outputs": outputs}
        write_bytes_atomic(
            self.path, (json.dumps({"edgecli_run": 1, "steps": self.steps}, indent=2, sort_keys=True) + "\n").encode()
        )
        return outputs


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """One `edgecli run` at a time per output folder (two would rewrite each other's files)."""
    with (folder / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"another edgecli run is using {shown(folder)}", hint="wait for it, or use another --out"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class StepFailed(Exception):
    """A step exited non-zero; it has printed its own one-line reason."""

    def __init__(self, command: Command, code: int) -> None:
        super().__init__(f"step '{command.name}' ({command.verb}) exited {code}")
        self.command, self.code = command, code


Execute = Callable[[list[str]], int]  # edgecli's arguments (no program name) -> the exit code


def run_commands(commands: list[Command], folder: Path, quiet: bool, force: bool, execute: Execute) -> list[Outcome]:
    """Run (or skip) each command in order with `execute`; StepFailed at the first that fails."""
    state = State(folder)
    outcomes = []
    for index, command in enumerate(commands, 1):
        key = step_key(command)
        where = ", ".join(shown(path) for path in command.outputs)
        if not force and state.up_to_date(command, key):
            console.info(f"[{index}/{len(commands)}] {command.name}: up to date ({where})")
            outcomes.append(
                Outcome(
                    command.name, command.verb, "up to date", state.steps[command.name]["outputs"], 0.0, command.shell()
                )
            )
            continue
        console.info(f"[{index}/{len(commands)}] {command.name}: {command.shell()}")
        started = time.perf_counter()
        code = execute([*command.argv, *(["-q"] if quiet else [])])
        if code != 0:
            raise StepFailed(command, code)
        outputs = state.record(command, key)
        outcomes.append(
            Outcome(command.name, command.verb, "ran", outputs, time.perf_counter() - started, command.shell())
        )
    return outcomes
