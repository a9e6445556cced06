"""convert: every path to the device format, each checked for parity with its parent on real inputs."""

from __future__ import annotations

from typing import Any

from edgecli.analysis.model_stats import check_finite_weights
from edgecli.analysis.parity import check_parity
from edgecli.backends.onnx_export import onnx_to_onnx, pt2_to_onnx, simplify_onnx
from edgecli.backends.op_support import is_quantized_onnx
from edgecli.core import console
from edgecli.core.errors import TransformError, UsageError
from edgecli.data.dataset import Dataset, synthetic_dataset
from edgecli.formats import onnx_file
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import ConvertRecipe
from edgecli.runtimes import open_runner
from edgecli.stages.artifact import Artifact, staged
from edgecli.stages.convert.micro import micro_artifact, micro_runner
from edgecli.stages.convert.preflight import preflight
from edgecli.stages.convert.tflite import tflite_payload


def _input_layout(parent_specs: list, child_specs: list) -> str | None:
    """'NHWC' when the converted model takes 4-D inputs channels-last while the parent took NCHW."""
    for parent, child in zip(parent_specs, child_specs):
        if len(parent.shape) == 4 and parent.shape[1:] != child.shape[1:]:
            if (parent.shape[2], parent.shape[3], parent.shape[1]) == tuple(child.shape[1:]):
                return "NHWC"
    return None


def _to_onnx(model: ModelFile, recipe: ConvertRecipe) -> Artifact:
    """The ONNX model of target onnx: exported from .pt2 or re-targeted, then simplified if asked."""
    if model.format is Format.PT2:
        proto = pt2_to_onnx(model, recipe.opset, recipe.dynamic_batch)
    elif model.format is Format.ONNX:
        proto = onnx_to_onnx(model, recipe.opset, recipe.dynamic_batch)
    else:
        raise TransformError(
            f"converting {model.format.value} to ONNX is not supported",
            hint="convert Keras models to TFLite with target: tflite",
        )
    return _simplified(Artifact(Format.ONNX, proto), recipe)


def _simplified(artifact: Artifact, recipe: ConvertRecipe) -> Artifact:
    """The artifact's ONNX model through onnxsim when the recipe asks, node counts in its metrics."""
    if recipe.simplify:
        artifact.payload, counts = simplify_onnx(artifact.payload)
        artifact.metrics.update(counts)
        console.info(f"onnxsim: {counts['nodes_before']} -> {counts['nodes_after']} nodes")
    return artifact


def _to_ort_source(model: ModelFile, recipe: ConvertRecipe) -> Any:
    """The ONNX model the ORT-format file is saved from (ORT format is written in Artifact.to_bytes,
    so that the lineage is inside it)."""
    if model.format is Format.PT2:
        return pt2_to_onnx(model, recipe.opset, recipe.dynamic_batch)
    if model.format is Format.ONNX:
        return onnx_file.load(model.path)
    raise UsageError(f"ORT format is made from ONNX or .pt2 models; {model.path} is {model.format.value}")


def _to_pt2(model: ModelFile) -> Artifact:
    """target pt2: the ExportedProgram edgecli built from a state_dict and model.factory (the flow hands
    it over as a .pt2), saved with its lineage."""
    if model.format is not Format.PT2:
        raise TransformError(
            f"no conversion from {model.format.value} to .pt2",
            hint="target pt2 builds a .pt2 from a PyTorch state_dict (.pt/.pth) and the recipe's model.factory",
        )
    from edgecli.formats import pt2_file

    return Artifact(Format.PT2, pt2_file.load(model.path))


def calibrates(recipe: ConvertRecipe) -> bool:
    """Whether the conversion calibrates INT8 activation ranges on the data."""
    return recipe.target == "tflite-micro" or (recipe.target == "tflite" and recipe.precision == "int8")


def split_calibration(recipe: ConvertRecipe, data: Dataset | None) -> tuple[Dataset | None, Dataset | None]:
    """(calibration data, parity data): an INT8 conversion calibrates on the first calibration_samples
    and is checked on the samples after them, so that parity is not measured on what it was fitted to."""
    if data is None or not calibrates(recipe):
        return data, data
    count = recipe.calibration_samples
    if len(data) <= count:
        console.warn(f"{data.source} has {len(data)} samples, all used for calibration: parity is checked on them too")
        return data, data
    return data.take(count), data.skip(count)


def convert(model: ModelFile, recipe: ConvertRecipe, data: Dataset | None) -> Artifact:
    """Convert `model` to recipe.target and prove parity on `data` (random inputs if None)."""
    if model.format in (Format.TFLITE, Format.ORT):
        raise UsageError(
            f"convert reads .pt2, ONNX, Keras, SavedModel or a state_dict; {model.path} is {model.format.value}",
            hint="convert the model it was made from",
        )
    check_finite_weights(model)
    preflight(model, recipe)
    calibration, data = split_calibration(recipe, data)
    if recipe.target == "onnx":
        artifact = _to_onnx(model, recipe)
    elif recipe.target == "ort":
        artifact = Artifact(Format.ORT, _to_ort_source(model, recipe), io={"ort_optimization": recipe.ort_optimization})
        artifact = _simplified(artifact, recipe)
    elif recipe.target == "pt2":
        artifact = _to_pt2(model)
    elif recipe.target == "tflite-micro":
        artifact = micro_artifact(model, recipe, calibration)
    else:
        artifact = Artifact(Format.TFLITE, tflite_payload(model, recipe, calibration))
    parent = open_runner(model)
    with staged(artifact) as candidate:
        child = micro_runner(candidate, artifact) if recipe.target == "tflite-micro" else open_runner(candidate)
        layout = _input_layout(parent.inputs, child.inputs)
        if layout:
            artifact.io["input_layout"] = layout
            child.input_layout = layout
        if data is None:
            data = synthetic_dataset(parent.inputs, count=min(recipe.parity.samples, 32))
            console.warn("no --data given: parity is checked on random inputs, not real ones")
        reduced = recipe.target in ("tflite", "tflite-micro") and (
            recipe.precision != "float32" or recipe.target == "tflite-micro"
        )
        reduced = reduced or (
            recipe.target == "ort" and is_quantized_onnx(artifact.payload)
        )  # int8 rounding differs by kernel
        what = f"{model.format.value} -> {recipe.target}" + (
            f" {recipe.precision}" if recipe.target == "tflite" else ""
        )
        artifact.metrics.update(check_parity(parent, child, data, recipe.parity, what, reduced))
    artifact.metrics["size_bytes_parent"] = model.size_bytes
    artifact.metrics["parity_data"] = data.name
    return artifact
