"""The verbs, each declared once: its recipe model, its command, its stage, what it writes, what it reads.

Everything that lists the verbs reads this table: the root app registers their commands, `recipe
schema` and `recipe list` serve their recipe models and folders, completion offers their recipe names,
the pipeline planner names each step's output by its written format, and recipes.RECIPES is a view of
it. Light on purpose (the recipe models and the Format enum): `edgecli --help` imports it, while a
verb's command module and its stage (torch, TensorFlow, onnxruntime) are named by module and function
and imported only when they are called for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from edgecli.formats.detect import Format
from edgecli.recipes.base import DataSpec, Strict
from edgecli.recipes.bench import BenchRecipe
from edgecli.recipes.convert import ConvertRecipe, ParitySpec
from edgecli.recipes.distill import DistillRecipe
from edgecli.recipes.prune import PruneRecipe
from edgecli.recipes.quantize import QuantizeRecipe

R = TypeVar("R", bound=Strict)
R_in = TypeVar("R_in", contravariant=True)


@dataclass(frozen=True)
class Ref:
    """A function named by its module and name, imported only when it is loaded."""

    module: str
    name: str

    def load(self) -> Callable[..., Any]:
        function: Callable[..., Any] = getattr(importlib.import_module(self.module), self.name)
        return function


class NamesData(Protocol):
    """A recipe with a `data` section (training, calibration or parity inputs)."""

    data: DataSpec


class NamesEvalData(Protocol):
    """A recipe with an optional `eval_data` section (labelled data for the accuracy report)."""

    eval_data: DataSpec | None


def _data(recipe: NamesData) -> DataSpec | None:
    return recipe.data


def _use_data(recipe: NamesData, path: Path) -> None:
    recipe.data.path = path


def _eval_data(recipe: NamesEvalData) -> DataSpec | None:
    return recipe.eval_data


def _use_eval_data(recipe: NamesEvalData, path: Path) -> None:
    recipe.eval_data = (recipe.eval_data or DataSpec.model_construct()).model_copy(update={"path": path})


@dataclass(frozen=True)
class DataRole(Generic[R_in]):
    """A dataset a verb reads: the recipe section that names it and the option that overrides its path."""

    section: str  # the recipe key: "data"
    option: str  # the command-line option: "--data"
    what: str  # how messages about the dataset name it: "eval data"
    spec: Callable[[R_in], DataSpec | None]  # the recipe's section (None: the recipe names none)
    use: Callable[[R_in, Path], None]  # make the recipe name the option's file (the lineage says what was used)


DATA: DataRole[NamesData] = DataRole("data", "--data", "data", _data, _use_data)
EVAL_DATA: DataRole[NamesEvalData] = DataRole("eval_data", "--eval-data", "eval data", _eval_data, _use_eval_data)


@dataclass(frozen=True)
class Export:
    """How a state_dict input becomes the .pt2 the stage reads (torch.export with model.factory)."""

    dynamic_batch: bool = True
    atol: float = ParitySpec.model_construct().atol  # the export's own parity check


def _default_export(_recipe: Strict) -> Export:
    return Export()


def _no_files(_recipe: Strict) -> tuple[tuple[str, Path | None], ...]:
    return ()


@dataclass(frozen=True)
class Verb(Generic[R]):
    """One verb: `edgecli NAME MODEL -r RECIPE ...`."""

    name: str
    summary: str  # one line
    recipe: type[R]  # its recipe model (edgecli.recipes)
    command: Ref  # the Typer command (cli/<verb>.py): light, registered by the root app
    stage: Ref  # the work: imported only when the verb runs
    writes: Callable[[R, Format], Format] | None  # the model format written, from the recipe and the input's format
    data: tuple[DataRole[R], ...] = ()  # the datasets it reads, in the order its stage takes them
    model_role: str = "the input model"  # what MODEL is to this verb, as messages name it
    recipe_files: Callable[[R], tuple[tuple[str, Path | None], ...]] = _no_files  # other files its recipe names
    export: Callable[[R], Export] = _default_export  # a state_dict input, exported for the stage

    @property
    def writes_model(self) -> bool:
        return self.writes is not None

    def written_format(self, recipe: R, source: Format) -> Format:
        """The format of the model this verb writes with `recipe` from a `source`-format input."""
        if self.writes is None:
            raise ValueError(f"{self.name} writes no model")
        return self.writes(recipe, source)


def _prune_writes(_recipe: PruneRecipe, source: Format) -> Format:
    """The artifact keeps the input's format, detected from its bytes (also from stdin): ONNX in,
    ONNX out; .pt2 or state_dict in, .pt2 out."""
    return Format.ONNX if source is Format.ONNX else Format.PT2


def _distill_writes(_recipe: DistillRecipe, _source: Format) -> Format:
    """distill always writes the student as a .pt2 program."""
    return Format.PT2


def _quantize_writes(recipe: QuantizeRecipe, _source: Format) -> Format:
    """A quantize recipe's `format` (onnx or tflite)."""
    return Format(recipe.format)


