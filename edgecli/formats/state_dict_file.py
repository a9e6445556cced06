"""PyTorch state_dict files (.pt/.pth from `torch.save(model.state_dict(), path)`).

A state_dict holds tensors only; the module they belong to comes from the user's own code, named in
the recipe as `model.factory` and imported only with `--trust-code` (see edgecli/core/security.py).
Files are read with `torch.load(weights_only=True)`: a pickled whole module (or any other Python
object) is refused, never unpickled, unless the user passes `--trust-pickle`: then a pickled
nn.Module is used as it is, without a factory. `built_pt2` turns file + factory (or the trusted
module) into the .pt2 every verb reads.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from edgecli.core import console
from edgecli.core.errors import ModelReadError, ParityError, TransformError, UsageError, last_line
from edgecli.data.dataset import Dataset
from edgecli.formats.files import TempFolder
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import ModelSource

# Where training checkpoints keep the model's state_dict, in the order they are tried: a checkpoint
# {"step": 10, "model_state": {...}, "optimizer_state": {...}}, Lightning's {"state_dict": ...}, ...
WRAPPER_KEYS = ("model_state", "model_state_dict", "state_dict", "model", "net", "ema", "ema_state_dict", "module")
SHOWN_KEYS = 3
CHECK_SAMPLES = 64


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


# --- the file ---------------------------------------------------------------------------------


def _refused_global(exc: BaseException) -> str:
    """The Python object torch's weights-only unpickler refused ('torch.nn.modules.container.Sequential')."""
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return match.group(1) if match else "a Python object"


def _tensor_dict(value: Any) -> TypeGuard[dict[str, Any]]:
    """A non-empty {str: tensor}: a state_dict."""
    return (
        isinstance(value, dict) and bool(value) and all(isinstance(k, str) and _is_tensor(v) for k, v in value.items())
    )


_NOTICED: set[tuple[str, str]] = set()  # (path, key): the checkpoint notice is given once per file


def _unwrap(loaded: Any, path: Path) -> dict[str, Any]:
    """The dict of tensors, also nested in a training checkpoint ({"model_state": {...}, "step": ...,
    "optimizer_state": {...}}) under one of WRAPPER_KEYS (said with a notice). A checkpoint whose
    state_dict sits under another key is refused with a hint naming that key."""
    if not isinstance(loaded, dict):
        raise ModelReadError(f"{path} holds a {type(loaded).__name__}, not a state_dict (a dict of tensors)")
    if not loaded or all(_is_tensor(v) for v in loaded.values()):
        return loaded  # a plain state_dict (its own keys are flat: 'model.weight'), or empty
    for key in WRAPPER_KEYS:
        inner = loaded.get(key)
        if isinstance(inner, dict) and not _tensor_dict(inner) and any(isinstance(v, dict) for v in inner.values()):
            with contextlib.suppress(ModelReadError):  # one more level: {"model": {"state_dict": {...}}}
                inner = _unwrap(inner, path)
        if _tensor_dict(inner):
            others = [str(k) for k in loaded if k != key]
            if (str(path), key) not in _NOTICED:
                _NOTICED.add((str(path), key))
                console.info(
                    f"{path} is a training checkpoint: using the state_dict under '{key}' ({len(inner)} tensors)"
                    + (f"; ignoring {_key_list(others)}" if others else "")
                )
            return dict(inner)
    nested = [str(k) for k, v in loaded.items() if _tensor_dict(v)]
    if nested and not any(_is_tensor(v) for v in loaded.values()):
        raise ModelReadError(
            f"{path} is a checkpoint, not a state_dict: it holds {_key_list([str(k) for k in loaded])}",
            hint=f"its state_dict is under '{nested[0]}': save it alone with "
            f"torch.save(checkpoint['{nested[0]}'], 'model.pt')",
        )
    return loaded


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def load_state_dict_or_module(path: Path) -> Any:
    """The file's {name: tensor}, loaded with weights_only=True (no code runs); or, only with
    --trust-pickle, the pickled nn.Module it holds. Raises ModelReadError."""
    import pickle

    import torch

    from edgecli.core.security import trust_pickle

    try:
        loaded = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        if trust_pickle():
            return _trusted_module(path)
        raise ModelReadError(
            f"{path} is a pickled module or other Python object ({_refused_global(exc)}), not a state_dict; "
            "edgecli does not unpickle it (unpickling runs code the file chooses)",
            hint="save model.state_dict() with torch.save instead, or pass --trust-pickle if you trust this file",
        ) from None
    except Exception as exc:  # a damaged archive: torch raises RuntimeError, EOFError, ...
        raise ModelReadError(f"{path} cannot be read as a torch.save file ({_first_line(exc)})") from None
    tensors = _unwrap(loaded, path)
    if not tensors:
        raise ModelReadError(f"{path} holds an empty state_dict")
    for name, value in tensors.items():
        if not isinstance(name, str) or not _is_tensor(value):
            raise ModelReadError(
                f"{path} is not a state_dict: entry {name!r} is a {type(value).__name__}, not a tensor",
                hint="save model.state_dict() with torch.save",
            )
    return dict(tensors)


