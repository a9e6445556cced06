"""Lineage through real chains: sparsity and INT8 carried from step to step, and a step that loses
them (a student trained from a sparse model) warns and records it; inspect shows it all."""

from __future__ import annotations

import json

from edgecli.formats.model_file import ModelFile
from tests.conftest import data_args, run_cli


def steps_of(path) -> list[dict]:
    return ModelFile.open(path).lineage["steps"]


def test_sparsity_and_int8_are_carried_to_the_ort_file(sample, tmp_path):
    sparse, int8, ort = tmp_path / "sparse.onnx", tmp_path / "int8.onnx", tmp_path / "m.ort"
    assert (
        run_cli("prune", sample["onnx"], "-r", "magnitude-50", "--set", "finetune.epochs=0", "-o", sparse, "-q").code
        == 0
    )
    result = run_cli(
        "quantize", sparse, "-r", "int8-static", *data_args("quantize"), "--set", "calibration.samples=64", "-o", int8
    )
    assert result.code == 0, result.stderr
    result = run_cli("convert", int8, "-r", "ort-mobile", *data_args("convert"), "-o", ort)
    assert result.code == 0, result.stderr
    assert "did not keep" not in result.stderr
    states = [s["state"] for s in steps_of(ort)]
    assert [s["weight_dtype"] for s in states] == ["float32", "int8", "int8"]
    assert all(s["weight_sparsity"] >= 0.49 for s in states) and not any("lost" in s for s in states)
    shown = run_cli("inspect", ort, env={"COLUMNS": "250"})
    assert (
        shown.code == 0
        and "int8, 50% zeros" in shown.stderr
        and "magnitude-50" in shown.stderr
        and "lost" not in shown.stderr
    )


def test_a_student_trained_from_a_sparse_model_reports_the_lost_sparsity(sample, tmp_path):
    sparse, student = tmp_path / "sparse.pt2", tmp_path / "student.pt2"
    assert (
        run_cli("prune", sample["pt2"], "-r", "magnitude-50", "--set", "finetune.epochs=0", "-o", sparse, "-q").code
        == 0
    )
    result = run_cli(
        "distill",
        sample["pt2"],
        "-r",
        "kd-recover",
        "--set",
        f"student.path={sparse}",
        "--set",
        "epochs=1",
        "--set",
        "augment.views=1",
        "--set",
        "data.limit=300",
        "--set",
        "val_split=0",
        "--set",
        "latency_runs=0",
        "--set",
        "student.allow_larger=true",  # unstructured pruning keeps the parameter count: recovery, not shrinking
        "--data",
        sample["train"],
        "-o",
        student,
    )
    assert result.code == 0, result.stderr
    assert "distill did not keep what its input had: weight sparsity 50% -> 0%" in result.stderr
    steps = steps_of(student)
    assert [s["verb"] for s in steps] == ["prune", "distill"]  # the student's weights descend from the pruned model
    assert steps[1]["parent"]["sha256"] == ModelFile.open(sample["pt2"]).sha256  # the teacher
    assert steps[1]["files"]["student.path"] == {"name": "sparse.pt2", "sha256": ModelFile.open(sparse).sha256}
    assert steps[1]["state"]["lost"] == ["weight sparsity 50% -> 0%"]
    shown = run_cli("inspect", student, "--json", "-")
    assert json.loads(shown.stdout)["lineage"]["steps"][1]["state"]["lost"] == ["weight sparsity 50% -> 0%"]
    table = run_cli("inspect", student, env={"COLUMNS": "250"})
    assert "warning: step 2 (distill) lost weight sparsity 50% -> 0%" in table.stderr
