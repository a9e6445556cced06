"""quantize to TFLite: dynamic range, full-integer INT8 (calibrated) or FP16, with TensorFlow Lite's
converter. ONNX (and .pt2, through ONNX) reach it as the SavedModel onnx2tf writes; Keras directly."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from edgecli import console
from edgecli.data import Dataset
from edgecli.errors import TransformError, UsageError
from edgecli.formats.detect import Format
from edgecli.formats.keras_file import import_tensorflow, load_keras
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import QuantizeRecipe
from edgecli.runtimes.base import NCHW_TO_NHWC, Runner
from edgecli.stages.artifact import Artifact
from edgecli.stages.convert import as_onnx_file, onnx2tf_output


@contextlib.contextmanager
def _converter(model: ModelFile, tf: Any) -> Iterator[tuple[Any, bool]]:
    """A TFLiteConverter for the model, and whether its 4-D inputs became NHWC (onnx2tf)."""
    if model.format is Format.KERAS:
        yield tf.lite.TFLiteConverter.from_keras_model(load_keras(model.path)), False
        return
    if model.format is Format.SAVED_MODEL:
        yield tf.lite.TFLiteConverter.from_saved_model(str(model.path)), False
        return
    if model.format not in (Format.ONNX, Format.PT2):
        raise UsageError(f"cannot quantize {model.format.value} to TFLite")
    with as_onnx_file(model) as onnx_path, onnx2tf_output(onnx_path) as saved_model:
        yield tf.lite.TFLiteConverter.from_saved_model(str(saved_model)), True


def _representative(runner: Runner, data: Dataset, nhwc: bool, tracker: Any) -> Iterator[list[np.ndarray]]:
    """One sample at a time, laid out as the converted graph expects (float32)."""
    for index in range(len(data)):
        feeds = runner.feeds(data.batch(index, index + 1))
        arrays = [feeds[spec.name] for spec in runner.inputs]
        yield [(a.transpose(NCHW_TO_NHWC) if nhwc and a.ndim == 4 else a).astype(np.float32) for a in arrays]
        tracker.advance()


def quantize_tflite(model: ModelFile, recipe: QuantizeRecipe, runner: Runner, calib: Dataset | None) -> Artifact:
    """Convert `model` to a quantized TFLite flatbuffer as the recipe asks."""
    tf = import_tensorflow()
    if recipe.mode == "static" and calib is None:
        raise UsageError("full-integer TFLite quantization needs calibration data", hint="pass --data calib.npz")
    with _converter(model, tf) as (converter, nhwc):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if recipe.mode == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        sample = calib.take(recipe.calibration.samples) if recipe.mode == "static" and calib else None
        with console.progress("calibrating (TFLite)", total=len(sample) if sample else 0) as bar:
            if sample is not None:
                converter.representative_dataset = lambda: _representative(runner, sample, nhwc, bar)
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                if recipe.io_type == "int8":
                    converter.inference_input_type = tf.int8
                    converter.inference_output_type = tf.int8
            try:
                with console.muted():
                    flatbuffer = converter.convert()
            except Exception as exc:
                lines = [l for l in str(exc).splitlines() if l.strip()]
                raise TransformError(f"TFLite converter failed: {(lines[-1] if lines else type(exc).__name__)[:300]}") from None
    artifact = Artifact(Format.TFLITE, flatbuffer)
    if nhwc and any(len(spec.shape) == 4 for spec in runner.inputs):
        artifact.io["input_layout"] = "NHWC"
    return artifact
