"""Tell a model's format from its bytes, never from its file name."""

from __future__ import annotations

import zipfile
from enum import Enum
from pathlib import Path

from edgecli.core.errors import ModelReadError


# Not StrEnum: str()/f-strings of a member stay 'Format.ONNX' (e.g. stages/artifact.py's messages); .value is the name
class Format(str, Enum):  # noqa: UP042
    ONNX = "onnx"
    PT2 = "pt2"
    TFLITE = "tflite"
    KERAS = "keras"
    SAVED_MODEL = "saved_model"
    ORT = "ort"
    STATE_DICT = "state_dict"  # torch.save(model.state_dict()): tensors only, built with the recipe's model.factory

    @property
    def suffix(self) -> str:
        return {
            "onnx": ".onnx",
            "pt2": ".pt2",
            "tflite": ".tflite",
            "keras": ".keras",
            "saved_model": "",
            "ort": ".ort",
            "state_dict": ".pt",
        }[self.value]


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (
        zipfile.BadZipFile,
        OSError,
        ValueError,
        EOFError,
        NotImplementedError,
    ) as exc:  # e.g. "zip file version 6.4"
        raise ModelReadError(f"{path} looks like a zip archive but cannot be opened ({exc}); truncated?") from None
    # zipfile finds the last end-of-directory record it can: in a truncated .pt2 that is the one of the
    # zip stored inside it (sample_inputs/model.pt). The real directory lists an entry at byte 0.
    if not infos or min(info.header_offset for info in infos) != 0:
        raise ModelReadError(f"{path} looks like a zip archive but its directory is missing; truncated?")
    return [info.filename for info in infos]


# torch.save's legacy (non-zip) format: a pickled protocol-2 long, torch.serialization.MAGIC_NUMBER
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _is_keras_h5(path: Path) -> bool:
    """An HDF5 file holding a whole Keras model (the `model_config` attribute legacy model.save writes),
    read with h5py: nothing in it runs."""
    try:
        import h5py
    except ImportError:  # no h5py, no Keras to load it either
        return False
    try:
        with h5py.File(path, "r") as stored:
            return "model_config" in stored.attrs
    except OSError:
        return False


def _looks_like_onnx(head: bytes) -> bool:
    # ModelProto starts with field 1 (ir_version, varint: tag 0x08) in every exporter we know;
    # some writers put producer_name (field 2, tag 0x12) or opset_import (field 8, tag 0x42) first.
    return len(head) >= 2 and head[0] in (0x08, 0x12, 0x3A, 0x42)


def detect_format(path: Path) -> Format:
    """The format of the model at `path`, from its content. Raises ModelReadError."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return Format.SAVED_MODEL
        raise ModelReadError(f"{path} is a folder without saved_model.pb: not a SavedModel")
    try:
        with path.open("rb") as handle:
            head = handle.read(64)
    except FileNotFoundError:
        raise ModelReadError(f"{path} does not exist") from None
    except OSError as exc:
        raise ModelReadError(f"{path}: {exc.strerror}") from None
    if not head:
        raise ModelReadError(f"{path} is empty")
    if head[4:8] == b"TFL3":
        return Format.TFLITE
    if head[4:8] == b"ORTM":
        return Format.ORT
    if head[:4] == b"PK\x03\x04":
        names = _zip_names(path)
        if any(n.endswith("/archive_format") for n in names) and any(n.endswith("models/model.json") for n in names):
            return Format.PT2
        if "config.json" in names and "metadata.json" in names:
            return Format.KERAS
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return Format.STATE_DICT  # a torch.save zip; only ever loaded with weights_only=True
        raise ModelReadError(f"{path} is a zip archive of no known model format")
    if head[:8] == HDF5_MAGIC:
        if _is_keras_h5(path):
            return Format.KERAS  # a legacy Keras 2 model.save(...h5): Keras 3 loads it (safe_mode too)
        raise ModelReadError(
            f"{path} is an HDF5 file without a Keras model config (weights only?)",
            hint="give the file model.save() wrote (.keras, or a legacy .h5 with its architecture)",
        )
    if head.startswith(LEGACY_TORCH_MAGIC):
        return Format.STATE_DICT  # torch.save(..., _use_new_zipfile_serialization=False); weights_only=True too
    if _looks_like_onnx(head):
        return Format.ONNX
    raise ModelReadError(
        f"{path} is not a model edgecli knows (ONNX, .pt2, PyTorch state_dict, TFLite, .keras, SavedModel, ORT)"
    )
