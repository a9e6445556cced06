"""quantize on a multi-input transformer: every shipped recipe, run through the CLI on a tiny BERT-like
classifier with integer inputs (input_ids, attention_mask, token_type_ids; tests/tiny_transformer.py),
its output run by edgecli's own runner and compared with the float ONNX model on held-out data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgecli.analysis.metrics import agreement
from edgecli.data.dataset import Dataset, load_dataset
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import DataSpec
from edgecli.runtimes import open_runner
from tests.conftest import leftovers, run_cli
from tests.tiny_transformer import INPUT_NAMES, SEQ_LEN

# Measured on 512 evaluation sequences (float model accuracy 1.0), then given margin:
# agreement 1.0 for every recipe; relative error mean|q - f| / mean|f|: int8-dynamic 1.2e-3,
# tflite-dynamic 7.0e-4, fp16 7.6e-5, tflite-fp16 7.4e-5; int8-static 4.5e-3 and tflite-int8 4.4e-3
# once the attention-mask nodes stay in float (quantize keeps them float).
# Size / float ONNX file (334,934 bytes, 316,196 of them float32 weights): int8-dynamic 0.389,
# tflite-dynamic 0.384, int8-static 0.39-0.40, tflite-int8 0.41, fp16 0.531, tflite-fp16 0.572.
INT8_MAX_RATIO, FP16_MAX_RATIO = 0.45, 0.62


# recipe, output suffix, kind (size bounds), smallest agreement, largest relative error, xfail reason
CASES = [
    ("int8-static", "onnx", "int8", 0.98, 0.02, None),
    ("int8-dynamic", "onnx", "int8", 0.98, 0.006, None),
    ("fp16", "onnx", "fp16", 0.995, 5e-4, None),
    ("tflite-int8", "tflite", "int8", 0.98, 0.02, None),
    ("tflite-dynamic", "tflite", "int8", 0.98, 0.005, None),
    ("tflite-fp16", "tflite", "fp16", 0.995, 5e-4, None),
]


def _param(recipe, suffix, kind, min_agreement, max_rel_error, xfail):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(recipe, suffix, kind, min_agreement, max_rel_error, marks=marks, id=recipe)


@pytest.fixture(scope="module")
def reference(tiny_transformer):
    """The evaluation data, the float model's logits on it and its input specs."""
    data = load_dataset(DataSpec(path=tiny_transformer.eval))
    runner = open_runner(ModelFile.open(tiny_transformer.onnx))
    return data, runner.predict(data)[0], runner.inputs


