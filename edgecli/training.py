"""A small, deterministic training loop shared by fine-tuning (prune) and distillation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgecli import console


def seed_everything(seed: int) -> None:
    """Same seed, same bytes: seed torch and numpy, and use deterministic kernels."""
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.use_deterministic_algorithms(True, warn_only=True)


def make_optimizer(name: str, params: Any, lr: float) -> Any:
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.Adam(params, lr=lr)


def fit(
    module: Any,
    params: list[Any],
    count: int,
    batch_inputs: Callable[[Any], list[Any]],
    loss_fn: Callable[[Any, Any], Any],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str,
    seed: int,
    schedule: str = "constant",
    description: str,
    after_step: Callable[[], None] | None = None,
    after_epoch: Callable[[int], dict[str, float]] | None = None,
) -> list[float]:
    """Train `params` of `module` for `epochs` over `count` samples in a seeded shuffled order.

    batch_inputs(indices) -> the module's positional inputs; loss_fn(output, indices) (indices: a
    LongTensor) -> scalar loss.
    after_step runs after each optimiser step (e.g. re-applying pruning masks); after_epoch may return
    figures shown on the progress bar (e.g. validation accuracy). Returns the mean loss of each epoch.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    opt = make_optimizer(optimizer, params, lr)
    steps_per_epoch = (count + batch_size - 1) // batch_size
    scheduler = None
    if schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    history: list[float] = []
    with console.progress(description, total=epochs * steps_per_epoch) as bar:
        for epoch in range(epochs):
            order = torch.randperm(count, generator=generator)
            total = 0.0
            for start in range(0, count, batch_size):
                indices = order[start : start + batch_size]
                loss = loss_fn(module(*batch_inputs(indices)), indices)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if scheduler is not None:
                    scheduler.step()
                if after_step is not None:
                    after_step()
                total += float(loss.detach()) * len(indices)
                bar.advance(epoch=epoch + 1, loss=float(loss.detach()))
            history.append(total / count)
            if after_epoch is not None:
                bar.advance(0, epoch=epoch + 1, loss=history[-1], **after_epoch(epoch))
    return history
