"""edgecli quantize"""

from edgecli.cli.flow import model_command
from edgecli.formats.detect import Format

quantize = model_command(
    "quantize",
    "edgecli.stages.quantize:quantize",
    lambda recipe: Format(recipe.format),
    "Quantize a model to INT8 or FP16 as ONNX or TFLite (static calibration on --data, dynamic, fp16).",
)
