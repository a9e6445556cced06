"""quantize to TFLite with TensorFlow Lite's converter: dynamic range, FP16, or full-integer (INT8, or
16x8: int16 activations with int8 weights) calibrated on real inputs. ONNX (and .pt2, through ONNX)
reach it as the SavedModel onnx2tf writes; Keras and SavedModel directly.

`tflite_quantizer` converts the model once; its TFLiteQuantizer then makes as many quantizations as
the accuracy guard asks for. Full-integer INT8 models are calibrated once (the float flatbuffer
with recorded ranges) and quantized from it by TensorFlow's MLIR quantizer, which can keep named
layers in float (its `denylisted_nodes`, as tf.lite.experimental.QuantizationDebugger uses it).
16x8 models come from the converter's own 16x8 quantizer, which has no such list, so they cannot
keep layers in float; dynamic-range and FP16 models neither."""

from __future__ import annotations

import contextlib
import difflib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from edgecli.backends.onnx_export import as_onnx_file
from edgecli.backends.tflite_convert import onnx2tf_output
from edgecli.core import console
from edgecli.core.errors import TransformError, UsageError, last_line
from edgecli.data.dataset import Dataset
from edgecli.formats.detect import Format
from edgecli.formats.keras_file import import_tensorflow, load_keras
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import QuantizeRecipe
from edgecli.runtimes.base import NCHW_TO_NHWC, Runner
from edgecli.stages.artifact import Artifact
from edgecli.stages.quantize.layers import LayerError


@contextlib.contextmanager
def _converter(model: ModelFile, tf: Any) -> Iterator[tuple[Any, bool]]:
    """A TFLiteConverter for the model, and whether its 4-D inputs became NHWC (onnx2tf)."""
    if model.format is Format.KERAS:
        yield tf.lite.TFLiteConverter.from_keras_model(load_keras(model.path)), False
        return
    if model.format is Format.SAVED_MODEL:
        yield tf.lite.TFLiteConverter.from_saved_model(str(model.path)), False
        return
    if model.format not in (Format.ONNX, Format.PT2):
        raise UsageError(f"cannot quantize {model.format.value} to TFLite")
    with as_onnx_file(model) as onnx_path, onnx2tf_output(onnx_path) as saved_model:
        yield tf.lite.TFLiteConverter.from_saved_model(str(saved_model)), True


def model_inputs(runner: Runner, batch: dict[str, np.ndarray], nhwc: bool) -> dict[str, np.ndarray]:
    """A dataset batch as the converted graph takes it, by input name (the converted model keeps the
    float model's input names): float inputs as float32 (4-D ones channels-last when onnx2tf converted
    the model), integer inputs (token ids, masks) in their own integer type."""
    feeds = runner.feeds(batch)
    arrays = {}
    for spec in runner.inputs:
        array = feeds[spec.name]
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32, copy=False)
            if nhwc and array.ndim == 4:
                array = array.transpose(NCHW_TO_NHWC)
        arrays[spec.name] = np.ascontiguousarray(array)
    return arrays


def _representative(
    runner: Runner, data: Dataset, nhwc: bool, tracker: Any
) -> Iterator[list[np.ndarray] | dict[str, np.ndarray]]:
    """One sample at a time, laid out as the converted graph expects. Several inputs go by name (the
    converter's signature): the converted graph may order them otherwise than the float model (the
    tiny transformer's SavedModel from onnx2tf sorts them by name)."""
    for index in range(len(data)):
        arrays = model_inputs(runner, data.batch(index, index + 1), nhwc)
        yield arrays if len(arrays) > 1 else list(arrays.values())
        tracker.advance()


def _unknown(kind: str, names: Sequence[str], known: Sequence[str], hint_key: str) -> UsageError:
    close = difflib.get_close_matches(names[0], list(known), n=1, cutoff=0.5)
    shown = sorted(known, key=len)[:4]
    listed = ", ".join(shown) + (
        f" and {len(known) - len(shown)} more (see --report)" if len(known) > len(shown) else ""
    )
    return UsageError(
        f"{kind} {', '.join(names)} not in the TFLite model" + (f"; did you mean {close[0]}?" if close else ""),
        hint=f"{hint_key} takes TFLite names: {listed}",
    )


