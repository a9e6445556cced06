"""Per-layer quantization error of a TFLite model: every op's output in the quantized flatbuffer
against the same tensor of the float flatbuffer it was quantized from, run side by side on LiteRT.

Tensors are matched by name: TensorFlow's quantizer keeps the float op's output name on the
quantized op (or on the DEQUANTIZE that follows it), and that name is also what its per-layer
float fallback (`denylisted_nodes`) accepts. This measures the very flatbuffer that is written,
whatever quantizer made it (MLIR int8, the 16x8 quantizer, with or without float layers)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecli.core import console
from edgecli.data.dataset import split_batches
from edgecli.runtimes.tflite_runner import _clean_name, check_quantization_scales
from edgecli.stages.quantize.layers import MASK_VALUE, ErrorAccumulator, LayerError

CONVERSION_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
BATCH = 32


@dataclass(frozen=True)
class Op:
    index: int
    op_type: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


class Graph:
    """The ops and tensors of a flatbuffer's main subgraph, read through a LiteRT interpreter that
    keeps every intermediate tensor (no delegate, so XNNPACK does not fuse them away)."""

    def __init__(self, flatbuffer: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        with console.muted(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging": that is the point
            self.interpreter = Interpreter(
                model_content=flatbuffer,
                experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                experimental_preserve_all_tensors=True,
                num_threads=os.cpu_count() or 1,
            )
            check_quantization_scales(self.interpreter, "the quantized model")  # LiteRT would abort, not raise
            self.interpreter.allocate_tensors()
        self.ops = [
            Op(d["index"], d["op_name"], tuple(int(i) for i in d["inputs"]), tuple(int(o) for o in d["outputs"]))
            for d in self.interpreter._get_ops_details()
        ]
        self.inputs = self.interpreter.get_input_details()
        self.producer = {o: op for op in self.ops for o in op.outputs}
        self._details: dict[int, dict[str, Any]] = {}
        self.by_name: dict[str, int] = {}
        for index in sorted(
            {i for op in self.ops for i in (*op.inputs, *op.outputs) if i >= 0} | {d["index"] for d in self.inputs}
        ):
            self.by_name.setdefault(self.detail(index)["name"], index)
        self.dynamic_batch = all(len(d["shape_signature"]) and d["shape_signature"][0] < 0 for d in self.inputs)

    def detail(self, index: int) -> dict[str, Any]:
        if index not in self._details:
            self._details[index] = self.interpreter._get_tensor_details(index, 0)
        return self._details[index]

    def is_activation(self, index: int) -> bool:
        """A tensor computed at run time (a model input or an op output), not a weight."""
        return index >= 0 and (index in self.producer or any(d["index"] == index for d in self.inputs))

    def quant_params(self, index: int) -> tuple[float, int] | None:
        """(scale, zero point) of an integer tensor quantized per tensor, else None."""
        detail = self.detail(index)
        params = detail["quantization_parameters"]
        if not np.issubdtype(detail["dtype"], np.integer) or len(params["scales"]) != 1:
            return None
        return float(params["scales"][0]), int(params["zero_points"][0])

    def value(self, index: int) -> np.ndarray:
        """The tensor after the last run, dequantized when it is a quantized integer tensor."""
        array = self.interpreter.get_tensor(index)
        params = self.quant_params(index)
        if params is None:
            return array
        scale, zero_point = params
        return (array.astype(np.float64) - zero_point) * scale

    def ordered(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The feeds in this model's input order: by name ('serving_default_ids:0' takes 'ids'),
        or as given when the names do not match (a single input, renamed)."""
        names = [_clean_name(d["name"]) for d in self.inputs]
        if set(names) == set(feeds):
            return [feeds[name] for name in names]
        return list(feeds.values())

    def run(self, feeds: dict[str, np.ndarray]) -> None:
        """Run one batch; float arrays are quantized for integer inputs, integer ones cast."""
        interpreter = self.interpreter
        arrays = self.ordered(feeds)
        if any(tuple(d["shape"]) != a.shape for d, a in zip(self.inputs, arrays)):
            for detail, array in zip(self.inputs, arrays):
                interpreter.resize_tensor_input(detail["index"], list(array.shape), strict=True)
            interpreter.allocate_tensors()
            self.inputs = interpreter.get_input_details()
        for detail, array in zip(self.inputs, arrays):
            interpreter.set_tensor(detail["index"], _as_input(array, detail))
        interpreter.invoke()

    def source(self, index: int) -> Op | None:
        """The op that computes a tensor, looking through QUANTIZE/DEQUANTIZE conversions."""
        op = self.producer.get(index)
        while op is not None and op.op_type in CONVERSION_OPS:
            op = self.producer.get(op.inputs[0])
        return op


def _as_input(array: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if array.dtype == dtype:
        return array
    scale, zero_point = detail["quantization"]
    if np.issubdtype(dtype, np.integer) and np.issubdtype(array.dtype, np.floating) and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(array / scale + zero_point), info.min, info.max).astype(dtype)
    return array.astype(dtype)


