"""A pipeline turned into edgecli command lines, each with the files its result depends on.

Every step is exactly the command a user could type (`edgecli run --dry-run` prints them), so a
pipeline, a Makefile and a shell pipe of the same commands make the same bytes.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgecli.core.errors import DataError, EdgecliError, ModelReadError, RecipeError, UsageError
from edgecli.formats.detect import Format, detect_format
from edgecli.pipeline.spec import REFERENCE, SOURCE, PipelineSpec, StepSpec
from edgecli.recipes import load_recipe, parse_set, resolve_recipe_path
from edgecli.verbs import VERBS


def _clash_message(name: str, output: Path) -> Callable[[str, str, str, str], str]:
    """io_guard's clash message for step `name` writing `output` over a file the pipeline reads."""

    def message(_role: str, _out: str, what: str, _src: str) -> str:
        return (
            f"step '{name}' would write {shown(output)}, which is an input of the pipeline ({what}); "
            "rename the step or choose another --out"
        )

    return message


def _referenced(item: str) -> str:
    """The step name in a bench.models item `${name}` (PipelineSpec's validator refuses any other item)."""
    found = REFERENCE.fullmatch(item)
    if found is None:
        raise RecipeError(f"bench.models: '{item}' is not ${{model}} or ${{step}} of a step")
    return found.group(1)


@dataclass
class Command:
    """One edgecli invocation: argv (without the program name), the file it writes, and the files
    whose bytes decide its result (input model, recipe, data, referenced outputs)."""

    name: str
    verb: str
    argv: list[str]
    outputs: list[Path]
    depends_on: list[Path] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)  # as written in the pipeline (${name}, not a path): the run key

    def shell(self) -> str:
        from edgecli.core.security import trust_flags

        return shlex.join(["edgecli", *trust_flags(), *self.argv])


def shown(path: Path) -> str:
    """A path as short as it can be said from the current folder."""
    text = os.path.relpath(path)
    return text if not text.startswith("..") else str(Path(path).resolve())


def _setting(key: str, value: Any) -> str:
    """key=value for --set, the value written so that --set reads it back as the same YAML value."""
    if isinstance(value, str):
        try:
            reads_back = not value or yaml.safe_load(value) == value  # 'true', '1.0' or '[a]' would not
        except yaml.YAMLError:
            reads_back = False
        return f"{key}={value if reads_back else json.dumps(value)}"
    return f"{key}={json.dumps(value)}"


