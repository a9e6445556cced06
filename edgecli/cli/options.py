"""Options shared by the verbs (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgecli.cli.catalog import complete_recipe

ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL", help="Model file (.pt2, .onnx, .tflite, .keras, SavedModel folder); - reads stdin."
    ),
]
RecipeOpt = Annotated[
    str | None,
    typer.Option(
        "-r",
        "--recipe",
        metavar="RECIPE",
        autocompletion=complete_recipe,
        help="Recipe YAML path, or the name of a recipe shipped with edgecli (edgecli recipe list).",
    ),
]
OutputOpt = Annotated[
    str, typer.Option("-o", "--output", metavar="PATH", help="Output model path; - writes the bytes to stdout.")
]
DataOpt = Annotated[
    Path | None,
    typer.Option("--data", metavar="NPZ", help="Dataset .npz (inputs 'x', labels 'y'); overrides the recipe's."),
]
EvalDataOpt = Annotated[
    Path | None,
    typer.Option("--eval-data", metavar="NPZ", help="Labelled .npz for the accuracy report; overrides eval_data.path."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="Override a recipe value: key.sub=value (repeatable)."),
]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="No progress bars, tables or info lines.")]
JsonOpt = Annotated[
    str | None, typer.Option("--json", metavar="PATH", help="Write a JSON report to this path; - for stdout.")
]
MarkdownOpt = Annotated[
    str | None,
    typer.Option(
        "--markdown",
        metavar="PATH",
        help="Write a Markdown summary to this path; - for stdout (e.g. >> $GITHUB_STEP_SUMMARY).",
    ),
]
CsvOpt = Annotated[
    str | None,
    typer.Option("--csv", metavar="PATH", help="Write a CSV table (one row per model and setting); - for stdout."),
]
PlotOpt = Annotated[
    Path | None,
    typer.Option(
        "--plot", metavar="PATH.png", help="Write a PNG: accuracy against size and p50 latency, Pareto front marked."
    ),
]
ReportOpt = Annotated[
    str | None,
    typer.Option(
        "--report", metavar="PATH", help="Write a JSON report (per-layer error, steps, timings); - for stdout."
    ),
]
