"""A model file on disk: its detected format, hash, size and lineage."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecli.core.errors import ModelTooLarge
from edgecli.core.resources import MEMORY_LIMIT_ENV, check_fits
from edgecli.formats.detect import Format, detect_format
from edgecli.formats.files import sha256_of

# A model takes about 3x its file size in memory while a verb works on it: the parsed model, the
# working copy a transformation makes (or the runtime's session) and the serialized result.
MEMORY_FACTOR = 3


@dataclass
class ModelFile:
    path: Path
    format: Format
    sha256: str
    size_bytes: int
    _lineage: dict[str, Any] | None = field(default=None, repr=False)
    _lineage_read: bool = field(default=False, repr=False)

    @classmethod
    def open(cls, path: Path) -> ModelFile:
        """Detect the format from the bytes. Raises ModelReadError for unknown or unreadable files."""
        path = Path(path)
        fmt = detect_format(path)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
        check_memory(path, size)
        if fmt is Format.SAVED_MODEL:  # its graph may read or write files: checked before TensorFlow loads it
            from edgecli.formats.keras_file import check_saved_model_ops

            check_saved_model_ops(path)
        return cls(path=path, format=fmt, sha256=sha256_of(path), size_bytes=size)

    @property
    def lineage(self) -> dict[str, Any] | None:
        if not self._lineage_read:
            self._lineage = read_lineage(self)
            self._lineage_read = True
        return self._lineage


def utf8_path(path: Path) -> bool:
    """Whether `path` can be handed to a C++ library as a string: a name with bytes that are not UTF-8
    (os.fsdecode's surrogates) makes onnxruntime, LiteRT and TensorFlow fail or raise TypeError."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextlib.contextmanager
def library_path(path: Path) -> Iterator[Path]:
    """`path`, or, when its name is not UTF-8, a symbolic link to it with a UTF-8 name in a private
    temporary folder (removed after the block), for the libraries that read a path themselves."""
    if utf8_path(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="edgecli-path-") as folder:
        link = Path(folder) / ("model" + (path.suffix if utf8_path(Path(path.suffix)) else ""))
        link.symlink_to(path.resolve(), target_is_directory=path.is_dir())
        yield link


def check_memory(path: Path, size: int) -> None:
    """Refuse, before loading it, a model that needs more memory than is available. Raises ModelTooLarge."""
    check_fits(
        size,
        f"{path} ({size:,} bytes, ~{MEMORY_FACTOR}x that while loaded and transformed)",
        factor=MEMORY_FACTOR,
        error=ModelTooLarge,
        hint=f"free memory or use a larger machine; {MEMORY_LIMIT_ENV} sets the memory edgecli assumes",
    )


def read_lineage(model: ModelFile) -> dict[str, Any] | None:
    """The lineage stored in the artifact, or None for a model edgecli did not write."""
    if model.format is Format.ONNX:
        from edgecli.formats import onnx_file

        return onnx_file.read_lineage(onnx_file.load(model.path, check=False))
    if model.format is Format.PT2:
        from edgecli.formats import pt2_file

        return pt2_file.read_lineage(model.path)
    if model.format is Format.TFLITE:
        from edgecli.formats import tflite_file

        return tflite_file.read_lineage(model.path)
    if model.format is Format.ORT:
        from edgecli.formats import ort_file

        return ort_file.read_lineage(model.path)
    return None
