"""edgecli quantize"""

from __future__ import annotations

from edgecli.cli.errors import handle_errors
from edgecli.cli.flow import run_model_verb
from edgecli.cli.options import DataOpt, EvalDataOpt, ModelArg, OutputOpt, QuietOpt, RecipeOpt, SetOpt
from edgecli.formats.detect import Format


@handle_errors
def quantize(
    model: ModelArg,
    output: OutputOpt,
    recipe: RecipeOpt = None,
    data: DataOpt = None,
    eval_data: EvalDataOpt = None,
    sets: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Quantize an ONNX model to INT8 (static QDQ calibrated on --data, or dynamic)."""
    from edgecli.stages.quantize import quantize as stage

    run_model_verb("quantize", model, recipe, output, sets, quiet, stage, lambda _: Format.ONNX, data, eval_data)
