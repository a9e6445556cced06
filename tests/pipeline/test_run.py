"""edgecli run: planning, skipping what is up to date (by content), failures, locking, bad pipelines.

The full shipped chain (edge-cnn) is run, and compared byte for byte with its Makefile and pipe
forms, in tests/examples/test_examples.py; this file uses quick steps (export, dynamic INT8).
"""

from __future__ import annotations

import fcntl
import json
import shlex
from pathlib import Path

import pytest
import yaml

from edgecli.formats.model_file import ModelFile
from tests.conftest import ROOT, SAMPLE, leftovers, run_cli

QUICK = {
    "model": str(SAMPLE / "fashion_cnn.pt2"),
    "datasets": {"eval": str(SAMPLE / "eval.npz"), "calib": str(SAMPLE / "calib.npz")},
    "steps": [
        {"name": "float", "verb": "convert", "recipe": "onnx", "data": "eval", "set": {"parity.samples": 64}},
        {"name": "int8", "verb": "quantize", "recipe": "int8-dynamic", "data": "calib"},
    ],
    "bench": {
        "recipe": "default",
        "data": "eval",
        "set": {"runs": 5, "warmup": 1, "min_time_s": 0.01, "eval_batch_size": 256, "memory": False, "data.limit": 500},
    },
}


