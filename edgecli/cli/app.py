"""The root app: registers one command per verb of the registry (edgecli.verbs), then inspect, run and
recipe; heavy frameworks load only inside commands."""

from __future__ import annotations

import os
import signal
import sys
import warnings
from typing import Annotated

import typer

import edgecli
from edgecli.cli.errors import INTERRUPTED
from edgecli.cli.inspect_cmd import inspect
from edgecli.cli.recipe_cmd import recipe_app
from edgecli.cli.run_cmd import run
from edgecli.core import interrupts
from edgecli.formats.io_guard import startup
from edgecli.verbs import VERBS

app = typer.Typer(
    name="edgecli",
    help="Make trained models fit edge devices: prune, distill, quantize, convert, bench. "
    "Exit codes: 0 ok, 1 gate not met, 2 bad usage/recipe, 3 unreadable model/data, 4 transformation failed, "
    "5 missing backend, 6 output not written.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode=None,
)
for verb in VERBS.values():
    app.command(verb.name)(verb.command.load())  # cli/<verb>.py: its options and help; its stage loads when it runs
app.command("inspect")(inspect)
app.command("run")(run)
app.add_typer(recipe_app, name="recipe")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgecli {edgecli.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle",
            help="Allow what runs code from a model file: unpickling (whole pickled nn.Modules "
            "from torch.save(model), pickled .pt2 parts), Keras Lambda layers, and file/Python "
            "ops in a SavedModel's graph. Only for files you trust.",
        ),
    ] = False,
    trust_code: Annotated[
        bool,
        typer.Option(
            "--trust-code",
            help="Allow the code a recipe names (model.factory, student.factory): "
            "edgecli imports and runs it. Only for recipes and pipelines you trust.",
        ),
    ] = False,
) -> None:
    """edgecli: model compression for edge AI."""
    if trust_pickle:
        from edgecli.core.security import allow_pickle

        allow_pickle()
    if trust_code:
        from edgecli.core.security import allow_code

        allow_code()  # an environment variable: torchrun workers and `edgecli run` steps see it


def main() -> None:
    startup()  # closed stdin/stdout/stderr kept off fds 0-2; dead runs' temporary folders removed
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    interrupts.install()  # SIGINT and SIGTERM unwind like Ctrl-C and are remembered (see core.interrupts)
    if not (sys.warnoptions or os.environ.get("EDGECLI_DEBUG")):
        # The libraries' deprecation notices (torch.export's LeafSpec, ...) speak to their callers,
        # which is edgecli, not its user: without this, whether one reaches stderr (even under -q)
        # depended on which earlier muted call had already shown it once.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        app(
            prog_name="edgecli"
        )  # also under `python -m edgecli`: completion scripts and usage lines name the command users type
    except KeyboardInterrupt:
        # The command already said "interrupted" and its outputs are gone; this is the same interrupt
        # raised again while the stack unwinds (seen under load in torch training: exit -2 instead of
        # 130). Leave with the documented code, quietly.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(INTERRUPTED)
