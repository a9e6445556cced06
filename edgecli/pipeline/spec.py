"""Pipeline recipes: a source model, named datasets, a list of verb steps and a closing bench.

Paths in a pipeline file are relative to the file's folder. `${NAME}` in a step's `input` or in a
`set` value means the output file of the step called NAME; `${model}` is the source model.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from edgecli.recipes import Strict
from edgecli.verbs import EVAL_DATA, VERBS, model_verbs

REFERENCE = re.compile(r"\$\{([A-Za-z0-9][\w.-]*)\}")
SOURCE = "model"
STEP_NAME = r"^[A-Za-z0-9][\w.-]*$"

if TYPE_CHECKING:
    StepVerb = str
else:
    StepVerb = Literal[model_verbs()]  # the verbs of the registry that write a model: prune, distill, ...


class StepSpec(Strict):
    """One edgecli verb run on the previous step's output (or on `input`), written to OUT/<name>.<suffix>."""

    name: str = Field(
        ...,
        pattern=STEP_NAME,
        description="The step's name: its output is OUT/<name> + the format's suffix; "
        "later steps refer to it as ${name}.",
    )
    verb: StepVerb = Field(..., description="The edgecli verb this step runs.")
    input: str | None = Field(
        default=None,
        description="The model the verb reads: ${step} or ${model} or a path; "
        "default: the previous step's output (the source model for the first step).",
    )
    recipe: str | None = Field(
        default=None,
        description="A shipped recipe name of the verb (see `edgecli recipe list`) or a "
        "recipe file path; default: the verb's defaults.",
    )
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="Recipe values set inline, as `--set key.sub=value`; a value ${step} is that step's output path.",
    )
    data: str | None = Field(default=None, description="--data: a name from `datasets` or an .npz path.")
    eval_data: str | None = Field(
        default=None, description="--eval-data (prune, distill, quantize): a name from `datasets` or an .npz path."
    )

    @model_validator(mode="after")
    def _eval_data_where_taken(self) -> StepSpec:
        taken = VERBS[self.verb].data
        if self.eval_data is not None and EVAL_DATA not in taken:
            sections = " and ".join(role.section for role in taken)
            raise ValueError(f"step '{self.name}': {self.verb} takes {sections}, not eval_data")
        return self


class BenchSpec(Strict):
    """The closing `edgecli bench` over the source model and every step's output."""

    recipe: str | None = Field(default="default", description="A shipped bench recipe name or a recipe file path.")
    set: dict[str, Any] = Field(default_factory=dict, description="Bench recipe values set inline (e.g. runs, gates).")
    data: str | None = Field(
        default=None, description="Labelled evaluation data: a name from `datasets` or an .npz path."
    )
    models: list[str] | None = Field(
        default=None,
        min_length=1,
        description="What to bench, as ${model} / ${step} references "
        "(the first is the reference); default: the source model and every step's output.",
    )


class PipelineSpec(Strict):
    """`edgecli run`: steps chained through files in an output folder; a step whose inputs, recipe and
    tools have not changed since it last ran is skipped."""

    model: str = Field(..., min_length=1, description="The source model, relative to the pipeline file.")
    datasets: dict[str, str] = Field(
        default_factory=dict,
        description="Named .npz files (relative to the pipeline file) that steps use as data: NAME.",
    )
    steps: list[StepSpec] = Field(..., min_length=1, description="The steps, run in order.")
    bench: BenchSpec | None = Field(default_factory=BenchSpec, description="The closing bench; null for none.")
    out: str | None = Field(
        default=None,
        description="Output folder, relative to the pipeline file; default: <pipeline "
        "name>-out in the current folder. `edgecli run --out` overrides it.",
    )

    @field_validator("steps")
    @classmethod
    def _references_resolve(cls, steps: list[StepSpec]) -> list[StepSpec]:
        seen = {SOURCE}
        for step in steps:
            if step.name in seen:
                raise ValueError(f"step name '{step.name}' is used twice (or is the reserved name '{SOURCE}')")
            for name in references(step):
                if name not in seen:
                    known = ", ".join(sorted(seen))
                    raise ValueError(
                        f"step '{step.name}' refers to ${{{name}}}, which is not an earlier step (known: {known})"
                    )
            seen.add(step.name)
        return steps

    @model_validator(mode="after")
    def _bench_references_resolve(self) -> PipelineSpec:
        names = {SOURCE, *(step.name for step in self.steps)}
        for item in (self.bench.models or []) if self.bench else []:
            found = REFERENCE.fullmatch(item)
            if not found or found.group(1) not in names:
                raise ValueError(
                    f"bench.models: '{item}' is not ${{model}} or ${{step}} of a step ({', '.join(sorted(names))})"
                )
        return self


def references(step: StepSpec) -> list[str]:
    """The step names a step refers to with ${...} (input and set values)."""
    texts = [step.input or ""] + [value for value in step.set.values() if isinstance(value, str)]
    return [name for text in texts for name in REFERENCE.findall(text)]
