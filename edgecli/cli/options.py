"""Options shared by the verbs (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecli.cli.catalog import complete_recipe

ModelArg = Annotated[str, typer.Argument(metavar="MODEL", help="Model file (.pt2, .onnx, .tflite, .keras, SavedModel folder); - reads stdin.")]
RecipeOpt = Annotated[
    Optional[str],
    typer.Option(
        "-r",
        "--recipe",
        metavar="RECIPE",
        autocompletion=complete_recipe,
        help="Recipe YAML path, or the name of a recipe in configs/<verb>/ (edgecli recipe list).",
    ),
]
OutputOpt = Annotated[str, typer.Option("-o", "--output", metavar="PATH", help="Output model path; - writes the bytes to stdout.")]
DataOpt = Annotated[Optional[Path], typer.Option("--data", metavar="NPZ", help="Dataset .npz (inputs 'x', labels 'y'); overrides the recipe's.")]
EvalDataOpt = Annotated[
    Optional[Path], typer.Option("--eval-data", metavar="NPZ", help="Labelled .npz for the accuracy report; overrides eval_data.path.")
]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Override a recipe value: key.sub=value (repeatable).")
]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="No progress bars, tables or info lines.")]
JsonOpt = Annotated[Optional[str], typer.Option("--json", metavar="PATH", help="Write a JSON report to this path; - for stdout.")]
MarkdownOpt = Annotated[
    Optional[str],
    typer.Option("--markdown", metavar="PATH", help="Write a Markdown summary to this path; - for stdout (e.g. >> $GITHUB_STEP_SUMMARY)."),
]
CsvOpt = Annotated[Optional[str], typer.Option("--csv", metavar="PATH", help="Write a CSV table (one row per model and setting); - for stdout.")]
PlotOpt = Annotated[
    Optional[Path],
    typer.Option("--plot", metavar="PATH.png", help="Write a PNG: accuracy against size and p50 latency, Pareto front marked."),
]
ReportOpt = Annotated[
    Optional[str],
    typer.Option("--report", metavar="PATH", help="Write a JSON report (per-layer error, steps, timings); - for stdout."),
]
