"""Training checkpoints: resume an interrupted run where its last finished epoch left off.

One file holds the state of each training phase (e.g. the student, then the baseline): weights,
optimiser, schedule, shuffling generator and losses. It is rewritten atomically after every epoch,
read with torch.load(weights_only=True) (tensors, numbers, strings, lists and dicts only), and
tagged with a fingerprint of the run (recipe, teacher, data) so that a checkpoint is never applied
to a different run.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from edgecli.core import console
from edgecli.core.errors import InputError, UsageError
from edgecli.formats.files import write_bytes_atomic

FORMAT = "edgecli-checkpoint-1"


class Checkpoint:
    def __init__(self, path: Path | None, fingerprint: str, writer: bool = True) -> None:
        """writer: False in the other processes of a torchrun job, which read the checkpoint but leave
        saving it to rank 0."""
        self.path = path
        self.fingerprint = fingerprint
        self.writer = writer
        self.phases: dict[str, Any] = {}
        if self.path is not None and self.path.exists():
            self._load(self.path)

    def _load(self, path: Path) -> None:
        import torch

        try:
            loaded = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
        except Exception as exc:
            raise InputError(
                f"checkpoint {self.path} cannot be read: {str(exc).splitlines()[0][:160]}",
                hint="delete it to start over",
            ) from None
        if not isinstance(loaded, dict) or loaded.get("format") != FORMAT:
            raise InputError(f"{self.path} is not an edgecli checkpoint", hint="delete it to start over")
        if loaded.get("fingerprint") != self.fingerprint:
            raise UsageError(
                f"checkpoint {self.path} belongs to another run (different recipe, teacher or data)",
                hint="delete it, or use another --checkpoint path",
            )
        self.phases = dict(loaded["phases"])
        done = ", ".join(f"{name} epoch {state['fit']['epoch']}" for name, state in self.phases.items())
        console.info(f"resuming from {self.path}: {done}")

    def phase(self, name: str) -> dict[str, Any] | None:
        return self.phases.get(name)

    def save(self, name: str, state: dict[str, Any]) -> None:
        if self.path is None or not self.writer:
            return
        import torch

        self.phases[name] = state
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "fingerprint": self.fingerprint, "phases": self.phases}, buffer)
        write_bytes_atomic(self.path, buffer.getvalue())
