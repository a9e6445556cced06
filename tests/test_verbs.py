"""The verb registry (edgecli/verbs.py) is the one list of verbs: every verb in it has a command, a recipe
schema, shipped recipes, completion and (if it writes a model) a planned output format; the lists that
used to be kept by hand read it; and `edgecli --help` loads none of the verbs' frameworks."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

from edgecli.cli import catalog
from edgecli.cli.recipe_schema import SCHEMAS
from edgecli.formats.detect import Format
from edgecli.pipeline.plan import Planner
from edgecli.pipeline.spec import PipelineSpec, StepSpec
from edgecli.recipes import RECIPES, DataSpec, load_recipe
from edgecli.verbs import VERBS, Ref, model_verbs
from tests.cli.test_recipe_cmd import complete
from tests.conftest import ROOT, SAMPLE, run_cli

HEAVY = ("torch", "tensorflow", "onnxruntime", "onnx", "onnx2tf", "numpy")


def test_the_registry_declares_the_five_verbs_in_help_order():
    assert list(VERBS) == ["prune", "distill", "quantize", "convert", "bench"]
    assert model_verbs() == ("prune", "distill", "quantize", "convert")
    for name, verb in VERBS.items():
        assert verb.name == name and verb.summary and "\n" not in verb.summary


def test_every_verb_has_a_command_in_the_root_app():
    from edgecli.cli.app import app

    registered = {command.name: command.callback for command in app.registered_commands}
    for name, verb in VERBS.items():
        assert registered[name] is verb.command.load(), name
    help_text = run_cli("--help").stdout.decode()
    listed = [line.split()[0] for line in help_text.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == [*VERBS, "inspect", "run", "recipe"]  # the verbs first, in the registry's order


def _defines(ref: Ref) -> bool:
    """The module exists and defines the function, found without importing it (stages import torch)."""
    spec = importlib.util.find_spec(ref.module)
    assert spec is not None and spec.origin, ref
    tree = ast.parse(Path(spec.origin).read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == ref.name for node in tree.body)


def test_every_stage_and_command_reference_names_a_function():
    for verb in VERBS.values():
        assert _defines(verb.stage), verb.stage
        assert _defines(verb.command), verb.command


def _data_sections(model: type) -> set[str]:
    """The recipe's top-level fields holding a DataSpec (or DataSpec | None)."""
    found = set()
    for name, field in model.model_fields.items():
        kinds = typing.get_args(field.annotation) if isinstance(field.annotation, types.UnionType) else ()
        if field.annotation is DataSpec or DataSpec in kinds:
            found.add(name)
    return found


def test_data_roles_match_the_recipe_models():
    """What a verb is declared to read is what its recipe model names: no section undeclared, none made up."""
    for name, verb in VERBS.items():
        assert {role.section for role in verb.data} == _data_sections(verb.recipe), name
        assert [role.section for role in verb.data][:1] == ["data"], name  # the stage's first dataset


def test_recipes_table_is_the_registry():
    assert dict(RECIPES) == {name: verb.recipe for name, verb in VERBS.items()}
    assert list(SCHEMAS) == [*VERBS, "pipeline"]
    assert set(StepSpec.model_json_schema()["properties"]["verb"]["enum"]) == set(model_verbs())


def test_every_verb_has_a_recipe_schema(tmp_path: Path):
    for name, verb in VERBS.items():
        out = tmp_path / f"{name}.json"
        result = run_cli("recipe", "schema", name, "-o", out)
        assert result.code == 0, result.stderr
        assert json.loads(out.read_text())["title"] == verb.recipe.__name__


def test_every_verb_ships_recipes_that_load_and_complete():
    for name, verb in VERBS.items():
        shipped = catalog.shipped(name)
        assert shipped, f"no shipped {name} recipe"
        for recipe in shipped:
            loaded, _ = load_recipe(name, str(recipe.path))
            assert isinstance(loaded, verb.recipe), recipe.path
        assert complete(f"edgecli {name} m.onnx -r ") == sorted(s.name for s in shipped), name


def _plan(verb: str, recipe: str, model: Path, tmp_path: Path) -> Path:
    step = {"name": "step", "verb": verb, "recipe": recipe}
    spec = PipelineSpec.model_validate({"model": str(model), "steps": [step], "bench": None})
    (command,) = Planner(spec, tmp_path, tmp_path / "out").commands()
    return command.outputs[0]


@pytest.mark.parametrize("verb", model_verbs())
def test_the_planner_names_each_output_by_the_written_format(verb: str, tmp_path: Path):
    for source, format_ in ((SAMPLE / "fashion_cnn.pt2", Format.PT2), (SAMPLE / "fashion_cnn.onnx", Format.ONNX)):
        for recipe in [s.name for s in catalog.shipped(verb)]:
            loaded, _ = load_recipe(verb, recipe)
            written = VERBS[verb].written_format(loaded, format_)
            assert _plan(verb, recipe, source, tmp_path).name == f"step{written.suffix}", (verb, recipe, source)


def test_bench_writes_no_model_and_is_no_pipeline_step():
    assert not VERBS["bench"].writes_model
    with pytest.raises(ValueError, match="writes no model"):
        VERBS["bench"].written_format(load_recipe("bench", None)[0], Format.ONNX)
    with pytest.raises(Exception, match="Input should be 'prune', 'distill', 'quantize' or 'convert'"):
        StepSpec.model_validate({"name": "b", "verb": "bench"})


PROBE = """
import atexit, json, sys
atexit.register(lambda: print("MODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr))
sys.argv = ["edgecli", "--help"]
from edgecli.cli.app import main
main()
"""


def test_help_imports_none_of_the_verbs_frameworks():
    """`edgecli --help` as main() runs it; the modules loaded when it exits."""
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "Commands:" in proc.stdout
    line = next(line for line in proc.stderr.splitlines() if line.startswith("MODULES "))
    modules = json.loads(line.removeprefix("MODULES "))
    assert "edgecli.verbs" in modules and "edgecli.cli.quantize" in modules  # the probe saw the commands load
    loaded = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert loaded == [], f"edgecli --help imported {loaded[:5]}"
