"""The TFLite quantizer's Python API (edgecli.stages.quantize.tflite): one conversion, many
quantizations; per-layer error; layers kept in float; 16x8; integer (token id) inputs. Real models and
data, every result run on LiteRT."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from edgecli.analysis.metrics import agreement
from edgecli.core.errors import TransformError, UsageError
from edgecli.data.dataset import Dataset, load_dataset
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import DataSpec, QuantizeRecipe
from edgecli.runtimes import open_runner
from edgecli.stages.artifact import Artifact, staged
from edgecli.stages.quantize.layers import most_sensitive, snr_db
from edgecli.stages.quantize.tflite import tflite_quantizer
from edgecli.stages.quantize.tflite_layers import Graph, op_names
from tests.unit_helpers import keras_models, session_folder

WEIGHTED = {"CONV_2D", "FULLY_CONNECTED"}
SAME_SCALE = {"MAX_POOL_2D", "TRANSPOSE", "RESHAPE"}  # the sample CNN's ops that keep their input's scale


def _recipe(**settings) -> QuantizeRecipe:
    return QuantizeRecipe(**{"format": "tflite", "mode": "static", **settings})


def _predict(artifact: Artifact, data: Dataset) -> tuple[list, np.ndarray]:
    """The artifact's input specs and outputs on `data`, run on LiteRT through edgecli's runner."""
    with staged(artifact) as candidate:
        runner = open_runner(candidate)
        return runner.inputs, runner.predict(data)[0]


def _computes_in_float(artifact: Artifact, node: str) -> bool:
    """Whether the op that makes tensor `node` in the flatbuffer has a float output."""
    graph = Graph(artifact.payload)
    op = graph.source(graph.by_name[node])
    return np.issubdtype(graph.detail(op.outputs[0])["dtype"], np.floating)


@pytest.fixture(scope="module")
def fashion(sample):
    """The sample CNN, its float outputs on eval.npz, and its calibration data."""
    model = ModelFile.open(sample["onnx"])
    runner = open_runner(model)
    evaluation = load_dataset(DataSpec(path=sample["eval"]))
    calib = load_dataset(DataSpec(path=sample["calib"]))
    return SimpleNamespace(
        model=model, runner=runner, eval=evaluation, reference=runner.predict(evaluation)[0], calib=calib
    )


@pytest.fixture(scope="module")
def int8(fashion):
    """Full-integer INT8 (float inputs and outputs), ranges from ONE calibration image (they clip the
    other images' activations: a measurable loss for float layers to win back), converted once."""
    recipe = _recipe(calibration={"samples": 1})
    with tflite_quantizer(fashion.model, recipe, fashion.runner, fashion.calib) as quantizer:
        full = quantizer.quantize()
        layers = quantizer.layer_errors(full, fashion.calib.take(64))
        yield SimpleNamespace(quantizer=quantizer, full=full, layers=layers)


def test_layer_errors_one_record_per_layer(int8, fashion):
    layers = int8.layers
    nodes = [layer.node for layer in layers]
    assert nodes == op_names(int8.quantizer.calibrated())[0]  # every op of the float graph, in order
    assert len(set(nodes)) == len(nodes) == 13
    assert sorted(l.op_type for l in layers if l.op_type in WEIGHTED) == ["CONV_2D"] * 7 + ["FULLY_CONNECTED"]
    assert all(layer.quantized and layer.reason is None for layer in layers)
    assert {l.op_type for l in layers if l.extra.get("same_scale")} == SAME_SCALE
    for layer in layers:
        assert math.isfinite(layer.snr_db) and 15 < layer.snr_db < 60, layer  # measured 21.8-36.2 dB
        assert layer.rel_mse == pytest.approx(10 ** (-layer.snr_db / 10), rel=1e-9)
    rel = {layer.node: layer.rel_mse for layer in layers}
    assert layers[0].sensitivity == pytest.approx(layers[0].rel_mse)  # fed by the model input only
    assert layers[1].sensitivity == pytest.approx(rel[layers[1].node] - rel[layers[0].node])  # a chain of convs
    # The last layer is the model output: its SNR is the written model's output SNR, on LiteRT's
    # optimised kernels and against the ONNX float model (measured 21.79 vs 21.78 dB).
    sample = fashion.calib.take(64)
    output = _predict(int8.full, sample)[1]
    assert layers[-1].op_type == "FULLY_CONNECTED"
    assert abs(layers[-1].snr_db - snr_db(fashion.runner.predict(sample)[0], output)) < 0.5


def test_every_layer_name_is_accepted_by_quantize(int8):
    for layer in int8.layers:
        candidate = int8.quantizer.quantize([layer.node])
        if layer.op_type in ("MAX_POOL_2D",):  # same scale in and out: the quantizer keeps it integer
            assert candidate.payload == int8.full.payload
            continue
        assert _computes_in_float(candidate, layer.node), layer.node
        others = [l.node for l in int8.layers if l.op_type in WEIGHTED and l.node != layer.node]
        assert not any(_computes_in_float(candidate, node) for node in others)


def test_the_most_sensitive_layers_in_float_win_back_agreement(int8, fashion):
    worst = [layer.node for layer in most_sensitive(int8.layers)][:3]
    assert int8.layers[-1].node == worst[0]  # the output layer's clipped range costs most (SNR 21.8 dB)
    full_agreement = agreement(fashion.reference, _predict(int8.full, fashion.eval)[1])
    assert full_agreement < 0.998  # measured 0.9960 on eval.npz
    for k, gain in ((1, 0.0015), (3, 0.0025)):  # measured +0.0025 and +0.0035 (5 and 7 of 2000 images)
        kept = int8.quantizer.quantize(worst[:k])
        kept_agreement = agreement(fashion.reference, _predict(kept, fashion.eval)[1])  # runs on LiteRT
        assert kept_agreement >= full_agreement + gain, (k, full_agreement, kept_agreement)
        after = {layer.node: layer for layer in int8.quantizer.layer_errors(kept, fashion.calib.take(64))}
        assert {node for node, layer in after.items() if not layer.quantized} == set(worst[:k])
        # the float output layer's output is no longer clipped: measured 21.8 -> 30.9 dB
        assert after[worst[0]].snr_db > int8.layers[-1].snr_db + 6
    assert len(kept.payload) < 0.5 * fashion.model.size_bytes  # these float layers are small ones


def test_quantize_is_deterministic_and_checks_layer_names(int8):
    assert int8.quantizer.quantize().payload == int8.full.payload
    with pytest.raises(UsageError, match="not in the TFLite model") as caught:
        int8.quantizer.quantize(["conv1"])
    assert "exclude_nodes takes TFLite names" in caught.value.hint


@pytest.fixture(scope="module")
def keras_cnn():
    models = keras_models()
    model = ModelFile.open(models.keras)
    runner = open_runner(model)
    data = Dataset({"x": models.calibration}, None, "uniform images")
    return SimpleNamespace(model=model, runner=runner, data=data, reference=runner.predict(data)[0])


def test_int16_activations_int16_io_and_no_float_layers(keras_cnn):
    snrs = {}
    for activations in ("int8", "int16"):
        recipe = _recipe(activation_type=activations, io_type="int8", calibration={"samples": 64})
        with tflite_quantizer(keras_cnn.model, recipe, keras_cnn.runner, keras_cnn.data) as quantizer:
            quantized = quantizer.quantize()
            inputs, output = _predict(quantized, keras_cnn.data)
            assert inputs[0].dtype == (np.int16 if activations == "int16" else np.int8)  # 16x8: int16 I/O
            layers = quantizer.layer_errors(quantized, keras_cnn.data.take(32))
            assert [l.op_type for l in layers] == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
            assert all(l.quantized and math.isfinite(l.snr_db) for l in layers)
            snrs[activations] = snr_db(keras_cnn.reference, output)
            if activations == "int8":  # a float layer between int8 inputs and outputs (float builtins)
                kept = quantizer.quantize([layers[0].node])
                assert _computes_in_float(kept, layers[0].node)
                kept_inputs, kept_output = _predict(kept, keras_cnn.data)  # runs on LiteRT
                assert kept_inputs[0].dtype == np.int8
                assert snr_db(keras_cnn.reference, kept_output) > snrs["int8"] - 1
            if activations == "int16":
                assert not quantizer.float_fallback
                with pytest.raises(UsageError, match="int16"):
                    quantizer.quantize([layers[0].node])
    # The same int8 weights bound both here (measured 32.5 -> 32.8 dB); the sample CNN gains more (CLI test).
    assert snrs["int16"] >= snrs["int8"], snrs


@pytest.mark.parametrize("mode", ["dynamic", "fp16"])
def test_weight_only_modes_have_no_layer_list(keras_cnn, mode):
    with tflite_quantizer(keras_cnn.model, _recipe(mode=mode), keras_cnn.runner, None) as quantizer:
        with pytest.raises(UsageError, match=f"mode {mode}"):
            quantizer.quantize(["anything"])
        if mode == "dynamic":  # every weight here is under the 1024 values dynamic range quantizes
            with pytest.raises(TransformError, match="found no weight tensor"):
                quantizer.quantize()
            return
        quantized = quantizer.quantize()
        assert quantizer.layer_errors(quantized, keras_cnn.data.take(8)) == []


def test_integer_inputs_keep_their_dtype_through_calibration():
    """Token ids reach the calibrator as integers (they used to be cast to float32, which it refuses)."""
    import keras

    from edgecli.core import console

    keras.utils.set_random_seed(0)
    network = keras.Sequential(
        [
            keras.Input((12,), dtype="int32"),
            keras.layers.Embedding(50, 8),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    )
    path = session_folder() / "tokens.keras"
    with console.muted():
        network.save(path)
    model = ModelFile.open(path)
    runner = open_runner(model)
    data = Dataset(
        {"x": np.random.default_rng(0).integers(0, 50, (64, 12))}, None, "token ids"
    )  # int64, as npz holds them
    with tflite_quantizer(model, _recipe(io_type="int8", calibration={"samples": 32}), runner, data) as quantizer:
        quantized = quantizer.quantize()
        inputs, output = _predict(quantized, data)
        layers = quantizer.layer_errors(quantized, data)
    assert inputs[0].dtype == np.int32 and inputs[0].scale == 0  # ids stay ids, even with io_type int8
    assert agreement(runner.predict(data)[0], output) >= 0.95  # measured 0.984 (63 of 64)
    # the index arithmetic on the ids (LESS/ADD/SELECT_V2 wrapping negative ids) is not a layer
    assert [l.op_type for l in layers] == ["GATHER", "MEAN", "FULLY_CONNECTED"]
    assert all(l.quantized and math.isfinite(l.snr_db) for l in layers)


def test_transformer_inputs_by_name_and_attention_mask_kept_float(tiny_transformer):
    """Three int64 inputs, which the SavedModel onnx2tf writes orders by name (calibration feeds them by
    name), and an additive attention mask of -3.4e38: full-integer INT8 keeps the ops that carry it
    into each softmax in float (in INT8 its scale would be 1.3e36, which LiteRT cannot even prepare)."""
    model = ModelFile.open(tiny_transformer.onnx)
    runner = open_runner(model)
    calib, evaluation = (load_dataset(DataSpec(path=path)) for path in (tiny_transformer.calib, tiny_transformer.eval))
    with tflite_quantizer(model, _recipe(calibration={"samples": 128}), runner, calib) as quantizer:
        mask = quantizer.mask_nodes
        quantized = quantizer.quantize()
        layers = {layer.node: layer for layer in quantizer.layer_errors(quantized, calib.take(32))}
    op_types = [layers[node].op_type for node in mask]
    assert op_types.count("SOFTMAX") == 2 and op_types.count("ADD") == 2  # one per encoder layer
    assert all(not layers[node].quantized and layers[node].reason.startswith("attention mask") for node in mask)
    inputs, output = _predict(quantized, evaluation)
    assert sorted(spec.name for spec in inputs) == ["attention_mask", "input_ids", "token_type_ids"]
    reference = runner.predict(evaluation)[0]
    assert agreement(reference, output) >= 0.99  # measured 1.0
    assert np.abs(output - reference).mean() / np.abs(reference).mean() <= 0.01  # measured 0.0044
    assert len(quantized.payload) <= 0.45 * model.size_bytes  # measured 0.41
