"""edgecli run"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgecli.cli.errors import handle_errors
from edgecli.cli.options import JsonOpt, QuietOpt, SetOpt
from edgecli.core import console, jsonout
from edgecli.formats.files import write_output, write_stdout
from edgecli.formats.io_guard import CommandFiles, require_stdout

PipelineArg = Annotated[
    str, typer.Argument(metavar="PIPELINE", help="Pipeline YAML path, or a shipped one's name (edgecli recipe list).")
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out", metavar="DIR", help="Folder for every artifact; default: the file's `out`, else ./<pipeline name>-out."
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Run every step, also those that are up to date.")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the edgecli commands (stdout) and what is up to date; run nothing.")
]


def _summary(outcomes: list) -> Table:
    table = Table(title="edgecli run", title_justify="left")
    for name in ("step", "verb", "status", "output", "seconds"):
        table.add_column(name)
    for outcome in outcomes:
        table.add_row(outcome.name, outcome.verb, outcome.status, ", ".join(outcome.outputs), f"{outcome.seconds:.1f}")
    return table


def in_process(ctx: typer.Context) -> Callable[[list[str]], int]:
    """A pipeline step's runner: its arguments go to the root command of `ctx` (edgecli) in this
    process, exactly as typed on a command line; the step's exit code comes back."""
    root = ctx.find_root().command

    def execute(argv: list[str]) -> int:
        result = root.main(argv, standalone_mode=False, prog_name="edgecli")
        return result if isinstance(result, int) else 0

    return execute


@handle_errors
def run(
    ctx: typer.Context,
    pipeline: PipelineArg,
    out: OutOpt = None,
    sets: SetOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run a pipeline: steps (prune, distill, quantize, convert) chained through files in one folder,
    then a bench over all of them. A step whose input, recipe, data and tools have not changed since
    it last succeeded is skipped. --set STEP.key=value overrides a step's recipe value."""
    from edgecli.pipeline.plan import Planner, load_pipeline, resolve_pipeline, shown
    from edgecli.pipeline.runner import STATE_FILE, State, StepFailed, locked, run_commands, step_key

    console.set_quiet(quiet)
    path = resolve_pipeline(pipeline)
    spec = load_pipeline(path)
    folder = out if out is not None else (path.parent / spec.out if spec.out else Path(f"{path.stem}-out"))
    planner = Planner(spec, path.parent.resolve(), folder.resolve(), sets)
    commands = planner.commands()  # refuses a step output that is an input of the pipeline
    if dry_run:
        require_stdout("run --dry-run")
        state, stale, lines = State(folder), False, []
        for command in commands:
            stale = stale or not state.up_to_date(command, step_key(command))  # after a step that runs, all may change
            lines.append(f"{command.shell()}{'' if stale else '   # up to date'}\n")
        write_stdout("".join(lines).encode())
        return
    if json_out:
        files = CommandFiles()
        files.input("the pipeline file", path)
        for role, source in planner.sources:
            files.input(role, source)
        for command in commands:
            for output in command.outputs:
                files.input(f"the output of step '{command.name}'", output)
        files.input("the run record", folder / STATE_FILE)
        files.output("--json", json_out)
        folder.mkdir(parents=True, exist_ok=True)  # --json may go into it
        files.check()
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder):
        try:
            outcomes = run_commands(commands, folder, quiet, force, in_process(ctx))
        except StepFailed as failed:
            console.error_line(
                f"run {path.stem}: step '{failed.command.name}' failed (exit {failed.code}); later steps did not run"
            )
            raise typer.Exit(failed.code) from None
    console.show(_summary(outcomes))
    ran = sum(outcome.status == "ran" for outcome in outcomes)
    console.info(f"{ran} of {len(outcomes)} steps ran; artifacts in {shown(folder)} (record: {STATE_FILE})")
    if json_out:
        document = {"pipeline": str(path), "out": str(folder), "steps": [vars(outcome) for outcome in outcomes]}
        write_output(json_out, (jsonout.dumps(document) + "\n").encode())
