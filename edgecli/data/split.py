"""The validation split: which samples of a training set are held out to pick the best epoch.

One rule for every verb that trains: the last `validation_size` samples of a seeded permutation
validate, the rest train, both in sample order. Two permutation generators, so that each verb's
seeded results stay what they were: distill draws its permutation from numpy
(`default_rng([seed, 1])`), prune's fine-tuning from torch (`randperm` under `manual_seed(seed + 1)`;
tests/stages/prune/test_unstructured.py rebuilds that split to check the restored epoch).
"""

from __future__ import annotations

from typing import Literal

import numpy as np


def validation_size(count: int, val_split: float) -> int:
    """How many of `count` samples validate: round(val_split * count), or 0 when that would leave no
    sample to validate or none to train on."""
    n_val = round(val_split * count) if val_split else 0
    return n_val if 0 < n_val < count else 0


def _permutation(count: int, seed: int, generator: Literal["numpy", "torch"]) -> np.ndarray:
    if generator == "numpy":
        return np.random.default_rng([seed, 1]).permutation(count)
    import torch

    return torch.randperm(count, generator=torch.Generator().manual_seed(seed + 1)).numpy()


def validation_split(
    count: int, val_split: float, seed: int, generator: Literal["numpy", "torch"] = "numpy"
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) sample indices, each sorted: the last validation_size(count, val_split) of
    the seeded permutation validate. No validation samples: (all samples, an empty array)."""
    n_val = validation_size(count, val_split)
    if not n_val:
        return np.arange(count), np.arange(0)
    order = _permutation(count, seed, generator)
    return np.sort(order[: count - n_val]), np.sort(order[count - n_val :])
