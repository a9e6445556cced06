"""Recipes: strict validation with helpful messages, --set overrides, shipped names vs paths, gates."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecli.core.errors import RecipeError, UsageError
from edgecli.recipes import (
    GATE_METRICS,
    RECIPES,
    SHIPPED_DIR,
    BenchRecipe,
    ConvertRecipe,
    PruneRecipe,
    QuantizeRecipe,
    load_recipe,
    parse_gate,
    parse_set,
    resolve_recipe_path,
)

SHIPPED = sorted(p for p in SHIPPED_DIR.glob("*/*.yaml") if p.parent.name != "pipelines")  # pipelines: tests/pipeline


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def recipe_error(verb: str, text: str, tmp_path: Path, overrides: list[str] | None = None) -> RecipeError:
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(verb, str(path), overrides)
    assert caught.value.exit_code == 2
    return caught.value


# --- shipped recipes -------------------------------------------------------------------------


def test_every_verb_ships_at_least_one_recipe() -> None:
    verbs_with_recipes = {path.parent.name for path in SHIPPED}
    assert verbs_with_recipes == set(RECIPES)


@pytest.mark.parametrize("path", SHIPPED, ids=[f"{p.parent.name}/{p.stem}" for p in SHIPPED])
def test_shipped_recipe_validates(path: Path) -> None:
    verb = path.parent.name
    recipe, source = load_recipe(verb, str(path))
    assert isinstance(recipe, RECIPES[verb])
    assert source == path
    # Loaded by its shipped name it is the same file and the same values.
    by_name, source_by_name = load_recipe(verb, path.stem)
    assert source_by_name.resolve() == path.resolve()
    assert by_name.model_dump() == recipe.model_dump()


def test_shipped_recipe_values_are_read() -> None:
    recipe, _ = load_recipe("quantize", "int8-static")
    assert isinstance(recipe, QuantizeRecipe)
    assert recipe.mode == "static"
    assert recipe.calibration.samples == 512
    assert recipe.max_accuracy_drop == pytest.approx(0.01)
    assert recipe.data.path is None  # shipped recipes leave the data to --data / --eval-data
    assert recipe.eval_data is None


def test_recipe_by_name_with_extension_and_by_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_recipe_path("prune", "magnitude-50.yaml") == SHIPPED_DIR / "prune" / "magnitude-50.yaml"
    write(tmp_path, "sparsity: 0.25\n", name="mine.yaml")
    monkeypatch.chdir(tmp_path)
    recipe, source = load_recipe("prune", "mine.yaml")
    assert source == Path("mine.yaml")
    assert recipe.sparsity == pytest.approx(0.25)


def test_a_local_file_wins_over_a_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "sparsity: 0.75\n", name="magnitude-50")
    monkeypatch.chdir(tmp_path)
    recipe, source = load_recipe("prune", "magnitude-50")
    assert source == Path("magnitude-50")
    assert recipe.sparsity == pytest.approx(0.75)


def test_unknown_recipe_name_lists_shipped_ones() -> None:
    with pytest.raises(RecipeError) as caught:
        load_recipe("quantize", "int8-statc")
    assert "int8-statc" in caught.value.message
    assert (
        caught.value.hint
        == "shipped: fp16, int8-dynamic, int8-static, tflite-dynamic, tflite-fp16, tflite-int16, tflite-int8"
    )
    assert caught.value.exit_code == 2


def test_no_recipe_means_defaults() -> None:
    recipe, source = load_recipe("prune", None)
    assert source is None
    assert recipe.model_dump() == PruneRecipe().model_dump()


def test_required_key_missing_is_named() -> None:
    with pytest.raises(RecipeError, match=r"'target' is required in the convert recipe"):
        load_recipe("convert", None)


# --- unknown keys, types, ranges -------------------------------------------------------------


def test_unknown_top_level_key_suggests_closest(tmp_path: Path) -> None:
    exc = recipe_error("prune", "sparsty: 0.5\n", tmp_path)
    assert exc.message.startswith("unknown key 'sparsty' in ")
    assert exc.hint == "did you mean 'sparsity'?"


def test_unknown_nested_key_suggests_full_dotted_key(tmp_path: Path) -> None:
    exc = recipe_error("prune", "finetune:\n  epoch: 3\n", tmp_path)
    assert "unknown key 'finetune.epoch'" in exc.message
    assert exc.hint == "did you mean 'finetune.epochs'?"


def test_unknown_key_inside_optional_section(tmp_path: Path) -> None:
    exc = recipe_error("quantize", "eval_data:\n  pth: eval.npz\n", tmp_path)
    assert "unknown key 'eval_data.pth'" in exc.message
    assert exc.hint == "did you mean 'eval_data.path'?"


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path: Path) -> None:
    exc = recipe_error("convert", "target: onnx\nparity:\n  zzzzzz: 1\n", tmp_path)
    assert "unknown key 'parity.zzzzzz'" in exc.message
    assert exc.hint == "valid keys: atol, rtol, min_agreement, samples, max_relative_error"


def test_several_errors_are_counted(tmp_path: Path) -> None:
    exc = recipe_error("prune", "sparsty: 0.5\nscop: layer\n", tmp_path)
    assert "(+1 more)" in exc.message


@pytest.mark.parametrize(
    ("verb", "text", "key", "detail"),
    [
        ("prune", "sparsity: half\n", "'sparsity'", "valid number"),
        ("prune", "finetune:\n  epochs: 2.5\n", "'finetune.epochs'", "fractional part"),
        ("distill", "student:\n  channels: 16\n", "'student.channels'", "valid list"),
        ("quantize", "per_channel: [1]\n", "'per_channel'", "valid boolean"),
        ("convert", "target: tfl\n", "'target'", "'onnx', 'tflite', 'tflite-micro', 'ort' or 'pt2'"),
        ("prune", "finetune: 3\n", "'finetune'", "valid dictionary"),
    ],
    ids=["number", "int-not-float", "list", "bool", "literal", "section"],
)
def test_wrong_type_names_the_key(tmp_path: Path, verb: str, text: str, key: str, detail: str) -> None:
    exc = recipe_error(verb, text, tmp_path)
    assert key in exc.message
    assert detail in exc.message


@pytest.mark.parametrize(
    ("verb", "text", "key", "detail", "given"),
    [
        ("prune", "sparsity: 1.0\n", "'sparsity'", "less than 1", "1.0"),
        ("prune", "sparsity: -0.1\n", "'sparsity'", "greater than or equal to 0", "-0.1"),
        ("prune", "finetune:\n  lr: 0\n", "'finetune.lr'", "greater than 0", "0"),
        ("convert", "target: onnx\nopset: 9\n", "'opset'", "greater than or equal to 13", "9"),
        ("quantize", "max_accuracy_drop: 5\n", "'max_accuracy_drop'", "less than or equal to 1", "5"),
        ("bench", "data:\n  limit: 0\n", "'data.limit'", "greater than or equal to 1", "0"),
    ],
)
def test_out_of_range_names_the_key_and_value(
    tmp_path: Path, verb: str, text: str, key: str, detail: str, given: str
) -> None:
    exc = recipe_error(verb, text, tmp_path)
    assert key in exc.message
    assert detail in exc.message
    assert f"(got {given})" in exc.message


# --- file problems ---------------------------------------------------------------------------


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    exc = recipe_error("prune", "sparsity: 0.5\nfinetune:\n  epochs: [1, 2\n", tmp_path)
    assert "is not valid YAML" in exc.message
    assert " line " in exc.message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"], ids=["empty", "comment", "document-marker"])
def test_empty_recipe(tmp_path: Path, text: str) -> None:
    exc = recipe_error("prune", text, tmp_path)
    assert "is empty" in exc.message


@pytest.mark.parametrize(("text", "kind"), [("- sparsity: 0.5\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_non_mapping_recipe(tmp_path: Path, text: str, kind: str) -> None:
    exc = recipe_error("prune", text, tmp_path)
    assert exc.message.endswith(f"must be a mapping of keys to values, not {kind}")


def test_binary_recipe_file_is_a_recipe_error(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81 not text")
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe("prune", str(path))


def test_yaml_tags_are_not_executed(tmp_path: Path) -> None:
    # safe_load only: a python/object tag is a YAML error, never an object construction.
    exc = recipe_error("prune", "sparsity: !!python/object/apply:os.getcwd []\n", tmp_path)
    assert "is not valid YAML" in exc.message


# --- --set overrides -------------------------------------------------------------------------


def test_parse_set_types_values_as_yaml() -> None:
    parsed = parse_set(
        [
            "finetune.epochs=3",
            "lr=0.01",
            "per_channel=false",
            "exclude_op_types=[Softmax, Gather]",
            "data.path=d.npz",
            "x=",
        ]
    )
    assert parsed == [
        (["finetune", "epochs"], 3),
        (["lr"], 0.01),
        (["per_channel"], False),
        (["exclude_op_types"], ["Softmax", "Gather"]),
        (["data", "path"], "d.npz"),
        (["x"], ""),
    ]
    assert type(parsed[0][1]) is int and type(parsed[1][1]) is float and type(parsed[2][1]) is bool


def test_scientific_notation_is_a_number(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 1e-3 as a string; the recipe still gets the float.
    recipe, _ = load_recipe("prune", str(write(tmp_path, "finetune:\n  lr: 1e-3\n")), ["sparsity=5e-1"])
    assert recipe.finetune.lr == pytest.approx(0.001) and type(recipe.finetune.lr) is float
    assert recipe.sparsity == pytest.approx(0.5)


def test_set_overrides_file_values(tmp_path: Path) -> None:
    path = write(tmp_path, "sparsity: 0.5\nfinetune:\n  epochs: 1\n  lr: 0.0005\n")
    recipe, _ = load_recipe(
        "prune",
        str(path),
        ["sparsity=0.8", "finetune.epochs=4", "scope=layer", "eval_data.path=e.npz", "data.mean=[0.5]"],
    )
    assert recipe.sparsity == pytest.approx(0.8)
    assert recipe.finetune.epochs == 4
    assert recipe.finetune.lr == pytest.approx(0.0005)  # untouched sibling kept
    assert recipe.scope == "layer"
    assert recipe.eval_data is not None and recipe.eval_data.path == Path("e.npz")
    assert recipe.data.mean == [0.5]


def test_set_on_a_shipped_recipe_and_a_null_section(tmp_path: Path) -> None:
    recipe, _ = load_recipe("quantize", "int8-dynamic", ["per_channel=no", "exclude_op_types=[Softmax]"])
    assert recipe.per_channel is False
    assert recipe.exclude_op_types == ["Softmax"]
    path = write(tmp_path, "target: onnx\nparity:\n")
    recipe, _ = load_recipe("convert", str(path), ["parity.atol=0.001"])
    assert isinstance(recipe, ConvertRecipe)
    assert recipe.parity.atol == pytest.approx(0.001)
    assert recipe.parity.samples == 256


def test_set_gates_list_on_bench() -> None:
    recipe, _ = load_recipe("bench", "default", ["gates=['p90_ms <= 5', 'accuracy_drop<=0.01']"])
    assert isinstance(recipe, BenchRecipe)
    assert recipe.gates == ["p90_ms <= 5", "accuracy_drop<=0.01"]


def test_set_values_are_validated_like_file_values() -> None:
    with pytest.raises(RecipeError) as caught:
        load_recipe("prune", "magnitude-50", ["finetune.epoch=3"])
    assert caught.value.hint == "did you mean 'finetune.epochs'?"
    with pytest.raises(RecipeError, match="'sparsity'.*less than 1"):
        load_recipe("prune", "magnitude-50", ["sparsity=2"])


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("finetune.epochs", "expects key.sub=value"),
        ("=3", "expects key.sub=value"),
        ("  =3", "expects key.sub=value"),
        ("gates=[1, 2", "not valid YAML"),
    ],
)
def test_bad_set_syntax_is_a_usage_error(item: str, match: str) -> None:
    with pytest.raises(UsageError, match=match) as caught:
        parse_set([item])
    assert type(caught.value) is UsageError
    assert caught.value.exit_code == 2


def test_set_through_a_value_that_is_not_a_section() -> None:
    with pytest.raises(UsageError, match="'epochs' is not a section") as caught:
        load_recipe("prune", "magnitude-50", ["finetune.epochs.x=3"])
    assert type(caught.value) is UsageError


# --- bench gates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("p90_ms <= 5", ("p90_ms", "<=", 5.0)),
        ("accuracy_drop<=0.01", ("accuracy_drop", "<=", 0.01)),
        ("  size_bytes < 1_000_000 ", ("size_bytes", "<", 1_000_000.0)),
        ("speedup >= 1.5e0", ("speedup", ">=", 1.5)),
        ("max_abs_diff > -1", ("max_abs_diff", ">", -1.0)),
        ("agreement == 1", ("agreement", "==", 1.0)),
    ],
)
def test_parse_gate(text: str, expected: tuple[str, str, float]) -> None:
    assert parse_gate(text) == expected


def test_every_gate_metric_parses() -> None:
    assert [parse_gate(f"{metric} <= 1")[0] for metric in GATE_METRICS] == list(GATE_METRICS)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("p90 <= 5", "unknown gate metric 'p90', did you mean 'p90_ms'"),
        ("p90_ms =< 5", "not of the form"),
        ("p90_ms <= five", "not of the form"),
        ("p90_ms", "not of the form"),
        ("latency <= 5", "unknown gate metric 'latency'"),
    ],
)
def test_bad_gate(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_gate(text)


def test_bad_gate_in_recipe_names_gates_key(tmp_path: Path) -> None:
    exc = recipe_error("bench", "gates:\n  - accuracy_drop <= 0.01\n  - p99 <= 3\n", tmp_path)
    assert exc.message.startswith("'gates' in ")
    assert "did you mean 'p99_ms'" in exc.message


def test_yaml_aliases_are_refused(tmp_path):
    """Nested aliases expand without bound ("billion laughs"); a recipe never needs them."""
    path = tmp_path / "laughs.yaml"
    path.write_text("a: &a [x, x]\nb: &b [*a, *a]\nmodel:\n  kwargs: {c: [*b, *b]}\n")
    with pytest.raises(RecipeError, match="line 2 is not valid YAML: aliases"):
        load_recipe("quantize", str(path))
