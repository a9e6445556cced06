"""Run a Keras model (.keras) or a SavedModel folder with TensorFlow."""

from __future__ import annotations

import numpy as np

from edgecli.core.errors import ModelReadError, last_line
from edgecli.formats.files import library_path
from edgecli.formats.keras_file import import_tensorflow, load_keras
from edgecli.formats.model_file import ModelFile
from edgecli.runtimes.base import Runner, TensorSpec


class KerasRunner(Runner):
    def __init__(self, model: ModelFile, threads: int | None = None) -> None:
        super().__init__(model, threads)
        self.keras_model = load_keras(model.path)
        self.inputs = [_spec(t) for t in self.keras_model.inputs]
        self.outputs = [_spec(t) for t in self.keras_model.outputs]

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = [feeds[spec.name] for spec in self.inputs]
        result = self.keras_model(args if len(args) > 1 else args[0], training=False)
        flat = result if isinstance(result, (list, tuple)) else [result]
        return [np.asarray(t) for t in flat]


def _spec(tensor) -> TensorSpec:
    name = getattr(tensor, "name", "input").split(":")[0]
    return TensorSpec(name, tuple(tensor.shape), np.dtype(tensor.dtype))


class SavedModelRunner(Runner):
    """A TensorFlow SavedModel folder, run through its `serving_default` signature (what
    `model.export()` and TFLiteConverter.from_saved_model use); inputs and outputs by signature name."""

    def __init__(self, model: ModelFile, threads: int | None = None) -> None:
        super().__init__(model, threads)
        tf = import_tensorflow()
        try:
            with library_path(model.path) as path:
                self.signature = tf.saved_model.load(str(path)).signatures["serving_default"]
        except KeyError:
            raise ModelReadError(f"{model.path} has no serving_default signature to run") from None
        except Exception as exc:
            raise ModelReadError(f"{model.path} is not a loadable SavedModel ({last_line(exc)})") from None
        _, named_inputs = self.signature.structured_input_signature
        self.inputs = [TensorSpec(n, tuple(t.shape), np.dtype(t.dtype.as_numpy_dtype)) for n, t in named_inputs.items()]
        self.outputs = [
            TensorSpec(n, tuple(t.shape), np.dtype(t.dtype.as_numpy_dtype))
            for n, t in self.signature.structured_outputs.items()
        ]

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.signature(**{spec.name: feeds[spec.name] for spec in self.inputs})
        return [np.asarray(result[spec.name]) for spec in self.outputs]
