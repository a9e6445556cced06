"""edgecli prune"""

from __future__ import annotations

from edgecli.cli.errors import handle_errors
from edgecli.cli.flow import run_model_verb
from edgecli.cli.options import DataOpt, EvalDataOpt, ModelArg, OutputOpt, QuietOpt, RecipeOpt, ReportOpt, SetOpt
from edgecli.formats.detect import Format


def written_format(_recipe: object, source: Format) -> Format:
    """The artifact keeps the input's format, detected from its bytes (also from stdin): ONNX in,
    ONNX out; .pt2 or state_dict in, .pt2 out."""
    return Format.ONNX if source is Format.ONNX else Format.PT2


@handle_errors
def prune(
    model: ModelArg,
    output: OutputOpt,
    recipe: RecipeOpt = None,
    data: DataOpt = None,
    eval_data: EvalDataOpt = None,
    sets: SetOpt = None,
    report: ReportOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Prune a model: whole channels (method channel: a smaller, faster .pt2), or zeroed weights
    (magnitude, 2:4: smaller when compressed; .pt2 with fine-tuning on --data, or ONNX without training)."""
    from edgecli.stages.prune.stage import prune as stage

    run_model_verb("prune", model, recipe, output, sets, quiet, stage, written_format, data, eval_data, report)
