"""A model file on disk: its detected format, hash, size and lineage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecli.formats.detect import Format, detect_format
from edgecli.formats.files import check_memory, sha256_of


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
