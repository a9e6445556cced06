"""prune: the orchestrator. method channel -> structured pruning (prune_structured, .pt2 only);
magnitude / 2:4 -> zeroed weights (prune_unstructured for .pt2, prune_onnx for ONNX)."""

from __future__ import annotations

from edgecli.analysis.model_stats import check_finite_weights
from edgecli.core.errors import UsageError
from edgecli.data.dataset import Dataset
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import PruneRecipe
from edgecli.stages.artifact import Artifact
from edgecli.stages.prune.unstructured import apply_masks, magnitude_masks, prunable_weights, two_four_masks

__all__ = ["apply_masks", "magnitude_masks", "prunable_weights", "prune", "two_four_masks"]


def prune(model: ModelFile, recipe: PruneRecipe, train: Dataset | None, eval_data: Dataset | None) -> Artifact:
    """Prune MODEL as the recipe's method says; the artifact keeps the input's format (.pt2 or ONNX)."""
    if recipe.method == "channel" and model.format is not Format.PT2:
        raise UsageError(
            f"structured (channel) pruning needs a .pt2 or a state_dict + model.factory; {model.path} is {model.format.value}",
            hint="prune the PyTorch model and convert the result, or use method magnitude / 2of4 on ONNX",
        )
    if model.format not in (Format.PT2, Format.ONNX):
        raise UsageError(
            f"prune reads .pt2, a state_dict + model.factory, or ONNX; {model.path} is {model.format.value}"
        )
    check_finite_weights(model)
    train, eval_data = _checked_labels(model, recipe, train, eval_data)
    artifact = _pruned(model, recipe, train, eval_data)
    _check_answers(model, recipe, artifact, eval_data if eval_data is not None else train)
    return artifact


def _pruned(model: ModelFile, recipe: PruneRecipe, train: Dataset | None, eval_data: Dataset | None) -> Artifact:
    if recipe.method == "channel":
        from edgecli.stages.prune.structured import structured_prune

        return structured_prune(model, recipe, train, eval_data)
    if model.format is Format.PT2:
        from edgecli.stages.prune.unstructured import prune_pt2

        return prune_pt2(model, recipe, train, eval_data)
    from edgecli.stages.prune.onnx import prune_onnx

    return prune_onnx(model, recipe, train, eval_data)


def _check_answers(model: ModelFile, recipe: PruneRecipe, artifact: Artifact, data: Dataset | None) -> None:
    """Every output of the pruned model against the unpruned one's (stages.artifact.check_answers)."""
    from edgecli.runtimes import open_runner
    from edgecli.stages.artifact import check_answers

    answers = check_answers(
        artifact, open_runner(model), data, recipe.answers, recipe.answers.samples, "prune", "the unpruned model"
    )
    if artifact.report is not None:
        artifact.report["answers"] = [record.to_json() for record in answers.records]


def _checked_labels(
    model: ModelFile, recipe: PruneRecipe, train: Dataset | None, eval_data: Dataset | None
) -> tuple[Dataset | None, Dataset | None]:
    """Refuse labels outside the model's classes before pruning or fine-tuning (DataError). Labels for
    a model that is not a classifier: evaluation labels are dropped with a warning; training labels
    cannot train it (UsageError when fine-tuning or Taylor importance would use them)."""
    if all(d is None or d.labels is None for d in (train, eval_data)):
        return train, eval_data
    from edgecli.analysis.metrics import check_labels
    from edgecli.core import console
    from edgecli.runtimes import open_runner

    runner = open_runner(model)
    checked = []
    for data in (train, eval_data):
        note = check_labels(runner, data)
        if data is not None and note is not None:  # a note only for labelled data
            if data is train and (recipe.finetune.epochs or recipe.channel.importance == "taylor"):
                raise UsageError(
                    f"fine-tuning on labels needs a classifier output: {note}",
                    hint="--set finetune.epochs=0, or prune without labels",
                )
            console.warn(note)
            data = data.without_labels()
        checked.append(data)
    return checked[0], checked[1]
