"""convert target tflite-micro: full-integer INT8 TFLite proven under TensorFlow Lite Micro, its tensor
arena measured, its budgets enforced, ops TFLM lacks refused. Checked with a fresh TFLM interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecli.formats.model_file import ModelFile
from tests.conftest import leftovers, run_cli

CALIBRATION = 64
PARITY = 200
FAST = ["--set", f"calibration_samples={CALIBRATION}", "--set", f"parity.samples={PARITY}"]


@pytest.fixture(scope="session")
def micro_sample(sample, tmp_path_factory):
    """The sample ONNX model converted with -r tflite-micro once for the session: (folder, result)."""
    folder = tmp_path_factory.mktemp("micro")
    result = run_cli(
        "convert",
        sample["onnx"],
        "-r",
        "tflite-micro",
        "--data",
        sample["eval"],
        *FAST,
        "-o",
        folder / "fashion.tflite",
    )
    return folder, result


@pytest.fixture(scope="session")
def tiny_keras(tmp_path_factory) -> Path:
    """Two tiny Keras MLPs (relu: TFLM runs it; gelu: TFLite's GELU builtin, which TFLM has no kernel for)
    and 128 random inputs for them."""
    import keras

    folder = tmp_path_factory.mktemp("tiny-keras")
    for name in ("relu", "gelu"):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((16,))
        hidden = keras.layers.Dense(32, activation=name)(inputs)
        keras.Model(inputs, keras.layers.Dense(4)(hidden)).save(folder / f"{name}.keras")
    np.savez(folder / "data.npz", x=np.random.default_rng(0).normal(size=(128, 16)).astype(np.float32))
    return folder


def _tflm(model: bytes, arena: int):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(model, arena_size=arena)


def _allocates_in_child(path: Path, arena: int) -> bool:
    """Whether a fresh TFLM interpreter allocates the model with `arena` bytes, asked in a child process:
    TFLM crashes (SIGSEGV) on some arenas too small instead of raising."""
    code = (
        "import sys\nfrom tflite_micro.python.tflite_micro import runtime\n"
        f"runtime.Interpreter.from_bytes(open({str(path)!r}, 'rb').read(), arena_size={arena})\nprint('allocated')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return proc.returncode == 0 and "allocated" in proc.stdout


def test_sample_model_runs_under_tflm_with_the_reported_arena(sample, micro_sample):
    folder, result = micro_sample
    assert result.code == 0, result.stderr
    out = folder / "fashion.tflite"
    assert leftovers(folder) == ["fashion.tflite"]
    assert "TensorFlow Lite Micro runs all" in result.stderr
    step = ModelFile.open(out).lineage["steps"][-1]
    metrics = step["metrics"]
    assert step["recipe"]["target"] == "tflite-micro" and step["io"]["input_layout"] == "NHWC"
    assert metrics["parity_samples"] == PARITY and metrics["parity_agreement"] >= 0.99
    arena, model = metrics["arena_bytes"], out.read_bytes()
    assert 0 < arena < len(model)  # activations of a 28x28 CNN: far less RAM than its weights
    assert metrics["model_bytes"] <= len(model) < metrics["model_bytes"] + 8192  # + the lineage metadata

    # every op, as the flatbuffer lists them, is one TFLM ran; the model is full-integer
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    parsed = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    ops = {names[max(c.builtinCode, c.deprecatedBuiltinCode)] for c in parsed.operatorCodes}
    assert ops == set(metrics["ops"]) and "CONV_2D" in ops and "FULLY_CONNECTED" in ops
    float_tensors = [t.name for g in parsed.subgraphs for t in g.tensors if t.type == schema.TensorType.FLOAT32]
    assert float_tensors == []

    # a fresh interpreter with exactly the reported arena runs held-out samples (after the ones
    # calibration and parity used) and agrees with the float ONNX model
    import onnxruntime as ort

    x = np.load(sample["eval"])["x"][CALIBRATION + PARITY : CALIBRATION + 2 * PARITY]
    reference = ort.InferenceSession(str(sample["onnx"]), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    interpreter = _tflm(model, arena)
    detail = interpreter.get_input_details(0)
    assert detail["dtype"] is np.int8 and list(detail["shape"]) == [1, 28, 28, 1]
    scale, zero_point = (
        detail["quantization_parameters"]["scales"][0],
        detail["quantization_parameters"]["zero_points"][0],
    )
    top1 = []
    for image in x.transpose(0, 2, 3, 1):
        interpreter.set_input(np.clip(np.round(image[None] / scale + zero_point), -128, 127).astype(np.int8), 0)
        interpreter.invoke()
        top1.append(int(np.argmax(interpreter.get_output(0))))
    assert len(top1) == PARITY
    assert np.mean(np.array(top1) == reference.argmax(1)) >= 0.99

    # the figure is the smallest arena: one byte less does not allocate, nor does much less
    assert not _allocates_in_child(out, arena - 1)
    assert not _allocates_in_child(out, arena // 2)


def test_budgets_exceeded_write_the_model_and_exit_1(tiny_keras, tmp_path):
    out = tmp_path / "relu.tflite"
    result = run_cli(
        "convert", tiny_keras / "relu.keras", "-r", "tflite-micro", "--data", tiny_keras / "data.npz",
        "--set", "calibration_samples=64", "--set", "parity.samples=64",
        "--set", "parity.min_agreement=0.9",  # a random untrained MLP: its top-1 margins are thin
        "--set", "micro.max_arena_bytes=1024", "--set", "micro.max_model_bytes=1000", "-o", out,
    )  # fmt: skip
    assert result.code == 1, result.stderr
    assert leftovers(tmp_path) == ["relu.tflite"]
    metrics = ModelFile.open(out).lineage["steps"][-1]["metrics"]
    assert metrics["ops"] == ["FULLY_CONNECTED"] and metrics["op_nodes"] == 2
    last = result.lines[-1]
    assert last.startswith("gate failed:")
    assert f"tensor arena {metrics['arena_bytes']:,} bytes > micro.max_arena_bytes 1,024" in last
    assert f"model {metrics['model_bytes']:,} bytes > micro.max_model_bytes 1,000" in last
    # within budget: exit 0
    ok = run_cli(
        "convert", tiny_keras / "relu.keras", "-r", "tflite-micro", "--data", tiny_keras / "data.npz",
        "--set", "calibration_samples=64", "--set", "parity.samples=64", "--set", "parity.min_agreement=0.9",
        "--set", f"micro.max_arena_bytes={metrics['arena_bytes']}", "-o", tmp_path / "ok.tflite", "-q",
    )  # fmt: skip
    assert ok.code == 0, ok.stderr


def test_op_without_a_tflm_kernel_exits_4_naming_it(tiny_keras, tmp_path):
    result = run_cli(
        "convert", tiny_keras / "gelu.keras", "-r", "tflite-micro", "--data", tiny_keras / "data.npz",
        "--set", "calibration_samples=64", "-o", tmp_path / "gelu.tflite",
    )  # fmt: skip
    assert result.code == 4, result.stderr
    assert result.lines[-1].startswith("transformation failed: TensorFlow Lite Micro has no kernel for GELU (1 node): ")
    assert leftovers(tmp_path) == []


def test_output_must_be_a_tflite_path(sample, tmp_path):
    result = run_cli(
        "convert", sample["onnx"], "-r", "tflite-micro", "--data", sample["eval"], "-o", tmp_path / "m.onnx"
    )
    assert result.code == 2
    assert "writes tflite" in result.lines[-1]
    assert leftovers(tmp_path) == []


def test_every_op_without_a_tflm_kernel_is_named():
    """TFLM stops at the first op it lacks; the check names all of them, and no other op."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    from edgecli.backends.micro import check_kernels, missing_ops
    from edgecli.core.errors import TransformError

    ops = schema.BuiltinOperator
    model = schema.ModelT()
    model.version, model.buffers, model.operatorCodes = 3, [schema.BufferT()], []
    for code in (ops.FULLY_CONNECTED, ops.GELU, ops.CONV_2D, ops.TILE):
        opcode = schema.OperatorCodeT()
        opcode.builtinCode, opcode.deprecatedBuiltinCode, opcode.version = code, min(code, 127), 1
        model.operatorCodes.append(opcode)
    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = [], [], [], []
    for index in (0, 1, 2, 3, 1):
        node = schema.OperatorT()
        node.opcodeIndex, node.inputs, node.outputs = index, [], []
        graph.operators.append(node)
    model.subgraphs = [graph]
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    data = bytes(builder.Output())

    assert missing_ops(data) == ["GELU", "TILE"]
    with pytest.raises(TransformError, match=r"no kernel for GELU \(2 nodes\), TILE \(1 node\): "):
        check_kernels(data)
