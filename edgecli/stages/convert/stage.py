"""convert: every path to the device format, each checked for parity with its parent on real inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgecli.analysis.model_stats import check_finite_weights
from edgecli.analysis.parity import check_parity
from edgecli.backends.onnx_export import simplify_onnx, to_onnx
from edgecli.backends.op_support import is_quantized_onnx
from edgecli.core import console
from edgecli.core.errors import TransformError, UsageError
from edgecli.data.dataset import Dataset, synthetic_dataset
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import ConvertRecipe
from edgecli.runtimes import open_runner
from edgecli.runtimes.base import Runner
from edgecli.stages.artifact import Artifact, staged
from edgecli.stages.convert.micro import micro_artifact, micro_runner
from edgecli.stages.convert.preflight import preflight
from edgecli.stages.convert.tflite import tflite_payload


def _input_layout(parent_specs: list, child_specs: list) -> str | None:
    """'NHWC' when the converted model takes 4-D inputs channels-last while the parent took NCHW."""
    for parent, child in zip(parent_specs, child_specs):
        if (
            len(parent.shape) == 4
            and parent.shape[1:] != child.shape[1:]
            and (parent.shape[2], parent.shape[3], parent.shape[1]) == tuple(child.shape[1:])
        ):
            return "NHWC"
    return None


def _simplified(artifact: Artifact, recipe: ConvertRecipe) -> Artifact:
    """The artifact's ONNX model through onnxsim when the recipe asks, node counts in its metrics."""
    if recipe.simplify:
        artifact.payload, counts = simplify_onnx(artifact.payload)
        artifact.metrics.update(counts)
        console.info(f"onnxsim: {counts['nodes_before']} -> {counts['nodes_after']} nodes")
    return artifact


# ---------------------------------------------------------------- the targets


def _to_onnx(model: ModelFile, recipe: ConvertRecipe, _calibration: Dataset | None) -> Artifact:
    """target onnx: exported from .pt2, re-targeted to the recipe's opset, or converted from TFLite
    with tf2onnx; then simplified if asked."""
    if model.format is Format.TFLITE:
        from edgecli.backends.tflite_to_onnx import tflite_to_onnx

        return _simplified(Artifact(Format.ONNX, tflite_to_onnx(model, recipe.opset)), recipe)
    if model.format not in (Format.PT2, Format.ONNX):
        raise TransformError(
            f"converting {model.format.value} to ONNX is not supported",
            hint="convert Keras models to TFLite with target: tflite",
        )
    return _simplified(Artifact(Format.ONNX, to_onnx(model, recipe.opset, recipe.dynamic_batch)), recipe)


def _to_ort(model: ModelFile, recipe: ConvertRecipe, _calibration: Dataset | None) -> Artifact:
    """target ort: the ONNX model the ORT-format file is saved from (a .pt2 exported, an ONNX model as
    it is; ORT format is written in Artifact.to_bytes, so that the lineage is inside it)."""
    if model.format not in (Format.PT2, Format.ONNX):
        raise UsageError(f"ORT format is made from ONNX or .pt2 models; {model.path} is {model.format.value}")
    source = to_onnx(model, recipe.opset, recipe.dynamic_batch, retarget=False)
    return _simplified(Artifact(Format.ORT, source, io={"ort_optimization": recipe.ort_optimization}), recipe)


def _to_pt2(model: ModelFile, _recipe: ConvertRecipe, _calibration: Dataset | None) -> Artifact:
    """target pt2: the ExportedProgram edgecli built from a state_dict and model.factory (the flow hands
    it over as a .pt2), saved with its lineage."""
    if model.format is not Format.PT2:
        raise TransformError(
            f"no conversion from {model.format.value} to .pt2",
            hint="target pt2 builds a .pt2 from a PyTorch state_dict (.pt/.pth) and the recipe's model.factory",
        )
    from edgecli.formats import pt2_file

    return Artifact(Format.PT2, pt2_file.load(model.path))


def _to_tflite(model: ModelFile, recipe: ConvertRecipe, calibration: Dataset | None) -> Artifact:
    """target tflite, in the recipe's precision (INT8 calibrated on `calibration`)."""
    return Artifact(Format.TFLITE, tflite_payload(model, recipe, calibration))


def _open(candidate: ModelFile, _artifact: Artifact) -> Runner:
    return open_runner(candidate)


@dataclass(frozen=True)
class Target:
    """How convert makes one target: the artifact (from the model, the recipe and the calibration
    data), the runner its parity check runs the result in, and whether parity is judged as reduced
    precision (top-1 agreement rather than element-wise closeness)."""

    build: Callable[[ModelFile, ConvertRecipe, Dataset | None], Artifact]
    reduced: Callable[[ConvertRecipe, Artifact], bool]
    child: Callable[[ModelFile, Artifact], Runner] = _open


def _from_quantized_tflite(recipe: ConvertRecipe, artifact: Artifact) -> bool:
    """An ONNX model converted from a TFLite model with int8 tensors: LiteRT's kernels (dynamic-range
    activations quantized on the fly) round differently from onnxruntime's, as INT8 kernels do."""
    return bool(artifact.metrics.get("parent_quantized"))


TARGETS: dict[str, Target] = {
    "onnx": Target(_to_onnx, reduced=_from_quantized_tflite),
    # int8 rounding differs by kernel
    "ort": Target(_to_ort, reduced=lambda recipe, artifact: is_quantized_onnx(artifact.payload)),
    "pt2": Target(_to_pt2, reduced=lambda recipe, artifact: False),
    "tflite": Target(_to_tflite, reduced=lambda recipe, artifact: recipe.precision != "float32"),
    "tflite-micro": Target(micro_artifact, reduced=lambda recipe, artifact: True, child=micro_runner),
}


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
    if model.format is Format.ORT or (model.format is Format.TFLITE and recipe.target != "onnx"):
        raise UsageError(
            f"convert reads .pt2, ONNX, Keras, SavedModel or a state_dict (and TFLite to ONNX); {model.path} is "
            f"{model.format.value}",
            hint="convert the model it was made from"
            + (", or convert it to ONNX first (-r onnx)" if model.format is Format.TFLITE else ""),
        )
    check_finite_weights(model)
    preflight(model, recipe)
    calibration, data = split_calibration(recipe, data)
    target = TARGETS[recipe.target]
    artifact = target.build(model, recipe, calibration)
    if model.format is Format.TFLITE:
        from edgecli.backends.tflite_to_onnx import tflite_tensors

        artifact.metrics["parent_quantized"] = tflite_tensors(model)[2]
    parent = open_runner(model)
    with staged(artifact) as candidate:
        child = target.child(candidate, artifact)
        layout = _input_layout(parent.inputs, child.inputs)
        if layout:
            artifact.io["input_layout"] = layout
            child.input_layout = layout
        if data is None:
            data = synthetic_dataset(parent.inputs, count=min(recipe.parity.samples, 32))
            console.warn("no --data given: parity is checked on random inputs, not real ones")
        what = f"{model.format.value} -> {recipe.target}" + (
            f" {recipe.precision}" if recipe.target == "tflite" else ""
        )
        reduced = target.reduced(recipe, artifact)
        artifact.metrics.update(check_parity(parent, child, data, recipe.parity, what, reduced, recipe.answers))
    artifact.metrics["size_bytes_parent"] = model.size_bytes
    artifact.metrics["parity_data"] = data.name
    return artifact
