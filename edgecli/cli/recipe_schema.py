"""JSON Schema of each recipe kind, for editors (completion, hover help, red squiggles)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from edgecli.verbs import VERBS

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _pipeline() -> type[BaseModel]:
    from edgecli.pipeline.spec import PipelineSpec

    return PipelineSpec


def _model_of(model: type[BaseModel]) -> Callable[[], type[BaseModel]]:
    return lambda: model


# Kind -> its recipe model: every verb of the registry, and pipeline.
SCHEMAS: dict[str, Callable[[], type[BaseModel]]] = {name: _model_of(verb.recipe) for name, verb in VERBS.items()}
SCHEMAS["pipeline"] = _pipeline


def _one_or_many(prop: dict[str, Any]) -> dict[str, Any]:
    """A list field whose validator also takes a single item."""
    about = {k: v for k, v in prop.items() if k in ("title", "description", "default")}
    many = {k: v for k, v in prop.items() if k not in about}
    return about | {"anyOf": [prop["items"], many]}


def _int_items_too(prop: dict[str, Any]) -> dict[str, Any]:
    """A list of names whose validator turns integers into names (nn.Sequential's '0', '1', ...)."""
    return prop | {"items": {"anyOf": [prop["items"], {"type": "integer"}]}}


# What the models' before-validators accept beyond the field's own type, which pydantic's schema cannot
# see: (model name, field) -> how to widen the field's schema. A renamed field fails loudly here.
LOOSER_INPUTS: dict[tuple[str, str], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("BenchRecipe", "threads"): _one_or_many,
    ("BenchRecipe", "batch_size"): _one_or_many,
    ("ChannelSpec", "keep_layers"): _int_items_too,
}


def recipe_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a recipe kind, as its model validates YAML input."""
    model = SCHEMAS[kind]()
    schema = model.model_json_schema(mode="validation")
    models = {schema["title"]: schema, **schema.get("$defs", {})}
    for (owner, field), widen in LOOSER_INPUTS.items():
        if owner in models:
            props = models[owner]["properties"]
            props[field] = widen(props[field])
    return {"$schema": DRAFT, **schema}