@pytest.fixture(scope="module")
def weight_bytes(tiny_transformer) -> int:
    """Bytes of the float model's float32 weights: FP16 keeps every one in 16 bits, so at least half."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(tiny_transformer.onnx))
    return sum(
        numpy_helper.to_array(t).nbytes for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
    )


def test_float_model_is_a_real_classifier_that_uses_every_input(tiny_transformer, reference):
    data, logits, inputs = reference
    assert [(s.name, s.dtype, s.shape) for s in inputs] == [
        (n, np.dtype(np.int64), (None, SEQ_LEN)) for n in INPUT_NAMES
    ]
    assert tiny_transformer.eval_accuracy >= 0.95  # 1.0 measured
    assert abs(float(np.mean(logits.argmax(1) == data.labels)) - tiny_transformer.eval_accuracy) < 1e-9
    assert not list(tiny_transformer.onnx.parent.glob("*.data"))  # one self-contained file
    runner = open_runner(ModelFile.open(tiny_transformer.onnx))
    for name, blank, most in (("attention_mask", 1, 0.95), ("token_type_ids", 0, 0.8)):  # 0.902, 0.553 measured
        inputs = {**data.inputs, name: np.full_like(data.inputs[name], blank)}
        blanked = runner.predict(Dataset(inputs, data.labels, "blanked"))[0]
        assert np.mean(blanked.argmax(1) == data.labels) <= most, name


@pytest.fixture(scope="module")
def quantized(tiny_transformer, tmp_path_factory):
    """`quantize(recipe, suffix)`: the CLI result and output path of one recipe on the transformer, run once."""
    folder = tmp_path_factory.mktemp("quantized")
    runs = {}

    def quantize(recipe: str, suffix: str):
        if recipe not in runs:
            out = folder / f"{recipe}.{suffix}"
            runs[recipe] = (
                run_cli(
                    "quantize",
                    tiny_transformer.onnx,
                    "-r",
                    recipe,
                    "--data",
                    tiny_transformer.calib,
                    "--eval-data",
                    tiny_transformer.eval,
                    # the latency fallback's decision follows the machine's load (a busy CI runner kept
                    # MatMul float: 0.96x the float size): the subject here is what quantization does
                    "--set",
                    "speed_check=false",
                    "-o",
                    out,
                    "-q",
                ),
                out,
            )
        return runs[recipe]

    return quantize


@pytest.mark.parametrize("recipe,suffix,kind,min_agreement,max_rel_error", [_param(*case) for case in CASES])
def test_recipe_on_transformer(
    tiny_transformer, reference, weight_bytes, quantized, recipe, suffix, kind, min_agreement, max_rel_error
):
    data, float_logits, float_inputs = reference
    result, out = quantized(recipe, suffix)
    assert result.code == 0, result.stderr
    runner = open_runner(ModelFile.open(out))
    # the integer inputs stay integer inputs, by name, with the same shape (any order: TFLite sorts them)
    specs = sorted((s.name, s.dtype, s.shape) for s in runner.inputs)
    assert specs == sorted((s.name, s.dtype, s.shape) for s in float_inputs)
    size = out.stat().st_size
    if kind == "int8":
        assert size <= INT8_MAX_RATIO * tiny_transformer.onnx.stat().st_size, size
    else:
        assert weight_bytes / 2 <= size <= FP16_MAX_RATIO * tiny_transformer.onnx.stat().st_size, size
    logits = runner.predict(data)[0]
    assert logits.shape == float_logits.shape and np.all(np.isfinite(logits))
    rel_error = float(np.abs(logits - float_logits).mean() / np.abs(float_logits).mean())
    assert rel_error <= max_rel_error, rel_error
    assert agreement(float_logits, logits) >= min_agreement
    metrics = ModelFile.open(out).lineage["steps"][-1]["metrics"]
    assert abs(metrics["agreement"] - agreement(float_logits, logits)) < 1e-9  # the CLI fed the int inputs too


@pytest.mark.parametrize("recipe,suffix", [(case[0], case[1]) for case in CASES])
def test_recipe_never_crashes(quantized, recipe, suffix):
    """Whatever a recipe makes of the attention mask, the command ends with an edgecli exit code and at most
    one line (a quantized -3.4e38 mask once made LiteRT abort the process: SIGABRT, exit 134)."""
    result, out = quantized(recipe, suffix)
    assert result.code in (0, 1, 3, 4), result.stderr
    assert len(result.lines) <= 1 and "Traceback" not in result.stderr, result.stderr
    assert out.exists() == (result.code in (0, 1))


def test_report_on_transformer_names_the_mask_layers_kept_float(tiny_transformer, tmp_path):
    out, report = tmp_path / "q.onnx", tmp_path / "q.json"
    result = run_cli(
        "quantize",
        tiny_transformer.onnx,
        "-r",
        "int8-static",
        "--data",
        tiny_transformer.calib,
        "--eval-data",
        tiny_transformer.eval,
        "--set",
        "min_agreement=0.99",
        "--set",
        "speed_check=false",  # the latency fallback can keep MatMul float on a busy machine (see `quantized`)
        "-o",
        out,
        "--report",
        report,
    )
    assert result.code == 0, result.stderr
    document = json.loads(report.read_text())
    layers = document["layers"]
    masked = [l for l in layers if (l["reason"] or "").startswith("attention mask")]
    assert sorted(l["op_type"] for l in masked) == ["Add", "Add", "Softmax", "Softmax"]
    matmuls = [l for l in layers if l["op_type"] == "MatMul" and l["quantized"]]
    assert len(matmuls) >= 4 and all(l["snr_db"] > 20 for l in matmuls)  # 29-35 dB measured
    assert document["guard"]["steps"] == [] and document["after"]["agreement"] >= 0.99


def _write_calibration(tiny_transformer, folder, change):
    arrays = dict(np.load(tiny_transformer.calib))
    path = folder / "calib.npz"
    np.savez(path, **change(arrays))
    return path


@pytest.mark.parametrize("recipe,suffix", [("int8-static", "onnx"), ("tflite-int8", "tflite")])
def test_calibration_missing_an_input_exits_3(tiny_transformer, tmp_path, recipe, suffix):
    calib = _write_calibration(
        tiny_transformer, tmp_path, lambda a: {k: v for k, v in a.items() if k != "token_type_ids"}
    )
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    result = run_cli(
        "quantize", tiny_transformer.onnx, "-r", recipe, "--data", calib, "-o", out_folder / f"q.{suffix}", "-q"
    )
    assert result.code == 3, result.stderr
    assert len(result.lines) == 1, result.stderr
    assert result.lines[0].startswith("cannot read data:") and "token_type_ids" in result.lines[0]
    assert leftovers(out_folder) == []


@pytest.mark.parametrize("recipe,suffix", [("int8-static", "onnx"), ("tflite-int8", "tflite")])
def test_calibration_with_wrong_sequence_length_exits_3(tiny_transformer, tmp_path, recipe, suffix):
    half = SEQ_LEN // 2
    calib = _write_calibration(
        tiny_transformer, tmp_path, lambda a: {k: v if k == "y" else v[:, :half] for k, v in a.items()}
    )
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    result = run_cli(
        "quantize", tiny_transformer.onnx, "-r", recipe, "--data", calib, "-o", out_folder / f"q.{suffix}", "-q"
    )
    assert result.code == 3, result.stderr
    assert len(result.lines) == 1, result.stderr
    line = result.lines[0]
    assert line.startswith("cannot read data:") and f"{half}]" in line and f"{SEQ_LEN}]" in line, line
    assert leftovers(out_folder) == []


# --- onnx2tf sees GELU as TFLite's builtin GELU, whatever order the exporter wrote it in ----------------


def _gelu_graph(head: str, half_first: bool):
    """y = gelu(x) as exporters write it: x / sqrt2 (or x * 1/sqrt2) -> Erf -> + 1 -> * 0.5 and * x."""
    from onnx import TensorProto, helper, numpy_helper

    constants = {"sqrt2": math.sqrt(2) if head == "Div" else 1 / math.sqrt(2), "one": 1.0, "half": 0.5}
    nodes = [
        helper.make_node(head, ["x", "sqrt2"], ["scaled"]),
        helper.make_node("Erf", ["scaled"], ["erf"]),
        helper.make_node("Add", ["one", "erf"], ["plus"]),
    ]
    if half_first:  # torch.onnx: 0.5 * (1 + erf), then * x
        nodes += [helper.make_node("Mul", ["half", "plus"], ["m"]), helper.make_node("Mul", ["x", "m"], ["y"])]
    else:
        nodes += [helper.make_node("Mul", ["plus", "x"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("head", ["Div", "Mul"])
@pytest.mark.parametrize("half_first", [True, False])
def test_gelu_rewritten_in_the_order_onnx2tf_fuses(head, half_first):
    import onnx
    import onnxruntime as ort

    from edgecli.backends.tflite_convert import gelu_for_onnx2tf

    proto = _gelu_graph(head, half_first)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32) * 3
    before = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    assert gelu_for_onnx2tf(proto) == 1
    onnx.checker.check_model(proto)
    after = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    assert np.abs(after - before).max() < 1e-6
    ops = [(n.op_type, list(n.input)) for n in proto.graph.node]
    constant = next(n.output[0] for n in proto.graph.node if n.op_type == "Constant")
    assert ops[1:] == [
        ("Div", ["x", constant]),
        ("Erf", ["scaled"]),
        ("Add", ["erf", "one"]),
        ("Mul", ["x", "plus"]),
        ("Mul", ["m", "half"]),
    ]


def test_gelu_rewrite_leaves_other_erf_alone():
    from onnx import numpy_helper

    from edgecli.backends.tflite_convert import gelu_for_onnx2tf

    proto = _gelu_graph("Div", True)
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array(2.0, np.float32), "sqrt2"))  # erf(x / 2)
    assert gelu_for_onnx2tf(proto) == 0
