"""edgecli distill"""

from __future__ import annotations

from edgecli.cli.errors import handle_errors
from edgecli.cli.flow import run_model_verb
from edgecli.cli.options import DataOpt, EvalDataOpt, ModelArg, OutputOpt, QuietOpt, RecipeOpt, SetOpt
from edgecli.errors import UsageError
from edgecli.formats.detect import Format


@handle_errors
def distill(
    model: ModelArg,
    output: OutputOpt,
    recipe: RecipeOpt = None,
    data: DataOpt = None,
    eval_data: EvalDataOpt = None,
    sets: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a small student .pt2 from MODEL (the teacher, any format) on --data."""
    from edgecli.stages.distill import distill as distill_stage

    def stage(teacher, recipe_, train, held_out):
        if train is None:
            raise UsageError("distill needs training data", hint="pass --data train.npz or set data.path")
        return distill_stage(teacher, recipe_, train, held_out)

    run_model_verb("distill", model, recipe, output, sets, quiet, stage, lambda _: Format.PT2, data, eval_data)
