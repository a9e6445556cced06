"""edgecli quantize"""

from edgecli.cli.flow import model_command
from edgecli.formats.detect import Format

quantize = model_command(
    "quantize",
    "edgecli.stages.quantize:quantize",
    lambda _: Format.ONNX,
    "Quantize an ONNX model to INT8 (static QDQ calibrated on --data, or dynamic).",
)
