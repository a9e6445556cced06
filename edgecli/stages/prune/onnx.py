"""prune, methods magnitude and 2:4 on an ONNX model: zero weight initializers of Conv / Gemm / MatMul
in numpy, without training (fine-tuning needs a .pt2)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from edgecli.analysis.metrics import accuracy, agreement
from edgecli.core import console
from edgecli.core.errors import TransformError, UsageError
from edgecli.data.dataset import Dataset
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import PruneRecipe
from edgecli.stages.artifact import Artifact, staged
from edgecli.stages.prune.unstructured import (
    apply_masks,
    magnitude_masks,
    show_layers,
    size_figures,
    sparsity_figures,
    speed_note,
    two_four_masks,
)


def _attribute(node: Any, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def weight_initializers(proto: Any, min_params: int) -> tuple[dict[str, int], list[str]]:
    """Initializers that are the weight input of exactly one Conv / Gemm / MatMul (and nothing else),
    float, rank >= 2, >= min_params elements -> their reduction axis; and the names skipped as shared."""
    from onnx import TensorProto

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    uses.update(o.name for o in graph.output)
    found: dict[str, int] = {}
    shared: list[str] = []
    for node in graph.node:
        if node.op_type == "Conv":
            candidates = [(1, 1)]  # W [Cout, Cin/groups, k...]: reduce over Cin
        elif node.op_type == "Gemm":
            candidates = [(1, 1 if _attribute(node, "transB", 0) else 0)]  # B [N, K] or [K, N]
        elif node.op_type == "MatMul":
            candidates = [(1, -2), (0, -1)]  # B [..., K, N] or A [..., M, K]
        else:
            continue
        for index, axis in candidates:
            if index >= len(node.input) or node.input[index] not in inits:
                continue
            name, tensor = node.input[index], inits[node.input[index]]
            if len(tensor.dims) < 2 or int(np.prod(tensor.dims)) < min_params:
                continue
            if tensor.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
                continue
            if uses[name] > 1:
                if name not in shared:
                    shared.append(name)
                continue
            found[name] = axis if axis >= 0 else len(tensor.dims) + axis
    return found, shared


def _outputs(model: ModelFile, data: Dataset) -> np.ndarray:
    from edgecli.runtimes import open_runner

    return open_runner(model).predict(data)[0]


def prune_onnx(model: ModelFile, recipe: PruneRecipe, train: Dataset | None, eval_data: Dataset | None) -> Artifact:
    import torch
    from onnx import numpy_helper

    from edgecli.formats import onnx_file

    if recipe.finetune.epochs:
        raise UsageError(
            "fine-tuning needs a trainable model: ONNX weights are pruned without training",
            hint="prune the .pt2 (or state_dict + model.factory) to fine-tune, or --set finetune.epochs=0",
        )
    if recipe.schedule == "gradual":
        raise UsageError(
            "schedule gradual raises sparsity during fine-tuning, which ONNX input cannot do",
            hint="--set schedule=oneshot, or prune the .pt2",
        )
    proto = onnx_file.load(model.path)
    axes, shared = weight_initializers(proto, recipe.min_params)
    for name in shared:
        console.warn(f"{name}: initializer used by more than one node, left dense")
    if not axes:
        raise TransformError(
            f"{model.path} has no Conv/Gemm/MatMul weight initializer with >= {recipe.min_params} elements to prune"
        )
    inits = {t.name: t for t in proto.graph.initializer}
    arrays = {name: numpy_helper.to_array(inits[name]).copy() for name in axes}
    weights = {name: torch.from_numpy(a) for name, a in arrays.items()}  # shares memory with `arrays`
    dense_layers: list[str] = []
    if recipe.method == "2of4":
        masks, dense_layers = two_four_masks(weights, axes)
        if not masks:
            raise TransformError(
                "no weight has a reduction dimension that is a multiple of 4: nothing can be 2:4 sparse"
            )
        for name in dense_layers:
            console.warn(f"{name} {tuple(arrays[name].shape)}: reduction dimension not a multiple of 4, left dense")
    else:
        masks = magnitude_masks(weights, recipe.sparsity, recipe.scope)
    apply_masks(weights, masks)
    for name, array in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(array, name))

    all_params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    figures = sparsity_figures(arrays, all_params, dense_layers)
    metrics: dict[str, Any] = {
        "method": recipe.method,
        "target_sparsity": 0.5 if recipe.method == "2of4" else recipe.sparsity,
    }
    metrics.update(figures)
    artifact = Artifact(Format.ONNX, proto, metrics)
    metrics.update(size_figures(model.path.read_bytes(), artifact.to_bytes(None)))
    with staged(artifact) as candidate:
        onnx_file.load(candidate.path)  # a valid model (checker)
        data = eval_data if eval_data is not None else train
        if data is not None and len(data):
            from edgecli.analysis.model_stats import macs
            from edgecli.runtimes import open_runner

            dense_runner = open_runner(model)
            count = macs(model, dense_runner.feeds(data.batch(0, 1)))
            if count is not None:
                metrics["macs"] = count
            dense, pruned = dense_runner.predict(data)[0], _outputs(candidate, data)
            if dense.ndim == 2 and dense.shape[1] > 1:
                metrics["agreement"] = agreement(dense, pruned)  # NaN/Inf outputs count as disagreements
                if data.labels is not None:
                    before, after = accuracy(dense, data.labels), accuracy(pruned, data.labels)
                    metrics.update(accuracy_before=before, accuracy=after, accuracy_drop=before - after)
            metrics["max_abs_diff"] = float(np.max(np.abs(dense.astype(np.float64) - pruned)))
            if metrics.get("agreement", 1.0) < 0.95:
                console.warn(
                    f"without fine-tuning only {metrics['agreement']:.1%} of the predictions match the dense "
                    "model's: lower the sparsity, or prune the .pt2 with fine-tuning"
                )
    show_layers(figures, {name: a.shape for name, a in arrays.items()})
    console.info(
        f"zeroed {figures['sparsity']:.1%} of {figures['prunable_params']:,} weights without training; "
        f"gzip {metrics['gzip_bytes_parent']:,} -> {metrics['gzip_bytes']:,} bytes ({metrics['gzip_ratio']:.2f}x)"
    )
    speed_note(recipe.method)
    return artifact
