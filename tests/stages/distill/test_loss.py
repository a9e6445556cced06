"""The distillation losses against hand computations in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecli.data.split import validation_split
from edgecli.stages.distill.stage import hint_adapter
from edgecli.training.losses import hint_loss, kd_loss


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_kd_loss_is_hintons_t2_scaled_kl_plus_cross_entropy():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(5, 4)) * 3, rng.normal(size=(5, 4)) * 3
    labels = np.array([0, 3, 1, 2, 3])
    T, w = 4.0, 0.9
    p_t, p_s = _softmax(teacher / T), _softmax(student / T)
    kl = np.sum(p_t * (np.log(p_t) - np.log(p_s))) / len(student)  # batchmean
    ce = -np.mean(np.log(_softmax(student)[np.arange(5), labels]))
    expected = w * T * T * kl + (1 - w) * ce

    got = kd_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), T, w)
    assert float(got) == pytest.approx(expected, rel=1e-9)
    soft_only = kd_loss(torch.tensor(student), torch.tensor(teacher), None, T, w)
    assert float(soft_only) == pytest.approx(T * T * kl, rel=1e-9)
    same = kd_loss(torch.tensor(teacher), torch.tensor(teacher), None, T, w)
    assert float(same) == pytest.approx(0.0, abs=1e-12)  # a student equal to its teacher costs nothing


def test_hint_loss_pools_to_the_smaller_map_then_takes_the_mse():
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 3, 2, 2))
    pooled = student.reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5))  # 2x2 average pooling
    expected = np.mean((pooled - teacher) ** 2)
    assert float(hint_loss(torch.tensor(student), torch.tensor(teacher))) == pytest.approx(expected, rel=1e-9)
    same_size = rng.normal(size=(2, 3, 2, 2))
    assert float(hint_loss(torch.tensor(same_size), torch.tensor(teacher))) == pytest.approx(
        np.mean((same_size - teacher) ** 2)
    )


def test_hint_adapter_maps_student_channels_to_teacher_channels():
    conv = hint_adapter((8, 16, 7, 7), (8, 64, 14, 14))
    assert tuple(conv(torch.zeros(2, 16, 7, 7)).shape) == (2, 64, 7, 7)
    linear = hint_adapter((8, 48), (8, 128))
    assert tuple(linear(torch.zeros(2, 48)).shape) == (2, 128)
    from edgecli.core.errors import RecipeError

    with pytest.raises(RecipeError, match="hint layers do not match"):
        hint_adapter((8, 16, 7, 7), (8, 128))


def test_validation_split_is_seeded_and_disjoint():
    train, val = validation_split(1000, 0.1, seed=0)
    assert len(val) == 100 and len(train) == 900 and not set(train) & set(val)
    assert np.array_equal(val, validation_split(1000, 0.1, seed=0)[1])
    assert not np.array_equal(val, validation_split(1000, 0.1, seed=1)[1])
    assert len(validation_split(1000, 0.0, seed=0)[1]) == 0
