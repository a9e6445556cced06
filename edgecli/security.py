"""What edgecli will and will not execute from the files it reads.

Model files are data: a `torch.save` file is read with `torch.load(weights_only=True)` (tensors,
numbers, strings and containers only), Keras files with `safe_mode=True`, YAML with the safe loader,
.npz without pickled objects. Unpickling can run any code the file's author chose, so it happens
only when the user passes `--trust-pickle` (or sets EDGECLI_TRUST_PICKLE=1): then a whole pickled
nn.Module (`torch.save(model)`) is accepted and Keras Lambda layers load. The setting is an
environment variable so the processes edgecli starts (torchrun workers, bench's memory probes) see it.
"""

from __future__ import annotations

import os

TRUST_PICKLE_ENV = "EDGECLI_TRUST_PICKLE"


def trust_pickle() -> bool:
    """Whether the user allowed unpickling (code execution) for the files of this run."""
    return os.environ.get(TRUST_PICKLE_ENV) == "1"


def allow_pickle() -> None:
    os.environ[TRUST_PICKLE_ENV] = "1"
