"""The recipes shipped in edgecli/recipes/shipped/: listing, name look-up, shell completion (cheap: no frameworks)."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecli.core.errors import RecipeError, UsageError, one_line
from edgecli.recipes import SHIPPED_DIR, recipe_name
from edgecli.verbs import VERBS

PIPELINE = "pipeline"  # shipped/pipelines/, listed when that folder exists


@dataclass(frozen=True)
class Shipped:
    """One shipped recipe file."""

    kind: str  # a verb, or "pipeline"
    name: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def description(self) -> str:
        """The file's first comment line."""
        with self.path.open(encoding="utf-8") as lines:
            for line in lines:
                if line.lstrip().startswith("#"):
                    return line.strip().lstrip("#").strip()
        return ""


def folders() -> dict[str, Path]:
    """Kind -> folder of its shipped recipes."""
    found = {verb: SHIPPED_DIR / verb for verb in VERBS}
    if (SHIPPED_DIR / "pipelines").is_dir():
        found[PIPELINE] = SHIPPED_DIR / "pipelines"
    return found


def check_kind(kind: str) -> str:
    kinds = list(folders())
    if kind not in kinds:
        close = difflib.get_close_matches(kind, kinds, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"kinds: {', '.join(kinds)}"
        raise UsageError(f"no recipe kind '{kind}'", hint=hint)
    return kind


def shipped(kind: str | None = None) -> list[Shipped]:
    """Every shipped recipe (of one kind), verbs in their usual order, names sorted."""
    return [
        Shipped(k, path.stem, path)
        for k, folder in folders().items()
        if kind in (None, k)
        for path in sorted(folder.glob("*.yaml"), key=lambda p: p.stem)
    ]


def find(name: str, kind: str | None = None) -> Shipped:
    """A shipped recipe by `name`, `kind/name`, or `name` with `kind` given; RecipeError if unknown or
    ambiguous, or not a plain name (recipes.recipe_name: no '..', no other '/'). Shipped recipes are
    only ever looked up among the listed files, never by joining `name` onto SHIPPED_DIR."""
    given_kind, _, bare = name.rpartition("/")
    if recipe_name(bare) is None or (given_kind and recipe_name(given_kind) is None):
        raise RecipeError(
            one_line(f"'{name}' is not a shipped recipe name"),
            hint="give NAME or VERB/NAME as `edgecli recipe list` shows them",
        )
    if given_kind and kind and given_kind != kind:
        raise UsageError(f"'{name}' names a {given_kind} recipe but --verb is {kind}")
    wanted = given_kind or kind
    kind = check_kind(wanted) if wanted else None
    bare = bare.removesuffix(".yaml").removesuffix(".yml")
    candidates = [s for s in shipped(kind) if s.name == bare]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        labels = ", ".join(s.label for s in candidates)
        raise RecipeError(f"'{name}' is shipped for several verbs: {labels}", hint="give VERB/NAME or --verb")
    every = shipped(kind)
    close = difflib.get_close_matches(bare, sorted({s.name for s in every}), n=3)
    suggestions = [s.label for s in every if s.name in close]
    hint = f"did you mean {', '.join(suggestions)}?" if suggestions else "`edgecli recipe list` shows them"
    raise RecipeError(f"no shipped recipe '{name}'", hint=hint)


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "~")) or os.sep in text or text.endswith((".yaml", ".yml"))


def complete_recipe(ctx: Any, incomplete: str) -> list[tuple[str, str]]:
    """`-r/--recipe` of a verb: the verb's shipped names; none (so the shell completes files) for a path."""
    verb = ctx.info_name if ctx.info_name in VERBS else getattr(ctx.command, "name", None)
    if verb not in VERBS or _looks_like_path(incomplete):
        return []
    return [(s.name, s.description) for s in shipped(verb) if s.name.startswith(incomplete)]


def complete_name(ctx: Any, incomplete: str) -> list[tuple[str, str]]:
    """`recipe show NAME`: the names, and VERB/NAME once something is typed (`q` -> quantize/...)."""
    kind = ctx.params.get("verb")
    items = shipped(kind if kind in folders() else None)
    kinds: dict[str, list[str]] = {}
    for s in items:
        kinds.setdefault(s.name, []).append(s.kind)
    names = [
        (
            s.name,
            s.description if len(kinds[s.name]) == 1 else f"shipped for {', '.join(kinds[s.name])}: give VERB/NAME",
        )
        for s in items
        if s.name.startswith(incomplete) and kinds[s.name][0] == s.kind
    ]
    labels = [(s.label, s.description) for s in items if incomplete and s.label.startswith(incomplete)]
    return names + labels


def complete_kind(incomplete: str) -> list[str]:
    """`--verb` and `recipe list VERB`: the kinds of shipped recipes."""
    return [kind for kind in folders() if kind.startswith(incomplete)]
