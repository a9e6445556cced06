"""Code named in a recipe (model.factory, student.factory) runs only with --trust-code, through the real CLI.

Without `edgecli --trust-code` (or EDGECLI_TRUST_CODE=1) a recipe, a `--set` or a pipeline step that
names code is refused, exit 2, in one line naming the field and the callable, before the module is
imported and before any work: the payload never runs, nothing is written, the inputs are unchanged.
With it, a factory of the user's own code works; Python's own callables (builtins, os, subprocess,
re-exported or not) are refused even then. Also recipe-file hygiene: a size bound, shipped-recipe
names that cannot leave the shipped folder, and errors of a `--set` value blamed on that `--set`.
Each case is its own process, forked from a warm interpreter (tests/conftest.py, run_cli);
convert's os:system factory meets a real one (run_cli_process).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgecli.recipes import MAX_RECIPE_BYTES, SHIPPED_DIR
from tests.conftest import ROOT, SAMPLE, data_args, leftovers, run_cli, run_cli_process
from tests.robustness.conftest import assert_refused

STATE_DICT, ONNX = SAMPLE / "fashion_cnn.pt", SAMPLE / "fashion_cnn.onnx"
GOOD = "sample_models.fashion_cnn:build"
GATE = "edgecli imports it only with --trust-code (or EDGECLI_TRUST_CODE=1)"
TRUSTED = {"EDGECLI_TRUST_CODE": "1"}

# verb -> (recipe args, output name): quick settings, never reached when the refusal works
VERBS = {
    "convert": (["-r", "onnx", "--set", "parity.samples=16"], "out.onnx"),
    "prune": (["-r", "magnitude-50", "--set", "finetune.epochs=0"], "out.pt2"),
    "quantize": (["-r", "int8-static", "--set", "calibration.samples=16"], "out.onnx"),
    "distill": (["--set", "epochs=1", "--set", "latency_runs=0", "--set", "data.limit=64"], "out.pt2"),
}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def system_call(marker: Path) -> str:
    """A --set value that makes os.system touch `marker` if it is ever called."""
    return f"{{factory: 'os:system', kwargs: {{command: 'touch {marker}'}}}}"


def evil_module(folder: Path, marker: Path) -> None:
    """evil_models.py: importing it touches `marker` (so does calling its factory)."""
    (folder / "evil_models.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "from subprocess import run  # a re-exported Python callable\n"
        "class NotAModule:\n    pass\n"
        "def build(**kwargs):\n"
        f"    pathlib.Path({str(marker)!r}).touch()\n"
        "    import torch.nn as nn\n    return nn.Linear(1, 1)\n"
    )


@pytest.fixture
def inputs() -> dict[Path, str]:
    files = [STATE_DICT, ONNX, *(SAMPLE / name for name in ("train.npz", "eval.npz", "calib.npz"))]
    return {path: sha(path) for path in files}


def assert_untouched(inputs: dict[Path, str], *markers: Path) -> None:
    for marker in markers:
        assert not marker.exists(), f"{marker} was created: the named code ran"
    assert {path: sha(path) for path in inputs} == inputs


# --- no trust: refused before the import, before any work ----------------------------------------


@pytest.mark.parametrize("verb", list(VERBS))
def test_os_system_model_factory_is_refused_without_trust(verb: str, tmp_path: Path, out: Path, inputs) -> None:
    marker = tmp_path / "marker"
    args, output = VERBS[verb]
    run = run_cli_process if verb == "convert" else run_cli  # one real process
    result = run(verb, STATE_DICT, *args, *data_args(verb), "--set", f"model={system_call(marker)}", "-o", out / output)
    line = assert_refused(result, 2, "model.factory os:system", out)
    assert GATE in line and line.startswith("recipe error: ")
    assert_untouched(inputs, marker)


def test_factory_in_a_recipe_file_is_refused_and_the_file_named(tmp_path: Path, out: Path, inputs) -> None:
    marker = tmp_path / "marker"
    recipe = tmp_path / "shared.yaml"
    recipe.write_text(f"target: onnx\nmodel:\n  factory: os:system\n  kwargs: {{command: touch {marker}}}\n")
    before = recipe.read_bytes()
    result = run_cli("convert", STATE_DICT, "-r", recipe, "--data", SAMPLE / "eval.npz", "-o", out / "out.onnx")
    line = assert_refused(result, 2, f"model.factory os:system in {recipe} names code to run", out)
    assert GATE in line
    assert recipe.read_bytes() == before
    assert_untouched(inputs, marker)


@pytest.mark.parametrize("field", ["model", "student"])
def test_own_module_is_never_imported_without_trust(field: str, tmp_path: Path, out: Path, inputs) -> None:
    """Importing a module runs it: without trust edgecli does not even import it (its top level would touch the marker)."""
    marker = tmp_path / "imported"
    evil_module(tmp_path, marker)
    model = STATE_DICT if field == "model" else ONNX
    result = run_cli(
        "distill",
        model,
        *VERBS["distill"][0],
        *data_args("distill"),
        "--set",
        f"{field}.factory=evil_models:build",
        "-o",
        out / "out.pt2",
        cwd=tmp_path,
    )
    assert_refused(
        result, 2, f"{field}.factory evil_models:build in --set {field}.factory=evil_models:build names code", out
    )
    assert_untouched(inputs, marker)


def test_os_system_student_factory_is_refused_in_distill(tmp_path: Path, out: Path, inputs) -> None:
    marker = tmp_path / "marker"
    result = run_cli(
        "distill",
        ONNX,
        *VERBS["distill"][0],
        *data_args("distill"),
        "--set",
        f"student={system_call(marker)}",
        "-o",
        out / "out.pt2",
    )
    line = assert_refused(result, 2, "student.factory os:system", out)
    assert GATE in line
    assert_untouched(inputs, marker)


def pipeline(folder: Path, steps: list[dict], model: Path = STATE_DICT) -> Path:
    path = folder / "shared.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": str(model),
                "datasets": {"eval": str(SAMPLE / "eval.npz"), "train": str(SAMPLE / "train.npz")},
                "steps": steps,
                "bench": None,
            },
            sort_keys=False,
        )
    )
    return path


def test_pipeline_step_naming_code_is_refused_before_the_first_step(tmp_path: Path, out: Path, inputs) -> None:
    """The first step is harmless (an ONNX export of the .pt2), the second names os:system through
    student.factory: nothing runs, not even the first step."""
    marker = tmp_path / "marker"
    steps = [
        {"name": "float", "verb": "convert", "recipe": "onnx", "data": "eval"},
        {
            "name": "student",
            "verb": "distill",
            "input": "${float}",
            "data": "train",
            "set": {"epochs": 1, "student": {"factory": "os:system", "kwargs": {"command": f"touch {marker}"}}},
        },
    ]
    path = pipeline(tmp_path, steps, SAMPLE / "fashion_cnn.pt2")
    before = path.read_bytes()
    for extra in ([], ["--dry-run"]):
        result = run_cli("run", path, "--out", out, *extra)
        assert_refused(result, 2, "student.factory os:system", out)
    assert path.read_bytes() == before
    assert_untouched(inputs, marker)


def test_pipeline_model_factory_is_refused(tmp_path: Path, out: Path, inputs) -> None:
    marker = tmp_path / "marker"
    steps = [
        {
            "name": "onnx",
            "verb": "convert",
            "recipe": "onnx",
            "data": "eval",
            "set": {"model.factory": "os:system", "model.kwargs": {"command": f"touch {marker}"}},
        }
    ]
    assert_refused(run_cli("run", pipeline(tmp_path, steps), "--out", out), 2, "model.factory os:system", out)
    assert_untouched(inputs, marker)


# --- trusted: the user's own code works ------------------------------------------------------------


def _predictions(path: Path) -> np.ndarray:
    from edgecli.data.dataset import load_dataset
    from edgecli.formats.model_file import ModelFile
    from edgecli.recipes import DataSpec
    from edgecli.runtimes import open_runner

    data = load_dataset(DataSpec(path=SAMPLE / "eval.npz", limit=64))
    return open_runner(ModelFile.open(path)).predict(data)[0].argmax(1), data.labels


def test_trust_code_flag_builds_the_state_dict(tmp_path: Path) -> None:
    out = tmp_path / "cnn.onnx"
    result = run_cli(
        "--trust-code",
        "convert",
        STATE_DICT,
        "-r",
        "onnx",
        "--set",
        f"model.factory={GOOD}",
        "--data",
        SAMPLE / "eval.npz",
        "--set",
        "parity.samples=16",
        "-o",
        out,
        "-q",
    )
    assert result.code == 0, result.stderr
    assert leftovers(tmp_path) == ["cnn.onnx"]
    predicted, labels = _predictions(out)
    assert np.mean(predicted == labels) > 0.8  # the sample CNN: ~0.92


def test_environment_variable_reaches_the_steps_of_edgecli_run(tmp_path: Path) -> None:
    """EDGECLI_TRUST_CODE=1: a pipeline building the state_dict with its factory runs (the steps run in
    the same process and see the variable)."""
    steps = [
        {
            "name": "cnn",
            "verb": "convert",
            "recipe": "onnx",
            "data": "eval",
            "set": {"target": "pt2", "model.factory": GOOD, "parity.samples": 16},
        }
    ]
    out = tmp_path / "out"
    result = run_cli("run", pipeline(tmp_path, steps), "--out", out, "--json", "-", "-q", env=TRUSTED)
    assert result.code == 0, result.stderr
    assert [step["status"] for step in json.loads(result.stdout)["steps"]] == ["ran"]
    predicted, labels = _predictions(out / "cnn.pt2")
    assert np.mean(predicted == labels) > 0.8


def test_trusted_student_factory_trains(tmp_path: Path) -> None:
    (tmp_path / "my_students.py").write_text(
        "import torch.nn as nn\n\ndef tiny(hidden=16):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))\n"
    )
    out = tmp_path / "student.pt2"
    result = run_cli(
        "--trust-code",
        "distill",
        ONNX,
        "--data",
        SAMPLE / "train.npz",
        "--set",
        "data.limit=128",
        "--set",
        "epochs=1",
        "--set",
        "latency_runs=0",
        "--set",
        "val_split=0",
        "--set",
        "answers.min_agreement=0",  # one epoch on 128 images: the subject is the factory, not the answers
        "--set",
        "student={factory: 'my_students:tiny', kwargs: {hidden: 16}}",
        "-o",
        out,
        "-q",
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert result.code == 0, result.stderr
    assert _predictions(out)[0].shape == (64,)


# --- trusted, but not model code ------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory", ["os:system", "builtins:eval", "subprocess:run", "posix:system", "importlib:import_module"]
)
def test_pythons_own_callables_are_refused_even_when_trusted(factory: str, tmp_path: Path, out: Path, inputs) -> None:
    marker = tmp_path / "marker"
    for env, flag in ((TRUSTED, []), ({}, ["--trust-code"])):
        result = run_cli(
            *flag,
            "convert",
            STATE_DICT,
            *VERBS["convert"][0],
            "--data",
            SAMPLE / "eval.npz",
            "--set",
            f"model.factory={factory}",
            "--set",
            f"model.kwargs={{command: 'touch {marker}'}}",
            "-o",
            out / "out.onnx",
            env=env,
        )
        line = assert_refused(result, 2, f"model.factory {factory}", out)
        assert "is not model code" in line and "part of Python" in line
    assert_untouched(inputs, marker)


@pytest.mark.parametrize(
    ("attribute", "phrase"),
    [
        ("run", "'run' is subprocess.run, part of Python, not model code"),
        ("NotAModule", "'NotAModule' is a class but not an nn.Module subclass"),
    ],
)
def test_a_user_module_reexporting_python_is_refused_when_trusted(
    attribute: str, phrase: str, tmp_path: Path, out: Path
) -> None:
    """The module is the user's (trusted, so it is imported), but the object is no model factory: refused, nothing called."""
    evil_module(tmp_path, tmp_path / "imported")
    result = run_cli(
        "--trust-code",
        "convert",
        STATE_DICT,
        *VERBS["convert"][0],
        "--data",
        SAMPLE / "eval.npz",
        "--set",
        f"model.factory=evil_models:{attribute}",
        "--set",
        "model.kwargs={args: [touch, called]}",
        "-o",
        out / "out.onnx",
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert_refused(result, 2, phrase, out)
    assert not (tmp_path / "called").exists()


# --- recipe files: size, names, blame ---------------------------------------------------------------


def test_recipe_over_the_size_bound_is_refused_before_parsing(tmp_path: Path, out: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"target: onnx\n" + b"# padding\n" * (MAX_RECIPE_BYTES // 10))  # 1 MiB + 13 bytes
    line = assert_refused(run_cli("convert", ONNX, "-r", big, "-o", out / "out.onnx"), 2, "is larger than 1 MiB", out)
    assert str(big) in line
    sparse = tmp_path / "huge.yaml"  # 8 GiB of zeros, no disk: only bound + 1 bytes are read
    with sparse.open("wb") as handle:
        handle.truncate(8 << 30)
    assert_refused(run_cli("quantize", ONNX, "-r", sparse, "-o", out / "out.onnx"), 2, "is larger than 1 MiB", out)
    assert_refused(run_cli("run", sparse, "--out", out), 2, f"pipeline {sparse} is larger than 1 MiB", out)


def test_recipe_at_the_size_bound_is_read(tmp_path: Path) -> None:
    from edgecli.recipes import read_yaml_mapping

    text = b"seed: 3\n"
    exact = tmp_path / "exact.yaml"
    exact.write_bytes(text + b"#" * (MAX_RECIPE_BYTES - len(text) - 1) + b"\n")
    assert exact.stat().st_size == MAX_RECIPE_BYTES
    assert read_yaml_mapping(exact, "recipe", "prune") == {"seed": 3}


def _outside(verb: str, tmp_path: Path) -> str:
    """A recipe outside the shipped folder, named relative to its <verb>/ (not to the working folder)."""
    (tmp_path / "planted.yaml").write_text("target: onnx\nopset: 9\n")  # read, it would say 'opset'
    return os.path.relpath(tmp_path / "planted", SHIPPED_DIR / verb)


@pytest.mark.parametrize("name", ["OUTSIDE", "a/../onnx", "../convert/onnx", "./onnx", "onnx/", ".onnx", "-onnx"])
def test_shipped_recipe_names_never_leave_configs(name: str, tmp_path: Path, out: Path) -> None:
    name = _outside("convert", tmp_path) if name == "OUTSIDE" else name
    work = tmp_path / "elsewhere"  # a working folder where the name is no file either
    work.mkdir()
    line = assert_refused(
        run_cli("convert", ONNX, "-r", name, "-o", out / "out.onnx", cwd=work),
        2,
        "is not a shipped convert recipe name",
        out,
    )
    assert "opset" not in line


def test_pipeline_and_recipe_show_names_never_leave_configs(tmp_path: Path, out: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert_refused(
        run_cli("run", "../pipelines/edge-cnn", "--out", out, cwd=work),
        2,
        "no pipeline file '../pipelines/edge-cnn'",
        out,
    )
    for name in ("quantize/../fp16", "../fp16", "quantize/..", "a/b/fp16"):
        assert_refused(run_cli("recipe", "show", name), 2, f"'{name}' is not a shipped recipe name", out)


def test_a_recipe_path_that_exists_is_read_as_a_path(tmp_path: Path, out: Path) -> None:
    """Paths stay paths: an existing file given with ../ is that file (here: its bad opset is reported)."""
    (tmp_path / "r.yaml").write_text("target: onnx\nopset: 9\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    assert_refused(
        run_cli("convert", ONNX, "-r", "../r.yaml", "-o", out / "out.onnx", cwd=work),
        2,
        "'opset' in ../r.yaml",
        out,
    )


@pytest.mark.parametrize(
    ("sets", "phrase"),
    [
        (["opset=9"], "'opset' in --set opset=9: Input should be greater than or equal to 13"),
        (["parity={samples: 0}"], "'parity.samples' in --set parity={samples: 0}"),
        (["opst=18"], "unknown key 'opst' in --set opst=18"),
    ],
)
def test_errors_of_a_set_value_name_the_set_not_the_shipped_file(sets: list[str], phrase: str, out: Path) -> None:
    args = [arg for item in sets for arg in ("--set", item)]
    line = assert_refused(run_cli("convert", ONNX, "-r", "onnx", *args, "-o", out / "out.onnx"), 2, phrase, out)
    assert "recipes/shipped/convert/onnx.yaml" not in line


def test_errors_of_the_file_still_name_the_file(tmp_path: Path, out: Path) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("target: onnx\nopset: 9\n")
    result = run_cli("convert", ONNX, "-r", recipe, "--set", "parity.samples=8", "-o", out / "out.onnx")
    line = assert_refused(result, 2, f"'opset' in {recipe}", out)
    assert "--set" not in line
