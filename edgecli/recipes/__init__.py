"""Recipes: one strict pydantic model per verb (prune, distill, quantize, convert, bench, each in its
own module, on the shared pieces of base.py) and their loading (loading.py: safe YAML, `--set`,
validation, shipped names). The shipped recipes are package data: shipped/<verb>/NAME.yaml, and
shipped/pipelines/ for `edgecli run`. Everything public is re-exported: `from edgecli.recipes import X`."""

from __future__ import annotations

from edgecli.recipes.base import (
    DEFAULT_DYNAMIC_DIM,
    DEFAULT_INT_RANGE,
    DataSpec,
    FinetuneSpec,
    ModelSource,
    ReadsPyTorch,
    Strict,
)
from edgecli.recipes.bench import GATE_METRICS, GATE_PATTERN, BatchSize, BenchRecipe, Threads, parse_gate
from edgecli.recipes.convert import ConvertRecipe, MicroSpec, ParitySpec
from edgecli.recipes.distill import AugmentSpec, DistillRecipe, HintSpec, StudentSpec
from edgecli.recipes.loading import (
    MAX_RECIPE_BYTES,
    RECIPE_NAME,
    RECIPES,
    SHIPPED_DIR,
    Overrides,
    blamed,
    check_recipe_code,
    code_fields,
    load_recipe,
    parse_set,
    read_yaml_mapping,
    recipe_name,
    resolve_recipe_path,
    validate_recipe,
)
from edgecli.recipes.prune import ChannelSpec, PruneRecipe
from edgecli.recipes.quantize import CalibrationSpec, GuardSpec, QuantizeRecipe

__all__ = [
    "DEFAULT_DYNAMIC_DIM",
    "DEFAULT_INT_RANGE",
    "GATE_METRICS",
    "GATE_PATTERN",
    "MAX_RECIPE_BYTES",
    "RECIPES",
    "RECIPE_NAME",
    "SHIPPED_DIR",
    "AugmentSpec",
    "BatchSize",
    "BenchRecipe",
    "CalibrationSpec",
    "ChannelSpec",
    "ConvertRecipe",
    "DataSpec",
    "DistillRecipe",
    "FinetuneSpec",
    "GuardSpec",
    "HintSpec",
    "MicroSpec",
    "ModelSource",
    "Overrides",
    "ParitySpec",
    "PruneRecipe",
    "QuantizeRecipe",
    "ReadsPyTorch",
    "Strict",
    "StudentSpec",
    "Threads",
    "blamed",
    "check_recipe_code",
    "code_fields",
    "load_recipe",
    "parse_gate",
    "parse_set",
    "read_yaml_mapping",
    "recipe_name",
    "resolve_recipe_path",
    "validate_recipe",
]