class TFLiteQuantizer:
    """Quantizations of one converted model as the recipe asks, optionally with layers kept in float."""

    def __init__(
        self, tf: Any, converter: Any, recipe: QuantizeRecipe, runner: Runner, calib: Dataset | None, nhwc: bool
    ) -> None:
        self.tf, self.converter, self.recipe, self.runner, self.calib, self.nhwc = (
            tf,
            converter,
            recipe,
            runner,
            calib,
            nhwc,
        )
        self.full_integer = recipe.mode == "static"
        self.int16 = self.full_integer and recipe.activation_type == "int16"
        # Layers can be kept in float only where the MLIR quantizer makes the model (full-integer INT8).
        self.float_fallback = self.full_integer and not self.int16
        self._calibrated: bytes | None = None
        self._names: tuple[list[str], set[str]] | None = None
        self._mask_nodes: list[str] | None = None

    @property
    def io_dtype(self) -> Any:
        """The integer input/output type with io_type int8: int8, or int16 for 16x8 models (TensorFlow
        accepts only float32 or int16 inputs and outputs on 16x8 models)."""
        if not self.full_integer or self.recipe.io_type == "float":
            return self.tf.float32
        return self.tf.int16 if self.int16 else self.tf.int8

    def _convert(self, calibrate_only: bool = False) -> bytes:
        """Run TensorFlow's converter with the recipe's settings (all set anew on every call)."""
        tf, c, recipe = self.tf, self.converter, self.recipe
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.target_spec.supported_types = [tf.float16] if recipe.mode == "fp16" else []
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        c.inference_input_type = c.inference_output_type = tf.float32
        c.representative_dataset = None
        c._experimental_disable_per_channel = not recipe.per_channel
        c._experimental_calibrate_only = calibrate_only
        # quantize() refused static mode without calibration data before any quantizer was opened
        sample = self.calib.take(recipe.calibration.samples) if self.full_integer and self.calib is not None else None
        # TensorFlow's 16x8 path reads the calibration data twice (MLIR calibration, then its own quantizer).
        passes = 2 if self.int16 and not calibrate_only else 1
        with console.progress("calibrating (TFLite)", total=passes * len(sample) if sample is not None else 0) as bar:
            if sample is not None:
                c.representative_dataset = lambda: _representative(self.runner, sample, self.nhwc, bar)
                ops = tf.lite.OpsSet
                c.target_spec.supported_ops = [
                    ops.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
                    if self.int16
                    else ops.TFLITE_BUILTINS_INT8
                ]
                if not calibrate_only:
                    c.inference_input_type = c.inference_output_type = self.io_dtype
            try:
                with console.muted(), warnings.catch_warnings():
                    # 16x8 with int16 I/O: "Statistics for quantized inputs were expected" (TF sets them itself)
                    warnings.simplefilter("ignore", UserWarning)
                    return c.convert()
            except KeyError as exc:
                raise TransformError(
                    f"the converted model has no input named {exc}; calibration inputs are matched by name",
                    hint="name the data's arrays after the model's inputs",
                ) from None
            except Exception as exc:
                raise TransformError(f"TFLite converter failed: {last_line(exc)}") from None

    def calibrated(self) -> bytes:
        """The float flatbuffer with the activation ranges recorded on the calibration data (made once)."""
        if self._calibrated is None:
            self._calibrated = self._convert(calibrate_only=True)
        return self._calibrated

    @property
    def mask_nodes(self) -> list[str]:
        """Ops carrying an attention mask's large-negative sentinel into a softmax (full-integer INT8
        keeps them float; see tflite_layers.attention_mask_nodes)."""
        if self._mask_nodes is None:
            from edgecli.stages.quantize.tflite_layers import attention_mask_nodes

            self._mask_nodes = attention_mask_nodes(self.calibrated()) if self.float_fallback else []
        return self._mask_nodes

    def _check_names(self, float_nodes: list[str], op_types: list[str]) -> None:
        from edgecli.stages.quantize.tflite_layers import op_names

        if self._names is None:
            self._names = op_names(self.calibrated())
        nodes, types = self._names
        unknown = [n for n in float_nodes if n not in set(nodes)]
        if unknown:
            raise _unknown("layer(s)", unknown, nodes, "exclude_nodes")
        unknown = [t for t in op_types if t not in types]
        if unknown:
            raise _unknown("op type(s)", unknown, sorted(types), "exclude_op_types")

    def quantize(self, float_nodes: Sequence[str] = ()) -> Artifact:
        """The quantized flatbuffer as the recipe asks, with the named layers (op output tensor names,
        as layer_errors gives them), the recipe's exclude_nodes/exclude_op_types and, in full-integer
        INT8, attention-mask ops (mask_nodes) kept in float."""
        recipe = self.recipe
        nodes = list(dict.fromkeys([*recipe.exclude_nodes, *float_nodes]))
        op_types = list(dict.fromkeys(recipe.exclude_op_types))
        if (nodes or op_types) and not self.float_fallback:
            what = "activation_type int16 (16x8)" if self.int16 else f"mode {recipe.mode}"
            raise UsageError(
                f"TFLite cannot keep layers in float with {what}: only full-integer INT8 takes exclude_nodes, "
                "exclude_op_types or the accuracy guard",
                hint="use mode: static with activation_type: int8, or drop the exclusions and the accuracy target",
            )
        if not self.float_fallback:
            flatbuffer = self._convert()
            if not self.full_integer:
                _check_weights_changed(flatbuffer, recipe.mode)
        else:
            self._check_names(nodes, op_types)
            flatbuffer = self._mlir_quantize(list(dict.fromkeys([*self.mask_nodes, *nodes])), op_types)
        artifact = Artifact(Format.TFLITE, flatbuffer)
        if self.nhwc and any(len(spec.shape) == 4 for spec in self.runner.inputs):
            artifact.io["input_layout"] = "NHWC"
        return artifact

    def _mlir_quantize(self, float_nodes: list[str], op_types: list[str]) -> bytes:
        """Full-integer INT8 from the calibrated model: what the converter's own INT8 path does,
        plus the layers to keep in float (they get float builtins with QUANTIZE/DEQUANTIZE around)."""
        from tensorflow.lite.python import convert as tf_convert

        io = self.io_dtype
        calibrated = self.calibrated()
        try:
            with console.muted():
                return tf_convert.mlir_quantize(
                    calibrated,
                    disable_per_channel=not self.recipe.per_channel,
                    input_data_type=io,
                    output_data_type=io,
                    denylisted_ops=op_types or None,
                    denylisted_nodes=float_nodes or None,
                )
        except Exception as exc:
            raise TransformError(f"TFLite quantizer failed: {last_line(exc)}") from None

    def layer_errors(self, quantized: Artifact, data: Dataset) -> list[LayerError]:
        """Per layer of `quantized` (made by this quantizer): SNR and relative MSE of its output
        against the float model on `data`, and the relative noise it adds itself (sensitivity); see
        tflite_layers.compare_layers. `node` is the name quantize(float_nodes=[...]) accepts.
        Dynamic-range and FP16 models give an empty list (their activations are float and no layer
        can be moved to float); 16x8 models are measured, but cannot keep layers in float."""
        if not self.full_integer:
            return []
        from edgecli.stages.quantize.tflite_layers import compare_layers

        inputs = model_inputs(self.runner, data.batch(0, len(data)), self.nhwc)
        layers = compare_layers(self.calibrated(), quantized.payload, inputs)
        excluded_nodes, excluded_ops = set(self.recipe.exclude_nodes), set(self.recipe.exclude_op_types)
        for layer in layers:
            if layer.quantized:
                continue
            if layer.node in self.mask_nodes:
                layer.reason = "attention mask: a large-negative sentinel has no useful INT8 scale"
            elif layer.node in excluded_nodes:
                layer.reason = "recipe: exclude_nodes"
            elif layer.op_type in excluded_ops:
                layer.reason = "recipe: exclude_op_types"
        return layers