def _trusted_module(path: Path) -> Any:
    """The nn.Module pickled in `path` (the user passed --trust-pickle: its code runs)."""
    import torch

    try:
        loaded = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # a class the pickle names may not be importable here
        raise ModelReadError(
            f"{path}: unpickling failed ({type(exc).__name__}: {_first_line(exc)})",
            hint="the module's class must be importable from the working folder",
        ) from None
    if not isinstance(loaded, torch.nn.Module):
        raise ModelReadError(f"{path} holds a pickled {type(loaded).__name__}, not an nn.Module or a state_dict")
    return loaded.eval()


def load_state_dict(path: Path) -> dict[str, Any]:
    """The file's {name: tensor} (a trusted pickled module's own state_dict). Raises ModelReadError."""
    loaded = load_state_dict_or_module(path)
    return loaded if isinstance(loaded, dict) else dict(loaded.state_dict())


# --- the user's model code --------------------------------------------------------------------


def import_factory(spec: str, field: str = "model.factory") -> Callable[..., Any]:
    """The callable named 'package.module:function', imported from the working folder or the installed
    packages, only with --trust-code and only if it is model code (edgecli/core/security.py): checked
    before the import, and the object after it. Raises UsageError (a recipe problem)."""
    from edgecli.core.security import check_code_allowed, check_factory_object

    check_code_allowed(field, spec)  # also done at recipe load time; here for every other caller
    module_name, _, attribute = spec.partition(":")
    folder = os.getcwd()
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the user's module raises as it imports
        raise UsageError(
            f"{field} {spec}: cannot import {module_name} ({type(exc).__name__}: {last_line(exc, 160)})",
            hint="run from the folder that holds the package, or install it",
        ) from None
    factory = getattr(module, attribute, None)
    if factory is None:
        raise UsageError(f"{field} {spec}: {module_name} has no '{attribute}'")
    if not callable(factory):
        raise UsageError(f"{field} {spec}: '{attribute}' is a {type(factory).__name__}, not a function or class")
    check_factory_object(field, spec, factory)
    return factory


