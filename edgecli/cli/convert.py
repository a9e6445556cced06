"""edgecli convert"""

from __future__ import annotations

from edgecli.cli.errors import handle_errors
from edgecli.cli.flow import run_model_verb
from edgecli.cli.options import DataOpt, ModelArg, OutputOpt, QuietOpt, RecipeOpt, SetOpt
from edgecli.formats.detect import Format


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
    from edgecli.stages.convert.stage import convert as convert_stage

    def stage(source, recipe_, data_, _eval):
        return convert_stage(source, recipe_, data_)

    run_model_verb("convert", model, recipe, output, sets, quiet, stage, written_format, data)


def written_format(recipe, _source: Format | None = None) -> Format:
    """The format a convert recipe writes: its target's, a TFLite flatbuffer for tflite-micro."""
    return Format.TFLITE if recipe.target == "tflite-micro" else Format(recipe.target)
