"""distill: train a student .pt2 from a teacher of any format (Hinton KD + label loss + optional hint).

The teacher runs through the shared runtimes; its outputs on every augmented view of the training
set are cached on disk (distill_teacher.py). The student trains with a seeded, deterministic loop
(training.fit) that checkpoints after every epoch, validates on a held-out split to keep the best
epoch, and runs under torchrun with DistributedDataParallel. The report compares teacher, student
and (baseline: true) the same student trained on the labels alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecli.analysis.metrics import check_labels, is_classifier_output
from edgecli.analysis.model_stats import check_finite_weights, param_count
from edgecli.core import console
from edgecli.core.errors import DataError, RecipeError, TransformError, UsageError
from edgecli.data.augment import ViewRows
from edgecli.data.dataset import Dataset
from edgecli.data.rows import array_digest
from edgecli.data.split import validation_split
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.models.students import check_smaller, check_student_file, count_params, make_student
from edgecli.recipes import DistillRecipe
from edgecli.stages.artifact import Artifact
from edgecli.stages.distill.outputs import (
    Kind,
    OutputKind,
    as_logits,
    detect,
    probability_head,
    student_kind,
    torch_logits,
)
from edgecli.stages.distill.teacher import TeacherTargets, teacher_runner
from edgecli.training import distributed
from edgecli.training.checkpoint import Checkpoint
from edgecli.training.loop import BestKeeper, batch_outputs, fit, seed_everything, top1
from edgecli.training.losses import hint_loss, kd_loss


def hint_adapter(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> Any:
    """The learned map from the student's hint features to the teacher's: a 1x1 conv for feature
    maps [N,C,H,W], a linear layer for vectors [N,D]. Trained with the student, not exported."""
    from torch import nn

    if len(student_shape) == len(teacher_shape) == 4:
        return nn.Conv2d(student_shape[1], teacher_shape[1], 1)
    if len(student_shape) == len(teacher_shape) == 2:
        return nn.Linear(student_shape[1], teacher_shape[1])
    raise RecipeError(
        f"hint layers do not match: the student's gives {list(student_shape)}, the teacher's {list(teacher_shape)}",
        hint="pick two feature maps [N,C,H,W] or two vectors [N,D]",
    )


class FeatureTap:
    """Keeps the output of a named student submodule from the last forward pass."""

    def __init__(self, module: Any, name: str) -> None:
        modules = dict(module.named_modules())
        if name not in modules or not name:
            names = [n for n in modules if n]
            raise RecipeError(
                f"hint.student_layer '{name}' is not a module of the student",
                hint=f"its modules: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}",
            )
        self.value: Any = None
        self.handle = modules[name].register_forward_hook(self._keep)

    def _keep(self, _module: Any, _inputs: Any, output: Any) -> None:
        self.value = output

    def remove(self) -> None:
        self.handle.remove()


@dataclass
class Trained:
    """A finished training phase."""

    loss: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    resumed_at: int = 0
    hint_loss: list[float] = field(default_factory=list)  # mean hint term of each epoch

    def metrics(self, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {f"{prefix}epochs_run": len(self.loss), f"{prefix}loss": [round(v, 5) for v in self.loss]}
        if self.scores:
            out[f"{prefix}val_score"] = [round(v, 4) for v in self.scores]
            out[f"{prefix}best_epoch"] = self.best_epoch
        if self.hint_loss:
            out[f"{prefix}hint_loss"] = [round(v, 5) for v in self.hint_loss]
        return out


@dataclass
class Setup:
    """What both training phases share."""

    recipe: DistillRecipe
    targets: TeacherTargets
    train_idx: np.ndarray
    labels: Any | None  # LongTensor of all samples, or None
    val_x: ViewRows | None  # the held-out samples, read a batch at a time
    val_target: Any | None  # LongTensor: labels, else the teacher's top-1 on the held-out samples
    checkpoint: Checkpoint
    shard: tuple[int, int]
    output: OutputKind  # the teacher's outputs: targets are as_logits of them
    student_output: Kind = "logits"  # the student's own outputs (a .pt2 or factory student may end in Softmax)


def train_phase(setup: Setup, student: Any, phase: str, distil: bool) -> Trained:
    """Train `student` in place: with the teacher's soft targets (and hint) when `distil`, else on the
    labels alone. Validation keeps the best epoch; the checkpoint resumes an interrupted phase."""
    import torch

    recipe = setup.recipe
    hint = recipe.hint if distil else None
    tap: FeatureTap | None = None
    adapter: Any = None  # nn.Conv2d / nn.Linear
    if hint is not None:
        tap = FeatureTap(student, hint.student_layer)
        student.eval()
        with torch.no_grad():
            student(torch.from_numpy(setup.targets.x[:2]))
        teacher_features = setup.targets.view(0).features
        if teacher_features is None:
            raise TransformError(
                "the teacher's targets carry no hint features", hint="they were computed without hint.teacher_layer"
            )
        adapter = hint_adapter(tuple(tap.value.shape), tuple(teacher_features.shape))
    params = list(student.parameters()) + (list(adapter.parameters()) if adapter is not None else [])
    keeper = BestKeeper(student, recipe.patience, samples=None if setup.val_x is None else len(setup.val_x))
    saved = setup.checkpoint.phase(phase)
    if saved is not None:
        student.load_state_dict(saved["student"])
        if adapter is not None:
            adapter.load_state_dict(saved["adapter"])
        keeper.load(saved["keeper"])
    model = distributed.wrap(student)
    current: dict[str, Any] = {}
    hint_sums: list[float] = list(saved["hint_sums"]) if saved is not None else []
    train_idx = torch.from_numpy(setup.train_idx)

    def before_epoch(epoch: int) -> None:
        view = setup.targets.view(epoch) if (distil or recipe.augment is not None) else None
        current["x"] = view.inputs if view is not None else setup.targets.x  # read batch by batch
        # a view exists whenever distil; the hint features whenever hint (checked above)
        current["logits"] = (
            torch.from_numpy(as_logits(view.logits, setup.output.kind))[train_idx]
            if view is not None and distil
            else None
        )
        features = view.features if view is not None and hint is not None else None
        current["features"] = torch.from_numpy(features)[train_idx] if features is not None else None
        current["labels"] = setup.labels[train_idx] if setup.labels is not None else None
        hint_sums.append(0.0)

    def loss_fn(out: Any, idx: Any) -> Any:
        labels = None if current["labels"] is None else current["labels"][idx]
        out = torch_logits(out, setup.student_output)
        kind = "sigmoid" if setup.output.kind == "sigmoid" else "softmax"
        if not distil:
            if labels is None:  # distill refuses baseline: true without labels before training
                raise RecipeError("training without the teacher needs labels ('y') in the training data")
            return kd_loss(out, out.detach(), labels, recipe.temperature, 0.0, kind)  # the label term alone
        loss = kd_loss(out, current["logits"][idx], labels, recipe.temperature, recipe.soft_weight, kind)
        if hint is not None and tap is not None:  # the tap exists exactly when hint does
            term = hint_loss(adapter(tap.value), current["features"][idx])
            hint_sums[-1] += float(term.detach()) * len(idx)
            loss = loss + hint.weight * term
        return loss

    def validate(epoch: int) -> dict[str, float]:
        if setup.val_x is None:
            return {}
        student.eval()
        preds = batch_outputs(student, setup.val_x, keep=top1)
        student.train()
        score = float((preds == setup.val_target).float().mean())
        keeper.update(epoch + 1, score)
        return {"val_acc" if setup.labels is not None else "val_agree": score}

    def save_state(state: dict[str, Any]) -> None:
        setup.checkpoint.save(
            phase,
            {
                "fit": state,
                "student": student.state_dict(),
                "keeper": keeper.state(),
                "adapter": adapter.state_dict() if adapter is not None else {},
                "hint_sums": hint_sums,
            },
        )

    student.train()
    loss = fit(
        model,
        params,
        len(setup.train_idx),
        lambda idx: [torch.from_numpy(current["x"][setup.train_idx[idx.numpy()]])],
        loss_fn,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        optimizer=recipe.optimizer,
        weight_decay=recipe.weight_decay,
        seed=recipe.seed,
        schedule=recipe.schedule,
        description="distilling" if distil else "baseline (labels only)",
        before_epoch=before_epoch,
        after_epoch=validate,
        stop_when=lambda epoch: keeper.should_stop(epoch + 1),
        resume=None if saved is None else saved["fit"],
        save_state=save_state,
        shard=setup.shard,
    )
    student.eval()
    keeper.restore(len(loss))
    if tap is not None:
        tap.remove()
    hints = [total / len(setup.train_idx) for total in hint_sums] if hint is not None else []
    return Trained(loss, keeper.scores, keeper.best_epoch, 0 if saved is None else int(saved["fit"]["epoch"]), hints)


def export_student(student: Any, x: ViewRows, head: Any = None) -> Any:
    """The trained student as a .pt2 program with a dynamic batch dimension; with `head` (a Softmax
    or Sigmoid) its outputs are the teacher's kind of output."""
    import torch

    if head is not None:
        student = torch.nn.Sequential(student, head).eval()

    # A batch of 2 (Dim("batch") fails on 1), copied: the program stores its example inputs.
    example = torch.from_numpy(np.ascontiguousarray(x[np.array([0, 0])] if len(x) < 2 else x[:2])).clone()
    try:
        program = torch.export.export(student, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as exc:
        raise TransformError(f"cannot export the student: {str(exc).splitlines()[0][:200]}") from None
    # A student loaded from a .pt2 (student.path) is a graph module: the export's provenance records
    # the id()s of in-memory graphs, which differ in every process: not reproducible bytes.
    for node in program.graph.nodes:
        node.meta.pop("from_node", None)
    return program


def _single_input(data: Dataset, name: str) -> Any:
    """The training array for the teacher's one input: the only array, or the one under its name."""
    if len(data.inputs) == 1:
        return next(iter(data.inputs.values()))
    if name not in data.inputs:
        raise DataError(f"{data.source}: the data has no array for input(s) {name}; it holds {', '.join(data.inputs)}")
    return data.inputs[name]


def fingerprint(recipe: DistillRecipe, teacher: ModelFile, data_digest: str, labels: np.ndarray | None) -> str:
    """What a checkpoint must match to be resumed: the recipe, the teacher and the data (the
    training inputs' array_digest as float32, and the labels)."""
    parts = [
        json.dumps(
            recipe.model_dump(mode="json", exclude={"data", "eval_data", "latency_runs", "teacher_cache"}),
            sort_keys=True,
        ),
        teacher.sha256,
        data_digest,
        "" if labels is None else array_digest(labels),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _check_student(student: Any, x: ViewRows, classes: int, source: str) -> Any:
    import torch

    student.eval()
    try:
        with torch.no_grad():
            out = student(torch.from_numpy(x[:2]))
    except Exception as exc:
        raise RecipeError(f"the student ({source}) cannot run on the data: {str(exc).splitlines()[0][:160]}") from None
    shape = list(getattr(out, "shape", []))
    if shape != [min(2, len(x)), classes]:
        raise RecipeError(
            f"the student ({source}) outputs {shape} but the teacher's logits are [N, {classes}]",
            hint="the student needs one output with as many classes as the teacher",
        )
    return out


def _augment_only_images(recipe: DistillRecipe, x: Any) -> DistillRecipe:
    """The recipe without its augment section when the data is not float images [N, C, H, W] (the
    shipped kd recipes flip and crop: meaningless for audio frames, byte histograms or token ids),
    with a warning; before, such data was refused (exit 2) under a shipped recipe."""
    if recipe.augment is None or (x.ndim == 4 and np.issubdtype(x.dtype, np.floating)):
        return recipe
    console.warn(
        f"augment flips and crops images [N,C,H,W]; the data is {x.dtype}{list(x.shape)}: "
        "the student trains on it unaugmented"
    )
    return recipe.model_copy(update={"augment": None})


def distill(
    teacher: ModelFile,
    recipe: DistillRecipe,
    train: Dataset | None,
    eval_data: Dataset | None,
    checkpoint_path: Path | None = None,
) -> Artifact:
    """Train the recipe's student on the teacher's soft targets (and labels when present)."""
    check_finite_weights(teacher)  # also refuses a damaged teacher before torch is even imported
    import torch

    from edgecli.stages.distill.report import compare

    if train is None:
        raise UsageError("distill needs training data", hint="pass --data train.npz or set data.path")
    if recipe.baseline and train.labels is None:
        raise RecipeError("baseline: true needs labels ('y') in the training data", hint="or set baseline: false")
    if recipe.student.path is not None:
        check_student_file(Path(recipe.student.path))  # a refused or damaged student: before the teacher runs
    seed_everything(recipe.seed)
    hint_layer = recipe.hint.teacher_layer if recipe.hint else None
    with distributed.process_group() as shard, teacher_runner(teacher, hint_layer) as runner:
        if len(runner.inputs) != 1:
            raise UsageError(
                f"distill supports single-input teachers for now; {teacher.path} has {len(runner.inputs)} inputs"
            )
        for labelled in (train, eval_data):  # labels outside the teacher's classes: refused before any work
            check_labels(runner, labelled)  # a teacher that is not a classifier is refused below
        data = _single_input(train, runner.inputs[0].name)  # on disk: read a batch at a time
        recipe = _augment_only_images(recipe, data)
        targets = TeacherTargets(
            teacher, runner, runner.inputs[0].name, data, recipe.augment, recipe.seed, hint_layer, recipe.teacher_cache
        )
        x = targets.x
        if distributed.is_writer():
            targets.view(0)
        distributed.barrier()  # the other processes read what rank 0 computed and cached
        first = targets.view(0)
        if not is_classifier_output(first.logits):
            raise TransformError(
                f"the teacher's output has shape {list(first.logits.shape)}; distill needs [N, classes] logits"
            )
        classes = first.logits.shape[1]
        output = detect(teacher, first.logits)
        if output.kind != "logits":
            console.info(
                f"the teacher outputs {output.describe()}: soft targets are taken from its "
                + ("log-probabilities" if output.kind == "softmax" else "logits log(p/(1-p)), with a binary KD loss")
                + f" at temperature {recipe.temperature:g}"
            )
        train_idx, val_idx = validation_split(len(x), recipe.val_split, recipe.seed)
        labels = torch.from_numpy(train.labels) if train.labels is not None else None
        val_x = x.subset(val_idx) if len(val_idx) else None
        val_target = None
        if val_x is not None:
            val_target = (
                labels[val_idx]
                if labels is not None
                else torch.from_numpy(
                    first.logits[val_idx]
                    if recipe.augment is None
                    else runner.predict(Dataset({targets.input_name: val_x}, None, "val"), 256)[0]
                ).argmax(1)
            )
        setup = Setup(
            recipe,
            targets,
            train_idx,
            labels,
            val_x,
            val_target,
            Checkpoint(
                checkpoint_path,
                fingerprint(recipe, teacher, targets.data_digest, train.labels),
                distributed.is_writer(),
            ),
            shard,
            output,
        )
        student, source = make_student(recipe.student, tuple(x.shape[1:]), classes, x.dtype)
        check_smaller(student, recipe.student, param_count(teacher), tuple(x.shape[1:]), classes)
        setup.student_output = student_kind(student, _check_student(student, x, classes, source))
        # a student that outputs logits gets the teacher's head on export: the same kind of output
        head = probability_head(output.kind) if setup.student_output == "logits" else None
        trained = train_phase(setup, student, "student", distil=True)
        baseline = None
        if recipe.baseline:
            seed_everything(recipe.seed)
            baseline_student, _ = make_student(recipe.student, tuple(x.shape[1:]), classes, x.dtype)
            baseline = (baseline_student, train_phase(setup, baseline_student, "baseline", distil=False))
        program = export_student(student, x, head)
        metrics: dict[str, Any] = {
            "student": source,
            "student_params": count_params(student),
            "teacher_output": output.kind,
            "train_samples": len(train_idx),
            "val_samples": len(val_idx),
            **trained.metrics(),
        }
        artifact = Artifact(Format.PT2, program, metrics, write=distributed.is_writer())
        if recipe.student.path is not None:
            artifact.weights_from = ModelFile.open(Path(recipe.student.path))
        else:
            artifact.new_weights = True
        artifact.report = {
            "teacher_cache": {"views": targets.views, "computed": targets.computed, "read": targets.read},
            "resumed_from_epoch": trained.resumed_at,
            "processes": shard[1],
            "teacher_output": {"kind": output.kind, "evidence": output.evidence},
            "student_output": setup.student_output
            + (f" (+ {type(head).__name__} on export)" if head is not None else ""),
        }
        if artifact.write:
            compare(teacher, artifact, student, x[:1], eval_data, baseline, recipe)
            _check_answers(teacher, artifact, eval_data if eval_data is not None else train, recipe)
    return artifact


def _check_answers(teacher: ModelFile, artifact: Artifact, data: Dataset, recipe: DistillRecipe) -> None:
    """The written student against the teacher, output by output (stages.artifact.check_answers)."""
    from edgecli.runtimes import open_runner
    from edgecli.stages.artifact import check_answers

    answers = check_answers(
        artifact, open_runner(teacher), data, recipe.answers, recipe.answers.samples, "distill", "the teacher"
    )
    if artifact.report is not None:
        artifact.report["answers"] = [record.to_json() for record in answers.records]
