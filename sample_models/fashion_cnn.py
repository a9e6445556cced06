"""A small, plain CNN classifier for Fashion-MNIST.

Input: float32 ``[N, 1, 28, 28]`` in ``[0, 1]``. Output: logits ``[N, num_classes]``.

Built only from standard layers (Conv2d, BatchNorm2d, ReLU, MaxPool2d,
AdaptiveAvgPool2d, Flatten, Linear) so every export path and every
compression technique in edgecli can handle it.
"""

from __future__ import annotations

from torch import nn

#: Output channels of the four 3x3 conv blocks; ``"M"`` is a 2x2 max-pool.
LAYOUT: tuple[int | str, ...] = (32, 64, 64, 64, 64, "M", 128, "M", 128)


def _conv_block(in_ch: int, out_ch: int) -> list[nn.Module]:
    """3x3 same-padding conv (no bias, BN follows) + BatchNorm + ReLU."""
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


def build(num_classes: int = 10) -> nn.Module:
    """Return an untrained ``nn.Sequential`` Fashion-MNIST CNN."""
    layers: list[nn.Module] = []
    in_ch = 1
    for item in LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2))
        else:
            layers += _conv_block(in_ch, int(item))
            in_ch = int(item)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes)]
    return nn.Sequential(*layers)
