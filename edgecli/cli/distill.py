"""edgecli distill"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Annotated

import typer

from edgecli.cli.errors import handle_errors
from edgecli.cli.flow import run_model_verb
from edgecli.cli.options import DataOpt, EvalDataOpt, ModelArg, OutputOpt, QuietOpt, RecipeOpt, ReportOpt, SetOpt
from edgecli.formats.detect import Format

CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        metavar="PATH",
        help="Save training state here after every epoch; if the file exists "
        "(an interrupted run of the same recipe, teacher and data), resume from it. Removed on success.",
    ),
]


@handle_errors
def distill(
    model: ModelArg,
    output: OutputOpt,
    recipe: RecipeOpt = None,
    data: DataOpt = None,
    eval_data: EvalDataOpt = None,
    sets: SetOpt = None,
    checkpoint: CheckpointOpt = None,
    report: ReportOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a small student .pt2 from MODEL (the teacher, any format) on --data: Hinton KD (soft
    targets at temperature T, plus labels when present), optional hint loss, augmentation, early
    stopping, resume with --checkpoint, torchrun-ready; reports teacher vs student (vs baseline)."""
    from edgecli.stages.distill.stage import distill as stage
    from edgecli.training.distributed import is_writer

    work = functools.partial(stage, checkpoint_path=checkpoint)
    run_model_verb(
        "distill",
        model,
        recipe,
        output,
        sets,
        quiet,
        work,
        written_format,
        data,
        eval_data,
        report,
        extra_outputs=[("--checkpoint", checkpoint)],
    )
    if checkpoint is not None and is_writer():
        with contextlib.suppress(FileNotFoundError):
            checkpoint.unlink()  # the run finished: a later run starts afresh


def written_format(_recipe: object = None, _source: Format | None = None) -> Format:
    """distill always writes the student as a .pt2 program."""
    return Format.PT2
