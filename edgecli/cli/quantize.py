"""edgecli quantize"""

from __future__ import annotations

from edgecli.cli.errors import handle_errors
from edgecli.cli.flow import ModelVerbRequest, run_model_verb
from edgecli.cli.options import DataOpt, EvalDataOpt, ModelArg, OutputOpt, QuietOpt, RecipeOpt, ReportOpt, SetOpt


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
    run_model_verb(
        ModelVerbRequest(
            "quantize",
            model,
            output,
            recipe=recipe,
            sets=sets or (),
            data=data,
            eval_data=eval_data,
            report=report,
            quiet=quiet,
            stage_options={"diagnose": report is not None},  # the per-layer analysis only for a --report
        )
    )
