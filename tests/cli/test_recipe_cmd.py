"""edgecli recipe list | show | schema, and shell completion of recipe names, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from edgecli.cli.recipe_schema import SCHEMAS
from edgecli.recipes import RECIPES, SHIPPED_DIR, load_recipe, validate_recipe
from tests.conftest import ROOT, leftovers, run_cli

SHIPPED = [(verb, path) for verb in RECIPES for path in sorted((SHIPPED_DIR / verb).glob("*.yaml"))]
EDGECLI = Path(sys.executable).with_name("edgecli")  # the console script a shell's completion calls


def first_comment(path: Path) -> str:
    return next(line.strip().lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#"))


def expected_listing() -> set[tuple[str, str]]:
    listing = {(verb, path.stem) for verb, path in SHIPPED}
    pipelines = SHIPPED_DIR / "pipelines"  # listed as kind "pipeline" once that folder exists
    return listing | ({("pipeline", p.stem) for p in pipelines.glob("*.yaml")} if pipelines.is_dir() else set())


def test_list_shows_every_shipped_recipe_with_its_description():
    result = run_cli("recipe", "list")
    assert result.code == 0 and result.stderr == ""
    rows = result.stdout.decode().splitlines()
    assert len(SHIPPED) >= 20
    for verb, path in SHIPPED:
        [row] = [r for r in rows if r.split()[:2] == [verb, path.stem]]
        assert first_comment(path) in row, row
    assert len(rows) == 1 + len(expected_listing())  # a header, then one row per recipe


def test_list_json():
    result = run_cli("recipe", "list", "--json", "-")
    assert result.code == 0 and result.stderr == ""
    entries = json.loads(result.stdout)  # stdout carries the JSON alone
    assert {(e["verb"], e["name"]) for e in entries} == expected_listing()
    for entry in entries:
        path = Path(entry["path"])
        assert path.parent.parent == SHIPPED_DIR and path.stem == entry["name"]
        assert entry["description"] == first_comment(path)
    only = json.loads(run_cli("recipe", "list", "quantize", "--json", "-").stdout)
    assert [e["name"] for e in only] == sorted(p.stem for p in (SHIPPED_DIR / "quantize").glob("*.yaml"))


@pytest.mark.parametrize(
    ("args", "file"),
    [
        (["kd"], "distill/kd.yaml"),
        (["prune/magnitude-50"], "prune/magnitude-50.yaml"),
        (["tflite-int8", "--verb", "convert"], "convert/tflite-int8.yaml"),
        (["quantize/tflite-int8.yaml"], "quantize/tflite-int8.yaml"),
    ],
)
def test_show_prints_exactly_the_file(args, file):
    result = run_cli("recipe", "show", *args)
    assert result.code == 0 and result.stderr == ""
    assert result.stdout == (SHIPPED_DIR / file).read_bytes()


@pytest.mark.parametrize(("verb", "path"), SHIPPED, ids=[f"{v}/{p.stem}" for v, p in SHIPPED])
def test_show_resolved_fills_every_default_and_validates(verb, path):
    result = run_cli("recipe", "show", f"{verb}/{path.stem}", "--resolved")
    assert result.code == 0 and result.stderr == ""
    shown = yaml.safe_load(result.stdout)
    recipe, _ = load_recipe(verb, str(path))
    assert shown == recipe.model_dump(mode="json")
    assert list(shown) == list(RECIPES[verb].model_fields)  # every knob, in the model's order
    assert validate_recipe(verb, shown, "shown").model_dump(mode="json") == shown  # a recipe as it stands


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["show", "tflite-int8"],
            ["'tflite-int8' is shipped for several verbs", "quantize/tflite-int8", "convert/tflite-int8"],
        ),
        (
            ["show", "magnitud"],
            ["no shipped recipe 'magnitud'", "did you mean prune/magnitude-50, prune/magnitude-80?"],
        ),
        (["show", "kd", "--verb", "prun"], ["no recipe kind 'prun'", "did you mean 'prune'?"]),
        (["show", "quantize/kd"], ["no shipped recipe 'quantize/kd'"]),
        (["list", "bnch"], ["no recipe kind 'bnch'"]),
        (["schema", "bnch"], ["no recipe schema for 'bnch'", "did you mean 'bench'?"]),
    ],
)
def test_bad_names_are_exit_2_in_one_line(args, expected):
    result = run_cli("recipe", *args)
    assert result.code == 2 and result.stdout == b""
    assert len(result.lines) == 1 and "Traceback" not in result.stderr
    for text in expected:
        assert text in result.lines[0], result.lines[0]


def schema_of(verb: str) -> dict:
    result = run_cli("recipe", "schema", verb)
    assert result.code == 0 and result.stderr == ""
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    return schema


def errors(schema: dict, raw: object) -> list[str]:
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(raw)]


@pytest.mark.parametrize("verb", list(RECIPES))
def test_schema_accepts_every_shipped_recipe_and_refuses_unknown_keys(verb):
    schema = schema_of(verb)
    assert schema["additionalProperties"] is False
    files = [path for v, path in SHIPPED if v == verb]
    for path in files:
        assert errors(schema, yaml.safe_load(path.read_text())) == [], path
    raw = yaml.safe_load(files[0].read_text())
    assert any("'sparsty' was unexpected" in e for e in errors(schema, {**raw, "sparsty": 0.5}))
    assert any("'pth' was unexpected" in e for e in errors(schema, {**raw, "data": {"pth": "x.npz"}}))
    field = next(iter(schema["properties"]))
    assert schema["properties"][field]["description"] == RECIPES[verb].model_fields[field].description


@pytest.mark.parametrize(
    ("verb", "raw", "valid"),
    [
        ("bench", {"threads": 2, "batch_size": [1, 8]}, True),  # one value, or a list to sweep
        ("bench", {"threads": 0}, False),
        ("bench", {"threads": [1, 300]}, False),
        (
            "prune",
            {"method": "channel", "channel": {"ratio": 0.5, "keep_layers": [0, "fc"]}},
            True,
        ),  # nn.Sequential names
        ("prune", {"sparsity": 1.5}, False),
        ("quantize", {"format": "tflit"}, False),
    ],
)
def test_schema_agrees_with_the_recipe_models(verb, raw, valid):
    """Values the models coerce (a single thread count, integer layer names) are valid to the schema too."""
    assert (errors(schema_of(verb), raw) == []) is valid
    try:
        validate_recipe(verb, raw, "test")
        accepted = True
    except Exception:
        accepted = False
    assert accepted is valid


def test_schema_to_a_file(tmp_path):
    out = tmp_path / "bench.schema.json"
    result = run_cli("recipe", "schema", "bench", "-o", out)
    assert result.code == 0 and result.stdout == b"" and result.stderr == ""
    assert json.loads(out.read_text()) == schema_of("bench")
    assert leftovers(tmp_path) == ["bench.schema.json"]  # written atomically: no temporary file left


def test_every_widened_field_exists():
    """LOOSER_INPUTS names model fields: a rename must not silently drop the widening."""
    from edgecli.cli.recipe_schema import LOOSER_INPUTS, recipe_schema

    schemas = [recipe_schema(verb) for verb in RECIPES]
    models = {name: model for s in schemas for name, model in [(s["title"], s), *s.get("$defs", {}).items()]}
    for owner, field in LOOSER_INPUTS:
        assert field in models[owner]["properties"], (owner, field)


def complete(words: str, shell: str = "bash") -> list[str]:
    """What the shell gets back for the last word of `words` (the completion protocol, as the script calls it)."""
    assert EDGECLI.exists(), f"{EDGECLI} missing: pip install -e ."
    env = {**os.environ, "_EDGECLI_COMPLETE": f"complete_{shell}"}
    if shell == "bash":
        env |= {"COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1)}
    else:
        env |= {"_TYPER_COMPLETE_ARGS": words}
    proc = subprocess.run([str(EDGECLI)], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_completion_of_recipe_names_per_verb():
    assert complete("edgecli prune m.pt2 -r ma") == ["macs-2x", "magnitude-50", "magnitude-80"]
    assert complete("edgecli quantize m.onnx --set a=1 -r int8") == ["int8-dynamic", "int8-static"]
    assert complete("edgecli bench a.onnx b.onnx --recipe ") == ["ci-gates", "default", "edge-1thread"]
    assert complete("edgecli convert m.onnx -r ") == sorted(p.stem for p in (SHIPPED_DIR / "convert").glob("*.yaml"))
    assert complete("edgecli prune m.pt2 -r ./my") == []  # a path: nothing, so the shell completes files
    zsh = "\n".join(complete("edgecli distill m.onnx -r kd-", shell="zsh"))
    assert '"kd-half-width":' in zsh and "Distillation without labels" in zsh  # names with their descriptions


def test_completion_of_recipe_commands():
    assert complete("edgecli recipe ") == ["list", "show", "schema"]
    assert complete("edgecli recipe schema ") == list(SCHEMAS)  # every verb, and pipeline
    names = complete("edgecli recipe show tflite-")
    assert "tflite-int8" in names and "tflite-dynamic" in names and "kd" not in names
    assert complete("edgecli recipe show --verb convert tflite-") == ["tflite-int8", "tflite-micro"]
    assert complete("edgecli recipe show convert/tflite-") == ["convert/tflite-int8", "convert/tflite-micro"]


def test_show_completion_prints_the_bash_script():
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}  # whatever shell runs the tests
    proc = subprocess.run(
        [str(EDGECLI), "--show-completion", "bash"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "_EDGECLI_COMPLETE=complete_bash" in proc.stdout
    assert "complete -o default -F _edgecli_completion edgecli" in proc.stdout
