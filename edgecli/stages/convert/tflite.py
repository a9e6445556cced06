"""target tflite: the model as TFLite in the recipe's precision. float32 and float16 are the
backend's conversion (backends/tflite_convert.py: onnx2tf, or TensorFlow's converter for Keras);
dynamic-range and full-integer INT8 go through quantize's TFLite quantizer (stages/quantize/tflite.py,
the one use of another stage's code, listed in tests/test_architecture.py), calibrated on the
calibration data, with no accuracy guard: convert's parity check judges the result."""

from __future__ import annotations

from edgecli.backends.tflite_convert import float_tflite
from edgecli.core.errors import UsageError
from edgecli.data.dataset import Dataset
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import ConvertRecipe, QuantizeRecipe
from edgecli.runtimes import open_runner
from edgecli.stages.quantize.tflite import tflite_quantizer


def int8_tflite(model: ModelFile, recipe: ConvertRecipe, data: Dataset | None, full_integer: bool) -> bytes:
    """Full-integer INT8 TFLite (activation ranges calibrated on `data`), else dynamic-range INT8."""
    if full_integer and data is None:
        raise UsageError(
            "precision int8 calibrates activation ranges on real inputs: give --data", hint="e.g. --data calib.npz"
        )
    quantize_recipe = QuantizeRecipe.model_validate(
        {
            "mode": "static" if full_integer else "dynamic",
            "format": "tflite",
            "io_type": recipe.io_type,
            "calibration": {"samples": recipe.calibration_samples},
            "speed_check": False,
        }
    )
    with tflite_quantizer(model, quantize_recipe, open_runner(model), data) as quantizer:
        return quantizer.quantize().payload


def tflite_payload(model: ModelFile, recipe: ConvertRecipe, data: Dataset | None) -> bytes:
    """The model as TFLite in recipe.precision: float32, float16, dynamic (range) or int8 (full integer)."""
    if recipe.precision in ("dynamic", "int8"):
        return int8_tflite(model, recipe, data, full_integer=recipe.precision == "int8")
    return float_tflite(model, recipe.precision, recipe.opset)
