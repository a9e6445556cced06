"""Training views of a dataset: seeded flips and padded random crops of [N, C, H, W] images, applied
to each batch as it is read, so a view never holds the dataset in memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecli.core.errors import RecipeError
from edgecli.recipes import AugmentSpec


def check_images(x: Any) -> None:
    """Augmentation needs float images [N, C, H, W] (`x`: an array or rows on disk)."""
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise RecipeError(
            f"augment needs float image inputs [N,C,H,W]; the data is {x.dtype}{list(x.shape)}",
            hint="remove the augment section for non-image data",
        )


@dataclass
class ViewDraws:
    """The random choices of one view, per sample: mirrored or not, and the crop offset."""

    flip: np.ndarray | None  # bool [N]
    dy: np.ndarray | None  # int [N], 0 .. 2 * pad
    dx: np.ndarray | None
    pad: int

    @classmethod
    def draw(cls, count: int, spec: AugmentSpec, seed: int, view: int) -> ViewDraws:
        """The same (count, spec, seed, view) always draws the same choices."""
        rng = np.random.default_rng([seed, view])
        flip = rng.random(count) < 0.5 if spec.hflip else None
        pad = spec.crop_padding
        dy = rng.integers(0, 2 * pad + 1, count) if pad else None
        dx = rng.integers(0, 2 * pad + 1, count) if pad else None
        return cls(flip, dy, dx, pad)

    def apply(self, images: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """`images` (the samples at `indices`, float, [n, C, H, W]) mirrored and cropped as drawn."""
        out = np.array(images, copy=True)
        if self.flip is not None:
            flip = self.flip[indices]
            out[flip] = out[flip][..., ::-1]
        if self.dy is not None and self.dx is not None:  # drawn exactly when pad > 0
            pad, (height, width) = self.pad, out.shape[-2:]
            padded = np.pad(out, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
            dy, dx = self.dy[indices], self.dx[indices]
            for oy in range(2 * pad + 1):
                for ox in range(2 * pad + 1):
                    chosen = np.flatnonzero((dy == oy) & (dx == ox))
                    if len(chosen):
                        out[chosen] = padded[chosen, :, oy : oy + height, ox : ox + width]
        return np.ascontiguousarray(out)


class ViewRows:
    """Samples of `base` (an array or a RowArray on disk) as float32, optionally only those at
    `index` and augmented by `draws`: indexing reads and transforms only the rows asked for."""

    def __init__(self, base: Any, draws: ViewDraws | None = None, index: np.ndarray | None = None) -> None:
        self.base, self.draws, self.index = base, draws, index
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.base) if self.index is None else len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.base.shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.base.shape)

    def subset(self, index: np.ndarray) -> ViewRows:
        """The samples at `index` of this view (nothing read)."""
        return ViewRows(self.base, self.draws, index if self.index is None else self.index[index])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.asarray([key])][0]
        positions = np.arange(*key.indices(len(self))) if isinstance(key, slice) else np.asarray(key)
        rows = positions if self.index is None else self.index[positions]
        read = self.base[key] if isinstance(key, slice) and self.index is None else self.base[rows]  # a slice: one read
        images = np.asarray(read, dtype=np.float32)
        return images if self.draws is None else self.draws.apply(images, rows)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self[slice(None)]
        return array if dtype is None else array.astype(dtype, copy=False)


def augmented_view(x: Any, spec: AugmentSpec, seed: int, view: int) -> ViewRows:
    """View number `view` of the whole set, read lazily: each image mirrored left-right with
    probability 0.5 (hflip), zero-padded by crop_padding pixels and cropped back to its size at a
    random offset. The same (x, spec, seed, view) always gives the same images."""
    check_images(ViewRows(x))
    return ViewRows(x, ViewDraws.draw(len(x), spec, seed, view))
