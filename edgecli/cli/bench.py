"""edgecli bench"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Annotated

import typer

from edgecli.cli.bench_outputs import Destinations, check_destinations, write_outputs
from edgecli.cli.bench_table import report_table
from edgecli.cli.errors import handle_errors
from edgecli.cli.flow import optional_dataset
from edgecli.cli.options import CsvOpt, DataOpt, JsonOpt, MarkdownOpt, PlotOpt, QuietOpt, RecipeOpt, SetOpt
from edgecli.core import console
from edgecli.core.errors import GateFailed, ModelReadError, UsageError
from edgecli.formats.detect import Format
from edgecli.formats.files import STDIO
from edgecli.formats.io_guard import CommandFiles
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import BenchRecipe, load_recipe
from edgecli.verbs import BENCH


def _refuse_state_dicts(files: list[ModelFile]) -> None:
    """A state_dict cannot run without its model code, which bench recipes do not name."""
    for model in files:
        if model.format is Format.STATE_DICT:
            raise UsageError(
                f"{model.path} is a PyTorch state_dict: bench runs models, and a state_dict needs its model code",
                hint="convert it to .pt2 first: edgecli convert MODEL.pt -r onnx --set target=pt2 "
                "--set model.factory=package.module:function --data DATA.npz -o MODEL.pt2",
            )


def _refuse_streams(models: list[str]) -> None:
    """bench opens each model several times (and in processes of its own): a pipe would be read once."""
    for model in models:
        with contextlib.suppress(OSError):
            mode = os.stat(model).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ModelReadError(
                    f"bench reads model files, not pipes or devices: {model}", hint="save the model to a file first"
                )


def files_of(
    models: list[str],
    reference: Path | None,
    spec: BenchRecipe,
    data: Path | None,
    recipe_path: Path | None,
    outputs: Destinations,
) -> CommandFiles:
    """Every file bench reads and writes, for the checks made before any work."""
    files = CommandFiles()
    for model in models:
        files.input("a benched model", model)
    files.input("the --reference model", reference)
    files.input("the recipe file", recipe_path)
    files.input("the --data file" if data is not None else "the recipe's data file", data or spec.data.path)
    for option, dest in outputs.texts().items():
        files.output(option, dest)
    files.output("--plot", outputs.plot)
    return files


ReferenceOpt = Annotated[
    Path | None,
    typer.Option(
        "--reference",
        metavar="MODEL",
        help="The model speedup, agreement, differences and accuracy_drop are measured against (default: the first "
        "MODEL); one of MODEL..., or it is benchmarked too, as the first model.",
    ),
]


def with_reference(files: list[ModelFile], reference: Path | None) -> tuple[list[ModelFile], int]:
    """The models to benchmark and the reference's index: --reference is matched to a MODEL by its
    resolved path; a model not among them is added in front."""
    if reference is None:
        return files, 0
    wanted = reference.resolve()
    for index, model in enumerate(files):
        if model.path.resolve() == wanted:
            return files, index
    console.info(f"--reference {reference} is not among the models: benchmarking it as the first model")
    return [ModelFile.open(reference), *files], 0


@handle_errors
def bench(
    models: Annotated[
        list[str],
        typer.Argument(metavar="MODEL...", help="Models to compare; the first is the reference unless --reference."),
    ],
    recipe: RecipeOpt = None,
    data: DataOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = None,
    markdown_out: MarkdownOpt = None,
    csv_out: CsvOpt = None,
    plot_out: PlotOpt = None,
    reference: ReferenceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Size, latency p50/p90/p99, accuracy and agreement of MODELS side by side; gates exit 1."""
    run_bench = BENCH.stage.load()
    console.set_quiet(quiet)
    spec, recipe_path = load_recipe(BENCH.name, recipe, sets)
    assert isinstance(spec, BenchRecipe)
    outputs = Destinations(json=json_out, markdown=markdown_out, csv=csv_out, plot=plot_out)
    check_destinations(outputs)
    if any(m == STDIO for m in models):
        raise ModelReadError("bench reads model files, not stdin")
    _refuse_streams([*models, *([str(reference)] if reference is not None else [])])
    files_of(models, reference, spec, data, recipe_path, outputs).check()
    files = [ModelFile.open(Path(m)) for m in models]
    files, reference_index = with_reference(files, reference)
    _refuse_state_dicts(files)
    dataset = optional_dataset(spec.data, data, "data")
    report = run_bench(files, spec, dataset, reference=reference_index)
    console.show(report_table(report))
    for line in report["warnings"]:
        console.warn(line)
    for gate in report["gates"]:
        mark = "[green]pass[/green]" if gate["passed"] else "[red]FAIL[/red]"
        console.info(f"{mark} {gate['gate']} ({Path(gate['model']).name}: {gate['value']:.4g})")
    write_outputs(report, outputs)
    if not report["passed"]:
        failed = [g for g in report["gates"] if not g["passed"]]
        raise GateFailed(f"{len(failed)} gate(s) failed: " + ", ".join(sorted({g["gate"] for g in failed})))
