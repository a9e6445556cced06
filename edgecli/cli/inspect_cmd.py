"""edgecli inspect"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from edgecli.cli.errors import handle_errors
from edgecli.cli.options import JsonOpt, ModelArg
from edgecli.core import console, jsonout
from edgecli.formats.detect import Format
from edgecli.formats.files import materialize, write_output
from edgecli.formats.io_guard import CommandFiles
from edgecli.formats.model_file import ModelFile


def describe_state_dict(model: ModelFile) -> dict[str, Any]:
    """A state_dict has tensors but no graph: inputs, outputs and operators need the model code."""
    from edgecli.formats.state_dict_file import load_state_dict

    tensors = load_state_dict(model.path)
    return {
        "path": str(model.path),
        "format": model.format.value,
        "size_bytes": model.size_bytes,
        "sha256": model.sha256,
        "params": sum(t.numel() for t in tensors.values()),
        "tensors": len(tensors),
        "inputs": [],
        "outputs": [],
        "ops": {},
        "lineage": None,
    }


def describe_model(model: ModelFile) -> dict[str, Any]:
    from edgecli.analysis.model_stats import op_histogram, param_count
    from edgecli.runtimes import open_runner

    if model.format is Format.STATE_DICT:
        return describe_state_dict(model)
    runner = open_runner(model)
    return {
        "path": str(model.path),
        "format": model.format.value,
        "size_bytes": model.size_bytes,
        "sha256": model.sha256,
        "params": param_count(model),
        "inputs": [spec.describe() for spec in runner.inputs],
        "outputs": [spec.describe() for spec in runner.outputs],
        "ops": op_histogram(model),
        "lineage": model.lineage,
    }


KEY_METRICS = (
    "sparsity",
    "macs_ratio",
    "params_ratio",
    "accuracy",
    "accuracy_drop",
    "agreement",
    "size_ratio",
    "parity_max_abs_diff",
    "parity_agreement",
    "student_params",
    "best_epoch",
)


def _metrics_text(metrics: dict[str, Any]) -> str:
    shown = [
        (k, metrics[k])
        for k in KEY_METRICS
        if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool)
    ]
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v:,}" for k, v in shown)


def _state_text(state: dict[str, Any] | None) -> str:
    if not state:
        return "-"
    text = f"{state.get('weight_dtype', '?')}, {state.get('weight_sparsity', 0):.0%} zeros"
    return text + "".join(f"\n[red]lost: {item}[/red]" for item in state.get("lost", []))


def _tools_text(tools: dict[str, str], previous: dict[str, str] | None) -> str:
    """edgecli's version, and every tool the first step used or whose version differs from the step before."""
    changed = {k: v for k, v in tools.items() if k != "edgecli" and (previous is None or previous.get(k) != v)}
    return ", ".join([f"edgecli {tools.get('edgecli', '?')}"] + [f"{k} {v}" for k, v in changed.items()])


def _lineage_table(lineage: dict[str, Any]) -> Table:
    table = Table(title="lineage (oldest first)", title_justify="left")
    for name in ("#", "verb", "recipe", "parent", "files", "state", "key metrics", "tools"):
        table.add_column(name)
    previous_tools = None
    for index, step in enumerate(lineage.get("steps", []), 1):
        parent = step.get("parent", {})
        files = "\n".join(f"{f.get('name')} {f.get('sha256', '')[:8]}" for f in (step.get("files") or {}).values())
        tools = step.get("tools") or {}
        table.add_row(
            str(index),
            step.get("verb", "?"),
            step.get("recipe_name") or "(inline)",
            f"{parent.get('format', '?')} {parent.get('sha256', '')[:12]}",
            files or "-",
            _state_text(step.get("state")),
            _metrics_text(step.get("metrics") or {}),
            _tools_text(tools, previous_tools),
        )
        previous_tools = tools
    return table


def lost_lines(lineage: dict[str, Any] | None) -> list[str]:
    """One line per step that lost what an earlier step made (sparsity, int8 weights)."""
    return [
        f"step {index} ({step.get('verb')}) lost {item}"
        for index, step in enumerate((lineage or {}).get("steps", []), 1)
        for item in (step.get("state") or {}).get("lost", [])
    ]


@handle_errors
def inspect(model: ModelArg, json_out: JsonOpt = None) -> None:
    """Format, inputs/outputs, parameters, operators, size and lineage of MODEL."""
    files = CommandFiles()
    files.input("the inspected model", model)
    files.output("--json", json_out)
    files.check()
    with materialize(model) as path:
        info = describe_model(ModelFile.open(path))
    if model == "-":
        info["path"] = "-"
    if json_out:
        write_output(json_out, (jsonout.dumps(info, sort_keys=True) + "\n").encode())
        return
    table = Table(title=f"edgecli inspect {model}", title_justify="left", show_header=False, box=None)
    table.add_row("format", info["format"])
    table.add_row("size", f"{info['size_bytes']:,} bytes")
    table.add_row("sha256", info["sha256"])
    table.add_row("params", "-" if info["params"] is None else f"{info['params']:,}")
    if "tensors" in info:
        table.add_row(
            "tensors", f"{info['tensors']} (inputs, outputs and operators come with the model code: model.factory)"
        )
    else:
        table.add_row("inputs", "; ".join(info["inputs"]))
        table.add_row("outputs", "; ".join(info["outputs"]))
        table.add_row("ops", ", ".join(f"{k}×{v}" for k, v in info["ops"].items()))
    console.get_console().print(table)
    if info["lineage"]:
        console.get_console().print(_lineage_table(info["lineage"]))
        for line in lost_lines(info["lineage"]):
            console.get_console().print(f"[yellow]warning:[/yellow] {line}")
    else:
        console.get_console().print("lineage: none (this model was not written by edgecli)")
