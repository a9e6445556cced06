"""Augmentation: seeded flips and padded crops, checked pixel by pixel."""

from __future__ import annotations

import numpy as np
import pytest

from edgecli.core.errors import RecipeError
from edgecli.data.augment import augmented_view
from edgecli.recipes import AugmentSpec


def test_each_image_is_a_flip_and_or_shift_of_itself(sample):
    x = np.load(sample["eval"])["x"][:200]
    spec = AugmentSpec(hflip=True, crop_padding=2)
    view = augmented_view(x, spec, seed=0, view=3)
    assert view.shape == x.shape and view.dtype == x.dtype
    assert np.array_equal(view, augmented_view(x, spec, seed=0, view=3))  # same seed and view, same bytes
    assert not np.array_equal(view, augmented_view(x, spec, seed=0, view=4))
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    flips = 0
    for i in range(len(x)):
        candidates = [
            (f, dy, dx)
            for f in (False, True)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(view[i], (padded[i, :, :, ::-1] if f else padded[i])[:, dy : dy + 28, dx : dx + 28])
        ]
        assert candidates, f"image {i} is not a flipped/shifted copy"
        flips += candidates[0][0]
    assert 60 < flips < 140  # about half are mirrored


def test_no_padding_and_no_flip_is_the_identity():
    x = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    assert np.array_equal(augmented_view(x, AugmentSpec(hflip=False, crop_padding=0), seed=0, view=0), x)


def test_augmentation_needs_images():
    with pytest.raises(RecipeError, match=r"augment needs float image inputs"):
        augmented_view(np.zeros((4, 16), np.float32), AugmentSpec(), seed=0, view=0)
