"""quantize to ONNX with onnxruntime.quantization: static QDQ (calibrated once, streamed batch by
batch), dynamic INT8 or FP16; per-layer error against the float model; layers kept in float on request."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edgecli.backends.onnx_fold import default_opset, fold_constants, upgrade_opset
from edgecli.core import console
from edgecli.core.errors import TransformError, UsageError, last_line
from edgecli.data.dataset import Dataset, split_batches
from edgecli.formats import onnx_file
from edgecli.formats.detect import Format
from edgecli.formats.files import TempFolder
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import QuantizeRecipe
from edgecli.runtimes.base import Runner
from edgecli.runtimes.onnx_runner import unoptimized_session
from edgecli.stages.artifact import Artifact
from edgecli.stages.quantize.layers import MASK_VALUE, ErrorAccumulator, LayerError, Unit

# Ops that onnxruntime's dynamic quantizer handles and that are fast on CPU. Conv is left out on
# purpose: dynamic Conv becomes ConvInteger, measured 1.4-5.3x slower than float on CPU. Gemm is not
# in onnxruntime's dynamic registry, so Gemm nodes are first rewritten as MatMul + Add.
DYNAMIC_OPS = ["MatMul", "Attention", "LSTM", "EmbedLayerNormalization"]
# Ops whose float weights a quantized model stores as INT8 (what makes the file smaller).
WEIGHTED_OPS = {
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Attention",
    "LSTM",
    "GRU",
    "EmbedLayerNormalization",
    "Gather",
}
DEQUANTIZE_OPS = {"DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"}
QUANT_TYPES = {"int8": "QInt8", "uint8": "QUInt8"}
PER_CHANNEL_OPSET = 13  # DequantizeLinear's axis attribute


INT8_DOT_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}  # x86 int8 dot products without 16-bit saturation


def resolve_reduce_range(setting: bool | str) -> bool:
    """reduce_range for onnxruntime: the recipe's bool, or for 'auto' True on an x86 CPU without
    VNNI/AMX, whose U8S8 kernels (pmaddubsw) saturate 16-bit sums with 8-bit weights."""
    if isinstance(setting, bool):
        return setting
    import platform

    if platform.machine().lower() not in {"x86_64", "amd64", "i686", "x86"}:
        return False
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return False
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    return bool(flags) and not flags & INT8_DOT_FLAGS


def op_counts(proto: Any) -> Counter:
    return Counter(node.op_type for node in proto.graph.node)


def strip_debug_metadata(proto: Any) -> int:
    """Drop what exporters attach to each node for debugging (torch's stack traces, class
    hierarchies, rewriter rule names) and doc strings: ~5% of a small INT8 model, no use on a
    device. Returns the bytes removed."""
    removed = 0
    for node in proto.graph.node:
        removed += sum(len(p.key) + len(p.value) for p in node.metadata_props) + len(node.doc_string)
        del node.metadata_props[:]
        node.doc_string = ""
    return removed


def gemm_to_matmul(proto: Any) -> int:
    """Rewrite Gemm(A, B, C) with a constant B (alpha = beta = 1, no transA) as MatMul(A, B') + Add(C),
    so dynamic quantization can take Linear layers. Returns how many nodes were rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    weights = {t.name: t for t in proto.graph.initializer}
    rewritten, nodes = 0, []
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        simple = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not simple or node.input[1] not in weights:
            nodes.append(node)
            continue
        matrix = numpy_helper.to_array(weights[node.input[1]])
        name = f"{node.input[1]}_matmul"
        proto.graph.initializer.append(
            numpy_helper.from_array(np.ascontiguousarray(matrix.T if attrs.get("transB", 0) else matrix), name)
        )
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=node.name))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        rewritten += 1
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return rewritten


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader, streaming: each batch is built only when asked for, and
    `set_range` lets the calibrator take one batch at a time (CalibStridedMinMax), so its memory holds
    one batch of activations whatever the number of samples."""

    def __init__(self, runner: Runner, data: Dataset, batch_size: int, tracker: Any) -> None:
        self._runner, self._data, self._tracker = runner, data, tracker
        self._spans = split_batches(len(data), batch_size if runner.dynamic_batch else 1)
        self._next, self._stop = 0, len(self._spans)

    def __len__(self) -> int:
        return len(self._spans)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._stop = start_index, min(end_index, len(self._spans))

    def get_next(self) -> dict | None:
        if self._next >= self._stop:
            return None
        start, stop = self._spans[self._next]
        self._next += 1
        self._tracker.advance()
        return self._runner.feeds(self._data.batch(start, stop))

    def rewind(self) -> None:
        self._next = 0


MASK_PATH_OPS = {"Mul", "Sub", "Add", "Cast", "Unsqueeze", "Expand", "Where", "Reshape", "Neg"}


def attention_mask_nodes(proto: Any) -> list[str]:
    """The Add/Where nodes that add a large-negative attention mask to attention scores, and the
    Softmax they feed. In INT8 they would share one scale with the mask's sentinel (about 1e36 for
    -3.4e38), rounding every real score to 0, so static quantization keeps them float."""
    import numpy as np

    constants = onnx_file.constant_values(proto.graph)
    producers = {o: n for n in proto.graph.node for o in n.output}

    def carries_mask_value(name: str, depth: int = 0) -> bool:
        if name in constants:
            value = constants[name]
            return (
                value.size > 0 and np.issubdtype(value.dtype, np.floating) and float(np.abs(value).max()) >= MASK_VALUE
            )
        node = producers.get(name)
        if node is None or depth > 8 or node.op_type not in MASK_PATH_OPS:
            return False
        return any(carries_mask_value(i, depth + 1) for i in node.input if i)

    nodes = []
    for softmax in (n for n in proto.graph.node if n.op_type == "Softmax"):
        source = producers.get(softmax.input[0])
        if (
            source is not None
            and source.op_type in ("Add", "Where")
            and any(carries_mask_value(i) for i in source.input)
        ):
            nodes += [source.name, softmax.name]
    return nodes


class OnnxQuantizer:
    """Quantizes one ONNX model as a recipe asks, as often as asked (the accuracy guard keeps more
    layers in float each time); calibration runs once and is cached in a private folder."""

    def __init__(
        self, model: ModelFile, recipe: QuantizeRecipe, runner: Runner, calib: Dataset | None, folder: Path
    ) -> None:
        self.recipe, self.runner, self.calib, self.folder = recipe, runner, calib, folder
        self.per_channel = recipe.per_channel and recipe.mode == "static"  # dynamic per-channel: MatMulInteger
        self.source = self._prepare(model.path)
        self.float_proto = onnx_file.load(self.source, check=False)
        self._check_quantizable()
        self._ranges = folder / "calibration.json"
        self.mask_nodes = attention_mask_nodes(self.float_proto) if recipe.mode == "static" else []

    def _prepare(self, path: Path) -> Path:
        source = path
        proto = onnx_file.load(path, check=False)
        self.folded = fold_constants(proto)
        changed = bool(self.folded.nodes)
        if self.folded.nodes:  # before pre-processing: its shape inference does better on initializers too
            console.info(f"{self.folded.describe()}, so the quantizer sees their weights")
        if self.per_channel and default_opset(proto) < PER_CHANNEL_OPSET:
            try:
                proto, changed = upgrade_opset(proto, PER_CHANNEL_OPSET), True
                console.info(f"opset raised to {PER_CHANNEL_OPSET}: per-channel DequantizeLinear needs it")
            except Exception as exc:  # the converter lacks an adapter: quantize per tensor instead
                self.per_channel = False
                console.warn(
                    f"the model is opset {default_opset(proto)} and onnx cannot convert it to "
                    f"{PER_CHANNEL_OPSET} ({last_line(exc)[:100]}): weights quantized per tensor"
                )
        if changed:
            source = self.folder / "folded.onnx"
            source.write_bytes(onnx_file.to_bytes(proto, None))
        if self.recipe.preprocess and self.recipe.mode != "fp16":
            from onnxruntime.quantization.shape_inference import quant_pre_process

            prepared = self.folder / "prepared.onnx"
            # absolute before the chdir: a relative model path (zoo/model.onnx) resolved inside the
            # private folder named a file that is not there, and pre-processing was silently skipped
            source_path, prepared_path = str(source.resolve()), str(prepared.resolve())
            try:
                # its symbolic shape inference, when it fails, saves sym_shape_infer_temp.onnx and a
                # <uuid>.data file into the working folder: run it in the private folder
                with console.muted(), contextlib.chdir(self.folder):
                    quant_pre_process(source_path, prepared_path, skip_symbolic_shape=False)
                source = prepared
            except Exception as exc:  # pre-processing is an optimisation; quantization works without it
                console.warn(f"quant_pre_process failed ({last_line(exc)[:120]}); quantizing without it")
        if self.recipe.mode == "dynamic" and "Gemm" not in self.recipe.exclude_op_types:
            proto = onnx_file.load(source, check=False)
            if gemm_to_matmul(proto):
                source = self.folder / "matmul.onnx"
                source.write_bytes(onnx_file.to_bytes(proto, None))
        return source

    def _check_quantizable(self) -> None:
        ops = set(op_counts(self.float_proto)) - set(self.recipe.exclude_op_types)
        if self.recipe.mode == "dynamic" and not ops & set(DYNAMIC_OPS):
            raise TransformError(
                "dynamic quantization found no MatMul, Gemm, Attention or LSTM node to quantize",
                hint="use mode: static for conv nets",
            )
        if self.recipe.mode == "static" and not ops & WEIGHTED_OPS:
            raise TransformError(
                "the model has no quantizable op (Conv, Gemm, MatMul, Gather, LSTM...): INT8 would not make it smaller or faster",
                hint="check the model, or use mode: fp16",
            )

    def quantize(self, float_nodes: Sequence[str] = ()) -> Artifact:
        """The quantized model, with `float_nodes` (node names) kept in float besides the recipe's exclusions."""
        target = self.folder / "quantized.onnx"
        try:
            if self.recipe.mode == "fp16":
                proto = self._fp16(float_nodes)
            else:
                self._quantize_file(target, [*self.recipe.exclude_nodes, *self.mask_nodes, *float_nodes])
                proto = onnx_file.load(target)
        except (UsageError, TransformError):
            raise
        except Exception as exc:
            raise TransformError(f"onnxruntime quantization failed: {last_line(exc)}") from None
        strip_debug_metadata(proto)
        ops = op_counts(proto)
        artifact = Artifact(Format.ONNX, proto)
        artifact.metrics["quantized_nodes"] = sum(ops.get(op, 0) for op in DEQUANTIZE_OPS)
        if self.folded.nodes:
            artifact.metrics["constants_folded"] = {"nodes": self.folded.nodes, "bytes": self.folded.bytes}
        return artifact

    def _fp16(self, float_nodes: Sequence[str]) -> Any:
        """Half-precision weights and activations with onnxruntime's float16 converter."""
        from onnxruntime.transformers.float16 import convert_float_to_float16

        with console.muted():
            return convert_float_to_float16(
                onnx_file.load(self.source, check=False),
                keep_io_types=self.recipe.keep_io_types,
                op_block_list=sorted(set(self.recipe.exclude_op_types)) or None,
                node_block_list=[*self.recipe.exclude_nodes, *float_nodes] or None,
            )

    def _quantize_file(self, target: Path, excluded_nodes: list[str]) -> None:
        reduce_range = resolve_reduce_range(self.recipe.reduce_range)
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        recipe = self.recipe
        types = {name: getattr(QuantType, value) for name, value in QUANT_TYPES.items()}
        excluded_ops = set(recipe.exclude_op_types)
        present = set(op_counts(self.float_proto))
        if recipe.mode == "dynamic":
            with console.muted():
                quantize_dynamic(
                    self.source,
                    target,
                    op_types_to_quantize=[op for op in DYNAMIC_OPS if op in present - excluded_ops],
                    per_channel=recipe.per_channel,
                    reduce_range=reduce_range,
                    weight_type=types[recipe.weight_type],
                    nodes_to_exclude=excluded_nodes,
                )
            return
        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        with contextlib.ExitStack() as stack:
            reader = None
            if not self._ranges.exists():  # the first quantization calibrates; later ones reuse the ranges
                assert self.calib is not None
                sample = self.calib.take(recipe.calibration.samples)
                batches = len(
                    split_batches(len(sample), recipe.calibration.batch_size if self.runner.dynamic_batch else 1)
                )
                bar = stack.enter_context(console.progress(f"calibrating ({recipe.calibration.method})", total=batches))
                reader = _CalibrationReader(self.runner, sample, recipe.calibration.batch_size, bar)
            stack.enter_context(console.muted())
            quantize_static(
                self.source,
                target,
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=sorted(present - excluded_ops) if excluded_ops else None,
                per_channel=self.per_channel,
                reduce_range=reduce_range,
                activation_type=types[recipe.activation_type],
                weight_type=types[recipe.weight_type],
                nodes_to_exclude=excluded_nodes,
                calibrate_method=methods[recipe.calibration.method],
                extra_options={"CalibStridedMinMax": 1},
                calibration_cache_path=self._ranges,
            )

    def layer_errors(self, quantized: Artifact, data: Dataset) -> list[LayerError]:
        """Each layer's output as the next layer sees it in the quantized model (after its
        Quantize/DequantizeLinear pair) against the same tensor of the float model on `data`,
        accumulated batch by batch (no activations are stored)."""
        float_nodes = {n.name: n for n in self.float_proto.graph.node}
        records = _layer_tensors(self.float_proto, quantized.payload)
        pairs = list(records.values())
        float_tensors = [float_name for _, float_name, _ in pairs]
        quant_tensors = [quant_name for _, _, quant_name in pairs]
        accumulators = [ErrorAccumulator() for _ in pairs]
        with (
            _exposed(self.float_proto, float_tensors, self.folder / "float-debug.onnx") as float_session,
            _exposed(quantized.payload, quant_tensors, self.folder / "quant-debug.onnx") as quant_session,
        ):
            spans = split_batches(len(data), 32 if self.runner.dynamic_batch else 1)
            with console.progress("measuring per-layer error", total=len(spans)) as bar:
                for start, stop in spans:
                    feeds = self.runner.feeds(data.batch(start, stop))
                    reference = float_session.run(float_tensors, feeds)
                    candidate = quant_session.run(quant_tensors, feeds)
                    for acc, ref, cand in zip(accumulators, reference, candidate):
                        acc.add(ref, cand)
                    bar.advance()
        rel = {float_name: acc.rel_mse for (_, float_name, _), acc in zip(pairs, accumulators)}
        initializers = {t.name for t in self.float_proto.graph.initializer}
        kept = {n.name: n for n in quantized.payload.graph.node}
        dequantized = {o for n in quantized.payload.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        layers = []
        for (name, float_name, _), acc in zip(pairs, accumulators):
            node = float_nodes[name]
            upstream = [rel.get(i, 0.0) for i in node.input if i and i not in initializers]
            quantized_here = self._is_quantized(node, kept.get(node.name), dequantized, initializers)
            layers.append(
                LayerError(
                    node=name,
                    op_type=node.op_type,
                    output=float_name,
                    snr_db=acc.snr_db,
                    rel_mse=acc.rel_mse,
                    sensitivity=acc.rel_mse - max(upstream, default=0.0),
                    quantized=quantized_here,
                    reason=None if quantized_here else _float_reason(node, self.recipe, self.mask_nodes),
                )
            )
        return layers

    def units(self, layers: list[LayerError]) -> list[Unit]:
        """What the accuracy guard can move to float: each quantized layer, and each op pattern
        (op_patterns) with at least two quantized layers, with the noise it adds as a whole."""
        nodes = list(self.float_proto.graph.node)
        index = {n.name: k for k, n in enumerate(nodes)}
        by_node = {layer.node: layer for layer in layers}
        rel = {layer.output: layer.rel_mse for layer in layers}
        units = [
            Unit(layer.node, "layer", [layer.node], index.get(layer.node, k), layer.sensitivity)
            for k, layer in enumerate(layers)
            if layer.quantized
        ]
        for kind, region in op_patterns(self.float_proto):
            members = [nodes[k].name for k in region]
            quantized = [name for name in members if name in by_node and by_node[name].quantized]
            if len(quantized) < 2:
                continue
            inside = {o for k in region for o in nodes[k].output}
            external = {i for k in region for i in nodes[k].input if i and i not in inside}
            last = nodes[region[-1]]
            added = rel.get(last.output[0], 0.0) - max((rel.get(i, 0.0) for i in external), default=0.0)
            units.append(
                Unit(last.name.split("/")[-2] if "/" in last.name else last.name, kind, members, region[-1], added)
            )
        return units

    def _is_quantized(self, node: Any, kept: Any, dequantized: set[str], weights: set[str]) -> bool:
        """Whether float `node` computes in integers in the quantized graph, where it is `kept` (None:
        replaced by integer ops or folded away) and `dequantized` are the DequantizeLinear outputs."""
        if node.name in [*self.recipe.exclude_nodes, *self.mask_nodes] or node.op_type in self.recipe.exclude_op_types:
            return False
        if self.recipe.mode == "fp16":
            return True
        if kept is None:  # replaced by integer ops (dynamic) or folded into a quantized neighbour
            return True
        weight_slots = [k for k, name in enumerate(node.input) if name in weights]
        if weight_slots:  # a layer with weights runs in INT8 when its weights are dequantized INT8
            return any(k < len(kept.input) and kept.input[k] in dequantized for k in weight_slots)
        return any(i in dequantized for i in kept.input)


NORM_OPS = {"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2"}
MAX_PATTERN_NODES = 64


def _region(nodes: list[Any], start: int, tensor: str, entries: list[int], outputs: set[str]) -> list[int] | None:
    """The node indices on the paths from `tensor` (read by the nodes `entries`) to the first node
    that every one of those paths goes through (its post-dominator), that node included; None when
    the paths never meet within MAX_PATTERN_NODES nodes. `nodes` are in topological order."""
    reads: dict[str, int] = {}  # how many reads of each tensor from node `start` on
    for node in nodes[start:]:
        for name in node.input:
            reads[name] = reads.get(name, 0) + 1
    pending = {tensor: len(entries)}  # reached tensors -> reads not yet processed
    region: list[int] = []
    for k in range(start, len(nodes)):
        node = nodes[k]
        ins = {i for i in node.input if pending.get(i, 0) > 0 and (i != tensor or k in entries)}
        if not ins:
            continue
        for name in ins:
            pending[name] -= 1 if name == tensor else list(node.input).count(name)
        region.append(k)
        for out in node.output:
            pending[out] = reads.get(out, 0) + (1 if out in outputs else 0)
        if len(region) > MAX_PATTERN_NODES:
            return None
        if all(t in node.output for t, count in pending.items() if count > 0):
            return region
    return None


def op_patterns(proto: Any) -> list[tuple[str, list[int]]]:
    """(kind, node indices) of the graph's op patterns: every region from a tensor read by several
    nodes to where those paths join (a decomposed LayerNorm or softmax, GELU, an attention block, a
    residual block), also without each single reader (so a LayerNorm whose input also feeds a
    residual Add is found on its own), extended by a following Mul/Add with a constant (a norm's
    scale and shift). Regions that read shapes (a Shape reader) are left out."""
    nodes = list(proto.graph.node)
    constants = {t.name for t in proto.graph.initializer} | {
        o for n in nodes if n.op_type == "Constant" for o in n.output
    }
    outputs = {o.name for o in proto.graph.output}
    produced_at = {o: k for k, n in enumerate(nodes) for o in n.output}
    readers: dict[str, list[int]] = {}
    for k, n in enumerate(nodes):
        for name in dict.fromkeys(n.input):
            if name and name not in constants:
                readers.setdefault(name, []).append(k)
    shapes = set()  # tensors computed from shapes and constants only (Shape, Concat, Cast, Gather...)
    for n in nodes:
        ins = [i for i in n.input if i and i not in constants]
        if n.op_type == "Shape" or (ins and all(i in shapes for i in ins)):
            shapes.update(n.output)
    found: dict[tuple[int, ...], str] = {}
    regions: list[list[int]] = []
    starts_at: dict[str, list[int]] = {}  # a fork -> the region from it to its join
    for tensor, entries in readers.items():
        if len(entries) < 2 or tensor in shapes or any(nodes[k].op_type == "Shape" for k in entries):
            continue
        start = produced_at.get(tensor, -1) + 1
        subsets = [entries] + ([[e for e in entries if e != k] for k in entries] if len(entries) <= 4 else [])
        for subset in subsets:
            region = _region(nodes, start, tensor, subset, outputs) if len(subset) >= 2 else None
            if region is None or len(region) < 3:
                continue
            if subset is entries:
                starts_at[tensor] = region
            regions.append(region)
    for region in list(regions):  # a join that forks again (softmax: max-subtract, then exp-normalise)
        for _ in range(2):
            bridge: list[int] = []
            tensor = nodes[region[-1]].output[0]
            while tensor not in starts_at and len(readers.get(tensor, [])) == 1 and len(bridge) < 3:
                bridge.append(readers[tensor][0])  # single-reader ops between the join and the next fork
                tensor = nodes[bridge[-1]].output[0]
            following = starts_at.get(tensor)
            if not following or len(region) + len(bridge) + len(following) > MAX_PATTERN_NODES:
                break
            region = region + bridge + following
            regions.append(region)
    for region in regions:
        region = _with_affine(nodes, region, constants)
        found.setdefault(tuple(region), _kind([nodes[k] for k in region]))
    return [(kind, list(region)) for region, kind in found.items()]


def _with_affine(nodes: list[Any], region: list[int], constants: set[str]) -> list[int]:
    region = list(region)
    for _ in range(2):
        last = nodes[region[-1]]
        after = [k for k in range(region[-1] + 1, len(nodes)) if last.output[0] in nodes[k].input]
        if len(after) != 1 or nodes[after[0]].op_type not in ("Mul", "Add"):
            break
        if not any(i in constants for i in nodes[after[0]].input):
            break
        region.append(after[0])
    return region


def _kind(nodes: list[Any]) -> str:
    ops = Counter(n.op_type for n in nodes)
    if ops["MatMul"] >= 2 and (ops["Softmax"] or ops["Exp"]):
        return "attention"
    if ops["Softmax"] or (ops["Exp"] and set(ops) & NORM_OPS):
        return "softmax"
    if set(ops) & NORM_OPS and (ops["Sqrt"] or ops["Reciprocal"] or ops["Div"] or ops["Pow"]):
        return "norm"
    return "block"


def _layer_tensors(float_proto: Any, quant_proto: Any) -> dict[str, tuple[str, str, str]]:
    """node name -> (node name, float tensor, quantized tensor) for every float node whose output can
    be found in the quantized graph. The quantized tensor is the DequantizeLinear output that follows
    it when there is one (what the next layer reads). A node the quantizer folded away (a Relu whose
    clamp became the quantization range) is credited to the node that now produces its output."""
    producer = {o: n for n in quant_proto.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in quant_proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    float_names = {n.name for n in float_proto.graph.node}
    records: dict[str, tuple[str, str, str]] = {}
    for node in float_proto.graph.node:
        tensor = node.output[0] if node.output else ""
        if tensor not in producer:
            continue
        seen = tensor
        for q in consumers.get(tensor, []):
            if q.op_type == "QuantizeLinear":
                dq = next((d for d in consumers.get(q.output[0], []) if d.op_type == "DequantizeLinear"), None)
                if dq is not None:
                    seen = dq.output[0]
                    break
        made_by = producer[tensor].name
        owner = node.name if made_by == node.name or made_by not in float_names else made_by
        records[owner] = (owner, tensor, seen)
    return records


def _float_reason(node: Any, recipe: QuantizeRecipe, mask_nodes: list[str]) -> str:
    if node.name in mask_nodes:
        return "attention mask: a large-negative sentinel has no useful INT8 scale"
    if node.name in recipe.exclude_nodes:
        return "recipe: exclude_nodes"
    if node.op_type in recipe.exclude_op_types:
        return "recipe: exclude_op_types"
    return f"onnxruntime does not quantize {node.op_type} in {recipe.mode} mode"


@contextlib.contextmanager
def _exposed(proto: Any, tensors: list[str], path: Path) -> Iterator[Any]:
    """An onnxruntime session of `proto` that also outputs `tensors` (graph optimisations off, so every
    named tensor still exists)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    present = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=name) for name in tensors if name not in present)
    path.write_bytes(copy.SerializeToString())
    try:
        yield unoptimized_session(path)
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def onnx_quantizer(
    model: ModelFile, recipe: QuantizeRecipe, runner: Runner, calib: Dataset | None
) -> Iterator[OnnxQuantizer]:
    with TempFolder(prefix="edgecli-quant-") as folder:
        yield OnnxQuantizer(model, recipe, runner, calib, Path(folder))
