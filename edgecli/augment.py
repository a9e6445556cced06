"""Image augmentation for training: seeded flips and padded random crops of [N, C, H, W] arrays."""

from __future__ import annotations

import numpy as np

from edgecli.errors import RecipeError
from edgecli.recipes import AugmentSpec


def check_images(x: np.ndarray) -> None:
    """Augmentation needs float images [N, C, H, W]."""
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise RecipeError(
            f"augment needs float image inputs [N,C,H,W]; the data is {x.dtype}{list(x.shape)}",
            hint="remove the augment section for non-image data",
        )


def augmented_view(x: np.ndarray, spec: AugmentSpec, seed: int, view: int) -> np.ndarray:
    """View number `view` of the whole set: each image mirrored left-right with probability 0.5
    (hflip), zero-padded by crop_padding pixels and cropped back to its size at a random offset.
    The same (x, spec, seed, view) always gives the same array."""
    check_images(x)
    rng = np.random.default_rng([seed, view])
    count, _, height, width = x.shape
    out = x.copy()
    if spec.hflip:
        flip = rng.random(count) < 0.5
        out[flip] = out[flip][..., ::-1]
    pad = spec.crop_padding
    if pad:
        padded = np.pad(out, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        dy = rng.integers(0, 2 * pad + 1, count)
        dx = rng.integers(0, 2 * pad + 1, count)
        for oy in range(2 * pad + 1):
            for ox in range(2 * pad + 1):
                chosen = np.flatnonzero((dy == oy) & (dx == ox))
                if len(chosen):
                    out[chosen] = padded[chosen, :, oy : oy + height, ox : ox + width]
    return np.ascontiguousarray(out)
