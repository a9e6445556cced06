"""edgecli recipe list | show | schema: the shipped recipes and the JSON Schema editors complete from."""

from __future__ import annotations

import difflib
import io
import json
import shutil
import sys
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from edgecli.cli import catalog
from edgecli.cli.errors import handle_errors
from edgecli.cli.options import JsonOpt
from edgecli.cli.recipe_schema import SCHEMAS, recipe_schema
from edgecli.core.errors import UsageError
from edgecli.formats.files import write_output, write_stdout
from edgecli.formats.io_guard import CommandFiles, require_stdout
from edgecli.recipes import load_recipe
from edgecli.verbs import VERBS

recipe_app = typer.Typer(
    name="recipe",
    help="The recipes shipped with edgecli: list them, print one (to start your own), get the JSON Schema for your editor.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

VerbOpt = Annotated[
    str | None,
    typer.Option(
        "--verb",
        metavar="VERB",
        autocompletion=catalog.complete_kind,
        help="Look NAME up among this verb's recipes (or pipeline).",
    ),
]


def _check_output(role: str, path: str | None) -> None:
    files = CommandFiles()
    files.output(role, path)
    files.check()


def _table(rows: list[catalog.Shipped]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("kind", "name", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.kind, row.name, row.description)
    return table


@recipe_app.command("list")
@handle_errors
def list_recipes(
    verb: Annotated[
        str | None,
        typer.Argument(metavar="[VERB]", autocompletion=catalog.complete_kind, help="Only this verb's recipes."),
    ] = None,
    json_out: JsonOpt = None,
) -> None:
    """Every shipped recipe: kind, name and the first line of its description."""
    rows = catalog.shipped(catalog.check_kind(verb) if verb else None)
    _check_output("--json", json_out)
    if json_out != "-":
        require_stdout("recipe list")
    if json_out:
        entries = [{"verb": s.kind, "name": s.name, "path": str(s.path), "description": s.description} for s in rows]
        write_output(json_out, (json.dumps(entries, indent=2) + "\n").encode())
    if json_out != "-":
        # stdout is the answer here; in a pipe, never wrap (grep and cut see one row per line)
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 400
        text = io.StringIO()
        Console(file=text, width=width, highlight=False).print(_table(rows))
        write_stdout(text.getvalue().encode())


@recipe_app.command("show")
@handle_errors
def show(
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME",
            autocompletion=catalog.complete_name,
            help="Recipe name, or VERB/NAME if several verbs ship it.",
        ),
    ],
    verb: VerbOpt = None,
    resolved: Annotated[
        bool,
        typer.Option("--resolved", help="The validated recipe with every default filled in: all the knobs there are."),
    ] = False,
) -> None:
    """Print a shipped recipe to stdout: `edgecli recipe show kd > my-kd.yaml` starts your own."""
    found = catalog.find(name, verb)
    require_stdout("recipe show")
    if not resolved:
        write_stdout(found.path.read_bytes())
        return
    if found.kind not in VERBS:
        raise UsageError(f"--resolved is not available for {found.kind} recipes")
    recipe, _ = load_recipe(found.kind, str(found.path))
    header = f"# {found.label} with every default filled in (edgecli recipe show --resolved)\n"
    write_stdout(
        (header + yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)).encode()
    )


def _complete_schema_kind(incomplete: str) -> list[str]:
    return [kind for kind in SCHEMAS if kind.startswith(incomplete)]


@recipe_app.command("schema")
@handle_errors
def schema(
    verb: Annotated[
        str,
        typer.Argument(
            metavar="VERB", autocompletion=_complete_schema_kind, help="The verb whose recipe schema to print."
        ),
    ],
    output: Annotated[
        str, typer.Option("-o", "--output", metavar="PATH", help="Write the schema to this file; - for stdout.")
    ] = "-",
) -> None:
    """The JSON Schema of VERB's recipes, for editor completion and checks (e.g. VS Code's YAML extension)."""
    if verb not in SCHEMAS:
        close = difflib.get_close_matches(verb, list(SCHEMAS), n=1)
        raise UsageError(
            f"no recipe schema for '{verb}'",
            hint=f"did you mean '{close[0]}'?" if close else f"verbs: {', '.join(SCHEMAS)}",
        )
    _check_output("-o", output)
    write_output(output, (json.dumps(recipe_schema(verb), indent=2) + "\n").encode())
