"""More bad model inputs through the real CLI (issue 17): each one used to end in "internal error", a
line cut short, or a message that never said what to do.

ONNX external data outside the model's folder (a '..' path, an absolute path, a symbolic link) or
missing; models with no inputs or no outputs; ONNX files onnxruntime refuses (its C++ location and
signature are cut from the line); file names that are not UTF-8 or hold a newline; a Keras Lambda
layer; SavedModels whose graph reads or writes files (refused before TensorFlow loads them, unless
--trust-pickle), a SavedModel the TFLite converter fails on (no MLIR text in the line), a damaged
saved_model.pb. Every refusal is checked with assert_refused, and every input file is byte-identical
afterwards. The TensorFlow models are built once per session, in a subprocess. Each case is its own
process, forked from a warm interpreter (tests/conftest.py, run_cli; the SavedModels that
would write or read files never load in the test process); ONNX data outside the folder meets a real
process (run_cli_process).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SAMPLE, data_args, leftovers, run_cli, run_cli_process
from tests.robustness.conftest import assert_refused


def digest(path: Path) -> str:
    """SHA-256 of a file, or of every file under a folder (names included)."""
    sha = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        sha.update(os.fsencode(file.relative_to(path)) if path.is_dir() else b"")
        sha.update(file.read_bytes())
    return sha.hexdigest()


def refused_untouched(
    args: list[object], inputs: list[Path], code: int, phrase: str, out: Path, real: bool = False
) -> str:
    """Run the CLI (in a real process if `real`); assert the refusal contract and that every input is
    byte-identical afterwards."""
    before = [digest(p) for p in inputs]
    line = assert_refused((run_cli_process if real else run_cli)(*args), code, phrase, out)
    assert [digest(p) for p in inputs] == before
    return line


def inspect(model: Path, out: Path) -> list[object]:
    return ["inspect", model, "--json", out / "info.json"]


def bench(model: Path, out: Path) -> list[object]:
    return ["bench", model, "-r", "default", *data_args("bench"), "--json", out / "report.json"]


def convert(model: Path, out: Path, recipe: str = "onnx") -> list[object]:
    suffix = ".onnx" if recipe == "onnx" else ".tflite"
    return ["convert", model, "-r", recipe, *data_args("convert"), "-o", out / f"out{suffix}"]


# --- ONNX external data --------------------------------------------------------------------------


def external_model(folder: Path, location: str, write_data: bool = True) -> Path:
    """The sample ONNX model with its first initializer's data moved to `location`."""
    import onnx
    from onnx import TensorProto, numpy_helper

    folder.mkdir()
    proto = onnx.load(str(SAMPLE / "fashion_cnn.onnx"))
    tensor = proto.graph.initializer[0]
    raw = numpy_helper.to_array(tensor).tobytes()
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        tensor.external_data.add(key=key, value=value)
    path = folder / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    if write_data:
        (folder / location).write_bytes(raw)
    return path


def test_external_data_in_the_models_folder_is_read(tmp_path: Path, out: Path) -> None:
    model = external_model(tmp_path / "m", "weights.bin")
    result = run_cli(*convert(model, out))
    assert result.code == 0, result.stderr
    assert leftovers(out) == ["out.onnx"]


OUTSIDE = [("dotdot", "../../../../etc/passwd"), ("absolute", "/etc/passwd")]


@pytest.mark.parametrize("verb", ["inspect", "convert"])
@pytest.mark.parametrize(("kind", "location"), OUTSIDE, ids=[k for k, _ in OUTSIDE])
def test_external_data_outside_the_folder_is_refused(
    verb: str, kind: str, location: str, tmp_path: Path, out: Path
) -> None:
    model = external_model(tmp_path / "m", location, write_data=False)
    args = inspect(model, out) if verb == "inspect" else convert(model, out)
    phrase = f"keeps its data in '{location}', outside the model's folder"
    line = refused_untouched(args, [model], 3, phrase, out, real=kind == "dotdot" and verb == "inspect")
    assert "tensor '0.weight'" in line and "external data files must sit in the model's own folder" in line


def test_external_data_through_a_symbolic_link_is_refused(tmp_path: Path, out: Path) -> None:
    model = external_model(tmp_path / "m", "weights.bin", write_data=False)
    (model.parent / "weights.bin").symlink_to("/etc/passwd")
    for args in (inspect(model, out), convert(model, out)):
        refused_untouched(args, [model], 3, "keeps its data in 'weights.bin', a symbolic link", out)


