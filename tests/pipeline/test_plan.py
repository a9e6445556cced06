"""The planner in process: a step's run key follows its settings, and a step runs through the function
it is given (the pipeline runner imports nothing from the CLI)."""

from __future__ import annotations

import ast
from pathlib import Path

from edgecli.pipeline.plan import Planner
from edgecli.pipeline.runner import run_commands, step_key
from edgecli.pipeline.spec import PipelineSpec
from tests.conftest import ROOT, SAMPLE


def plan(tmp_path: Path, settings: dict) -> list:
    spec = PipelineSpec.model_validate(
        {
            "model": str(SAMPLE / "fashion_cnn.onnx"),
            "steps": [{"name": "int8", "verb": "quantize", "recipe": "int8-dynamic", "set": settings}],
            "bench": None,
        }
    )
    return Planner(spec, tmp_path, tmp_path / "out").commands()


def test_a_changed_setting_value_changes_the_step_key(tmp_path: Path):
    (first,) = plan(tmp_path, {"calibration.samples": 64})
    (second,) = plan(tmp_path, {"calibration.samples": 128})
    assert first.settings == ["calibration.samples=64"] and second.settings == ["calibration.samples=128"]
    assert step_key(first) != step_key(second)  # was equal: the settings were overwritten by the written format
    assert first.outputs == [tmp_path / "out" / "int8.onnx"]


def test_steps_run_through_the_given_function(tmp_path: Path):
    (command,) = plan(tmp_path, {})
    calls: list[list[str]] = []

    def execute(argv: list[str]) -> int:
        calls.append(argv)
        command.outputs[0].write_bytes(b"made by the step")
        return 0

    (tmp_path / "out").mkdir()
    (outcome,) = run_commands([command], tmp_path / "out", quiet=True, force=False, execute=execute)
    assert calls == [[*command.argv, "-q"]] and outcome.status == "ran"
    (again,) = run_commands([command], tmp_path / "out", quiet=True, force=False, execute=execute)
    assert again.status == "up to date" and len(calls) == 1


def test_the_pipeline_package_imports_nothing_from_the_cli():
    for path in sorted((ROOT / "edgecli" / "pipeline").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not [name for name in names if name.startswith("edgecli.cli")], path