def _check_weights_changed(flatbuffer: bytes, mode: str) -> None:
    """Dynamic-range and FP16 conversion store weights as int8 / float16; a model with no weight they
    take (TFLite leaves tensors under 1024 values in float) comes out unchanged, which is refused."""
    from ai_edge_litert.interpreter import Interpreter

    wanted = np.int8 if mode == "dynamic" else np.float16
    details = Interpreter(model_content=flatbuffer).get_tensor_details()
    if not any(np.dtype(d["dtype"]) == wanted for d in details):
        raise TransformError(
            f"TFLite {mode} quantization found no weight tensor to store as {np.dtype(wanted).name} "
            "(it takes tensors of 1024 values or more): the model would not change",
            hint="use mode: static for full-integer quantization",
        )


@contextlib.contextmanager
def tflite_quantizer(
    model: ModelFile, recipe: QuantizeRecipe, runner: Runner, calib: Dataset | None
) -> Iterator[TFLiteQuantizer]:
    """Convert `model` for TensorFlow's converter once (onnx2tf for ONNX and .pt2) and yield a
    TFLiteQuantizer over it; temporary files are removed on exit. (int8/int16 activations and int8
    weights: QuantizeRecipe checks.)"""
    if recipe.mode == "static" and recipe.calibration.method != "minmax":
        console.warn(
            f"TFLite calibrates min/max ranges; calibration.method {recipe.calibration.method} applies to ONNX only"
        )
    if recipe.activation_type == "int16" and recipe.mode != "static":
        console.info(f"activation_type int16 applies to mode: static; mode {recipe.mode} quantizes weights only")
    if recipe.activation_type == "int16" and recipe.mode == "static" and recipe.io_type == "int8":
        console.info("16x8 models take float32 or int16 inputs and outputs: io_type int8 gives int16 ones")
    tf = import_tensorflow()
    with _converter(model, tf) as (converter, nhwc):
        yield TFLiteQuantizer(tf, converter, recipe, runner, calib, nhwc)
