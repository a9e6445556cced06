"""Constant nodes folded into initializers: exporters such as Paddle's put every weight in a
`Constant` node, and onnxruntime's quantizer only quantizes weights that are initializers (a Conv
whose weight comes from a Constant node stays float, wrapped in Quantize/DequantizeLinear pairs:
bigger and slower than the float model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Constant attributes that hold a value onnx.numpy_helper can turn into a TensorProto.
_VALUE_ATTRIBUTES = {"value", "value_float", "value_floats", "value_int", "value_ints"}


@dataclass(frozen=True)
class Folded:
    """What fold_constants moved: Constant nodes and the bytes of their values (raw tensor sizes)."""

    nodes: int = 0
    bytes: int = 0

    def describe(self) -> str:
        return f"{self.nodes} Constant node(s) ({self.bytes / 1e6:.3g} MB) folded into initializers"


def _tensor(node: Any) -> Any | None:
    """The TensorProto a Constant node produces, or None (sparse or string values are left alone)."""
    import numpy as np
    from onnx import helper, numpy_helper

    if len(node.attribute) != 1 or node.attribute[0].name not in _VALUE_ATTRIBUTES:
        return None
    attr = node.attribute[0]
    if attr.name == "value":
        tensor = type(attr.t)()
        tensor.CopyFrom(attr.t)
    else:
        dtype = np.float32 if attr.name.startswith("value_float") else np.int64
        tensor = numpy_helper.from_array(np.asarray(helper.get_attribute_value(attr), dtype=dtype))
    tensor.name = node.output[0]
    return tensor


def _nbytes(tensor: Any) -> int:
    from onnx import numpy_helper

    return int(numpy_helper.to_array(tensor).nbytes)


def fold_constants(proto: Any) -> Folded:
    """Move the main graph's Constant nodes into initializers of the same name, in place (outputs of
    the graph and Constants inside If/Loop subgraphs stay nodes). Initializers are also declared as
    graph inputs when the IR version (< 4) requires it. Returns what was folded."""
    graph = proto.graph
    outputs = {o.name for o in graph.output}
    kept, tensors = [], []
    for node in graph.node:
        tensor = _tensor(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if tensor is None or node.output[0] in outputs:
            kept.append(node)
            continue
        tensors.append(tensor)
    if not tensors:
        return Folded()
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(tensors)
    if proto.ir_version < 4:
        from onnx import helper

        graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in tensors)
    return Folded(len(tensors), sum(_nbytes(t) for t in tensors))


def default_opset(proto: Any) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgrade_opset(proto: Any, version: int) -> Any:
    """`proto` converted to opset `version` of the default domain with onnx's version converter (a
    per-channel DequantizeLinear needs opset 13; Paddle exports are often 11-12). Returns `proto`
    itself when it is already there. Raises what the converter raises."""
    if default_opset(proto) >= version:
        return proto
    from onnx import version_converter

    return version_converter.convert_version(proto, version)
