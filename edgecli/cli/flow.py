"""The flow every model-writing verb shares: recipe, input, data, stage, lineage, atomic output."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from edgecli.core import console, jsonout
from edgecli.core.errors import GateFailed, UsageError
from edgecli.formats import lineage as lin
from edgecli.formats.detect import Format
from edgecli.formats.files import STDIO, materialize, write_output
from edgecli.formats.io_guard import CommandFiles
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import DataSpec, ReadsPyTorch, Strict, load_recipe
from edgecli.verbs import DATA, EVAL_DATA, VERBS, DataRole, Export, Verb

if TYPE_CHECKING:  # numpy and the dataset code load only when a verb runs, not for `edgecli --help`
    from edgecli.data.dataset import Dataset
    from edgecli.stages.artifact import Artifact


@dataclass(frozen=True)
class ModelVerbRequest:
    """One run of a model-writing verb, as its command line gave it (each cli/<verb>.py builds one)."""

    verb: str  # a name in edgecli.verbs.VERBS
    model: str  # MODEL: a path, or - for stdin
    output: str  # -o: a path, or - for stdout
    recipe: str | None = None  # -r: a shipped recipe's name or a file
    sets: Sequence[str] = ()  # --set KEY=VALUE, in order
    data: Path | None = None  # --data
    eval_data: Path | None = None  # --eval-data
    report: str | None = None  # --report
    quiet: bool = False
    extra_outputs: Sequence[tuple[str, Path | None]] = ()  # further files the command writes (option, path)
    stage_options: Mapping[str, Any] = field(default_factory=dict)  # keywords of the stage beyond its datasets

    def given(self, role: DataRole[Any]) -> Path | None:
        """The file the command line gives for a dataset (--data, --eval-data), or None."""
        return {DATA.section: self.data, EVAL_DATA.section: self.eval_data}[role.section]


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


def command_files(verb: Verb[Any], request: ModelVerbRequest, recipe: Strict, recipe_path: Path | None) -> CommandFiles:
    """Every file a model verb reads and writes, for the checks made before any work."""
    files = CommandFiles()
    files.input(verb.model_role, request.model)
    files.input("the recipe file", recipe_path)
    for role in verb.data:
        given, spec = request.given(role), role.spec(recipe)
        files.input(
            f"the {role.option} file" if given is not None else f"the recipe's {role.section} file",
            given or (spec.path if spec is not None else None),
        )
    for role_name, path in verb.recipe_files(recipe):
        files.input(role_name, path)
    files.output("-o", request.output, binary=True)
    files.output("--report", request.report)
    for option, path in request.extra_outputs:
        files.output(option, path)
    return files


def optional_dataset(spec: DataSpec | None, override: Path | None, what: str) -> Dataset | None:
    """The dataset if the command line or the recipe names one, else None."""
    if override is None and (spec is None or spec.path is None):
        return None
    from edgecli.data.dataset import load_dataset

    return load_dataset(spec or DataSpec.model_construct(), override, what)


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


def run_model_verb(request: ModelVerbRequest) -> None:
    verb = VERBS[request.verb]
    stage = verb.stage.load()  # the verb's frameworks load here, as the command starts
    console.set_quiet(request.quiet)
    recipe, recipe_path = load_recipe(verb.name, request.recipe, list(request.sets))
    output, report = request.output, request.report
    if report is not None:
        check_report_path(report, output)
    command_files(verb, request, recipe, recipe_path).check()
    with materialize(request.model) as path, contextlib.ExitStack() as stack:
        source = ModelFile.open(path)  # the format comes from the bytes, also for a model piped in
        check_output_suffix(output, verb.written_format(recipe, source.format))
        check_model_source(source, recipe)
        datasets = [optional_dataset(role.spec(recipe), request.given(role), role.what) for role in verb.data]
        for role in verb.data:  # the recipe stored in the lineage says which data was really used
            given = request.given(role)
            if given is not None:
                role.use(recipe, given)
        model, built = source, dict[str, Any]()
        if source.format is Format.STATE_DICT:
            example = None
            for dataset in datasets:  # the training data, else the held-out data
                example = example or dataset
            model, built = stack.enter_context(model_from_state_dict(source, recipe, verb.export(recipe), example))
        artifact: Artifact = stage(model, recipe, *datasets, **request.stage_options)
        if not artifact.write:
            return
        artifact.metrics.update(built)
        if model is not source and "size_bytes_parent" in artifact.metrics:
            artifact.metrics["size_bytes_parent"] = source.size_bytes
        ancestor = artifact.weights_from or source
        portable, files = lin.portable_recipe(recipe)
        lineage = lin.extend(  # the parent is the file the user gave, also when a .pt2 was built from it
            ancestor.lineage,
            verb=verb.name,
            recipe=portable,
            recipe_name=recipe_path.stem if recipe_path is not None else None,
            parent_sha256=source.sha256,
            parent_format=source.format.value,
            files=files,
            metrics=artifact.metrics,
            io=artifact.io,
            state=carried_state(verb.name, ancestor if not artifact.new_weights else None, artifact),
        )
    payload = artifact.to_bytes(lineage)
    write_output(output, payload)
    if report is not None:
        document = {
            "verb": verb.name,
            "input": request.model,
            "output": output,
            "metrics": artifact.metrics,
            **(artifact.report or {}),
        }
        write_output(report, (jsonout.dumps(document, default=str) + "\n").encode())
    console.show(summary_table(verb.name, output, artifact.metrics))
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
    if isinstance(recipe, ReadsPyTorch) and recipe.model is not None and model.format is not Format.STATE_DICT:
        console.warn(f"model.factory is ignored: {model.path} is {model.format.value}, not a state_dict")


@contextlib.contextmanager
def model_from_state_dict(
    source: ModelFile, recipe: Strict, export: Export, data: Dataset | None
) -> Iterator[tuple[ModelFile, dict[str, Any]]]:
    """The state_dict as the model the verb reads: a .pt2 built with model.factory, with the export's
    figures for the lineage."""
    from edgecli.formats.state_dict_file import built_pt2

    factory = recipe.model if isinstance(recipe, ReadsPyTorch) else None
    with built_pt2(source, factory, data, export.dynamic_batch, export.atol) as (program, figures):
        yield program, figures
