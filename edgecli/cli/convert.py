"""edgecli convert"""

from __future__ import annotations

from edgecli.cli.errors import handle_errors
from edgecli.cli.flow import ModelVerbRequest, run_model_verb
from edgecli.cli.options import DataOpt, ModelArg, OutputOpt, QuietOpt, RecipeOpt, SetOpt


@handle_errors
def convert(
    model: ModelArg,
    output: OutputOpt,
    recipe: RecipeOpt = None,
    data: DataOpt = None,
    sets: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Convert MODEL to ONNX, TFLite (float, float16, dynamic, INT8), TFLite Micro, ORT format or .pt2,
    and prove parity on --data (exit 4 above tolerance)."""
    run_model_verb(ModelVerbRequest("convert", model, output, recipe=recipe, sets=sets or (), data=data, quiet=quiet))
