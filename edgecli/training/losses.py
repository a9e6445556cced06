"""The distillation losses: Hinton's knowledge-distillation loss and the hint (feature) loss. Used by
distill's student training and by fine-tuning with a teacher (training.loop, spec.distill)."""

from __future__ import annotations

from typing import Any


def soft_targets(teacher_logits: Any, temperature: float, kind: str = "softmax") -> Any:
    """The teacher's tempered targets: softmax(t / T) over the classes, or sigmoid(t / T) per output
    (kind "sigmoid": independent binary outputs). `teacher_logits` are logits (or log-probabilities):
    a teacher that outputs probabilities is turned into them first (stages/distill/outputs.py)."""
    import torch

    return (
        torch.sigmoid(teacher_logits / temperature)
        if kind == "sigmoid"
        else torch.softmax(teacher_logits / temperature, dim=1)
    )


def kd_loss(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any | None,
    temperature: float,
    soft_weight: float,
    kind: str = "softmax",
) -> Any:
    """soft_weight * T² * KL(teacher_T || student_T) + (1 - soft_weight) * label loss.

    kind "softmax": the KL of the tempered class distributions, cross-entropy on the labels.
    kind "sigmoid" (binary KD, for sigmoid heads): the KL of each output's tempered Bernoulli,
    summed over the outputs, and binary cross-entropy on the labels (class indices one-hot, or
    multi-hot [N, C] labels as given). Without labels the soft term alone is used.
    """
    import torch.nn.functional as F

    if kind == "sigmoid":
        target = soft_targets(teacher_logits, temperature, kind)
        # KL(p || q) of Bernoullis = BCE(q, p) - H(p): zero when the student matches the teacher
        cross = F.binary_cross_entropy_with_logits(student_logits / temperature, target, reduction="none")
        entropy = F.binary_cross_entropy_with_logits(teacher_logits / temperature, target, reduction="none")
        soft = (cross - entropy).sum(1).mean() * (temperature**2)
        if labels is None:
            return soft
        hard = labels.float() if labels.ndim == 2 else F.one_hot(labels, student_logits.shape[1]).float()
        return soft_weight * soft + (1.0 - soft_weight) * F.binary_cross_entropy_with_logits(student_logits, hard)
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        soft_targets(teacher_logits, temperature, kind),
        reduction="batchmean",
    ) * (temperature**2)
    if labels is None:
        return soft
    return soft_weight * soft + (1.0 - soft_weight) * F.cross_entropy(student_logits, labels)


def hint_loss(adapted: Any, teacher_features: Any) -> Any:
    """Mean squared error between the adapted student features and the teacher's; feature maps of
    different sizes are average-pooled to the smaller one first."""
    import torch.nn.functional as F

    if adapted.ndim == 4 and adapted.shape[-2:] != teacher_features.shape[-2:]:
        size = (min(adapted.shape[-2], teacher_features.shape[-2]), min(adapted.shape[-1], teacher_features.shape[-1]))
        adapted, teacher_features = F.adaptive_avg_pool2d(adapted, size), F.adaptive_avg_pool2d(teacher_features, size)
    return F.mse_loss(adapted, teacher_features)