def test_missing_or_short_external_data_is_refused(tmp_path: Path, out: Path) -> None:
    missing = external_model(tmp_path / "missing", "weights.bin", write_data=False)
    for args in (inspect(missing, out), convert(missing, out)):
        refused_untouched(args, [missing], 3, "keeps its data in 'weights.bin', which does not exist", out)
    short = external_model(tmp_path / "short", "weights.bin")
    (short.parent / "weights.bin").write_bytes(b"\0" * 8)
    refused_untouched(convert(short, out), [short, short.parent / "weights.bin"], 3, "truncated?", out)


# --- models with no inputs or no outputs; ONNX files onnxruntime refuses -------------------------


def tiny_onnx(path: Path, inputs: bool = True, outputs: bool = True, opset: int = 18, ir: int = 10) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 28, 28])
    if inputs:
        nodes = [helper.make_node("Relu", ["input"], ["y"])]
    else:  # a Constant-only graph
        nodes = [
            helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones((1, 1, 28, 28), np.float32)))
        ]
    graph = helper.make_graph(nodes, "g", [x] if inputs else [], [y] if outputs else [])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = ir
    onnx.save(proto, str(path))
    return path


NO_IO = [("inputs", {"inputs": False}), ("outputs", {"outputs": False})]
NO_IO_VERBS = ["inspect", "bench", "convert", "quantize"]


@pytest.mark.parametrize("verb", NO_IO_VERBS)
@pytest.mark.parametrize(("kind", "options"), NO_IO, ids=[k for k, _ in NO_IO])
def test_a_model_without_inputs_or_outputs_is_refused(
    verb: str, kind: str, options: dict, tmp_path: Path, out: Path
) -> None:
    model = tiny_onnx(tmp_path / "m.onnx", **options)
    args = {
        "inspect": inspect(model, out),
        "bench": bench(model, out),
        "convert": convert(model, out),
        "quantize": ["quantize", model, "-r", "int8-static", *data_args("quantize"), "-o", out / "out.onnx"],
    }[verb]
    refused_untouched(args, [model], 3, f"has no {kind}: edgecli runs, measures and transforms models", out)


ORT_REFUSALS = [
    ("ir99", {"ir": 99}, "Unsupported model IR version: 99"),
    ("opset99", {"opset": 99}, "Opset 99 is under development"),
]


@pytest.mark.parametrize(("name", "options", "phrase"), ORT_REFUSALS, ids=[n for n, _, _ in ORT_REFUSALS])
def test_onnxruntime_refusals_keep_only_the_reason(
    name: str, options: dict, phrase: str, tmp_path: Path, out: Path
) -> None:
    model = tiny_onnx(tmp_path / f"{name}.onnx", **options)
    line = refused_untouched(bench(model, out), [model], 3, phrase, out)
    assert line.startswith(f"cannot read model: onnxruntime cannot load {model}: ")
    assert "onnxruntime_src" not in line and "ONNXRuntimeError" not in line and "::" not in line


SHORT_VERBS = ["inspect", "bench", "convert", "quantize", "prune"]


@pytest.mark.parametrize("verb", SHORT_VERBS)
def test_a_tensor_shorter_than_its_shape_is_refused(
    verb: str, sample: dict[str, Path], tmp_path: Path, out: Path
) -> None:
    """numpy used to fail reshaping it (internal error) wherever the weights were first read."""
    import onnx

    proto = onnx.load(str(sample["onnx"]))
    tensor = next(t for t in proto.graph.initializer if t.name == "3.weight")
    tensor.raw_data = tensor.raw_data[:4]
    model = tmp_path / "short.onnx"
    model.write_bytes(proto.SerializeToString())
    args = {
        "inspect": inspect(model, out),
        "bench": bench(model, out),
        "convert": convert(model, out),
        "quantize": ["quantize", model, "-r", "int8-static", *data_args("quantize"), "-o", out / "out.onnx"],
        "prune": ["prune", model, "-r", "magnitude-50", *data_args("prune"), "-o", out / "out.onnx"],
    }[verb]
    refused_untouched(
        args,
        [model],
        3,
        "tensor '3.weight' holds 4 bytes but its shape [64, 32, 3, 3] of FLOAT needs 73,728; corrupt",
        out,
    )


