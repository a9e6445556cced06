"""edgecli distill"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from edgecli.cli.errors import handle_errors
from edgecli.cli.flow import ModelVerbRequest, run_model_verb
from edgecli.cli.options import DataOpt, EvalDataOpt, ModelArg, OutputOpt, QuietOpt, RecipeOpt, ReportOpt, SetOpt

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
    from edgecli.training.distributed import is_writer

    run_model_verb(
        ModelVerbRequest(
            "distill",
            model,
            output,
            recipe=recipe,
            sets=sets or (),
            data=data,
            eval_data=eval_data,
            report=report,
            quiet=quiet,
            extra_outputs=[("--checkpoint", checkpoint)],
            stage_options={"checkpoint_path": checkpoint},
        )
    )
    if checkpoint is not None and is_writer():
        with contextlib.suppress(FileNotFoundError):
            checkpoint.unlink()  # the run finished: a later run starts afresh
