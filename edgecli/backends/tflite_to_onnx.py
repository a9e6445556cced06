"""TFLite -> ONNX with tf2onnx (`from_tflite`): a LiteRT model someone published (fer's INT8
face-expression model, basic-pitch's transcriber) brought to onnxruntime and to edgecli's ONNX verbs.
The graph keeps TFLite's layout (NHWC inputs); a model with int8 weights keeps them, behind
DequantizeLinear. The outputs come in the interpreter's order (tf2onnx sorts them by name otherwise)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecli.core import console
from edgecli.core.errors import BackendMissing, TransformError, last_line
from edgecli.formats.model_file import ModelFile

TF2ONNX_HINT = "pip install 'edgecli[tflite]' (tf2onnx)"
QUANTIZED_DTYPES = (np.int8, np.uint8, np.int16)


def tflite_tensors(model: ModelFile) -> tuple[list[str], list[str], bool]:
    """The model's input and output tensor names (the interpreter's order) and whether any of its
    tensors is stored quantized (int8, uint8, int16: weights of dynamic-range or full-integer models)."""
    from ai_edge_litert.interpreter import Interpreter

    with console.muted():
        interpreter = Interpreter(model_path=str(model.path))
    inputs = [d["name"] for d in interpreter.get_input_details()]
    outputs = [d["name"] for d in interpreter.get_output_details()]
    quantized = any(np.dtype(d["dtype"]) in QUANTIZED_DTYPES for d in interpreter.get_tensor_details())
    return inputs, outputs, quantized


def tflite_to_onnx(model: ModelFile, opset: int) -> Any:
    """The ONNX ModelProto of a .tflite file (TransformError naming tf2onnx's reason when it cannot)."""
    try:
        from tf2onnx import convert
    except ImportError:
        raise BackendMissing("converting TFLite to ONNX needs tf2onnx", hint=TF2ONNX_HINT) from None
    inputs, outputs, _ = tflite_tensors(model)
    try:
        with console.muted():  # tf2onnx logs every rewrite and TensorFlow's deprecation notices
            proto, _ = convert.from_tflite(str(model.path), input_names=inputs, output_names=outputs, opset=opset)
    except Exception as exc:  # tf2onnx raises what its handlers raise: an op it has no handler for, ...
        raise TransformError(
            f"tf2onnx could not convert {model.path}: {last_line(exc)[:200]}",
            hint="convert the model it was made from, if you have it",
        ) from None
    return proto