# --- file names ------------------------------------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_read(sample: dict[str, Path], tmp_path: Path, out: Path) -> None:
    """onnxruntime takes UTF-8 paths only; edgecli hands such a model over as bytes."""
    name = os.fsencode(tmp_path) + b"/model\xff.onnx"
    with open(name, "wb") as handle:
        handle.write(sample["onnx"].read_bytes())
    model = Path(os.fsdecode(name))
    result = run_cli("inspect", model, "--json", "-")
    assert result.code == 0, result.stderr
    assert b'"format": "onnx"' in result.stdout
    result = run_cli(*bench(model, out), "--set", "runs=3", "--set", "min_time_s=0", "--set", "warmup=1")
    assert result.code == 0, result.stderr
    assert leftovers(out) == ["report.json"]


def test_a_bad_model_with_a_name_that_is_not_utf8_is_one_line(tmp_path: Path, out: Path) -> None:
    name = os.fsencode(tmp_path) + b"/bad\xff.onnx"
    with open(name, "wb") as handle:
        handle.write(b"")
    line = refused_untouched(inspect(Path(os.fsdecode(name)), out), [Path(os.fsdecode(name))], 3, "is empty", out)
    assert "bad\\udcff.onnx" in line  # the byte is shown escaped


def test_a_newline_in_a_path_stays_on_one_line(sample: dict[str, Path], tmp_path: Path, out: Path) -> None:
    folder = tmp_path / "two\nlines"
    folder.mkdir()
    empty = folder / "m.onnx"
    empty.write_bytes(b"")
    line = refused_untouched(convert(empty, out), [empty], 3, "is empty", out)
    assert "two\\nlines" in line
    missing = folder / "none.onnx"
    assert "two\\nlines" in assert_refused(run_cli(*inspect(missing, out)), 3, "does not exist", out)


# --- TensorFlow: Keras Lambda, SavedModels -----------------------------------------------------------

TF_SCRIPT = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from pathlib import Path
import keras
import tensorflow as tf

folder = Path(sys.argv[1])
marker = sys.argv[2]
keras.utils.set_random_seed(0)
lam = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Lambda(lambda x: x * 2.0), keras.layers.Flatten(),
                        keras.layers.Dense(10)])
lam.save(str(folder / "lambda.keras"))
genuine = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                            keras.layers.Flatten(), keras.layers.Dense(10)])
genuine.export(str(folder / "exported"))


class Module(tf.Module):
    def __init__(self, side_effect):
        super().__init__()
        self.w = tf.Variable(tf.random.stateless_normal((784, 10), seed=(1, 2)))
        self.side_effect = side_effect

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
    def __call__(self, x):
        logits = tf.reshape(x, (-1, 784)) @ self.w
        if self.side_effect == "write":
            tf.io.write_file(marker, tf.strings.as_string(tf.reduce_sum(x)))
        if self.side_effect == "read":
            logits += tf.cast(tf.strings.length(tf.io.read_file("/etc/hostname")), tf.float32) * 0.0
        if self.side_effect == "betainc":  # no TFLite kernel
            logits = tf.math.betainc(tf.ones_like(logits), tf.ones_like(logits), tf.sigmoid(logits))
        return {"logits": logits}


for name in ("plain", "write", "read", "betainc"):
    module = Module(name)
    tf.saved_model.save(module, str(folder / f"{name}_sm"), signatures=module.__call__)
unsigned = Module("plain")
unsigned(tf.zeros((1, 28, 28, 1)))
tf.saved_model.save(unsigned, str(folder / "unsigned_sm"), signatures={})
"""


@pytest.fixture(scope="session")
def tf_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Keras model with a Lambda layer, SavedModels (Keras model.export(), tf.saved_model.save of a plain
    tf.Module, one writing a file, one reading a file, one with an op TFLite lacks), built once."""
    folder = tmp_path_factory.mktemp("tf-models")
    marker = folder / "written-by-the-model"
    subprocess.run([sys.executable, "-c", TF_SCRIPT, folder, marker], check=True, capture_output=True, timeout=600)
    names = {
        "lambda": "lambda.keras",
        "exported": "exported",
        "plain": "plain_sm",
        "write": "write_sm",
        "read": "read_sm",
        "betainc": "betainc_sm",
        "unsigned": "unsigned_sm",
    }
    return {key: folder / name for key, name in names.items()} | {"marker": marker}


