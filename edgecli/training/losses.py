"""The distillation losses: Hinton's knowledge-distillation loss and the hint (feature) loss. Used by
distill's student training and by fine-tuning with a teacher (training.loop, spec.distill)."""

from __future__ import annotations

from typing import Any


def kd_loss(
    student_logits: Any, teacher_logits: Any, labels: Any | None, temperature: float, soft_weight: float
) -> Any:
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


def hint_loss(adapted: Any, teacher_features: Any) -> Any:
    """Mean squared error between the adapted student features and the teacher's; feature maps of
    different sizes are average-pooled to the smaller one first."""
    import torch.nn.functional as F

    if adapted.ndim == 4 and adapted.shape[-2:] != teacher_features.shape[-2:]:
        size = (min(adapted.shape[-2], teacher_features.shape[-2]), min(adapted.shape[-1], teacher_features.shape[-1]))
        adapted, teacher_features = F.adaptive_avg_pool2d(adapted, size), F.adaptive_avg_pool2d(teacher_features, size)
    return F.mse_loss(adapted, teacher_features)