def write_pipeline(folder: Path, spec: dict, name: str = "quick.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_json(pipeline: Path, out: Path, *extra: object) -> dict:
    result = run_cli("run", pipeline, "--out", out, "--json", "-", "-q", *extra)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def statuses(document: dict) -> dict[str, str]:
    return {step["name"]: step["status"] for step in document["steps"]}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    folder = tmp_path_factory.mktemp("run")
    pipeline = write_pipeline(folder, QUICK)
    out = folder / "out"
    return pipeline, out, run_json(pipeline, out)


def test_first_run_writes_every_artifact_with_its_lineage(first_run):
    _pipeline, out, document = first_run
    assert statuses(document) == {"float": "ran", "int8": "ran", "bench": "ran"}
    steps = ModelFile.open(out / "int8.onnx").lineage["steps"]
    assert [s["verb"] for s in steps] == ["convert", "quantize"]
    assert steps[0]["parent"]["sha256"] == ModelFile.open(SAMPLE / "fashion_cnn.pt2").sha256
    assert steps[1]["parent"]["sha256"] == ModelFile.open(out / "float.onnx").sha256
    assert steps[1]["recipe_name"] == "int8-dynamic" and steps[0]["recipe"]["parity"]["samples"] == 64
    bench = json.loads((out / "bench.json").read_text())
    assert [Path(m["path"]).name for m in bench["models"]] == ["fashion_cnn.pt2", "float.onnx", "int8.onnx"]
    assert "int8.onnx" in (out / "bench.md").read_text()
    assert leftovers(out) == [
        ".edgecli-run.json",
        ".edgecli-run.lock",
        "bench.json",
        "bench.md",
        "float.onnx",
        "int8.onnx",
    ]


def test_second_run_does_no_work_and_touches_nothing(first_run):
    pipeline, out, _ = first_run
    before = {
        p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir() if not p.name.startswith(".edgecli-run")
    }
    document = run_json(pipeline, out)
    assert set(statuses(document).values()) == {"up to date"}
    after = {
        p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir() if not p.name.startswith(".edgecli-run")
    }
    assert after == before


def test_dry_run_prints_the_commands_a_user_could_type(first_run):
    pipeline, out, _ = first_run
    result = run_cli("run", pipeline, "--out", out, "--dry-run", "--set", "int8.per_channel=false")
    assert result.code == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert [shlex.split(line)[1] for line in lines] == ["convert", "quantize", "bench"]
    assert lines[0].endswith("# up to date")  # unchanged; the changed step and the bench after it are not
    assert (
        "--set per_channel=false" in lines[1]
        and not lines[1].endswith("# up to date")
        and not lines[2].endswith("# up to date")
    )
    convert = shlex.split(lines[0].split("   #")[0])
    assert convert[convert.index("-o") + 1].endswith("float.onnx") and convert[convert.index("-r") + 1] == "onnx"


def test_a_changed_setting_reruns_that_step_and_what_follows(tmp_path):
    pipeline = write_pipeline(tmp_path, QUICK)
    out = tmp_path / "out"
    run_json(pipeline, out)
    document = run_json(pipeline, out, "--set", "int8.per_channel=false")
    assert statuses(document) == {"float": "up to date", "int8": "ran", "bench": "ran"}
    assert ModelFile.open(out / "int8.onnx").lineage["steps"][-1]["recipe"]["per_channel"] is False
    # a step that runs again and makes the same bytes leaves the steps after it up to date
    state = json.loads((out / ".edgecli-run.json").read_text())
    del state["steps"]["float"]
    (out / ".edgecli-run.json").write_text(json.dumps(state))
    document = run_json(pipeline, out, "--set", "int8.per_channel=false")
    assert statuses(document) == {"float": "ran", "int8": "up to date", "bench": "up to date"}


def test_a_failing_step_stops_the_run_leaves_no_output_and_runs_again(tmp_path, sample):
    spec = {
        **QUICK,
        "steps": [
            QUICK["steps"][0],
            {
                "name": "int8",
                "verb": "quantize",
                "recipe": "int8-static",
                "data": "calib",
                "set": {"calibration.samples": 64},
            },
            {"name": "phone", "verb": "convert", "recipe": "tflite", "data": "eval"},
        ],
    }
    pipeline = write_pipeline(tmp_path, spec)
    out = tmp_path / "out"
    result = run_cli("run", pipeline, "--out", out, "-q")
    assert result.code == 4  # the convert step's own exit code: an INT8 graph cannot go through onnx2tf
    assert "already quantized" in result.lines[0] and "step 'phone' failed (exit 4)" in result.lines[-1]
    assert "Traceback" not in result.stderr
    assert (out / "int8.onnx").is_file() and not (out / "phone.tflite").exists() and not (out / "bench.json").exists()
    assert not [name for name in leftovers(out) if name.endswith(".tmp")]
    recorded = json.loads((out / ".edgecli-run.json").read_text())["steps"]
    assert set(recorded) == {"float", "int8"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"stpes": []}, "unknown key 'stpes'"),
        (
            {"steps": [{"name": "a", "verb": "convert", "input": "${later}"}]},
            "refers to ${later}, which is not an earlier step",
        ),
        (
            {"steps": [{"name": "a", "verb": "convert"}, {"name": "a", "verb": "convert"}]},
            "step name 'a' is used twice",
        ),
        ({"steps": [{"name": "a", "verb": "compress"}]}, "'steps.0.verb'"),
        ({"steps": [{"name": "a", "verb": "convert", "recipe": "no-such-recipe"}]}, "no shipped convert recipe"),
        ({"steps": [{"name": "a", "verb": "convert", "recipe": "onnx", "set": {"opset": "high"}}]}, "'opset'"),
        ({"bench": {"models": ["${nothing}"]}}, "bench.models"),
    ],
)
def test_bad_pipelines_are_refused_before_any_work(tmp_path, change, message):
    pipeline = write_pipeline(tmp_path, {**QUICK, **change})
    result = run_cli("run", pipeline, "--out", tmp_path / "out")
    assert result.code == 2, result.stderr
    assert len(result.lines) == 1 and message in result.lines[0], result.lines
    assert not (tmp_path / "out").exists()


def test_a_step_output_never_overwrites_an_input(tmp_path, sample):
    model = tmp_path / "fashion_cnn.onnx"
    model.write_bytes(sample["onnx"].read_bytes())
    spec = {
        **QUICK,
        "model": str(model),
        "steps": [{"name": "fashion_cnn", "verb": "quantize", "recipe": "int8-dynamic"}],
    }
    result = run_cli("run", write_pipeline(tmp_path, spec), "--out", tmp_path)
    assert (
        result.code == 2
        and "step 'fashion_cnn' would write" in result.lines[0]
        and "an input of the pipeline" in result.lines[0]
    )
    assert model.read_bytes() == sample["onnx"].read_bytes()