class Planner:
    """Resolves names, references and paths of a pipeline file into Commands."""

    def __init__(self, spec: PipelineSpec, base: Path, out: Path, overrides: list[str] | None = None) -> None:
        self.spec, self.base, self.out = spec, base, out
        self.sources: list[tuple[str, Path]] = []
        self.paths: dict[str, Path] = {SOURCE: self._file(spec.model, "model")}
        self._source("the source model", self.paths[SOURCE])
        for name, text in spec.datasets.items():
            self._source(f"dataset '{name}'", (base / text).resolve())
        self.formats: dict[Path, Format] = {self.paths[SOURCE]: detect_format(self.paths[SOURCE])}
        self.overrides = self._overrides(overrides or [])

    def _file(self, text: str, what: str, missing: type[EdgecliError] = ModelReadError) -> Path:
        """A path of the pipeline file, relative to its folder; a missing file is unreadable input (exit 3)."""
        path = (self.base / text).resolve()
        if not path.exists():
            raise missing(f"{what} {text} does not exist (paths in a pipeline are relative to {shown(self.base)})")
        return path

    def _overrides(self, items: list[str]) -> dict[str, list[tuple[str, Any]]]:
        """`edgecli run --set STEP.key=value`: per step (or 'bench'), the extra settings."""
        names = [step.name for step in self.spec.steps] + ["bench"]
        found: dict[str, list[tuple[str, Any]]] = {}
        for path, value in parse_set(items):
            if len(path) < 2 or path[0] not in names:
                raise UsageError(f"--set {'.'.join(path)}: expected STEP.key=value with STEP one of {', '.join(names)}")
            found.setdefault(path[0], []).append((".".join(path[1:]), value))
        return found

    def _data(self, text: str | None) -> Path | None:
        if text is None:
            return None
        if text in self.spec.datasets:
            return self._file(self.spec.datasets[text], f"dataset '{text}'", DataError)
        return self._source(f"data {text}", self._file(text, "data", DataError))

    def _resolve(self, text: str) -> tuple[str, list[Path]]:
        """${name} references replaced by paths; the referenced files."""
        used: list[Path] = []

        def swap(found: Any) -> str:
            used.append(self.paths[found.group(1)])
            return shown(self.paths[found.group(1)])

        return REFERENCE.sub(swap, text), used

    def _recipe(self, verb: str, name: str | None) -> tuple[str | None, list[Path]]:
        """The -r argument (a shipped recipe's name, or a file relative to the pipeline) and its file."""
        if name is None:
            return None, []
        local = self.base / name
        if local.is_file():
            return shown(local), [self._source(f"recipe {name}", local.resolve())]
        return name, [resolve_recipe_path(verb, name)]

    def _source(self, role: str, path: Path) -> Path:
        """Remember a file the pipeline reads from outside its output folder."""
        self.sources.append((role, path))
        return path

    def check_outputs(self, commands: list[Command]) -> None:
        """No step writes over a file the pipeline reads (an --out folder holding the source model, a
        dataset or a recipe file): the shared check of io_guard, before any step runs."""
        from edgecli.formats.io_guard import CommandFiles

        for command in commands:
            for output in command.outputs:
                files = CommandFiles(clash=_clash_message(command.name, output))
                files.inputs = [(role, str(path)) for role, path in self.sources]
                files.output(f"step '{command.name}'", output)
                files.check_clashes()

    def _input(self, index: int, step: StepSpec) -> Path:
        if step.input is None:
            return self.paths[self.spec.steps[index - 1].name if index else SOURCE]
        found = REFERENCE.fullmatch(step.input)
        if found:
            return self.paths[found.group(1)]
        path = self._source(f"step '{step.name}' input", self._file(step.input, f"step '{step.name}' input"))
        self.formats.setdefault(path, detect_format(path))
        return path

    def step(self, index: int, step: StepSpec) -> Command:
        source = self._input(index, step)
        depends = [source]
        recipe_arg, recipe_files = self._recipe(step.verb, step.recipe)
        settings: list[str] = []
        written: list[str] = []
        for key, value in [*step.set.items(), *self.overrides.get(step.name, [])]:
            text, used = self._resolve(value) if isinstance(value, str) else (value, [])
            settings.append(_setting(key, text))
            written.append(_setting(key, value))
            depends += used
        recipe, _ = load_recipe(step.verb, recipe_arg, settings)
        writes = VERBS[step.verb].written_format(recipe, self.formats[source])
        output = self.out / f"{step.name}{writes.suffix}"
        self.paths[step.name], self.formats[output] = output, writes
        argv = [step.verb, shown(source)]
        argv += ["-r", recipe_arg] if recipe_arg else []
        for option, text in (("--data", step.data), ("--eval-data", step.eval_data)):
            path = self._data(text)
            if path is not None:
                argv += [option, shown(path)]
                depends.append(path)
        for setting in settings:
            argv += ["--set", setting]
        argv += ["-o", shown(output)]
        return Command(step.name, step.verb, argv, [output], depends + recipe_files, written)

    def bench(self) -> Command | None:
        bench = self.spec.bench
        if bench is None:
            return None
        names = [_referenced(item) for item in bench.models] if bench.models else list(self.paths)
        models = [self.paths[name] for name in names]
        argv = ["bench", *map(shown, models)]
        recipe_arg, recipe_files = self._recipe("bench", bench.recipe)
        argv += ["-r", recipe_arg] if recipe_arg else []
        data = self._data(bench.data)
        argv += ["--data", shown(data)] if data else []
        settings = [_setting(key, value) for key, value in [*bench.set.items(), *self.overrides.get("bench", [])]]
        for setting in settings:
            argv += ["--set", setting]
        report, markdown = self.out / "bench.json", self.out / "bench.md"
        argv += ["--json", shown(report), "--markdown", shown(markdown)]
        return Command(
            "bench", "bench", argv, [report, markdown], models + recipe_files + ([data] if data else []), settings
        )

    def commands(self) -> list[Command]:
        planned = [self.step(index, step) for index, step in enumerate(self.spec.steps)]
        closing = self.bench()
        commands = planned + ([closing] if closing else [])
        self.check_outputs(commands)
        return commands


def load_pipeline(path: Path) -> PipelineSpec:
    from edgecli.recipes import read_yaml_mapping, validate_recipe

    raw = read_yaml_mapping(path, "pipeline", "pipelines")
    spec = validate_recipe("pipeline", raw, str(path), PipelineSpec)
    assert isinstance(spec, PipelineSpec)
    return spec


def resolve_pipeline(name_or_path: str) -> Path:
    """A pipeline file path, or the name of one shipped in edgecli/recipes/shipped/pipelines/."""
    try:
        return resolve_recipe_path("pipelines", name_or_path)
    except RecipeError as exc:
        raise UsageError(
            f"no pipeline file '{name_or_path}' and no shipped pipeline of that name", hint=exc.hint
        ) from None