def _batches(inputs: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    for start, stop in split_batches(len(next(iter(inputs.values()))), size):
        yield {name: a[start:stop] for name, a in inputs.items()}


def compare_layers(reference: bytes, candidate: bytes, inputs: dict[str, np.ndarray]) -> list[LayerError]:
    """One LayerError per op of the float `reference` model with a float output found in `candidate`.

    inputs: whole arrays (samples first) by input name, float ones float32.
    node/output: the op's (first) output tensor name, the name TensorFlow's quantizer denylists.
    snr_db/rel_mse: that output in `candidate` (dequantized) against `reference`, accumulated
    over all outputs of the op and all samples.
    sensitivity: rel_mse minus the largest rel_mse of the op's activation inputs (model inputs
    count 0), as on the ONNX side.
    quantized: whether the candidate computes the op in integers; extra["same_scale"] marks
    integer ops whose output keeps their input's scale and zero point (pooling, reshapes): they
    add no quantization step of their own, and keeping them alone in float changes nothing.
    """
    float_graph, quant_graph = Graph(reference), Graph(candidate)
    pairs: list[tuple[Op, list[tuple[int, int]]]] = []
    for op in float_graph.ops:
        if not any(np.issubdtype(float_graph.detail(o)["dtype"], np.floating) for o in op.outputs):
            continue  # index arithmetic on integer inputs (token ids): nothing to quantize
        matched = []
        for out in op.outputs:
            name = float_graph.detail(out)["name"]
            if name in quant_graph.by_name:
                matched.append((out, quant_graph.by_name[name]))
        if matched:
            pairs.append((op, matched))
    accumulators = [ErrorAccumulator() for _ in pairs]
    size = BATCH if float_graph.dynamic_batch and quant_graph.dynamic_batch else 1
    spans = split_batches(len(next(iter(inputs.values()))), size)
    with console.progress("measuring per-layer error (TFLite)", total=len(spans)) as bar:
        for batch in _batches(inputs, size):
            float_graph.run(batch)
            quant_graph.run(batch)
            for (_, matched), acc in zip(pairs, accumulators):
                for float_index, quant_index in matched:
                    acc.add(float_graph.value(float_index), quant_graph.value(quant_index))
            bar.advance()
    rel = {
        float_graph.detail(f)["name"]: acc.rel_mse for (_, matched), acc in zip(pairs, accumulators) for f, _ in matched
    }
    layers = []
    for (op, matched), acc in zip(pairs, accumulators):
        name = float_graph.detail(op.outputs[0])["name"]
        upstream = [rel.get(float_graph.detail(i)["name"], 0.0) for i in op.inputs if float_graph.is_activation(i)]
        computed_by = quant_graph.source(matched[0][1])
        quantized = computed_by is not None and any(quant_graph.quant_params(o) for o in computed_by.outputs)
        extra: dict[str, Any] = {}
        if quantized and computed_by is not None:
            ins = [quant_graph.quant_params(i) for i in computed_by.inputs if quant_graph.is_activation(i)]
            if ins and all(p == quant_graph.quant_params(computed_by.outputs[0]) for p in ins):
                extra["same_scale"] = True
        layers.append(
            LayerError(
                node=name,
                op_type=op.op_type,
                output=name,
                snr_db=acc.snr_db,
                rel_mse=acc.rel_mse,
                sensitivity=acc.rel_mse - max(upstream, default=0.0),
                quantized=quantized,
                reason=None if quantized else "the TFLite quantizer kept it in float",
                extra=extra,
            )
        )
    return layers


def op_names(flatbuffer: bytes) -> tuple[list[str], set[str]]:
    """The ops' first output tensor names (the names `denylisted_nodes` accepts) and op types."""
    graph = Graph(flatbuffer)
    return [graph.detail(op.outputs[0])["name"] for op in graph.ops if op.outputs], {op.op_type for op in graph.ops}


def calibrated_ranges(flatbuffer: bytes) -> dict[int, tuple[float, float]]:
    """Tensor index -> (min, max) recorded by calibration in the main subgraph's quantization params."""
    from ai_edge_litert import schema_py_generated as schema

    subgraph = schema.Model.GetRootAsModel(flatbuffer, 0).Subgraphs(0)
    ranges = {}
    for index in range(subgraph.TensorsLength()):
        params = subgraph.Tensors(index).Quantization()
        if params is not None and params.MinLength() and params.MaxLength():
            ranges[index] = (float(params.MinAsNumpy().min()), float(params.MaxAsNumpy().max()))
    return ranges


def attention_mask_nodes(calibrated: bytes) -> list[str]:
    """The ops that carry a large-negative attention mask into a SOFTMAX, by the ranges calibration
    recorded: the SOFTMAX whose input reaches -1e4 or below, and back from it every op whose output
    does (the ADD of scores and mask, the MUL by the sentinel). In INT8 they would share one scale with
    the sentinel (about 1e36 for -3.4e38): every real score rounds to 0, and LiteRT aborts on such
    scales; full-integer quantization keeps them float."""
    graph = Graph(calibrated)
    ranges = calibrated_ranges(calibrated)

    def sentinel(index: int) -> bool:
        return graph.is_activation(index) and index in ranges and ranges[index][0] <= -MASK_VALUE

    keep: set[int] = set()
    stack = [op for op in graph.ops if op.op_type == "SOFTMAX" and any(sentinel(i) for i in op.inputs)]
    while stack:
        op = stack.pop()
        if op.index in keep:
            continue
        keep.add(op.index)
        stack.extend(graph.producer[i] for i in op.inputs if sentinel(i) and i in graph.producer)
    return [graph.detail(op.outputs[0])["name"] for op in graph.ops if op.index in keep]