def test_a_keras_lambda_layer_names_trust_pickle(tf_models: dict[str, Path], out: Path) -> None:
    line = refused_untouched(inspect(tf_models["lambda"], out), [tf_models["lambda"]], 3, "holds a Lambda layer", out)
    assert line.endswith("(pass --trust-pickle if you trust this file)")
    assert "safe_mode" not in line


FILE_OPS = [("write", "WriteFile", "writes files"), ("read", "ReadFile", "reads files")]


@pytest.mark.parametrize(("key", "op", "does"), FILE_OPS, ids=[k for k, _, _ in FILE_OPS])
@pytest.mark.parametrize("verb", ["inspect", "convert"])
def test_a_saved_model_with_file_ops_is_refused(
    verb: str, key: str, op: str, does: str, tf_models: dict[str, Path], out: Path
) -> None:
    model = tf_models[key]
    args = inspect(model, out) if verb == "inspect" else convert(model, out, "tflite")
    line = refused_untouched(args, [model], 3, f"holds a {op} op (node '{op}' of function '__inference___call___", out)
    assert f"which {does} when the model runs" in line
    assert line.endswith("(pass --trust-pickle if you trust this file)")
    assert not tf_models["marker"].exists()


def test_trust_pickle_reads_a_saved_model_with_file_ops(tf_models: dict[str, Path]) -> None:
    result = run_cli("--trust-pickle", "inspect", tf_models["read"], "--json", "-")
    assert result.code == 0, result.stderr
    assert b'"format": "saved_model"' in result.stdout


@pytest.mark.parametrize("key", ["exported", "plain"])
def test_genuine_saved_models_still_convert(key: str, tf_models: dict[str, Path], tmp_path: Path, out: Path) -> None:
    """Their saver functions hold SaveV2/RestoreV2/MergeV2Checkpoints: allowed there, and only there."""
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).uniform(0, 1, (16, 28, 28, 1)).astype(np.float32))
    before = digest(tf_models[key])
    result = run_cli("convert", tf_models[key], "-r", "tflite", "--data", tmp_path / "x.npz", "-o", out / "out.tflite")
    assert result.code == 0, result.stderr
    assert leftovers(out) == ["out.tflite"] and digest(tf_models[key]) == before


def test_a_saved_model_conversion_failure_names_the_op_not_mlir(
    tf_models: dict[str, Path], tmp_path: Path, out: Path
) -> None:
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).uniform(0, 1, (16, 28, 28, 1)).astype(np.float32))
    model = tf_models["betainc"]
    args = ["convert", model, "-r", "tflite", "--data", tmp_path / "x.npz", "-o", out / "out.tflite"]
    line = refused_untouched(args, [model], 4, "ops TFLite has no builtin kernel for: Betainc (custom ops)", out)
    assert "%" not in line and "tf.entry_function" not in line and "loc(" not in line


def test_a_damaged_saved_model_pb_is_refused(tf_models: dict[str, Path], tmp_path: Path, out: Path) -> None:
    import shutil

    model = tmp_path / "damaged_sm"
    shutil.copytree(tf_models["plain"], model)
    (model / "saved_model.pb").write_bytes((model / "saved_model.pb").read_bytes()[:200])
    refused_untouched(inspect(model, out), [model], 3, "saved_model.pb is not a SavedModel protobuf", out)


def test_damaged_saved_model_variables_or_no_signature_are_refused(
    tf_models: dict[str, Path], tmp_path: Path, out: Path
) -> None:
    import shutil

    damaged = tmp_path / "damaged_variables_sm"
    shutil.copytree(tf_models["plain"], damaged)
    for part in (damaged / "variables").iterdir():
        part.write_bytes(np.random.default_rng(0).bytes(100))
    refused_untouched(
        convert(damaged, out, "tflite"), [damaged], 3, "is not a loadable SavedModel (not an sstable", out
    )
    unsigned = tf_models["unsigned"]
    refused_untouched(convert(unsigned, out, "tflite"), [unsigned], 3, "has no signature to convert", out)
