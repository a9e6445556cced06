"""edgecli prune"""

from __future__ import annotations

from edgecli.cli.errors import handle_errors
from edgecli.cli.flow import run_model_verb
from edgecli.cli.options import DataOpt, EvalDataOpt, ModelArg, OutputOpt, QuietOpt, RecipeOpt, SetOpt
from edgecli.formats.detect import Format


@handle_errors
def prune(
    model: ModelArg,
    output: OutputOpt,
    recipe: RecipeOpt = None,
    data: DataOpt = None,
    eval_data: EvalDataOpt = None,
    sets: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Zero the smallest-magnitude weights of a .pt2 model, optionally fine-tuning on --data."""
    from edgecli.stages.prune import prune as stage

    run_model_verb("prune", model, recipe, output, sets, quiet, stage, lambda _: Format.PT2, data, eval_data)
