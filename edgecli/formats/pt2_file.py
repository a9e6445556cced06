"""PyTorch ExportedProgram (.pt2): load, serialize reproducibly with lineage."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from edgecli.core.errors import ModelReadError, one_line
from edgecli.formats import lineage as lin

LINEAGE_FILE = "edgecli_lineage.json"


def load(path: Path) -> Any:
    """A torch.export.ExportedProgram. Raises ModelReadError if unreadable, or (unless the user
    passed --trust-pickle) if the archive holds a part torch would unpickle or run as code: see
    edgecli/formats/pt2_archive.py. The bytes checked are the bytes torch reads (one read of the
    file), and a failure is one line, never torch's logged tracebacks."""
    import pickle

    from edgecli.core.security import trust_pickle
    from edgecli.formats import pt2_archive

    trusted = trust_pickle()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelReadError(f"{path} cannot be read ({exc.strerror or exc})") from None
    pt2_archive.inspect(data, path, trusted)
    from torch.export.pt2_archive._package import load_pt2

    try:
        # what torch.export.load does for a current-layout archive, without its fallback to the
        # pre-2.7 layout (refused by inspect) and the warning it logs before it
        with pt2_archive.guarded(trusted):
            contents = load_pt2(io.BytesIO(data))
    except pt2_archive._Refused as exc:
        raise ModelReadError(f"{path} holds {exc}; {pt2_archive.NO_UNPICKLING}", hint=pt2_archive.TRUST_HINT) from None
    except pickle.UnpicklingError:
        raise ModelReadError(
            f"{path} holds a pickle torch's weights-only reader refuses; {pt2_archive.NO_UNPICKLING}",
            hint=pt2_archive.TRUST_HINT,
        ) from None
    except Exception as exc:  # torch raises many types for a bad archive
        text = str(exc).strip()
        first = one_line(text.splitlines()[0])[:200] if text else type(exc).__name__
        raise ModelReadError(f"{path} is not a loadable .pt2 ExportedProgram ({first})") from None
    finally:
        del data
    program = contents.exported_programs.get("model")
    if program is None:
        raise ModelReadError(f"{path} is not a loadable .pt2 ExportedProgram (no program 'model')")
    if not trusted:
        pt2_archive.check_targets(program, path)
    return program


def check_archive(path: Path) -> None:
    """The archive checks of `load` (pt2_archive.inspect), without torch: for a .pt2 that is read
    later, refused before the work that comes first (distill's student.path, before the teacher runs)."""
    from edgecli.core.security import trust_pickle
    from edgecli.formats import pt2_archive

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelReadError(f"{path} cannot be read ({exc.strerror or exc})") from None
    pt2_archive.inspect(data, path, trust_pickle())


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
