"""Recipe loading: YAML (safe only), `--set` overrides, validation with helpful messages, shipped names.

An unknown key, a wrong type or an out-of-range value is a RecipeError that names the key and,
for unknown keys, suggests the closest valid one; an error in a value a `--set` gave names that
`--set`, not the recipe file. Recipe and pipeline files are at most MAX_RECIPE_BYTES (1 MiB),
checked before parsing. `-r NAME` is a shipped recipe only when NAME is a plain name (letters,
digits, '-' and '_', optionally .yaml/.yml): anything else is a path, and never resolves inside
the shipped folder (edgecli/recipes/shipped/<verb>/, package data read with importlib.resources, so
a wheel carries it). A recipe that names code (model.factory, student.factory) is refused at load time unless
the user passed --trust-code (edgecli/core/security.py).
"""

from __future__ import annotations

import difflib
import importlib.resources
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from edgecli.core.errors import RecipeError, UsageError, one_line
from edgecli.recipes.base import ModelSource, Strict
from edgecli.recipes.distill import StudentSpec


def _shipped_folder() -> Path:
    """edgecli/recipes/shipped/: the recipes (<verb>/NAME.yaml) and pipelines (pipelines/NAME.yaml) the
    package carries, wherever it is installed (a wheel's site-packages, an editable checkout). Names are
    looked up by globbing and resolving files there, so it must be a folder (not a zip archive)."""
    folder = importlib.resources.files(__package__ or "edgecli.recipes") / "shipped"
    if not isinstance(folder, Path):
        raise RuntimeError(f"edgecli's shipped recipes are not in a folder ({folder}): install edgecli unzipped")
    return folder.resolve()


SHIPPED_DIR = _shipped_folder()
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few hundred bytes; a pipeline a few KiB
RECIPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # a shipped recipe's name: no '/', no '..'


class _Recipes(Mapping[str, type[Strict]]):
    """Verb -> its recipe model, as the verb registry (edgecli.verbs, the one list of verbs) declares it.
    Read there when first used: the registry imports the recipe models, so this module cannot import it
    at its top."""

    def _table(self) -> dict[str, type[Strict]]:
        from edgecli.verbs import recipe_models

        return recipe_models()

    def __getitem__(self, verb: str) -> type[Strict]:
        return self._table()[verb]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


RECIPES: Mapping[str, type[Strict]] = _Recipes()


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML loading that refuses a key given twice (YAML would silently keep the last one) and
    aliases (*name): a recipe never needs them, and nested aliases expand without bound ("billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in recipes", event.start_mark
            )
        return super().compose_node(parent, index)


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key '{key}' appears twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def recipe_name(text: str) -> str | None:
    """The shipped-recipe name `text` stands for ('int8-static', 'kd.yaml' -> 'kd'), or None when it is
    not a plain name (a '/', '..', a leading '.' or '-', anything but letters, digits, '-' and '_')."""
    stem = text.removesuffix(".yaml") if text.endswith(".yaml") else text.removesuffix(".yml")
    return stem if RECIPE_NAME.fullmatch(stem) else None


def resolve_recipe_path(verb: str, name_or_path: str) -> Path:
    """A recipe path as given, or the plain name of a recipe shipped in SHIPPED_DIR/<verb>/. A name is
    never joined onto SHIPPED_DIR unless it is plain (recipe_name): `-r ../../x` is a path or nothing."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    folder = SHIPPED_DIR / verb
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    name = recipe_name(name_or_path)
    if name is None:
        raise RecipeError(
            one_line(f"no recipe file '{name_or_path}', and it is not a shipped {verb} recipe name"),
            hint="shipped names are plain: letters, digits, '-' and '_', e.g. " + (names[0] if names else "default"),
        )
    for shipped in (folder / f"{name}.yaml", folder / f"{name}.yml"):
        if shipped.is_file() and shipped.resolve().parent == folder.resolve():
            return shipped
    raise RecipeError(
        f"no recipe file '{name_or_path}' and no shipped {verb} recipe of that name",
        hint=f"shipped: {', '.join(names)}" if names else None,
    )


def parse_set(assignments: list[str]) -> list[tuple[list[str], Any]]:
    """Parse `--set key.sub=value` items; values are read as YAML scalars/lists (safe)."""
    parsed = []
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects key.sub=value, got {one_line(repr(item))}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, RecursionError) as exc:
            raise UsageError(one_line(f"--set {key}: value {raw!r} is not valid YAML: {_yaml_problem(exc)}")) from None
        parsed.append((key.strip().split("."), value))
    return parsed


def _yaml_problem(exc: BaseException) -> str:
    """What is wrong with a YAML text, on one line (a reader error has no `problem`, only lines)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = getattr(exc, "problem", None) or str(exc).strip().split("\n")[0] or type(exc).__name__
    return " ".join(str(text).split())


