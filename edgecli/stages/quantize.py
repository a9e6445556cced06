"""quantize: ONNX INT8 with onnxruntime.quantization, static QDQ (calibrated) or dynamic."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from edgecli import console
from edgecli.data import Dataset, split_batches
from edgecli.errors import TransformError, UsageError
from edgecli.formats import onnx_file
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.metrics import accuracy, agreement
from edgecli.recipes import QuantizeRecipe
from edgecli.runtimes import open_runner
from edgecli.runtimes.base import Runner
from edgecli.stages.artifact import Artifact, staged

# Ops that onnxruntime's dynamic quantizer handles and that are fast on CPU. Conv is left out on
# purpose: dynamic Conv becomes ConvInteger, measured 1.4-5.3x slower than float on CPU. Gemm is not
# in onnxruntime's dynamic registry, so Gemm nodes are first rewritten as MatMul + Add.
DYNAMIC_OPS = ["MatMul", "Attention", "LSTM", "EmbedLayerNormalization"]


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
        proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(matrix.T if attrs.get("transB", 0) else matrix), name))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=f"{node.name}_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        rewritten += 1
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return rewritten


class _CalibrationReader:
    """Feeds calibration batches to onnxruntime, advancing a progress bar."""

    def __init__(self, runner: Runner, data: Dataset, batch_size: int, tracker: Any) -> None:
        size = batch_size if runner.dynamic_batch else 1
        self._batches = iter([runner.feeds(data.batch(a, b)) for a, b in split_batches(len(data), size)])
        self._tracker = tracker

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        if batch is not None:
            self._tracker.advance()
        return batch

    def rewind(self) -> None:  # part of onnxruntime's CalibrationDataReader protocol; single pass here
        pass


def _op_counts(proto: Any) -> Counter:
    return Counter(node.op_type for node in proto.graph.node)


def _quantize_file(source: Path, target: Path, recipe: QuantizeRecipe, runner: Runner, calib: Dataset | None) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    proto = onnx_file.load(source, check=False)
    excluded = set(recipe.exclude_op_types)
    if recipe.mode == "dynamic":
        if "Gemm" not in excluded and gemm_to_matmul(proto):
            source = target.with_name("matmul.onnx")  # in the private temporary folder
            source.write_bytes(onnx_file.to_bytes(proto, None))
        proto_ops = set(_op_counts(proto))
        ops = [op for op in DYNAMIC_OPS if op in proto_ops and op not in excluded]
        if not ops:
            raise TransformError(
                "dynamic quantization found no MatMul, Gemm, Attention or LSTM node to quantize",
                hint="use mode: static for conv nets",
            )
        with console.muted():
            quantize_dynamic(
                source, target, op_types_to_quantize=ops, per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range, weight_type=types[recipe.weight_type],
                nodes_to_exclude=recipe.exclude_nodes,
            )
        return
    if calib is None:
        raise UsageError("static quantization needs calibration data", hint="pass --data calib.npz or set data.path")
    proto_ops = set(_op_counts(proto))
    sample = calib.take(recipe.calibration.samples)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    batches = len(split_batches(len(sample), recipe.calibration.batch_size if runner.dynamic_batch else 1))
    with console.progress(f"calibrating ({recipe.calibration.method})", total=batches) as bar:
        reader = _CalibrationReader(runner, sample, recipe.calibration.batch_size, bar)
        with console.muted():
            quantize_static(
                source, target, reader, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=sorted(proto_ops - excluded) if excluded else None,
                per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                activation_type=types[recipe.activation_type], weight_type=types[recipe.weight_type],
                nodes_to_exclude=recipe.exclude_nodes, calibrate_method=methods[recipe.calibration.method],
            )


def _compare(float_runner: Runner, artifact: Artifact, data: Dataset) -> dict[str, Any]:
    with staged(artifact) as candidate:
        quantized_runner = open_runner(candidate)
        reference = float_runner.predict(data, description="evaluating float")[0]
        quantized = quantized_runner.predict(data, description="evaluating quantized")[0]
    metrics: dict[str, Any] = {"eval_samples": len(data), "agreement": agreement(reference, quantized)}
    if data.labels is not None:
        metrics["accuracy_float"] = accuracy(reference, data.labels)
        metrics["accuracy"] = accuracy(quantized, data.labels)
        metrics["accuracy_drop"] = metrics["accuracy_float"] - metrics["accuracy"]
    return metrics


def _fp16(source: Path, keep_io_types: bool) -> Any:
    """Half-precision weights and activations with onnxruntime's float16 converter."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with console.muted():
        return convert_float_to_float16(onnx_file.load(source, check=False), keep_io_types=keep_io_types)


