"""Labels outside the model's classes, NaN/Inf in model outputs, and an .npz with an unrelated extra
array, through the real CLI (issue 17, findings 5, 8 and part of 12); plus the functions that judge
NaN (parity, metrics, the quantize guard) on real arrays.

Labels 99 or -1 for the 10-class sample model are refused (exit 3, one line naming the value, its row
and the number of classes) before any work: no calibration, no timing, no fine-tuning. A model whose
output is NaN on some inputs (a real ONNX graph: Sqrt of a negative intermediate) fails convert's
parity check (exit 4) and quantize's guard (exit 1), and bench reports it and fails gates on its
quality. An extra `meta` array of another length is ignored with a warning. Each command is its own
process, forked from a warm interpreter (tests/conftest.py, run_cli); one label case starts a
real one (run_cli_process).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SAMPLE, run_cli, run_cli_process
from tests.robustness.conftest import assert_refused

PT2, ONNX = SAMPLE / "fashion_cnn.pt2", SAMPLE / "fashion_cnn.onnx"
FAST_BENCH = ["-r", "default", "--set", "memory=false", "--set", "runs=3", "--set", "min_time_s=0", "--set", "warmup=1"]


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small datasets cut from the sample ones (64 eval, 128 train samples), with bad labels, an extra
    array; and an ONNX model that computes NaN on half of the eval samples."""
    folder = tmp_path_factory.mktemp("labels-nan")
    evaluation, train = np.load(SAMPLE / "eval.npz"), np.load(SAMPLE / "train.npz")
    x, y = evaluation["x"][:64], evaluation["y"][:64]
    tx, ty = train["x"][:128], train["y"][:128]
    paths: dict[str, Path] = {}

    def save(name: str, **arrays: np.ndarray) -> None:
        paths[name] = folder / f"{name}.npz"
        np.savez(paths[name], **arrays)

    for label, row in ((99, 3), (-1, 5)):
        bad, bad_train = y.copy(), ty.copy()
        bad[row], bad_train[row] = label, label
        save(f"eval{label}", x=x, y=bad)
        save(f"train{label}", x=tx, y=bad_train)
    save("eval", x=x, y=y)
    save("train", x=tx, y=ty)
    save("meta", x=x, y=y, meta=np.arange(3))
    paths["nan"] = nan_model(folder / "nan.onnx", x)
    return paths


