"""Shared fixtures: the committed sample model and a helper that runs the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# With one pytest-xdist worker per core, a PyTorch process with a thread per core oversubscribes the
# machine: measured 220 s against 46 s for the same fine-tuning test under `-n 2`. Commands the tests
# start inherit this (results stay deterministic: the same settings give the same bytes).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= (os.cpu_count() or 1):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
SAMPLE = ROOT / "sample_models" / "fashion"

# Two tiers. `make test` (the README's test command, under 10 minutes on 2 cores) runs every test not
# marked slow; `make test-slow` (run by CI after it) runs the rest: the whole example chain, the
# README's commands, training-heavy files, and the verb x case matrices of tests/robustness beyond
# the verbs in FAST_VERBS (each kind of bad input still meets inspect and quantize in the fast tier).
SLOW_FILES = (
    "tests/examples/",
    "tests/test_readme.py",
    "tests/stages/distill/test_stage.py",
    "tests/stages/quantize/test_tflite.py",
    "tests/stages/quantize/test_transformer.py",
)
MATRIX_FILES = ("tests/robustness/",)
FAST_VERBS = {"inspect", "quantize"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        verb = params.get("verb")
        if item.nodeid.startswith(SLOW_FILES) or (
            item.nodeid.startswith(MATRIX_FILES) and isinstance(verb, str) and verb not in FAST_VERBS
        ):
            item.add_marker(pytest.mark.slow)


_DATA_FILES = {
    "prune": ("train.npz", "eval.npz"),
    "distill": ("train.npz", "eval.npz"),
    "quantize": ("calib.npz", "eval.npz"),
    "convert": ("eval.npz", None),
    "bench": ("eval.npz", None),
}


def data_args(verb: str) -> list[str]:
    """The sample datasets for a verb, as a user passes them: --data (and --eval-data)."""
    data, evaluation = _DATA_FILES[verb]
    args = ["--data", str(SAMPLE / data)]
    return args + ["--eval-data", str(SAMPLE / evaluation)] if evaluation else args


@dataclass
class CliResult:
    code: int
    stdout: bytes
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_cli(
    *args: object, stdin: bytes | None = None, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> CliResult:
    """Run `python -m edgecli ARGS` as a user would; stdout is kept as bytes (it may carry a model)."""
    full_env = {k: v for k, v in os.environ.items() if k != "EDGECLI_DEBUG"}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "edgecli", *map(str, args)],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        cwd=cwd,
        env=full_env,
        timeout=600,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))


def leftovers(folder: Path) -> list[str]:
    """Files in `folder` (temporary files of an atomic write included)."""
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Teacher-output caches go to a folder of this test session, never to the user's ~/.cache."""
    os.environ["EDGECLI_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgecli-cache"))


@pytest.fixture(scope="session")
def sample() -> dict[str, Path]:
    paths = {
        "pt2": SAMPLE / "fashion_cnn.pt2",
        "onnx": SAMPLE / "fashion_cnn.onnx",
        "train": SAMPLE / "train.npz",
        "calib": SAMPLE / "calib.npz",
        "eval": SAMPLE / "eval.npz",
    }
    missing = [str(p) for p in paths.values() if not p.exists()]
    assert not missing, f"sample model files missing: {missing} (run sample_models/train.py)"
    return paths


@pytest.fixture(scope="session")
def sample_tflite(sample: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample ONNX model converted to TFLite once for the whole session."""
    out = tmp_path_factory.mktemp("tflite") / "fashion.tflite"
    result = run_cli("convert", sample["onnx"], "-r", "tflite", *data_args("convert"), "-o", out, "-q")
    assert result.code == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def sample_int8(sample: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample ONNX model quantized (static INT8) once for the whole session."""
    out = tmp_path_factory.mktemp("int8") / "fashion.int8.onnx"
    result = run_cli("quantize", sample["onnx"], "-r", "int8-static", *data_args("quantize"), "-o", out, "-q")
    assert result.code == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def tiny_transformer(tmp_path_factory: pytest.TempPathFactory):
    """A tiny BERT-like classifier with integer inputs (input_ids, attention_mask, token_type_ids),
    trained, exported to ONNX and .pt2 with its calib.npz/eval.npz once per session (tests/tiny_transformer.py)."""
    from tests.tiny_transformer import build_tiny_transformer

    return build_tiny_transformer(tmp_path_factory.mktemp("tiny-transformer"))
