"""Student architectures: a CNN family and an MLP family with width and depth knobs."""

from __future__ import annotations

import math
from typing import Any

from edgecli.errors import RecipeError
from edgecli.recipes import StudentSpec


def build_student(spec: StudentSpec, input_shape: tuple[int, ...], num_classes: int) -> Any:
    """A fresh student for samples of `input_shape` (no batch dimension) and `num_classes` outputs."""
    from torch import nn

    if spec.family == "mlp":
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for hidden in spec.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)
    if len(input_shape) != 3:
        raise RecipeError(
            f"student.family 'cnn' needs image inputs [N,C,H,W]; the data has samples of shape {list(input_shape)}",
            hint="use student.family: mlp",
        )
    channels, height, width = input_shape
    blocks: list[nn.Module] = []
    for index, out_channels in enumerate(spec.channels):
        blocks += [nn.Conv2d(channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU()]
        if index < len(spec.channels) - 1 and min(height, width) >= 4:
            blocks.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = out_channels
    if spec.head == "avgpool":
        blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    else:
        blocks += [nn.Flatten(), nn.Linear(channels * height * width, num_classes)]
    return nn.Sequential(*blocks)


def count_params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())
