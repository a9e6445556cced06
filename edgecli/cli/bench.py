"""edgecli bench"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgecli import console
from edgecli.cli.errors import handle_errors
from edgecli.cli.flow import optional_dataset
from edgecli.cli.options import DataOpt, JsonOpt, QuietOpt, RecipeOpt, SetOpt
from edgecli.errors import GateFailed, ModelReadError, UsageError
from edgecli.formats.detect import Format
from edgecli.formats.files import STDIO, write_output
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import load_recipe


def _fmt(value: Any, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def report_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"edgecli bench (reference: {Path(report['reference']).name}; data: {report['data']})", title_justify="left")
    for name in ("model", "format", "size", "gzip", "p50 ms", "p90 ms", "p99 ms", "speedup", "accuracy", "agreement"):
        table.add_column(name, justify="left" if name in ("model", "format") else "right")
    for row in report["models"]:
        latency = row["latency_ms"]
        table.add_row(
            Path(row["path"]).name,
            row["format"],
            f"{row['size_bytes'] / 1e6:.2f} MB",
            "-" if row["gzip_bytes"] is None else f"{row['gzip_bytes'] / 1e6:.2f} MB",
            _fmt(latency["p50"], ".3f"),
            _fmt(latency["p90"], ".3f"),
            _fmt(latency["p99"], ".3f"),
            _fmt(row["speedup"], ".2f") + "x",
            _fmt(row["accuracy"], ".4f"),
            _fmt(row["agreement"], ".4f"),
        )
    return table


def _refuse_state_dicts(files: list[ModelFile]) -> None:
    """A state_dict cannot run without its model code, which bench recipes do not name."""
    for model in files:
        if model.format is Format.STATE_DICT:
            raise UsageError(
                f"{model.path} is a PyTorch state_dict: bench runs models, and a state_dict needs its model code",
                hint="convert it to .pt2 first: edgecli convert MODEL.pt -r onnx --set target=pt2 "
                "--set model.factory=package.module:function --data DATA.npz -o MODEL.pt2",
            )


@handle_errors
def bench(
    models: Annotated[list[str], typer.Argument(metavar="MODEL...", help="Models to compare; the first is the reference.")],
    recipe: RecipeOpt = None,
    data: DataOpt = None,
    sets: SetOpt = None,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Size, latency p50/p90/p99, accuracy and agreement of MODELS side by side; gates exit 1."""
    from edgecli.stages.bench import bench as run_bench

    console.set_quiet(quiet)
    spec, _ = load_recipe("bench", recipe, sets)
    if any(m == STDIO for m in models):
        raise ModelReadError("bench reads model files, not stdin")
    files = [ModelFile.open(Path(m)) for m in models]
    _refuse_state_dicts(files)
    dataset = optional_dataset(spec.data, data, "data")
    if dataset is None:
        console.warn("no --data given: latency only, on random inputs; no accuracy or agreement")
    report = run_bench(files, spec, dataset)
    console.show(report_table(report))
    for gate in report["gates"]:
        mark = "[green]pass[/green]" if gate["passed"] else "[red]FAIL[/red]"
        console.info(f"{mark} {gate['gate']} ({Path(gate['model']).name}: {gate['value']:.4g})")
    if json_out:
        write_output(json_out, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    if not report["passed"]:
        failed = [g for g in report["gates"] if not g["passed"]]
        raise GateFailed(f"{len(failed)} gate(s) failed: " + ", ".join(sorted({g["gate"] for g in failed})))
