"""edgecli prune"""

from __future__ import annotations

from edgecli.cli.errors import handle_errors
from edgecli.cli.flow import ModelVerbRequest, run_model_verb
from edgecli.cli.options import DataOpt, EvalDataOpt, ModelArg, OutputOpt, QuietOpt, RecipeOpt, ReportOpt, SetOpt


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
    run_model_verb(
        ModelVerbRequest(
            "prune",
            model,
            output,
            recipe=recipe,
            sets=sets or (),
            data=data,
            eval_data=eval_data,
            report=report,
            quiet=quiet,
        )
    )