def _apply_set(raw: dict[str, Any], path: list[str], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise UsageError(one_line(f"--set {'.'.join(path)}: '{part}' is not a section"))
        node = child
    node[path[-1]] = value


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys of the recipe section at `loc` (for suggestions)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            break
        annotation = current.model_fields[part].annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            break
        current = nested[0]
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


Overrides = list[tuple[str, list[str]]]  # (the `--set` as typed, its key path)


def blamed(loc: tuple[Any, ...], source: str, overrides: Overrides) -> str:
    """Where the value at `loc` came from: the last `--set` that wrote it (or a section holding it:
    `--set finetune={epochs: -1}`), else `source`. A section-level error in a section a `--set`
    wrote into is the file's section together with that `--set`."""
    where = [str(part) for part in loc]
    for item, path in reversed(overrides):
        if where[: len(path)] == path:
            return f"--set {item}"
    for item, path in reversed(overrides):
        if where and path[: len(where)] == where:
            return f"{source} with --set {item}"
    return source


def _explain(
    exc: ValidationError, model: type[BaseModel], source: str, overrides: Overrides | None = None
) -> RecipeError:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    source = blamed(loc, source, overrides or [])
    key = ".".join(str(p) for p in loc) or "(top level)"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    hint = None
    if err["type"] == "extra_forbidden":
        valid = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = (
            f"did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?"
            if close
            else f"valid keys: {', '.join(valid)}"
        )
        message = f"unknown key '{key}' in {source}{more}"
    elif err["type"] == "value_error" and not loc:
        message = f"{source}: {err['msg'].removeprefix('Value error, ')}{more}"
    elif err["type"] == "missing":
        message = f"'{key}' is required in {source}{more}"
    else:
        message = f"'{key}' in {source}: {err['msg']} (got {err.get('input')!r}){more}"
    return RecipeError(one_line(message), hint=hint and one_line(hint))


def validate_recipe(
    verb: str, raw: dict[str, Any], source: str, model: type[Strict] | None = None, overrides: Overrides | None = None
) -> Strict:
    """Validate a raw recipe dict for `verb` (or against `model`); an error names the `--set` of
    `overrides` that gave the bad value, else `source`."""
    model = model or RECIPES[verb]
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _explain(exc, model, source, overrides) from None


def _read_bounded(path: Path, what: str) -> str:
    """The file's text, reading at most MAX_RECIPE_BYTES + 1 bytes. Raises RecipeError (too large)
    or OSError / UnicodeDecodeError."""
    with path.open("rb") as handle:
        data = handle.read(MAX_RECIPE_BYTES + 1)
    if len(data) > MAX_RECIPE_BYTES:
        raise RecipeError(
            f"{what} {path} is larger than {MAX_RECIPE_BYTES >> 20} MiB; edgecli reads {what}s of at most "
            f"{MAX_RECIPE_BYTES >> 20} MiB"
        )
    return data.decode("utf-8")


def read_yaml_mapping(path: Path, what: str, folder: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping, read with the safe loader (duplicate keys refused), at
    most MAX_RECIPE_BYTES. Raises RecipeError naming the file (and line) for unreadable, too large,
    invalid, empty or non-mapping files."""
    try:
        raw = yaml.load(_read_bounded(path, what), Loader=_UniqueKeyLoader)
    except (yaml.YAMLError, RecursionError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{path}{where} is not valid YAML: {_yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read {what} {path}: {exc}") from None
    if raw is None:
        raise RecipeError(f"{what} {path} is empty", hint=f"see {SHIPPED_DIR / folder}/ for examples")
    if not isinstance(raw, dict):
        raise RecipeError(f"{what} {path} must be a mapping of keys to values, not {type(raw).__name__}")
    return raw


def code_fields(recipe: BaseModel, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """(location, 'package.module:function') of every field of `recipe` that names code to import:
    the `factory` of a model or student section (security.CODE_FIELDS), at any depth."""
    found = []
    for name in type(recipe).model_fields:
        value = getattr(recipe, name)
        if name == "factory" and isinstance(value, str) and isinstance(recipe, (ModelSource, StudentSpec)):
            found.append(((*prefix, name), value))
        elif isinstance(value, BaseModel):
            found += code_fields(value, (*prefix, name))
    return found


def check_recipe_code(recipe: BaseModel, source: str, overrides: Overrides | None = None) -> None:
    """Refuse a recipe naming code unless --trust-code (and Python's own modules even then), before
    anything is imported. Raises RecipeError (exit 2)."""
    from edgecli.core.security import check_code_allowed

    for loc, spec in code_fields(recipe):
        check_code_allowed(".".join(loc), spec, blamed(loc, source, overrides or []))


def load_recipe(verb: str, name_or_path: str | None, overrides: list[str] | None = None) -> tuple[Strict, Path | None]:
    """Load, override and validate the recipe for `verb`, and refuse code it names unless trusted.
    Returns the recipe and its file (None if defaults)."""
    raw: Any = {}
    path: Path | None = None
    if name_or_path is not None:
        path = resolve_recipe_path(verb, name_or_path)
        raw = read_yaml_mapping(path, "recipe", verb)
    items = overrides or []
    applied: Overrides = []
    for item, (key_path, value) in zip(items, parse_set(items)):
        _apply_set(raw, key_path, value)
        applied.append((one_line(item.strip())[:120], key_path))
    source = str(path) if path is not None else f"the {verb} recipe"
    recipe = validate_recipe(verb, raw, source, overrides=applied)
    check_recipe_code(recipe, source, applied)
    return recipe, path
