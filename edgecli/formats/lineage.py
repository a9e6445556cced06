"""Lineage: where an artifact came from, stored inside the artifact itself.

A lineage is a JSON object {"edgecli": 1, "steps": [step, ...]}, one step per edgecli verb that
produced the model, oldest first. Each step: verb, recipe (all values, defaults included),
parent {sha256, format}, tool versions, metrics (no timings, so the bytes stay reproducible)
and io hints (e.g. input layout) later steps rely on.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any

import edgecli

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
) -> dict[str, Any]:
    """The parent's lineage with one more step appended."""
    steps = list(parent.get("steps", [])) if parent else []
    step: dict[str, Any] = {
        "verb": verb,
        "recipe": recipe,
        "parent": {"sha256": parent_sha256, "format": parent_format},
        "tools": tool_versions(),
        "metrics": metrics,
    }
    inherited_io = dict(steps[-1].get("io", {})) if steps else {}
    inherited_io.update(io or {})
    if inherited_io:
        step["io"] = inherited_io
    steps.append(step)
    return {"edgecli": 1, "steps": steps}


def dumps(lineage: dict[str, Any]) -> str:
    """Canonical JSON (sorted keys) so identical lineages give identical bytes."""
    return json.dumps(lineage, sort_keys=True, separators=(",", ":"), default=str)


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
