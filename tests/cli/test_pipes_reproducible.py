"""Pipes and reproducibility, for every verb that writes a model and every format it writes.

Each case runs the real CLI twice, in separate processes: once `MODEL -o FILE`, once with the model's
bytes on stdin (`-`) and `-o -`. The bytes on stdout equal the file's, which proves at once that
  - the format of a model on stdin is detected from its bytes (the same artifact comes out),
  - stdout carries nothing but the model (no TensorFlow, onnx2tf or onnxruntime prints, no progress,
    no warnings: the runs are not quiet, so all of those are emitted, to stderr),
  - the same input, recipe and seed give the same artifact, byte for byte (ONNX, TFLite, .pt2, ORT).
The artifact's last lineage step names the input's bytes (sha256) as its parent, also for a model piped in.
Inputs on stdin: .pt2, ONNX, a state_dict and a .keras archive (model-writing verbs); TFLite and ORT,
which only inspect and bench read (bench refuses stdin), through inspect.
Settings are cut down (data limits, one epoch, few parity samples): they change the amount of work,
not the code paths.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgecli.formats.model_file import ModelFile
from tests.conftest import SAMPLE, data_args, run_cli

PRUNE = ["--set", "data.limit=128", "--set", "eval_data.limit=64"]
CONVERT = ["--set", "parity.samples=32"]
CALIBRATE = ["--set", "calibration_samples=64"]
# Half the channels and one epoch on 128 images collapse the answers (exit 1, the model written): the
# bytes are the subject here, the answer check has its own tests (tests/analysis/test_answers.py).
UNJUDGED = ["--set", "answers.min_agreement=0"]

# Slowest first, so that pytest-xdist's workers finish together. The other shipped recipes (fp16,
# int8-dynamic, tflite-dynamic/fp16/int16, onnx-simplify, sparse-2of4, magnitude-80, macs-2x,
# kd-half-width, kd-unlabelled) run the same writers; each was run twice by hand with the same bytes.
CASES = [
    # verb, recipe, input, output suffix, overrides
    pytest.param("convert", "tflite-micro", "onnx", ".tflite", [*CONVERT, *CALIBRATE], id="convert-onnx-tflite-micro"),
    pytest.param(
        "quantize",
        "tflite-int8",
        "onnx",
        ".tflite",
        ["--set", "calibration.samples=64", "--set", "eval_data.limit=200"],
        id="quantize-onnx-tflite-int8",
    ),
    pytest.param("convert", "tflite", "onnx", ".tflite", CONVERT, id="convert-onnx-tflite"),
    pytest.param("convert", "onnx", "pt2", ".onnx", CONVERT, id="convert-pt2-onnx"),
    pytest.param(
        "prune", "channels-50", "pt2", ".pt2", [*PRUNE, "--set", "finetune.epochs=1", *UNJUDGED], id="prune-pt2-channel"
    ),
    pytest.param(
        "distill",
        "kd",
        "onnx",
        ".pt2",  # the piped run reads the teacher outputs the first one cached
        [
            "--set",
            "data.limit=256",
            "--set",
            "eval_data.limit=64",
            "--set",
            "epochs=1",
            "--set",
            "augment.views=1",
            "--set",
            "latency_runs=0",
            "--set",
            "answers.min_agreement=0",  # one epoch on 256 images (agreement ~0.27): the subject is the bytes
        ],
        id="distill-onnx-teacher-pt2",
    ),
    pytest.param(
        "quantize",
        "int8-static",
        "onnx",
        ".onnx",
        ["--set", "calibration.samples=64", "--set", "eval_data.limit=200"],
        id="quantize-onnx-int8-static",
    ),
    pytest.param(
        "prune", "magnitude-50", "onnx", ".onnx", [*PRUNE, "--set", "finetune.epochs=0"], id="prune-onnx-magnitude"
    ),
    pytest.param(
        "convert",
        "onnx",
        "state_dict",
        ".pt2",  # a state_dict, built with its model code
        [*CONVERT, "--set", "target=pt2", "--set", "model.factory=sample_models.fashion_cnn:build"],
        id="convert-state-dict-pt2",
    ),
    pytest.param("convert", "ort-mobile", "onnx", ".ort", CONVERT, id="convert-onnx-ort"),
]
INPUTS = {
    "pt2": SAMPLE / "fashion_cnn.pt2",
    "onnx": SAMPLE / "fashion_cnn.onnx",
    "state_dict": SAMPLE / "fashion_cnn.pt",
}


@pytest.mark.parametrize("verb, recipe, source, suffix, overrides", CASES)
def test_piped_artifact_equals_file_artifact(verb, recipe, source, suffix, overrides, tmp_path):
    trust = (
        {"EDGECLI_TRUST_CODE": "1"} if source == "state_dict" else None
    )  # the sample factory is code the tests trust
    check_pipe(verb, INPUTS[source], ["-r", recipe, *data_args(verb), *overrides], suffix, tmp_path, env=trust)


KERAS_MLP = """
import sys, keras, numpy as np
keras.utils.set_random_seed(0)
inputs = keras.Input((16,))
keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Dense(32, activation="relu")(inputs))).save(sys.argv[1] + "/mlp.keras")
np.savez(sys.argv[1] + "/mlp.npz", x=np.random.default_rng(0).normal(size=(128, 16)).astype(np.float32))
"""


def test_keras_on_stdin(tmp_path):
    """A .keras archive (read by convert and quantize) piped in: detected from its bytes, converted by TensorFlow."""
    subprocess.run([sys.executable, "-c", KERAS_MLP, str(tmp_path)], check=True, capture_output=True)
    check_pipe(
        "convert",
        tmp_path / "mlp.keras",
        ["-r", "tflite", "--data", tmp_path / "mlp.npz", *CONVERT],
        ".tflite",
        tmp_path,
    )


def check_pipe(
    verb: str, model: Path, args: list, suffix: str, tmp_path: Path, env: dict[str, str] | None = None
) -> None:
    """`verb MODEL ARGS -o FILE` and `verb - ARGS -o -` (MODEL's bytes on stdin) write the same bytes."""
    out = tmp_path / f"out{suffix}"
    to_file = run_cli(verb, model, *args, "-o", out, env=env)
    assert to_file.code == 0, to_file.stderr
    assert to_file.stdout == b""  # the summary, progress and library chatter all go to stderr
    piped = run_cli(verb, "-", *args, "-o", "-", stdin=model.read_bytes(), env=env)
    assert piped.code == 0, piped.stderr
    assert piped.stdout == out.read_bytes(), f"stdout ({len(piped.stdout)} bytes) != file ({out.stat().st_size} bytes)"
    step = ModelFile.open(out).lineage["steps"][-1]  # the same bytes as the piped artifact
    assert step["verb"] == verb
    assert step["parent"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    if suffix in (".tflite", ".ort"):  # no model-writing verb reads these: inspect reads them from stdin
        inspected = run_cli("inspect", "-", "--json", "-", stdin=piped.stdout)
        assert inspected.code == 0, inspected.stderr
        info = json.loads(inspected.stdout)
        assert info["format"] == suffix[1:] and info["lineage"]["steps"][-1] == step