def nan_model(path: Path, x: np.ndarray) -> Path:
    """output = (flatten(input) @ W) * sqrt(mean(input) - c), c the median of the samples' means: NaN
    (Sqrt of a negative number, computed, not stored) on the samples darker than the median. Its
    weights are finite, so edgecli's non-finite weight check lets it through."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = np.float32(np.median(x.reshape(len(x), -1).mean(1)))
    w = (np.random.default_rng(0).normal(size=(784, 10)) * 0.05).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "W"], ["logits"], name="matmul"),
        helper.make_node("ReduceMean", ["flat"], ["mean"], name="mean", axes=[1], keepdims=1),
        helper.make_node("Sub", ["mean", "c"], ["shifted"], name="sub"),
        helper.make_node("Sqrt", ["shifted"], ["root"], name="sqrt"),
        helper.make_node("Mul", ["logits", "root"], ["output"], name="mul"),
    ]
    graph = helper.make_graph(
        nodes,
        "nan",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(c), "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


# --- labels outside the model's classes --------------------------------------------------------


def _label_case(verb: str, label: int, files: dict[str, Path], out: Path) -> tuple[list[object], list[Path]]:
    """The command line for `verb` with labels `label` where the verb reads them, and its inputs."""
    if verb == "quantize":
        return ["quantize", ONNX, "-r", "int8-dynamic", "--eval-data", files[f"eval{label}"], "-o", out / "q.onnx"], [
            ONNX,
            files[f"eval{label}"],
        ]
    if verb == "bench":
        return ["bench", ONNX, *FAST_BENCH, "--data", files[f"eval{label}"], "--json", out / "b.json"], [
            ONNX,
            files[f"eval{label}"],
        ]
    if verb == "prune":  # magnitude on the .pt2 fine-tunes 1 epoch: the labels must be refused before it
        return [
            "prune",
            PT2,
            "-r",
            "magnitude-50",
            "--data",
            files[f"train{label}"],
            "--eval-data",
            files["eval"],
            "-o",
            out / "p.pt2",
        ], [PT2, files[f"train{label}"], files["eval"]]
    return [
        "distill",
        ONNX,
        "--data",
        files[f"train{label}"],
        "--set",
        "epochs=1",
        "--set",
        "latency_runs=0",
        "-o",
        out / "d.pt2",
    ], [ONNX, files[f"train{label}"]]


@pytest.mark.parametrize("label", [99, -1])
@pytest.mark.parametrize("verb", ["quantize", "bench", "prune", "distill"])
def test_labels_outside_the_classes_are_refused_before_any_work(
    verb: str, label: int, files: dict[str, Path], out: Path
) -> None:
    args, inputs = _label_case(verb, label, files, out)
    before = digest(*inputs)
    run = run_cli_process if (verb, label) == ("quantize", 99) else run_cli  # one real process
    result = run(*args)  # not quiet: a progress bar (calibration, timing, fine-tuning) would be a second line
    row = 3 if label == 99 else 5
    line = assert_refused(
        result, 3, f"hold values outside 0..9 (e.g. {label} at row {row}): the model has 10 classes", out
    )
    assert line.startswith("cannot read data: labels 'y' of ") and "fine-tuning" not in result.stderr
    assert digest(*inputs) == before


def test_valid_labels_still_pass(files: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli(
        "quantize",
        ONNX,
        "-r",
        "int8-dynamic",
        "--eval-data",
        files["eval"],
        "--set",
        "max_accuracy_drop=0.05",
        "--set",
        "speed_check=false",
        "-o",
        tmp_path / "q.onnx",
        "-q",
    )
    assert result.code == 0, result.stderr
    result = run_cli(
        "bench",
        ONNX,
        tmp_path / "q.onnx",
        *FAST_BENCH,
        "--data",
        files["eval"],
        "--json",
        tmp_path / "b.json",
        "--set",
        "gates=['accuracy_drop <= 0.05', 'agreement >= 0.9']",
        "-q",
    )
    assert result.code == 0, result.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["models"]
    assert rows[0]["accuracy"] > 0.8 and rows[1]["non_finite_samples"] == 0
    result = run_cli(
        "prune",
        PT2,
        "-r",
        "magnitude-50",
        "--set",
        "finetune.epochs=0",
        "--data",
        files["train"],
        "--eval-data",
        files["eval"],
        "-o",
        tmp_path / "p.pt2",
        "-q",
    )
    assert result.code == 0, result.stderr


# --- NaN in a model's outputs ------------------------------------------------------------------


def test_parity_check_fails_on_nan_outputs(files: dict[str, Path], out: Path) -> None:
    before = digest(files["nan"], files["eval"])
    result = run_cli("convert", files["nan"], "-r", "ort-mobile", "--data", files["eval"], "-o", out / "nan.ort", "-q")
    line = assert_refused(result, 4, "the parent model computes NaN/Inf on 32 of 64 samples", out)
    assert line.startswith("parity check failed: ")
    assert "first non-finite tensor: 'root' (Sqrt node 'sqrt')" in line
    assert digest(files["nan"], files["eval"]) == before


@pytest.mark.parametrize("target", [[], ["--set", "min_agreement=0.5"]], ids=["no-target", "min-agreement"])
def test_quantize_guard_never_passes_nan_outputs(target: list[str], files: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli(
        "quantize",
        files["nan"],
        "-r",
        "int8-dynamic",
        "--eval-data",
        files["eval"],
        *target,
        "--set",
        "speed_check=false",
        "-o",
        tmp_path / "q.onnx",
        "--report",
        tmp_path / "r.json",
        "-q",
    )
    assert result.code == 1, result.stderr  # a gate failure: the model and its report are written
    assert "Traceback" not in result.stderr
    assert "the float model outputs NaN/Inf on 32 of 64 samples" in result.stderr
    assert "the quantized model outputs NaN/Inf on 32 of 64 samples" in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["metrics"]["non_finite_samples"] == 32
    if target:
        assert report["target_met"] is False


def test_bench_reports_nan_outputs_and_fails_gates_on_them(files: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / "b.json"
    result = run_cli(
        "bench",
        ONNX,
        files["nan"],
        *FAST_BENCH,
        "--data",
        files["eval"],
        "--json",
        report,
        "--set",
        "gates=['agreement >= 0', 'size_bytes >= 0']",
    )
    assert result.code == 1, result.stderr
    assert "nan.onnx outputs NaN/Inf on 32 of 64 samples" in result.stderr

    def no_bare_nan(token: str) -> None:
        raise AssertionError(f"bench --json wrote the non-JSON token {token}")

    rows = json.loads(report.read_text(), parse_constant=no_bare_nan)  # strict JSON: jq and browsers read it
    nan_row = rows["models"][1]
    assert nan_row["non_finite_samples"] == 32 and nan_row["cosine"] is None and nan_row["max_abs_diff"] is None
    assert nan_row["agreement"] <= 0.5  # the NaN samples disagree
    passed = {gate["gate"]: gate["passed"] for gate in rows["gates"]}
    assert passed == {
        "agreement >= 0": False,
        "size_bytes >= 0": True,
    }  # a number that meets the gate fails on NaN outputs


# --- an .npz with an unrelated extra array -----------------------------------------------------


def test_an_extra_array_of_another_length_is_ignored(files: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli(
        "quantize",
        ONNX,
        "-r",
        "int8-dynamic",
        "--eval-data",
        files["meta"],
        "--set",
        "speed_check=false",
        "-o",
        tmp_path / "q.onnx",
    )  # not quiet: -q silences warnings
    assert result.code == 0, result.stderr
    assert "ignoring 'meta' [3]: not 64 samples like the inputs ('x')" in result.stderr
    result = run_cli("bench", ONNX, *FAST_BENCH, "--data", files["meta"], "--json", tmp_path / "b.json", "-q")
    assert result.code == 0, result.stderr
    assert json.loads((tmp_path / "b.json").read_text())["models"][0]["accuracy"] > 0.8


# --- the judges on real arrays -----------------------------------------------------------------


class _Stub:
    """A runner that returns fixed outputs (check_parity's view of a model)."""

    def __init__(self, output: np.ndarray) -> None:
        from edgecli.runtimes.base import TensorSpec

        self.output = output
        self.outputs = [TensorSpec("output", (None, output.shape[1]), np.dtype(np.float32))]
        self.model = None  # not ONNX: nothing to locate

    def predict(self, data, description=None):
        return [self.output[: len(data)]]


def _data(count: int):
    from edgecli.data.dataset import Dataset

    return Dataset({"x": np.zeros((count, 3), np.float32)}, None, "d.npz")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("side", ["parent", "child", "both"])
def test_check_parity_refuses_non_finite_outputs(bad: float, side: str) -> None:
    from edgecli.analysis.parity import check_parity
    from edgecli.core.errors import ParityError
    from edgecli.recipes import ParitySpec

    good = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    broken = good.copy()
    broken[2, 1] = bad
    parent, child = (broken if side in ("parent", "both") else good), (broken if side in ("child", "both") else good)
    with pytest.raises(ParityError) as caught:
        check_parity(_Stub(parent), _Stub(child), _data(8), ParitySpec(), "onnx -> ort")
    assert "NaN/Inf on 1 of 8 samples of d.npz" in caught.value.message
    check_parity(_Stub(good), _Stub(good + 1e-7), _data(8), ParitySpec(), "onnx -> ort")  # finite and close: passes


def test_metrics_never_make_nan_look_fine() -> None:
    from edgecli.analysis.metrics import accuracy, agreement, compare, mean_cosine, non_finite_samples

    reference = np.eye(4, dtype=np.float32) * 5
    candidate = reference.copy()
    candidate[1] = np.nan  # argmax of a NaN row is its first NaN: index 0, not the label 1
    candidate[0, 3] = np.inf
    labels = np.arange(4)
    assert accuracy(reference, labels) == 1.0
    assert accuracy(candidate, labels) == 0.5 and agreement(reference, candidate) == 0.5
    assert non_finite_samples(candidate) == 2
    assert np.isnan(mean_cosine(reference, candidate))
    result = compare(reference, candidate)
    assert np.isnan(result["max_abs_diff"]) and np.isnan(result["relative_error"])
    assert np.isnan(compare(candidate, reference)["relative_error"])  # a NaN reference is not "relative error 0"


def test_first_divergence_sees_nan_on_one_side_only() -> None:
    from edgecli.analysis.parity_layers import differs, worst_samples

    a = np.ones((3, 4))
    b = a.copy()
    b[1, 2] = np.nan
    assert differs(a, b, 1e-4) == np.inf
    assert differs(b, b.copy(), 1e-4) is None  # the same NaN in both: not where they part
    assert worst_samples(a, b, 1) == [1]


def test_the_guard_target_fails_non_finite_metrics() -> None:
    from edgecli.stages.quantize.guard import Target

    clean = {"eval_samples": 10, "agreement": 1.0, "accuracy_drop": 0.0}
    tainted = {**clean, "non_finite_samples": 2}
    for target in (Target(), Target(min_agreement=0.5), Target(max_accuracy_drop=0.1)):
        assert target.failures(clean) == []
        assert target.failures(tainted) == ["the quantized model outputs NaN/Inf on 2 of 10 samples"]
    assert not Target(min_agreement=0.5).met(tainted) and Target(min_agreement=0.5).shortfall(tainted) == np.inf
    assert Target(min_agreement=0.9).failures({**clean, "agreement": float("nan")}) != []


def test_labels_are_checked_against_the_models_classes(files: dict[str, Path]) -> None:
    from edgecli.analysis.metrics import check_labels, output_classes
    from edgecli.core.errors import DataError
    from edgecli.data.dataset import load_dataset
    from edgecli.formats.model_file import ModelFile
    from edgecli.recipes import DataSpec
    from edgecli.runtimes import open_runner

    runner = open_runner(ModelFile.open(ONNX))
    good, bad = load_dataset(DataSpec(), files["eval"]), load_dataset(DataSpec(), files["eval99"])
    assert output_classes(runner, good)[0] == 10
    assert check_labels(runner, good) is None
    with pytest.raises(DataError) as caught:
        check_labels(runner, bad)
    assert caught.value.message == (
        f"labels 'y' of {files['eval99']} hold values outside 0..9 (e.g. 99 at row 3): the model has 10 classes"
    )
