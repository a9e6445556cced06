"""edgecli quantize"""

from __future__ import annotations

from edgecli.cli.errors import handle_errors
from edgecli.cli.flow import run_model_verb
from edgecli.cli.options import DataOpt, EvalDataOpt, ModelArg, OutputOpt, QuietOpt, RecipeOpt, ReportOpt, SetOpt
from edgecli.formats.detect import Format


@handle_errors
def quantize(
    model: ModelArg,
    output: OutputOpt,
    recipe: RecipeOpt = None,
    data: DataOpt = None,
    eval_data: EvalDataOpt = None,
    sets: SetOpt = None,
    report: ReportOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Quantize a model to INT8 or FP16 as ONNX or TFLite (static calibration on --data, dynamic, fp16),
    with an accuracy guard (max_accuracy_drop / min_agreement) and a per-layer --report."""
    from functools import partial

    from edgecli.stages.quantize.stage import quantize as stage

    run_model_verb(
        "quantize",
        model,
        recipe,
        output,
        sets,
        quiet,
        partial(stage, diagnose=report is not None),
        written_format,
        data,
        eval_data,
        report,
    )


def written_format(recipe: object, _source: Format | None = None) -> Format:
    """The format a quantize recipe writes: its `format` (onnx or tflite)."""
    return Format(recipe.format)
