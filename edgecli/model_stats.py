"""Static facts about a model file: parameter count and operator histogram."""

from __future__ import annotations

from collections import Counter
from math import prod

from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile


def param_count(model: ModelFile) -> int | None:
    """Number of stored weight values (constants), or None where it cannot be read cheaply."""
    if model.format is Format.ONNX:
        from edgecli.formats import onnx_file

        proto = onnx_file.load(model.path, check=False)
        return sum(prod(t.dims) for t in proto.graph.initializer)
    if model.format is Format.PT2:
        from edgecli.formats import pt2_file

        program = pt2_file.load(model.path)
        return sum(t.numel() for t in program.state_dict.values())
    if model.format is Format.TFLITE:
        from edgecli.formats.tflite_file import _model

        flat = _model(model.path.read_bytes())
        graph = flat.Subgraphs(0)
        total = 0
        for i in range(graph.TensorsLength()):
            tensor = graph.Tensors(i)
            buffer = flat.Buffers(tensor.Buffer()) if tensor.Buffer() < flat.BuffersLength() else None
            if buffer is not None and (buffer.DataLength() or buffer.Size()):
                total += prod(tensor.ShapeAsNumpy()) if tensor.ShapeLength() else 1
        return int(total)
    return None


def op_histogram(model: ModelFile) -> dict[str, int]:
    """Operator type -> count (ONNX node types, TFLite builtin ops, aten ops of a .pt2 graph)."""
    if model.format is Format.ONNX:
        from edgecli.formats import onnx_file

        proto = onnx_file.load(model.path, check=False)
        return dict(Counter(n.op_type for n in proto.graph.node).most_common())
    if model.format is Format.PT2:
        from edgecli.formats import pt2_file

        program = pt2_file.load(model.path)
        ops = Counter(str(n.target).split(".")[1] if "." in str(n.target) else str(n.target)
                      for n in program.graph.nodes if n.op == "call_function")
        return dict(ops.most_common())
    if model.format is Format.TFLITE:
        from ai_edge_litert import schema_py_generated as schema

        from edgecli.formats.tflite_file import _model

        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        flat = _model(model.path.read_bytes())
        codes = [max(flat.OperatorCodes(i).BuiltinCode(), flat.OperatorCodes(i).DeprecatedBuiltinCode())
                 for i in range(flat.OperatorCodesLength())]
        graph = flat.Subgraphs(0)
        ops = Counter(names.get(codes[graph.Operators(i).OpcodeIndex()], "CUSTOM") for i in range(graph.OperatorsLength()))
        return dict(ops.most_common())
    return {}
