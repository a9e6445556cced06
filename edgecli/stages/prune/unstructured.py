"""prune, methods magnitude and 2:4: zero single weights of a .pt2 (unstructured or 2:4
semi-structured), optionally fine-tuning with the zeros held.

Honest about what it buys: the model keeps its shape, so parameters and MACs executed by dense kernels
do not change; the gain is in compressed (gzip) size, and for 2:4 on sparse tensor cores (Ampere and
later NVIDIA GPUs). CPUs run the zeros like any other weight.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from edgecli.analysis.metrics import accuracy
from edgecli.analysis.model_stats import gzip_bytes
from edgecli.core import console
from edgecli.core.errors import TransformError, UsageError
from edgecli.data.dataset import Dataset
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import PruneRecipe
from edgecli.runtimes.torch_runner import TorchRunner
from edgecli.stages.artifact import Artifact
from edgecli.training.loop import finetune, finetune_train_size, seed_everything

# ---------------------------------------------------------------- masks (torch tensors; ONNX arrays go through torch.from_numpy)


def prunable_weights(module: Any, min_params: int) -> dict[str, Any]:
    """Weight tensors of conv and linear layers (rank >= 2, at least `min_params` elements)."""
    return {name: p for name, p in module.named_parameters() if p.dim() >= 2 and p.numel() >= min_params}


def magnitude_masks(weights: dict[str, Any], sparsity: float, scope: str) -> dict[str, Any]:
    """Boolean keep-masks zeroing the `sparsity` fraction of smallest |w|, globally or per layer."""
    import torch

    def keep(values: Any, fraction: float) -> Any:
        k = round(fraction * values.numel())
        if k == 0:
            return torch.ones_like(values, dtype=torch.bool)
        order = torch.argsort(values.abs().flatten(), stable=True)  # ties broken by position: reproducible
        mask = torch.ones(values.numel(), dtype=torch.bool)
        mask[order[:k]] = False
        return mask.view_as(values)

    with torch.no_grad():
        if scope == "layer":
            return {name: keep(w.detach(), sparsity) for name, w in weights.items()}
        flat = torch.cat([w.detach().flatten() for w in weights.values()])
        joint = keep(flat, sparsity)
        masks, offset = {}, 0
        for name, w in weights.items():
            masks[name] = joint[offset : offset + w.numel()].view_as(w)
            offset += w.numel()
        return masks


def two_four_mask(weight: Any, axis: int = 1) -> Any | None:
    """Keep-mask with the 2 largest |w| of every 4 consecutive weights along `axis` (the reduction
    dimension: input channels of a conv [Cout, Cin, kh, kw], in_features of a linear [out, in]) — the
    NVIDIA ASP m4n2 pattern, grouped along Cin as sparse tensor cores read NHWC convolutions.
    None when the dimension is not a multiple of 4 (the layer stays dense)."""
    import torch

    if weight.shape[axis] % 4:
        return None
    with torch.no_grad():
        moved = weight.detach().movedim(axis, -1)
        groups = moved.reshape(-1, 4).abs()
        order = torch.argsort(groups, dim=1, stable=True)  # ascending: the first two are dropped
        mask = torch.ones_like(groups, dtype=torch.bool)
        mask.scatter_(1, order[:, :2], False)
        return mask.reshape(moved.shape).movedim(-1, axis).contiguous()


def two_four_masks(weights: dict[str, Any], axes: dict[str, int] | None = None) -> tuple[dict[str, Any], list[str]]:
    """2:4 keep-masks of the weights whose reduction dimension is a multiple of 4, and the names left dense."""
    masks, dense = {}, []
    for name, w in weights.items():
        mask = two_four_mask(w, (axes or {}).get(name, 1))
        if mask is None:
            dense.append(name)
        else:
            masks[name] = mask
    return masks, dense


def apply_masks(weights: dict[str, Any], masks: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for name, mask in masks.items():
            weights[name].mul_(mask)


def cubic_sparsity(final: float, step: int, total: int) -> float:
    """Gradual pruning (Zhu & Gupta 2017): s_t = s_f (1 - (1 - t/T)^3), exactly s_f from t = T on."""
    t = min(max(step, 0), total) / max(total, 1)
    return final * (1.0 - (1.0 - t) ** 3)


# ---------------------------------------------------------------- honest figures


def sparsity_figures(arrays: dict[str, np.ndarray], all_params: int, dense_layers: list[str]) -> dict[str, Any]:
    """Sparsity per layer and overall, parameters and non-zero parameters."""
    total = sum(a.size for a in arrays.values())
    zeros = sum(int(np.count_nonzero(a == 0)) for a in arrays.values())
    figures: dict[str, Any] = {
        "sparsity": zeros / total if total else 0.0,  # over the prunable weights
        "sparsity_model": zeros / all_params if all_params else 0.0,  # over every parameter
        "prunable_params": total,
        "params": all_params,
        "nonzero_params": all_params - zeros,
        "layers": {name: round(float(np.count_nonzero(a == 0)) / a.size, 4) for name, a in arrays.items()},
    }
    if dense_layers:
        figures["dense_layers"] = list(dense_layers)
    return figures


def size_figures(dense_bytes: bytes, pruned_bytes: bytes) -> dict[str, Any]:
    before, after = gzip_bytes(dense_bytes), gzip_bytes(pruned_bytes)
    return {"gzip_bytes_parent": before, "gzip_bytes": after, "gzip_ratio": round(after / before, 4)}


def show_layers(figures: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    from rich.table import Table

    table = Table(title="sparsity per layer", title_justify="left", box=None)
    for column in ("layer", "shape", "params", "zeros"):
        table.add_column(column, justify="left" if column in ("layer", "shape") else "right")
    dense = set(figures.get("dense_layers", []))
    for name, fraction in figures["layers"].items():
        note = " (dense: reduction not a multiple of 4)" if name in dense else ""
        table.add_row(
            name, "x".join(map(str, shapes[name])), f"{int(np.prod(shapes[name])):,}", f"{fraction:.1%}{note}"
        )
    console.show(table)


def speed_note(method: str) -> None:
    if method == "2of4":
        console.info(
            "2:4 sparsity runs faster only on sparse tensor cores (NVIDIA Ampere and later, with a 2:4-aware "
            "runtime such as TensorRT or cuSPARSELt); dense CPU kernels gain nothing from the zeros"
        )
    else:
        console.info(
            "unstructured zeros do not make dense kernels faster (CPU or GPU): the gain is in compressed "
            "(gzip) size; use method channel for a smaller, faster model"
        )


# ---------------------------------------------------------------- .pt2


def _evaluate(runner: TorchRunner, data: Dataset | None) -> float | None:
    if data is None or data.labels is None:
        return None
    return accuracy(runner.predict(data)[0], data.labels)


def _training_tensors(runner: TorchRunner, train: Dataset | None) -> tuple[Any, Any]:
    import torch

    if train is None or train.labels is None:
        raise UsageError("fine-tuning needs labelled training data", hint="pass --data train.npz with 'y' labels")
    if len(runner.inputs) != 1:
        raise UsageError("fine-tuning supports single-input models for now")
    feeds = runner.feeds(train.batch(0, len(train)))[runner.inputs[0].name]
    return torch.from_numpy(feeds), torch.from_numpy(train.labels)


def prune_pt2(model: ModelFile, recipe: PruneRecipe, train: Dataset | None, eval_data: Dataset | None) -> Artifact:
    """Zero weights by magnitude (one-shot or gradual) or in the 2:4 pattern; fine-tune with the zeros held."""
    import torch

    spec = recipe.finetune  # gradual only with magnitude and fine-tuning: PruneRecipe checks
    seed_everything(recipe.seed)
    runner = TorchRunner(model)
    weights = prunable_weights(runner.module, recipe.min_params)
    if not weights:
        raise TransformError(f"{model.path} has no conv or linear weight with >= {recipe.min_params} elements to prune")
    tensors = _training_tensors(runner, train) if spec.epochs else None
    teacher = copy.deepcopy(runner.module) if spec.epochs and spec.distill else None
    before = _evaluate(runner, eval_data)

    dense_layers: list[str] = []
    if recipe.method == "2of4":
        masks, dense_layers = two_four_masks(weights)
        if not masks:
            raise TransformError(
                "no layer has a reduction dimension that is a multiple of 4: nothing can be 2:4 sparse"
            )
        for name in dense_layers:
            console.warn(f"{name} {tuple(weights[name].shape)}: input dimension not a multiple of 4, left dense")
    else:
        masks = magnitude_masks(weights, recipe.sparsity, recipe.scope)

    gradual = recipe.schedule == "gradual"
    if gradual:  # what one-shot pruning to the target would cost, before fine-tuning; then start dense
        saved = {name: w.detach().clone() for name, w in weights.items()}
        apply_masks(weights, masks)
        pruned_accuracy = _evaluate(runner, eval_data)
        with torch.no_grad():
            for name, w in weights.items():
                w.copy_(saved[name])
    else:
        apply_masks(weights, masks)
        pruned_accuracy = _evaluate(runner, eval_data)

    result = None
    if tensors is not None:  # set exactly when spec.epochs
        # gradual: sparsity rises every step over all epochs but the last (the last recovers at the target)
        ramp_epochs = max(1, spec.epochs - 1) if gradual else 0
        steps = -(-finetune_train_size(len(tensors[0]), spec.val_split) // spec.batch_size)
        ramp_steps, step, current = ramp_epochs * steps, [0], [masks]

        def after_step() -> None:
            step[0] += 1
            if gradual and step[0] <= ramp_steps:
                current[0] = magnitude_masks(
                    weights, cubic_sparsity(recipe.sparsity, step[0], ramp_steps), recipe.scope
                )
            apply_masks(weights, current[0])

        result = finetune(
            runner.module,
            teacher,
            tensors,
            spec,
            recipe.seed,
            after_step,
            first_eligible_epoch=max(ramp_epochs, 1),
            description="fine-tuning",
        )
        if gradual:
            masks = magnitude_masks(weights, recipe.sparsity, recipe.scope)
        apply_masks(weights, masks)  # also after a best-epoch restore

    arrays = {name: w.detach().numpy() for name, w in weights.items()}
    all_params = sum(p.numel() for p in runner.module.parameters())
    figures = sparsity_figures(arrays, all_params, dense_layers)
    metrics: dict[str, Any] = {
        "method": recipe.method,
        "target_sparsity": 0.5 if recipe.method == "2of4" else recipe.sparsity,
    }
    metrics.update(figures)
    if result is not None:
        metrics.update(result.metrics())
    after = _evaluate(runner, eval_data)
    if before is not None and after is not None:  # both measured, or neither (the same eval_data)
        metrics.update(
            accuracy_before=before, accuracy_pruned=pruned_accuracy, accuracy=after, accuracy_drop=before - after
        )
    artifact = Artifact(Format.PT2, runner.program, metrics)
    metrics.update(size_figures(model.path.read_bytes(), artifact.to_bytes(None)))
    data = eval_data if eval_data is not None else train
    if data is not None and len(data):
        from edgecli.analysis.model_stats import macs

        count = macs(model, runner.feeds(data.batch(0, 1)))
        if count is not None:
            metrics["macs"] = count  # per sample, unchanged by zeros for dense kernels
    show_layers(figures, {name: tuple(w.shape) for name, w in weights.items()})
    zeros = figures["prunable_params"] - sum(int(np.count_nonzero(a)) for a in arrays.values())
    console.info(
        f"pruned {zeros:,} of {figures['prunable_params']:,} weights ({figures['sparsity']:.1%}); "
        f"gzip {metrics['gzip_bytes_parent']:,} -> {metrics['gzip_bytes']:,} bytes ({metrics['gzip_ratio']:.2f}x)"
    )
    speed_note(recipe.method)
    return artifact
