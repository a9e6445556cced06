"""target tflite-micro: the model as full-integer INT8 TFLite, proven to run under TensorFlow Lite
Micro with its arena and size measured (backends/micro.py), and the recipe's micro budgets checked."""

from __future__ import annotations

from typing import Any

from edgecli.backends.micro import micro_check
from edgecli.core import console
from edgecli.data.dataset import Dataset
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import ConvertRecipe, MicroSpec
from edgecli.runtimes.base import Runner
from edgecli.runtimes.micro_runner import MicroRunner
from edgecli.stages.artifact import Artifact
from edgecli.stages.convert.tflite import int8_tflite

ARENA_NOTE = "measured on TFLM's x86-64 build; a 32-bit MCU build needs about as much, give or take pointer size and alignment: keep a margin"


def budget_failures(metrics: dict[str, Any], spec: MicroSpec) -> list[str]:
    """The recipe's micro budgets the model exceeds, one line each (the model is still written; exit 1)."""
    failures = []
    if spec.max_arena_bytes is not None and metrics["arena_bytes"] > spec.max_arena_bytes:
        failures.append(
            f"tensor arena {metrics['arena_bytes']:,} bytes > micro.max_arena_bytes {spec.max_arena_bytes:,}"
        )
    if spec.max_model_bytes is not None and metrics["model_bytes"] > spec.max_model_bytes:
        failures.append(f"model {metrics['model_bytes']:,} bytes > micro.max_model_bytes {spec.max_model_bytes:,}")
    return failures


def micro_artifact(model: ModelFile, recipe: ConvertRecipe, calibration: Dataset | None) -> Artifact:
    """target tflite-micro: the model as full-integer INT8 TFLite (calibrated on `calibration`), proven
    to run under TFLM, with its arena and size in the metrics and its missed budgets as gate failures."""
    payload = int8_tflite(model, recipe, calibration, full_integer=True)
    metrics = micro_check(payload)
    console.info(
        f"TensorFlow Lite Micro runs all {metrics['op_nodes']} nodes ({', '.join(metrics['ops'])}): tensor arena "
        f"{metrics['arena_bytes']:,} bytes ({ARENA_NOTE}), flatbuffer {metrics['model_bytes']:,} bytes"
    )
    return Artifact(Format.TFLITE, payload, metrics=metrics, gate_failures=budget_failures(metrics, recipe.micro))


def micro_runner(model: ModelFile, artifact: Artifact | None = None) -> Runner:
    """A TFLM runner for the model, with the arena measured for it (so that the parity check also
    proves the reported arena is enough for real inputs)."""
    arena = artifact.metrics.get("arena_bytes") if artifact is not None else None
    return MicroRunner(model, arena_size=arena)