def call_factory(spec: ModelSource, field: str = "model.factory") -> Any:
    """The nn.Module the factory builds with its kwargs. Raises UsageError."""
    from torch import nn

    factory = import_factory(spec.factory, field)
    try:
        module = factory(**spec.kwargs)
    except Exception as exc:
        raise UsageError(
            f"{field} {spec.factory}(**{spec.kwargs}) raised {type(exc).__name__}: {_first_line(exc, 160)}",
            hint=f"check {field.rpartition('.')[0]}.kwargs",
        ) from None
    if not isinstance(module, nn.Module):
        raise UsageError(f"{field} {spec.factory} returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def _key_list(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """When every file key is a module key behind one prefix ('model.', 'module.'), say so."""
    prefixes = {key.split(".", 1)[0] + "." for key in unexpected if "." in key}
    if len(prefixes) == 1:
        prefix = prefixes.pop()
        if {key[len(prefix) :] for key in unexpected} >= set(missing):
            return f"the file's keys start with '{prefix}': save the inner module's state_dict"
    return "check model.factory and model.kwargs (or set model.strict: false)"


def state_dict_mismatch(module: Any, tensors: dict[str, Any], strict: bool) -> tuple[str, str] | None:
    """(message, hint) when the file does not fit the module: a shape, or (strict) missing/unexpected keys."""
    expected = module.state_dict()
    for name, want in expected.items():
        got = tensors.get(name)
        if got is not None and got.shape != want.shape:
            return (
                f"'{name}' is {list(got.shape)} in the file but {list(want.shape)} in the module",
                "check model.kwargs",
            )
    missing = [name for name in expected if name not in tensors]
    unexpected = [name for name in tensors if name not in expected]
    if strict and (missing or unexpected):
        parts = [f"missing {_key_list(missing)}"] if missing else []
        parts += [f"unexpected {_key_list(unexpected)}"] if unexpected else []
        return "keys differ: " + "; ".join(parts), _prefix_hint(missing, unexpected)
    if missing:
        console.warn(
            f"model.strict is false: {len(missing)} module tensor(s) not in the file keep their initial values "
            f"({_key_list(missing)})"
        )
    return None


def build_module(spec: ModelSource, tensors: dict[str, Any], path: Path, field: str = "model.factory") -> Any:
    """The factory's module with the file's tensors loaded, in eval mode. Raises UsageError/ModelReadError."""
    module = call_factory(spec, field)
    problem = state_dict_mismatch(module, tensors, spec.strict)
    if problem:
        message, hint = problem
        raise ModelReadError(f"{path} does not fit {spec.factory}: {message}", hint=hint)
    try:
        module.load_state_dict(tensors, strict=spec.strict)
    except Exception as exc:
        raise ModelReadError(f"{path} does not fit {spec.factory}: {last_line(exc, 200)}") from None
    return module.eval()


# --- export -----------------------------------------------------------------------------------


def example_batch(spec: ModelSource, data: Dataset | None) -> Any:
    """Two example inputs for torch.export: zeros of model.input_shape, else the data's first samples
    (cast to model.input_dtype when the recipe sets it)."""
    import torch

    if spec.input_shape is not None:
        return torch.zeros([2, *spec.input_shape[1:]], dtype=getattr(torch, spec.input_dtype))
    assert data is not None  # built_pt2 checked
    if len(data.inputs) != 1:
        raise UsageError(
            f"a model.factory module is exported with one input; {data.source} holds {len(data.inputs)} "
            f"({', '.join(data.inputs)})",
            hint="export a model with several inputs to .pt2 or ONNX yourself",
        )
    array = next(iter(data.inputs.values()))
    rows = np.ascontiguousarray(np.concatenate([array[:2], array[:1]])[:2])
    tensor = torch.from_numpy(rows).clone()
    return tensor.to(getattr(torch, spec.input_dtype)) if "input_dtype" in spec.model_fields_set else tensor


def export_program(module: Any, example: Any, dynamic_batch: bool) -> tuple[Any, bool]:
    """(ExportedProgram, whether its batch is dynamic). A dynamic batch (example batch 2, Dim min 1) is
    tried first; if it does not export, a fixed batch of 1. Raises TransformError."""
    import torch

    if dynamic_batch:
        try:
            with console.muted():
                batch = torch.export.Dim("batch", min=1)
                return torch.export.export(module, (example,), dynamic_shapes=({0: batch},)), True
        except Exception as exc:
            console.warn(f"exported with a fixed batch of 1: a dynamic batch did not export ({_first_line(exc)})")
    try:
        with console.muted():
            return torch.export.export(module, (example[:1].clone(),)), False
    except Exception as exc:
        raise TransformError(f"torch.export could not export the model.factory module: {_first_line(exc)}") from None


def _check_inputs(example: Any, data: Dataset | None, dynamic: bool) -> Any:
    """Inputs on which eager module and exported program are compared: real samples when there are."""
    import torch

    if not dynamic:
        return example[:1]
    if data is None or len(data.inputs) != 1:
        return example
    rows = np.ascontiguousarray(next(iter(data.inputs.values()))[:CHECK_SAMPLES])
    return torch.from_numpy(rows).to(example.dtype)


def _flat(outputs: Any) -> list[Any]:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def export_difference(module: Any, program: Any, inputs: Any) -> float:
    """Max abs difference between the eager module and the exported program on `inputs`."""
    import torch

    with torch.no_grad():
        eager, exported = _flat(module(inputs)), _flat(program.module()(inputs))
    if len(eager) != len(exported):
        raise ParityError(f"the exported program has {len(exported)} outputs, the eager module {len(eager)}")
    return max(float((a.float() - b.float()).abs().max()) if a.numel() else 0.0 for a, b in zip(eager, exported))


@contextlib.contextmanager
def built_pt2(
    state_dict: ModelFile,
    spec: ModelSource | None,
    data: Dataset | None,
    dynamic_batch: bool = True,
    atol: float = 1e-4,
) -> Iterator[tuple[ModelFile, dict[str, Any]]]:
    """The state_dict file built with model.factory and exported to a temporary .pt2, and the export's
    figures (eager vs exported max abs diff, dynamic batch). Raises UsageError, ModelReadError,
    TransformError or ParityError."""
    from edgecli.analysis.model_stats import refuse_non_finite
    from edgecli.formats import pt2_file

    loaded = load_state_dict_or_module(state_dict.path)
    if isinstance(loaded, dict) and spec is None:
        raise UsageError(
            "MODEL is a state_dict: the recipe needs model.factory (the code that builds the nn.Module)",
            hint="--set model.factory=package.module:function, or a model: section in the recipe",
        )
    spec = spec or ModelSource.model_construct(
        factory="(pickled module)", kwargs={}, input_shape=None, input_dtype="float32", strict=True
    )
    if spec.input_shape is None and data is None:
        raise UsageError(
            f"{state_dict.path} is a state_dict: torch.export needs an example input",
            hint="give model.input_shape or --data",
        )
    module = build_module(spec, loaded, state_dict.path) if isinstance(loaded, dict) else loaded
    params = {name for name, _ in module.named_parameters()}
    refuse_non_finite(
        state_dict.path,
        [(k, t.detach().float().numpy(), k in params) for k, t in module.state_dict().items() if t.is_floating_point()],
    )
    example = example_batch(spec, data)
    program, dynamic = export_program(module, example, dynamic_batch)
    difference = export_difference(module, program, _check_inputs(example, data, dynamic))
    if difference > atol:
        raise ParityError(
            f"the exported program differs from the eager {spec.factory} module: max abs diff {difference:.3g} > {atol:g}",
            hint="the module may branch on its input's values, which torch.export fixes at export time",
        )
    console.info(
        f"built {spec.factory} from {state_dict.path}: exported, max abs diff to the eager module {difference:.3g}"
    )
    with TempFolder(prefix="edgecli-state-dict-") as folder:
        path = Path(folder) / "model.pt2"
        path.write_bytes(pt2_file.to_bytes(program, None))
        yield ModelFile.open(path), {"export_max_abs_diff": difference, "export_batch": "dynamic" if dynamic else "1"}
