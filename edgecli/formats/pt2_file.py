"""PyTorch ExportedProgram (.pt2): load, serialize reproducibly with lineage."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from edgecli.errors import ModelReadError
from edgecli.formats import lineage as lin

LINEAGE_FILE = "edgecli_lineage.json"


def load(path: Path) -> Any:
    """A torch.export.ExportedProgram. Raises ModelReadError if unreadable."""
    import torch

    try:
        return torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for a bad archive
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelReadError(f"{path} is not a loadable .pt2 ExportedProgram ({first})") from None


def read_lineage(path: Path) -> dict[str, Any] | None:
    """The lineage stored in the archive, read without torch."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{LINEAGE_FILE}")]
            return lin.loads(archive.read(names[0])) if names else None
    except (zipfile.BadZipFile, OSError, KeyError):
        return None


def to_bytes(program: Any, lineage: dict[str, Any] | None) -> bytes:
    """Serialize to bytes. Saving to a buffer (not a named file) keeps the archive's inner folder
    name fixed ('archive/'), so the same program always gives the same bytes."""
    import torch

    buffer = io.BytesIO()
    extra = {LINEAGE_FILE: lin.dumps(lineage)} if lineage is not None else None
    torch.export.save(program, buffer, extra_files=extra)
    return buffer.getvalue()
