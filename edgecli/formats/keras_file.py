"""Keras 3 `.keras` archives and TensorFlow SavedModel folders."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgecli.errors import BackendMissing, ModelReadError
from edgecli.formats.files import TempFolder


def import_tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError:
        raise BackendMissing("Keras/TFLite support needs TensorFlow", hint="pip install 'edgecli[tflite]'") from None
    return tf


def load_keras(path: Path) -> Any:
    """A Keras model, loaded with safe_mode (no arbitrary code from Lambda layers) unless --trust-pickle."""
    from edgecli.security import trust_pickle

    import_tensorflow()
    import keras

    with TempFolder(prefix="edgecli-keras-") as folder:
        source = path
        if path.suffix != ".keras":  # Keras insists on the extension; the format was detected from bytes
            source = Path(folder) / "model.keras"
            shutil.copyfile(path, source)
        try:
            return keras.saving.load_model(str(source), safe_mode=not trust_pickle(), compile=False)
        except Exception as exc:
            raise ModelReadError(f"{path} is not a loadable Keras model ({str(exc).splitlines()[0][:200]})") from None
