"""distill: train a built-in student .pt2 from a teacher of any format (Hinton KD + label loss)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecli.data import Dataset
from edgecli.errors import TransformError, UsageError
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.metrics import accuracy, is_classifier_output
from edgecli.model_stats import param_count
from edgecli.models.students import build_student, count_params
from edgecli.recipes import DistillRecipe
from edgecli.runtimes import open_runner
from edgecli.stages.artifact import Artifact
from edgecli.training import fit, seed_everything


def kd_loss(student_logits: Any, teacher_logits: Any, labels: Any | None, temperature: float, soft_weight: float) -> Any:
    """soft_weight * T² * KL(teacher_T || student_T) + (1 - soft_weight) * CE(student, labels).

    Without labels the soft term alone is used.
    """
    import torch.nn.functional as F

    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
    ) * (temperature**2)
    if labels is None:
        return soft
    return soft_weight * soft + (1.0 - soft_weight) * F.cross_entropy(student_logits, labels)


def _student_accuracy(student: Any, x: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    import torch

    with torch.no_grad():
        logits = torch.cat([student(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])
    return accuracy(logits.numpy(), labels)


def distill(teacher: ModelFile, recipe: DistillRecipe, train: Dataset | None, eval_data: Dataset | None) -> Artifact:
    """Train the recipe's student on the teacher's soft targets (and labels when present)."""
    import torch

    if train is None:
        raise UsageError("distill needs training data", hint="pass --data train.npz or set data.path")
    seed_everything(recipe.seed)
    teacher_runner = open_runner(teacher)
    if len(teacher_runner.inputs) != 1 or len(train.inputs) != 1:
        raise UsageError("distill supports single-input teachers for now")
    teacher_logits = teacher_runner.predict(train, description="teacher outputs")[0].astype(np.float32)
    if not is_classifier_output(teacher_logits):
        raise TransformError(f"the teacher's output has shape {list(teacher_logits.shape)}; distill needs [N, classes] logits")
    x = next(iter(train.inputs.values())).astype(np.float32)
    student = build_student(recipe.student, tuple(x.shape[1:]), teacher_logits.shape[1])
    x_all, t_all = torch.from_numpy(x), torch.from_numpy(teacher_logits)
    y_all = torch.from_numpy(train.labels) if train.labels is not None else None
    eval_x = None
    if eval_data is not None and eval_data.labels is not None:
        eval_x = next(iter(eval_data.inputs.values())).astype(np.float32)

    def validate(_epoch: int) -> dict[str, float]:
        if eval_x is None:
            return {}
        student.eval()
        result = {"val_acc": _student_accuracy(student, eval_x, eval_data.labels)}
        student.train()
        return result

    student.train()
    history = fit(
        student, list(student.parameters()), len(train), lambda idx: [x_all[idx]],
        lambda out, idx: kd_loss(out, t_all[idx], None if y_all is None else y_all[idx], recipe.temperature, recipe.soft_weight),
        epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, optimizer=recipe.optimizer,
        seed=recipe.seed, schedule=recipe.schedule, description="distilling", after_epoch=validate,
    )
    student.eval()
    # A batch of 2 (Dim("batch") fails on 1), copied: the program stores its example inputs.
    example = (x_all[[0, 0]] if len(x_all) < 2 else x_all[:2]).clone()
    try:
        program = torch.export.export(student, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as exc:
        raise TransformError(f"cannot export the student: {str(exc).splitlines()[0][:200]}") from None
    metrics: dict[str, Any] = {
        "student_params": count_params(student),
        "teacher_params": param_count(teacher),
        "loss": [round(v, 5) for v in history],
        "train_samples": len(train),
    }
    if eval_x is not None:
        teacher_eval = teacher_runner.predict(eval_data)[0]
        metrics["teacher_accuracy"] = accuracy(teacher_eval, eval_data.labels)
        metrics["accuracy"] = _student_accuracy(student, eval_x, eval_data.labels)
        metrics["accuracy_ratio"] = metrics["accuracy"] / max(metrics["teacher_accuracy"], 1e-12)
    return Artifact(Format.PT2, program, metrics)
