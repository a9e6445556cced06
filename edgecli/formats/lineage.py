"""Lineage: where an artifact came from, stored inside the artifact itself.

A lineage is a JSON object {"edgecli": 1, "steps": [step, ...]}, one step per edgecli verb that
produced the model, oldest first. Each step: verb, recipe_name (the recipe file's stem) and recipe
(all values, defaults included), parent {sha256, format}, files (every file the recipe names, e.g.
the data: name and sha256), tool versions, metrics (no timings), state (weight sparsity and dtype,
and what an earlier step had that this one lost) and io hints (e.g. input layout) later steps rely on.

Paths in the stored recipe are file names only and files are known by their hash, so the same work
gives the same bytes whichever folder it ran from (a Makefile, a pipeline, a shell pipe).
A distilled student that started from another model (student.path) continues that model's lineage:
its weights descend from it; the teacher is the step's parent.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import edgecli
from edgecli.core import jsonout
from edgecli.formats.files import sha256_of

LINEAGE_KEY = "edgecli.lineage"
_TOOLS = ("torch", "onnx", "onnxruntime", "tensorflow-cpu", "ai-edge-litert", "onnx2tf")


def tool_versions() -> dict[str, str]:
    """Versions of edgecli and of the installed frameworks (read from metadata, nothing imported)."""
    versions = {"edgecli": edgecli.__version__}
    for name in _TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def extend(
    parent: dict[str, Any] | None,
    *,
    verb: str,
    recipe: dict[str, Any],
    parent_sha256: str,
    parent_format: str,
    metrics: dict[str, Any],
    io: dict[str, Any] | None = None,
    recipe_name: str | None = None,
    files: dict[str, dict[str, str]] | None = None,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The parent's lineage with one more step appended."""
    steps = list(parent.get("steps", [])) if parent else []
    step: dict[str, Any] = {
        "verb": verb,
        "recipe_name": recipe_name,
        "recipe": recipe,
        "parent": {"sha256": parent_sha256, "format": parent_format},
        "files": files or {},
        "tools": tool_versions(),
        "metrics": metrics,
    }
    if state:
        step["state"] = state
    inherited_io = dict(steps[-1].get("io", {})) if steps else {}
    inherited_io.update(io or {})
    if inherited_io:
        step["io"] = inherited_io
    steps.append(step)
    return {"edgecli": 1, "steps": steps}


def portable_recipe(recipe: BaseModel) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """The recipe as JSON with every file path replaced by the file's name, and {dotted key: {name,
    sha256}} for those files: what was used, independent of the folder it was run from."""
    dumped = recipe.model_dump(mode="json")
    files: dict[str, dict[str, str]] = {}

    def walk(model: BaseModel, node: dict[str, Any], prefix: str) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, Path):
                node[name] = value.name
                files[prefix + name] = {"name": value.name, "sha256": sha256_of(value) if value.exists() else "missing"}
            elif isinstance(value, BaseModel) and isinstance(node.get(name), dict):
                walk(value, node[name], f"{prefix}{name}.")

    walk(recipe, dumped, "")
    return dumped, files


SPARSITY_KEPT = 0.5  # a step keeps sparsity when at least half the zero weights' fraction survives
STORED_BITS = {
    "int4": 4,
    "uint4": 4,
    "int8": 8,
    "uint8": 8,
    "int16": 16,
    "float16": 16,
    "bfloat16": 16,
    "float32": 32,
    "float64": 64,
}


def lost_state(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """What the model had before a step and does not have after it: sparsity (>= 10% zero weights,
    less than half of it left) or a quantized weight dtype (weights stored in more bits than before)."""
    if not before or not after:
        return []
    lost = []
    was, now = before.get("weight_sparsity") or 0.0, after.get("weight_sparsity") or 0.0
    if was >= 0.1 and now < was * SPARSITY_KEPT:
        lost.append(f"weight sparsity {was:.0%} -> {now:.0%}")
    old, new = before.get("weight_dtype"), after.get("weight_dtype")
    if old in STORED_BITS and new in STORED_BITS and STORED_BITS[new] > STORED_BITS[old]:
        lost.append(f"weights {old} -> {new}")
    return lost


def last_state(lineage: dict[str, Any] | None) -> dict[str, Any] | None:
    """The state recorded by the newest step, if any."""
    steps = (lineage or {}).get("steps") or []
    state = steps[-1].get("state") if steps else None
    return {k: v for k, v in state.items() if k != "lost"} if state else None


def dumps(lineage: dict[str, Any]) -> str:
    """Canonical JSON (sorted keys) so identical lineages give identical bytes."""
    return jsonout.dumps(lineage, indent=None, sort_keys=True, separators=(",", ":"), default=str)


def loads(text: str | bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def io_hints(lineage: dict[str, Any] | None) -> dict[str, Any]:
    """The io hints of the newest step (e.g. {'input_layout': 'NHWC'})."""
    if not lineage or not lineage.get("steps"):
        return {}
    return dict(lineage["steps"][-1].get("io", {}))
