"""torchrun support: one process by default; under torchrun (WORLD_SIZE > 1) a gloo process group,
DistributedDataParallel training, and only rank 0 writes files."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


def rank_and_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as torchrun sets them; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_writer() -> bool:
    return rank_and_world()[0] == 0


@contextlib.contextmanager
def process_group() -> Iterator[tuple[int, int]]:
    """Join torchrun's process group (CPU, gloo) for the block when there are several processes."""
    rank, world = rank_and_world()
    if world == 1:
        yield rank, world
        return
    import torch.distributed as dist

    from edgecli.core import console

    if rank:
        console.set_quiet(True)  # one progress display: rank 0's

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo")
    try:
        yield rank, world
    finally:
        if started:
            dist.destroy_process_group()


def barrier() -> None:
    if rank_and_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def wrap(module: Any) -> Any:
    """The module wrapped in DistributedDataParallel when there are several processes."""
    if rank_and_world()[1] == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module)
