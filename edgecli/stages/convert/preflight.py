"""Pre-flight for convert: what will break in a conversion to the recipe's target, said before the
long work starts (the checks themselves are in backends/op_support.py)."""

from __future__ import annotations

from typing import Any

from edgecli.backends.op_support import Findings, is_quantized_onnx, ort_problems, report, tflite_findings
from edgecli.core.errors import TransformError
from edgecli.formats import onnx_file
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile

TFLITE_TARGETS = ("tflite", "tflite-micro")


def preflight(model: ModelFile, recipe: Any) -> None:
    """Check an ONNX source for what will break converting it to recipe.target, before any long work.
    A .pt2 source is checked after its ONNX export (require_onnx2tf_support, before onnx2tf runs)."""
    if model.format is not Format.ONNX:
        return
    what = f"{model.path.name} -> {recipe.target}"
    if recipe.target in TFLITE_TARGETS:
        proto = onnx_file.load(model.path, check=False)
        if is_quantized_onnx(proto):
            raise TransformError(
                f"{what}: the model is already quantized (QuantizeLinear/DequantizeLinear or QLinear ops); "
                "onnx2tf converts float graphs only",
                hint="convert the float model, then quantize to TFLite: edgecli quantize FLOAT -r tflite-int8",
            )
        report(tflite_findings(proto, micro=recipe.target == "tflite-micro"), what)
    elif recipe.target == "ort":
        report(Findings(ort_problems(model.path)), what)
