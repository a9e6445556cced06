"""Run a Keras model (.keras) with TensorFlow."""

from __future__ import annotations

import numpy as np

from edgecli.formats.keras_file import load_keras
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
