"""The flow every model-writing verb shares: recipe, input, data, stage, lineage, atomic output."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.table import Table

from edgecli.core import console, jsonout
from edgecli.core.errors import GateFailed, UsageError
from edgecli.data.dataset import Dataset, load_dataset
from edgecli.formats import lineage as lin
from edgecli.formats.detect import Format
from edgecli.formats.files import STDIO, materialize, write_output
from edgecli.formats.io_guard import CommandFiles
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import DataSpec, ParitySpec, Strict, load_recipe
from edgecli.stages.artifact import Artifact

Stage = Callable[[ModelFile, Any, Dataset | None, Dataset | None], Artifact]
Target = Callable[[Any, Format], Format]  # (recipe, format of the input model) -> format written
KNOWN_SUFFIXES = {".onnx", ".pt2", ".tflite", ".keras", ".pt", ".pth"}


def check_output_suffix(output: str, target: Format) -> None:
    """Refuse `-o model.onnx` for a TFLite result (and the like) before any work is done."""
    suffix = Path(output).suffix.lower()
    if output != STDIO and suffix in KNOWN_SUFFIXES and suffix != target.suffix:
        raise UsageError(
            f"-o {output} ends in {suffix} but this step writes {target.value}", hint=f"use a {target.suffix} path"
        )


def check_report_path(report: str, output: str) -> None:
    """A report goes to a file in an existing folder, or to stdout when the model does not."""
    if report == STDIO:
        if output == STDIO:
            raise UsageError("--report - and -o - both want stdout", hint="write the report to a file")
        return
    path = Path(report)
    if path.suffix.lower() in KNOWN_SUFFIXES or path.is_dir():
        raise UsageError(f"--report {report} is not a JSON file path")
    if not path.parent.is_dir():
        raise UsageError(f"--report {report}: folder {path.parent} does not exist")
    # the same file as -o, or as an input: CommandFiles.check (a device such as /dev/null may be both)


def command_files(
    verb: str,
    model_arg: str,
    recipe: Strict,
    recipe_path: Path | None,
    output: str,
    data: Path | None,
    eval_data: Path | None,
    report: str | None,
    extra_outputs: list[tuple[str, Path | None]] = (),
) -> CommandFiles:
    """Every file a model verb reads and writes, for the checks made before any work."""
    files = CommandFiles()
    files.input("the teacher model" if verb == "distill" else "the input model", model_arg)
    files.input("the recipe file", recipe_path)
    data_spec, eval_spec = getattr(recipe, "data", None), getattr(recipe, "eval_data", None)
    files.input(
        "the --data file" if data is not None else "the recipe's data file", data or getattr(data_spec, "path", None)
    )
    files.input(
        "the --eval-data file" if eval_data is not None else "the recipe's eval_data file",
        eval_data or getattr(eval_spec, "path", None),
    )
    student = getattr(recipe, "student", None)
    files.input("the student.path model", getattr(student, "path", None))
    files.input("the student.weights file", getattr(student, "weights", None))
    files.output("-o", output, binary=True)
    files.output("--report", report)
    for role, path in extra_outputs:
        files.output(role, path)
    return files


def optional_dataset(spec: DataSpec | None, override: Path | None, what: str) -> Dataset | None:
    """The dataset if the command line or the recipe names one, else None."""
    if override is None and (spec is None or spec.path is None):
        return None
    return load_dataset(spec or DataSpec(), override, what)


def summary_table(verb: str, output: str, metrics: dict[str, Any]) -> Table:
    table = Table(title=f"edgecli {verb} -> {output}", title_justify="left", show_header=False, box=None)
    for key, value in metrics.items():
        if isinstance(value, dict):
            continue
        if isinstance(value, float):
            text = f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        elif isinstance(value, list):
            text = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)
        elif isinstance(value, int):
            text = f"{value:,}"
        else:
            text = str(value)
        table.add_row(f"[dim]{key}[/dim]", text)
    return table


def run_model_verb(
    verb: str,
    model_arg: str,
    recipe_arg: str | None,
    output: str,
    sets: list[str] | None,
    quiet: bool,
    stage: Stage,
    target: Target,
    data: Path | None = None,
    eval_data: Path | None = None,
    report: str | None = None,
    extra_outputs: list[tuple[str, Path | None]] = (),
) -> None:
    console.set_quiet(quiet)
    recipe, recipe_path = load_recipe(verb, recipe_arg, sets)
    if report is not None:
        check_report_path(report, output)
    command_files(verb, model_arg, recipe, recipe_path, output, data, eval_data, report, extra_outputs).check()
    with materialize(model_arg) as path, contextlib.ExitStack() as stack:
        source = ModelFile.open(path)  # the format comes from the bytes, also for a model piped in
        check_output_suffix(output, target(recipe, source.format))
        check_model_source(source, recipe)
        train = optional_dataset(getattr(recipe, "data", None), data, "data")
        held_out = optional_dataset(getattr(recipe, "eval_data", None), eval_data, "eval data")
        _record_overrides(recipe, data, eval_data)
        model, built = source, {}
        if source.format is Format.STATE_DICT:
            model, built = stack.enter_context(model_from_state_dict(source, recipe, train or held_out))
        artifact = stage(model, recipe, train, held_out)
        if not artifact.write:
            return
        artifact.metrics.update(built)
        if model is not source and "size_bytes_parent" in artifact.metrics:
            artifact.metrics["size_bytes_parent"] = source.size_bytes
        ancestor = artifact.weights_from or source
        portable, files = lin.portable_recipe(recipe)
        lineage = lin.extend(  # the parent is the file the user gave, also when a .pt2 was built from it
            ancestor.lineage,
            verb=verb,
            recipe=portable,
            recipe_name=recipe_path.stem if recipe_path is not None else None,
            parent_sha256=source.sha256,
            parent_format=source.format.value,
            files=files,
            metrics=artifact.metrics,
            io=artifact.io,
            state=carried_state(verb, ancestor if not artifact.new_weights else None, artifact),
        )
    payload = artifact.to_bytes(lineage)
    write_output(output, payload)
    if report is not None:
        document = {
            "verb": verb,
            "input": model_arg,
            "output": output,
            "metrics": artifact.metrics,
            **(artifact.report or {}),
        }
        write_output(report, (jsonout.dumps(document, default=str) + "\n").encode())
    console.show(summary_table(verb, output, artifact.metrics))
    console.info(f"wrote {output if output != STDIO else 'stdout'}: {artifact.format.value}, {len(payload):,} bytes")
    if artifact.gate_failures:
        raise GateFailed("; ".join(artifact.gate_failures), hint="the artifact was written anyway")


def carried_state(verb: str, ancestor: ModelFile | None, artifact: Artifact) -> dict[str, Any] | None:
    """The artifact's weight state, with what the model it continues had and it lost (warned about:
    sparsity or quantization is never dropped silently)."""
    from edgecli.analysis.model_stats import weight_state

    state = artifact.weight_state()
    if state is None:
        return None
    before = None
    if ancestor is not None:
        before = lin.last_state(ancestor.lineage) or (
            weight_state(ancestor) if ancestor.format is not Format.STATE_DICT else None
        )
    lost = lin.lost_state(before, state)
    if lost:
        console.warn(f"{verb} did not keep what its input had: {'; '.join(lost)} (recorded in the lineage)")
        state["lost"] = lost
    return state


def check_model_source(model: ModelFile, recipe: Strict) -> None:
    """A model.factory is moot for any model but a state_dict (built_pt2 requires it for a state_dict,
    after reading the file: a pickled module is refused, or with --trust-pickle used without one)."""
    if getattr(recipe, "model", None) is not None and model.format is not Format.STATE_DICT:
        console.warn(f"model.factory is ignored: {model.path} is {model.format.value}, not a state_dict")


@contextlib.contextmanager
def model_from_state_dict(
    source: ModelFile, recipe: Any, data: Dataset | None
) -> Iterator[tuple[ModelFile, dict[str, Any]]]:
    """The state_dict as the model the verb reads: a .pt2 built with model.factory, with the export's
    figures for the lineage."""
    from edgecli.formats.state_dict_file import built_pt2

    parity = getattr(recipe, "parity", ParitySpec())
    with built_pt2(source, recipe.model, data, getattr(recipe, "dynamic_batch", True), parity.atol) as (
        program,
        figures,
    ):
        yield program, figures


def _record_overrides(recipe: Strict, data: Path | None, eval_data: Path | None) -> None:
    """Make the recipe stored in the lineage say which data was really used."""
    if data is not None and hasattr(recipe, "data"):
        recipe.data.path = data
    if eval_data is not None and hasattr(recipe, "eval_data"):
        recipe.eval_data = (recipe.eval_data or DataSpec()).model_copy(update={"path": eval_data})