def _quantize_onnx(model: ModelFile, recipe: QuantizeRecipe, float_runner: Runner, calib: Dataset | None) -> Artifact:
    with tempfile.TemporaryDirectory(prefix="edgecli-quant-") as folder:
        source, target = model.path, Path(folder) / "quantized.onnx"
        if recipe.preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            prepared = Path(folder) / "prepared.onnx"
            try:
                with console.muted():
                    quant_pre_process(str(model.path), str(prepared), skip_symbolic_shape=False)
                source = prepared
            except Exception as exc:  # pre-processing is an optimisation; quantization works without it
                console.warn(f"quant_pre_process failed ({str(exc).splitlines()[0][:120]}); quantizing without it")
        try:
            if recipe.mode == "fp16":
                proto = _fp16(source, recipe.keep_io_types)
            else:
                _quantize_file(source, target, recipe, float_runner, calib)
                proto = onnx_file.load(target)
        except (UsageError, TransformError):
            raise
        except Exception as exc:
            raise TransformError(f"onnxruntime quantization failed: {str(exc).strip().splitlines()[-1][:300]}") from None
    ops = _op_counts(proto)
    artifact = Artifact(Format.ONNX, proto)
    artifact.metrics["quantized_nodes"] = sum(ops.get(op, 0) for op in ("DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger"))
    if ops.get("ConvInteger"):
        console.warn("the model has ConvInteger nodes, which run slower than float Conv on CPU; prefer mode: static")
    return artifact


def quantize(model: ModelFile, recipe: QuantizeRecipe, calib: Dataset | None, eval_data: Dataset | None) -> Artifact:
    """Quantize to ONNX or TFLite and measure what it costs in agreement and accuracy."""
    if recipe.format == "onnx" and model.format is not Format.ONNX:
        raise UsageError(
            f"quantize to ONNX reads ONNX models; {model.path} is {model.format.value}",
            hint="convert it first (edgecli convert MODEL -r onnx), or quantize to TFLite with format: tflite",
        )
    float_runner = open_runner(model)
    if recipe.format == "tflite":
        from edgecli.stages.quantize_tflite import quantize_tflite

        artifact = quantize_tflite(model, recipe, float_runner, calib)
    else:
        artifact = _quantize_onnx(model, recipe, float_runner, calib)
    artifact.metrics = {"mode": recipe.mode, "size_bytes_float": model.size_bytes, **artifact.metrics}
    check = eval_data if eval_data is not None else calib
    if check is not None:
        artifact.metrics.update(_compare(float_runner, artifact, check))
        artifact.metrics["eval_data"] = check.source
    drop = artifact.metrics.get("accuracy_drop")
    if recipe.max_accuracy_drop is not None:
        if drop is None:
            raise UsageError(
                "max_accuracy_drop needs labelled data to measure the drop",
                hint="pass --eval-data eval.npz with labels under 'y', or --set max_accuracy_drop=null",
            )
        if drop > recipe.max_accuracy_drop:
            artifact.gate_failures.append(f"accuracy drop {drop:.4f} > max_accuracy_drop {recipe.max_accuracy_drop:g}")
    return artifact
