"""What edgecli will and will not execute from the files it reads.

Model files are data: a `torch.save` file is read with `torch.load(weights_only=True)` (tensors,
numbers, strings and containers only), Keras files with `safe_mode=True`, YAML with the safe loader,
.npz without pickled objects. Unpickling can run any code the file's author chose, so it happens
only when the user passes `--trust-pickle` (or sets EDGECLI_TRUST_PICKLE=1): then a whole pickled
nn.Module (`torch.save(model)`) is accepted and Keras Lambda layers load.

Recipes and pipeline files are shared like code, and some of their fields name code:
`model.factory` and `student.factory` (`package.module:function`). Importing that module runs it,
so edgecli imports it only when the user passes `--trust-code` (or sets EDGECLI_TRUST_CODE=1);
without it a recipe (or a pipeline step, or a `--set`) that names code is refused, exit 2, before
the module is imported and before any work. Even when trusted, a factory must be model code: its
module (and the module the object was defined in) is not part of Python's standard library (no
`os:system`, `builtins:eval`, `subprocess:run`), and the object is a Python function or an
`nn.Module` subclass (no builtins, no other callables). Both settings are environment variables so
the processes edgecli starts (torchrun workers, bench's memory probes, `edgecli run` steps) see them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from edgecli.core.errors import RecipeError, UsageError

TRUST_PICKLE_ENV = "EDGECLI_TRUST_PICKLE"
TRUST_CODE_ENV = "EDGECLI_TRUST_CODE"
CODE_FIELDS = ("model.factory", "student.factory")  # recipe fields that name code edgecli imports and calls


def trust_pickle() -> bool:
    """Whether the user allowed unpickling (code execution) for the files of this run."""
    return os.environ.get(TRUST_PICKLE_ENV) == "1"


def allow_pickle() -> None:
    os.environ[TRUST_PICKLE_ENV] = "1"


def trust_code() -> bool:
    """Whether the user allowed the code a recipe names (model.factory, student.factory) to be imported and run."""
    return os.environ.get(TRUST_CODE_ENV) == "1"


def allow_code() -> None:
    os.environ[TRUST_CODE_ENV] = "1"


def trust_flags() -> list[str]:
    """The root options that give a command edgecli prints (`edgecli run --dry-run`) the trust this
    run has, so a pasted command does what the pipeline step does."""
    return [flag for flag, on in (("--trust-pickle", trust_pickle()), ("--trust-code", trust_code())) if on]


def _top_module(name: str) -> str:
    return name.split(".", 1)[0]


def _not_model_code(module_name: str) -> bool:
    """Python's own modules (os, builtins, subprocess, ...) and the running script are not model code."""
    top = _top_module(module_name)
    return top in sys.stdlib_module_names or top == "__main__"


def check_code_allowed(field: str, spec: str, source: str | None = None) -> None:
    """Refuse, before anything is imported, a recipe field naming code ('package.module:function'):
    without --trust-code always; with it, when the module is Python's own. Raises RecipeError (exit 2)."""
    where = f" in {source}" if source else ""
    if not trust_code():
        raise RecipeError(
            f"{field} {spec}{where} names code to run; edgecli imports it only with --trust-code "
            f"(or {TRUST_CODE_ENV}=1)"
        )
    module_name = spec.partition(":")[0]
    if _not_model_code(module_name):
        raise RecipeError(
            f"{field} {spec}{where} is not model code: {_top_module(module_name)} is part of Python, not a package "
            "of yours; a factory is a function or nn.Module class of your own code"
        )


def check_factory_object(field: str, spec: str, factory: Any) -> None:
    """After the (trusted) import: the object must be a Python function or an nn.Module class, itself
    defined outside Python's standard library (`from subprocess import run` in a user module is
    refused too). Raises UsageError (exit 2)."""
    import inspect

    name = spec.partition(":")[2]
    problem = None
    if inspect.isclass(factory):
        from torch import nn

        if not issubclass(factory, nn.Module):
            problem = f"'{name}' is a class but not an nn.Module subclass"
    elif not inspect.isfunction(factory):
        problem = f"'{name}' is a {type(factory).__name__}, not a Python function or nn.Module class"
    defined_in = getattr(factory, "__module__", None)
    if problem is None and isinstance(defined_in, str) and _not_model_code(defined_in):
        problem = f"'{name}' is {defined_in}.{getattr(factory, '__qualname__', name)}, part of Python, not model code"
    if problem:
        raise UsageError(
            f"{field} {spec}: {problem}; edgecli calls only a function or nn.Module class of your own code"
        )
