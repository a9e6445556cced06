"""Runtimes: `open_runner(model)` gives a Runner for any supported format."""

from __future__ import annotations

from edgecli.core.errors import ModelReadError
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.runtimes.base import Runner, TensorSpec

__all__ = ["Runner", "TensorSpec", "open_runner"]


def open_runner(model: ModelFile, threads: int | None = None) -> Runner:
    """The runner for the model's format (frameworks are imported only here). A model without inputs
    or without outputs is refused (ModelReadError): there is nothing to feed, measure or compare.

    threads: intra-op threads; None lets the runtime use every core (evaluation), bench pins it.
    """
    runner = _runner(model, threads)
    for kind, specs in (("inputs", runner.inputs), ("outputs", runner.outputs)):
        if not specs:
            raise ModelReadError(
                f"{model.path} has no {kind}: edgecli runs, measures and transforms models that take at least "
                "one input and give at least one output",
                hint="check that the right model was exported",
            )
    return runner


def _runner(model: ModelFile, threads: int | None) -> Runner:
    if model.format in (Format.ONNX, Format.ORT):
        from edgecli.runtimes.onnx_runner import OnnxRunner

        return OnnxRunner(model, threads)
    if model.format is Format.PT2:
        from edgecli.runtimes.torch_runner import TorchRunner

        return TorchRunner(model, threads)
    if model.format is Format.TFLITE:
        from edgecli.runtimes.tflite_runner import TfliteRunner

        return TfliteRunner(model, threads)
    if model.format is Format.KERAS:
        from edgecli.runtimes.keras_runner import KerasRunner

        return KerasRunner(model, threads)
    if model.format is Format.SAVED_MODEL:
        from edgecli.runtimes.keras_runner import SavedModelRunner

        return SavedModelRunner(model, threads)
    raise ModelReadError(f"{model.path}: running {model.format.value} models is not supported yet")