def test_a_missing_model_is_unreadable_input(tmp_path):
    pipeline = write_pipeline(tmp_path, {**QUICK, "model": "missing.pt2"})
    result = run_cli("run", pipeline, "--out", tmp_path / "out")
    assert result.code == 3 and len(result.lines) == 1 and "model missing.pt2 does not exist" in result.lines[0]
    assert not (tmp_path / "out").exists()


def test_bad_overrides_and_unknown_pipelines(tmp_path):
    pipeline = write_pipeline(tmp_path, QUICK)
    result = run_cli("run", pipeline, "--out", tmp_path / "out", "--set", "nostep.lr=1")
    assert result.code == 2 and "STEP one of float, int8, bench" in result.lines[0]
    result = run_cli("run", "no-such-pipeline")
    assert result.code == 2 and "no shipped pipeline" in result.lines[0] and "edge-cnn" in result.lines[0]
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    result = run_cli("run", empty)
    assert result.code == 2 and "is empty" in result.lines[0]


def test_a_second_run_on_the_same_folder_is_refused_while_one_runs(tmp_path):
    pipeline = write_pipeline(tmp_path, QUICK)
    out = tmp_path / "out"
    out.mkdir()
    with (out / ".edgecli-run.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        result = run_cli("run", pipeline, "--out", out)
    assert result.code == 2 and "another edgecli run is using" in result.lines[0]
    assert [p.name for p in out.iterdir()] == [".edgecli-run.lock"]


def test_shipped_pipeline_plans_the_edge_chain(tmp_path):
    result = run_cli("run", "edge-cnn", "--out", tmp_path / "o", "--dry-run", cwd=ROOT)
    assert result.code == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.decode().splitlines()]
    assert [c[1] for c in commands] == ["prune", "distill", "quantize", "convert", "quantize", "bench"]
    outputs = [Path(c[c.index("-o") + 1]).name for c in commands[:-1]]
    assert outputs == ["pruned.pt2", "student.pt2", "int8.onnx", "mobile.ort", "litert.tflite"]
    distill = commands[1]
    assert distill[2].endswith("fashion_cnn.pt2") and f"student.path={tmp_path / 'o' / 'pruned.pt2'}" in distill
    assert [Path(m).name for m in commands[-1][2:8]] == ["fashion_cnn.pt2", *outputs]


def test_a_step_reading_a_file_path_plans_and_dry_run_carries_the_trust_flags(tmp_path, sample):
    # a step's input may be a path (not ${step}): its format is read from the bytes like the source's
    spec = {
        **QUICK,
        "steps": [
            QUICK["steps"][0],
            {
                "name": "int8",
                "verb": "quantize",
                "recipe": "int8-dynamic",
                "input": str(sample["onnx"]),
                "data": "calib",
            },
        ],
    }
    pipeline = write_pipeline(tmp_path, spec)
    plain = run_cli("run", pipeline, "--out", tmp_path / "out", "--dry-run")
    assert plain.code == 0, plain.stderr
    commands = [line for line in plain.stdout.decode().splitlines() if line.startswith("edgecli ")]
    assert [shlex.split(line)[1] for line in commands] == ["convert", "quantize", "bench"]
    assert shlex.split(commands[1])[2] == str(sample["onnx"].resolve()) or shlex.split(commands[1])[2].endswith(
        "fashion_cnn.onnx"
    )
    assert all("--trust" not in line for line in commands)
    trusted = run_cli("--trust-code", "--trust-pickle", "run", pipeline, "--out", tmp_path / "out", "--dry-run")
    assert trusted.code == 0, trusted.stderr
    pasted = [line for line in trusted.stdout.decode().splitlines() if line.startswith("edgecli ")]
    assert pasted == [line.replace("edgecli ", "edgecli --trust-pickle --trust-code ", 1) for line in commands]
    assert not (tmp_path / "out").exists()
