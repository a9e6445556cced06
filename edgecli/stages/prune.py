"""prune: unstructured magnitude pruning of a .pt2 ExportedProgram, with optional masked fine-tuning."""

from __future__ import annotations

from typing import Any

from edgecli import console
from edgecli.data import Dataset
from edgecli.errors import TransformError, UsageError
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.metrics import accuracy
from edgecli.recipes import PruneRecipe
from edgecli.runtimes.torch_runner import TorchRunner
from edgecli.stages.artifact import Artifact
from edgecli.training import fit, seed_everything


def prunable_weights(module: Any, min_params: int) -> dict[str, Any]:
    """Weight tensors of conv and linear layers (rank >= 2, at least `min_params` elements)."""
    return {name: p for name, p in module.named_parameters() if p.dim() >= 2 and p.numel() >= min_params}


def magnitude_masks(weights: dict[str, Any], sparsity: float, scope: str) -> dict[str, Any]:
    """Boolean keep-masks zeroing the `sparsity` fraction of smallest |w|, globally or per layer."""
    import torch

    def keep(values: Any, fraction: float) -> Any:
        k = int(round(fraction * values.numel()))
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


def apply_masks(weights: dict[str, Any], masks: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for name, w in weights.items():
            w.mul_(masks[name])


def _evaluate(runner: TorchRunner, data: Dataset | None) -> float | None:
    if data is None or data.labels is None:
        return None
    return accuracy(runner.predict(data)[0], data.labels)


def prune(model: ModelFile, recipe: PruneRecipe, train: Dataset | None, eval_data: Dataset | None) -> Artifact:
    """Zero the smallest weights; fine-tune with the masks held if the recipe asks."""
    import torch

    if model.format is not Format.PT2:
        raise UsageError(f"prune reads .pt2 ExportedPrograms; {model.path} is {model.format.value}")
    seed_everything(recipe.seed)
    runner = TorchRunner(model)
    weights = prunable_weights(runner.module, recipe.min_params)
    if not weights:
        raise TransformError(f"{model.path} has no conv or linear weight with >= {recipe.min_params} elements to prune")
    before = _evaluate(runner, eval_data)
    masks = magnitude_masks(weights, recipe.sparsity, recipe.scope)
    apply_masks(weights, masks)
    pruned_accuracy = _evaluate(runner, eval_data)
    history: list[float] = []
    if recipe.finetune.epochs:
        if train is None or train.labels is None:
            raise UsageError("fine-tuning needs labelled training data", hint="pass --data train.npz with 'y' labels")
        if len(runner.inputs) != 1:
            raise UsageError("fine-tuning supports single-input models for now")
        feeds = runner.feeds(train.batch(0, len(train)))[runner.inputs[0].name]
        x_all, y_all = torch.from_numpy(feeds), torch.from_numpy(train.labels)
        # BatchNorm stays in inference mode: an exported module cannot switch to train().
        history = fit(
            runner.module, list(runner.module.parameters()),
            len(train), lambda idx: [x_all[idx]],
            lambda out, idx: torch.nn.functional.cross_entropy(out, y_all[idx]),
            epochs=recipe.finetune.epochs, batch_size=recipe.finetune.batch_size, lr=recipe.finetune.lr,
            optimizer=recipe.finetune.optimizer, schedule=recipe.finetune.schedule, seed=recipe.seed, description="fine-tuning",
            after_step=lambda: apply_masks(weights, masks),
        )
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    all_params = sum(p.numel() for p in runner.module.parameters())
    metrics: dict[str, Any] = {
        "sparsity": zeros / total,
        "prunable_params": total,
        "params": all_params,
        "nonzero_params": all_params - zeros,
        "layers": {name: round(float((w == 0).float().mean()), 4) for name, w in weights.items()},
    }
    if history:
        metrics["finetune_loss"] = [round(v, 5) for v in history]
    if before is not None:
        after = _evaluate(runner, eval_data)
        metrics.update(accuracy_before=before, accuracy_pruned=pruned_accuracy, accuracy=after, accuracy_drop=before - after)
    console.info(
        f"pruned {zeros:,} of {total:,} weights ({zeros / total:.1%}); dense CPU kernels do not run faster on zeros, "
        "the gain is in compressed (gzip) size"
    )
    return Artifact(Format.PT2, runner.program, metrics)