def _convert_writes(recipe: ConvertRecipe, _source: Format) -> Format:
    """A convert recipe's target's format, a TFLite flatbuffer for tflite-micro."""
    return Format.TFLITE if recipe.target == "tflite-micro" else Format(recipe.target)


def _student_files(recipe: DistillRecipe) -> tuple[tuple[str, Path | None], ...]:
    return ("the student.path model", recipe.student.path), ("the student.weights file", recipe.student.weights)


def _convert_export(recipe: ConvertRecipe) -> Export:
    return Export(dynamic_batch=recipe.dynamic_batch, atol=recipe.parity.atol)


PRUNE = Verb(
    name="prune",
    summary="Remove channels or zero weights: a smaller (or sparser) model of the same format.",
    recipe=PruneRecipe,
    command=Ref("edgecli.cli.prune", "prune"),
    stage=Ref("edgecli.stages.prune.stage", "prune"),
    writes=_prune_writes,
    data=(DATA, EVAL_DATA),
)
DISTILL = Verb(
    name="distill",
    summary="Train a small student .pt2 on a teacher model's outputs.",
    recipe=DistillRecipe,
    command=Ref("edgecli.cli.distill", "distill"),
    stage=Ref("edgecli.stages.distill.stage", "distill"),
    writes=_distill_writes,
    data=(DATA, EVAL_DATA),
    model_role="the teacher model",
    recipe_files=_student_files,
)
QUANTIZE = Verb(
    name="quantize",
    summary="Quantize to INT8, INT16 or FP16 as ONNX or TFLite, with an accuracy guard.",
    recipe=QuantizeRecipe,
    command=Ref("edgecli.cli.quantize", "quantize"),
    stage=Ref("edgecli.stages.quantize.stage", "quantize"),
    writes=_quantize_writes,
    data=(DATA, EVAL_DATA),
)
CONVERT = Verb(
    name="convert",
    summary="Change a model's format (ONNX, TFLite, TFLite Micro, ORT, .pt2), with a parity check.",
    recipe=ConvertRecipe,
    command=Ref("edgecli.cli.convert", "convert"),
    stage=Ref("edgecli.stages.convert.stage", "convert"),
    writes=_convert_writes,
    data=(DATA,),
    export=_convert_export,
)
BENCH = Verb(
    name="bench",
    summary="Compare models side by side: size, latency, accuracy, agreement; gates exit 1.",
    recipe=BenchRecipe,
    command=Ref("edgecli.cli.bench", "bench"),
    stage=Ref("edgecli.stages.bench.stage", "bench"),
    writes=None,
    data=(DATA,),
)

# In the order `edgecli --help`, `recipe list` and `recipe schema` show them.
VERBS: dict[str, Verb[Any]] = {verb.name: verb for verb in (PRUNE, DISTILL, QUANTIZE, CONVERT, BENCH)}


def model_verbs() -> tuple[str, ...]:
    """The verbs that write a model (a pipeline's steps)."""
    return tuple(name for name, verb in VERBS.items() if verb.writes_model)


def recipe_models() -> dict[str, type[Strict]]:
    """Verb -> its recipe model (recipes.RECIPES reads this)."""
    return {name: verb.recipe for name, verb in VERBS.items()}
