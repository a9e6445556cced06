"""Built-in students: the cnn family reproduces the sample teacher's layout; width and depth scale it."""

from __future__ import annotations

import pytest
import torch

from edgecli.core.errors import RecipeError
from edgecli.models.students import build_student, cnn_stages, count_params, mlp_hidden
from edgecli.recipes import StudentSpec

TEACHER_LAYOUT = [[32, 64, 64, 64, 64], 128, 128]


def test_cnn_family_can_describe_the_sample_teacher(sample):
    student = build_student(StudentSpec(channels=TEACHER_LAYOUT, head="avgpool"), (1, 28, 28), 10)
    teacher = torch.export.load(str(sample["pt2"])).module()
    assert count_params(student) == sum(p.numel() for p in teacher.parameters()) == 352_874


def test_width_and_depth_knobs():
    half = StudentSpec(channels=TEACHER_LAYOUT, head="avgpool", width=0.5)
    assert cnn_stages(half) == [[16, 32, 32, 32, 32], [64], [64]]
    shallow = StudentSpec(channels=TEACHER_LAYOUT, depth=0.4)
    assert cnn_stages(shallow) == [[32, 64], [128], [128]]  # every stage keeps at least one conv
    deep = StudentSpec(channels=[16, [8, 32]], depth=2)
    assert cnn_stages(deep) == [[16, 16], [8, 32, 32, 32]]
    full = count_params(build_student(StudentSpec(channels=TEACHER_LAYOUT, head="avgpool"), (1, 28, 28), 10))
    halved = count_params(build_student(half, (1, 28, 28), 10))
    assert 0.24 < halved / full < 0.26  # conv weights scale with width squared
    mlp = StudentSpec(family="mlp", hidden=[128, 64], width=0.5, depth=1.5)
    assert mlp_hidden(mlp) == [64, 32, 32]
    out = build_student(mlp, (1, 28, 28), 10)(torch.zeros(3, 1, 28, 28))
    assert tuple(out.shape) == (3, 10)


def test_cnn_needs_images():
    with pytest.raises(RecipeError, match="needs image inputs"):
        build_student(StudentSpec(), (16,), 4)
