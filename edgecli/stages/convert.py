"""convert: every path to the device format, each checked for parity with its parent on real inputs."""

from __future__ import annotations

from typing import Any

from edgecli import console
from edgecli.data import Dataset, synthetic_dataset
from edgecli.errors import TransformError, UsageError
from edgecli.formats import onnx_file
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import ConvertRecipe
from edgecli.runtimes import open_runner
from edgecli.stages.artifact import Artifact, staged
from edgecli.stages.convert_onnx import onnx_to_onnx, pt2_to_onnx
from edgecli.stages.convert_tflite import to_tflite
from edgecli.stages.parity import check_parity


def _input_layout(parent_specs: list, child_specs: list) -> str | None:
    """'NHWC' when the converted model takes 4-D inputs channels-last while the parent took NCHW."""
    for parent, child in zip(parent_specs, child_specs):
        if len(parent.shape) == 4 and parent.shape[1:] != child.shape[1:]:
            if (parent.shape[2], parent.shape[3], parent.shape[1]) == tuple(child.shape[1:]):
                return "NHWC"
    return None


def _to_ort_source(model: ModelFile, recipe: ConvertRecipe) -> Any:
    """The ONNX model the ORT-format file is saved from (ORT format is written in Artifact.to_bytes,
    so that the lineage is inside it)."""
    if model.format is Format.PT2:
        return pt2_to_onnx(model, recipe.opset, recipe.dynamic_batch)
    if model.format is Format.ONNX:
        return onnx_file.load(model.path)
    raise UsageError(f"ORT format is made from ONNX or .pt2 models; {model.path} is {model.format.value}")


def convert(model: ModelFile, recipe: ConvertRecipe, data: Dataset | None) -> Artifact:
    """Convert `model` to recipe.target and prove parity on `data` (random inputs if None)."""
    if recipe.target == "onnx":
        if model.format is Format.PT2:
            artifact = Artifact(Format.ONNX, pt2_to_onnx(model, recipe.opset, recipe.dynamic_batch))
        elif model.format is Format.ONNX:
            artifact = Artifact(Format.ONNX, onnx_to_onnx(model, recipe.opset, recipe.dynamic_batch))
        else:
            raise TransformError(
                f"converting {model.format.value} to ONNX is not supported yet",
                hint="export Keras models to TFLite with target: tflite",
            )
    elif recipe.target == "ort":
        artifact = Artifact(Format.ORT, _to_ort_source(model, recipe), io={"ort_optimization": recipe.ort_optimization})
    else:
        artifact = Artifact(Format.TFLITE, to_tflite(model, recipe))
    parent = open_runner(model)
    with staged(artifact) as candidate:
        child = open_runner(candidate)
        layout = _input_layout(parent.inputs, child.inputs)
        if layout:
            artifact.io["input_layout"] = layout
            child.input_layout = layout
        if data is None:
            data = synthetic_dataset(parent.inputs, count=min(recipe.parity.samples, 32))
            console.warn("no --data given: parity is checked on random inputs, not real ones")
        artifact.metrics.update(check_parity(parent, child, data, recipe.parity, f"{model.format.value} -> {recipe.target}"))
    artifact.metrics["size_bytes_parent"] = model.size_bytes
    artifact.metrics["parity_data"] = data.source
    return artifact

