"""The documented verb examples run as written and succeed, in order (later ones use earlier outputs).

The commands are those of the ```sh blocks in DOC_SECTIONS: the README's chained example, then the
examples of docs/verbs.md and docs/recipes.md. All of them run once, in one folder (the module fixture
`readme`); the tests below check what the docs say about their outputs. A few commands get `--set`
overrides (OVERRIDES) that make them cheaper without changing what they do; the full run of each is
checked where OVERRIDES says."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgecli.analysis.metrics import agreement
from edgecli.data.dataset import load_dataset
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import DataSpec
from edgecli.runtimes import open_runner
from tests.conftest import ROOT

# verb of a command that does not pipe -> overrides appended to it. Only where the checks here do not
# depend on the full run, and the full run is checked elsewhere.
OVERRIDES = {
    # the distill example trains 30 epochs on 8 augmented views; one epoch on one view proves it runs (the full
    # recipe is measured by benchmarks/distill.py)
    "distill": "--set epochs=1 --set augment.views=1 --set latency_runs=0",
    # fine-tuning on 256 images, accuracy on 256: the command as written (5000 images) runs, with its
    # accuracy figures checked, in tests/stages/prune/test_stage.py::test_finetune_keeps_zeros_and_recovers_accuracy
    "prune": "--set data.limit=256 --set eval_data.limit=256",
    # 20 timed runs, no per-model memory process: the default recipe's full timing and memory are
    # checked in tests/stages/bench/test_stage.py (fixture `report`); the int8 model is ~3.5x faster than
    # the float one, far from the 1.2x gate
    "bench": "--set runs=20 --set min_time_s=0.05 --set warmup=2 --set memory=false",
}
ARTIFACTS = (
    "pruned.pt2",
    "student.pt2",
    "model.int8.onnx",
    "model.int8.json",
    "model.dyn.onnx",
    "model.int8.tflite",
    "pruned.onnx",
    "model.tflite",
    "model.ort",
    "report.json",
    "pruned.int8.onnx",
    "fashion_cnn_from_pt.pt2",
)


# (file, heading) of each section whose ```sh blocks run, in this order: a section runs from its
# heading to the next heading of the same or a higher level (its subsections are part of it).
DOC_SECTIONS = (
    ("README.md", "## A chain"),
    ("docs/verbs.md", "## Examples"),
    ("docs/verbs.md", "## PyTorch state_dict + your model code"),
    ("docs/recipes.md", "## Recipe tooling"),
)


def doc_section(path: str, heading: str) -> str:
    """The text of the section `heading` (a whole line, e.g. '## Examples') of ROOT/path."""
    text = (ROOT / path).read_text()
    start = re.search(rf"^{re.escape(heading)}[ \t]*$", text, flags=re.M)
    assert start, f"{path} has no heading {heading!r} (tests/test_readme.py DOC_SECTIONS)"
    level = len(heading) - len(heading.lstrip("#"))
    # a heading outside code blocks: fenced blocks hold '# comment' lines that are no headings
    body, fenced = [], False
    for line in text[start.end() :].splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"^#{{1,{level}}} ", line):
            break
        body.append(line)
    return "".join(body)


def readme_commands() -> list[str]:
    """Shell commands of the ```sh blocks of DOC_SECTIONS, in order, continuations joined, each
    prefixed with the variable assignments (S=...) made before it (a variable assigned again keeps
    its last value only). A command the same as an earlier one (the README's chain and the verb
    examples both prune the sample model into pruned.pt2) is run once: it would write the same bytes."""
    commands, setup = [], []
    for path, heading in DOC_SECTIONS:
        for block in re.findall(r"```sh\n(.*?)```", doc_section(path, heading), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  # ")[0].strip()
                if re.match(r"^[A-Z_]+=", line):
                    setup = [*(s for s in setup if s.split("=", 1)[0] != line.split("=", 1)[0]), line]
                elif line.startswith("edgecli"):
                    command = "; ".join([*setup, line])
                    if command not in commands:
                        commands.append(command)
    return commands


def _verb(command: str) -> str:
    """The verb of `edgecli [--trust-code ...] VERB ...` (root options come before it)."""
    return next(word for word in command.split("; ")[-1].split()[1:] if not word.startswith("-"))


def _with_overrides(command: str) -> str:
    if "|" in command.split("; ")[-1]:
        return command
    extra = OVERRIDES.get(_verb(command))
    return f"{command} {extra}" if extra else command


@pytest.fixture(scope="module")
def readme(tmp_path_factory) -> tuple[Path, list[tuple[str, subprocess.CompletedProcess]]]:
    """Every README command, run once in order in one folder (stops at the first failure)."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "sample_models").symlink_to(ROOT / "sample_models")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("EDGECLI_DEBUG", None)
    runs = []
    for command in map(_with_overrides, readme_commands()):
        proc = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {command}"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        runs.append((command, proc))
        if proc.returncode != 0:
            break
    return folder, runs


def _run(readme, pattern: str) -> subprocess.CompletedProcess:
    """The run of the one README command containing `pattern`."""
    [proc] = [proc for command, proc in readme[1] if pattern in command]
    return proc


def test_readme_has_an_example_for_every_verb():
    verbs = {_verb(command) for command in readme_commands()}
    assert {"prune", "distill", "quantize", "convert", "bench", "inspect", "recipe"} <= verbs


@pytest.mark.parametrize(("path", "heading"), DOC_SECTIONS)
def test_every_doc_section_has_commands(path, heading):
    """A section that lost its ```sh block (renamed fence, moved text) would silently run nothing."""
    blocks = re.findall(r"```sh\n(.*?)```", doc_section(path, heading), flags=re.S)
    assert any(line.lstrip().startswith("edgecli ") for block in blocks for line in block.splitlines()), (path, heading)


def test_readme_examples_run(readme):
    folder, runs = readme
    for command, proc in runs:
        assert proc.returncode == 0, f"{command}\n{proc.stderr}"
    assert len(runs) == len(readme_commands())
    for artifact in ARTIFACTS:
        assert (folder / artifact).stat().st_size > 0, artifact


def test_readme_prune_zeroes_half_of_the_weights_with_one_threshold(readme):
    import torch

    folder, _ = readme
    program = torch.export.load(str(folder / "pruned.pt2"))
    weights = {k: v for k, v in program.state_dict.items() if v.dim() >= 2 and v.numel() >= 64}
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    assert zeros == round(0.5 * total)  # exact after fine-tuning: the zeros were held
    metrics = ModelFile.open(folder / "pruned.pt2").lineage["steps"][-1]["metrics"]
    assert metrics["finetune_epochs"] == 1 and metrics["sparsity"] == 0.5


def test_readme_quantize_guard_holds_the_agreement_it_was_given(readme, sample):
    """`--set min_agreement=0.995`: the written model agrees with the float model on >= 99.5% of eval.npz."""
    folder, _ = readme
    report = json.loads((folder / "model.int8.json").read_text())
    assert report["target_met"] is True
    data = load_dataset(DataSpec(path=sample["eval"]))
    reference = open_runner(ModelFile.open(sample["onnx"])).predict(data)[0]
    quantized = open_runner(ModelFile.open(folder / "model.int8.onnx")).predict(data)[0]
    measured = agreement(reference, quantized)
    assert measured >= 0.995, measured
    assert abs(report["after"]["agreement"] - measured) < 1e-9  # the report tells the truth
    assert report["size"]["ratio"] < 0.3  # 4x smaller (0.262)


def test_readme_bench_inspect_and_pipe_outputs(readme, sample):
    folder, _ = readme
    bench = json.loads((folder / "report.json").read_text())
    assert bench["passed"] is True and [m["format"] for m in bench["models"]] == ["onnx", "onnx", "tflite"]
    _, int8, tflite = bench["models"]
    assert tflite["agreement"] == 1.0 and tflite["max_abs_diff"] < 1e-4  # the TFLite model answers like ONNX
    assert int8["agreement"] >= 0.995  # the guarded INT8 model (its speedup: the gate example's exit code)
    info = json.loads(_run(readme, "inspect model.int8.onnx --json -").stdout)  # stdout: the JSON alone
    assert info["format"] == "onnx" and [s["verb"] for s in info["lineage"]["steps"]] == ["quantize"]
    steps = ModelFile.open(folder / "pruned.int8.onnx").lineage["steps"]  # lineage survives the pipe
    assert [s["verb"] for s in steps] == ["prune", "convert", "quantize"]
    assert steps[0]["parent"]["sha256"] == ModelFile.open(sample["pt2"]).sha256
    assert steps[1]["parent"]["sha256"] == ModelFile.open(folder / "pruned.pt2").sha256
