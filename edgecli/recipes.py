"""Recipes: one strict pydantic model per verb, YAML loading (safe only) and `--set` overrides.

An unknown key, a wrong type or an out-of-range value is a RecipeError that names the key and,
for unknown keys, suggests the closest valid one; an error in a value a `--set` gave names that
`--set`, not the recipe file. Recipe and pipeline files are at most MAX_RECIPE_BYTES (1 MiB),
checked before parsing. `-r NAME` is a shipped recipe only when NAME is a plain name (letters,
digits, '-' and '_', optionally .yaml/.yml): anything else is a path, and never resolves inside
configs/. A recipe that names code (model.factory, student.factory) is refused at load time unless
the user passed --trust-code (edgecli/core/security.py).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgecli.core.errors import RecipeError, UsageError, one_line

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few hundred bytes; a pipeline a few KiB
RECIPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # a shipped recipe's name: no '/', no '..'


class Strict(BaseModel):
    """Base of every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class DataSpec(Strict):
    """A dataset in an .npz file: inputs under `x` (or under the model's input names), labels under `y`."""

    path: Path | None = Field(None, description="Path of the .npz file; `--data` on the command line overrides it.")
    scale: float = Field(1.0, gt=0, description="Inputs are multiplied by this after conversion to float (e.g. 1/255).")
    mean: list[float] | None = Field(None, description="Per-channel mean subtracted after scaling (channel axis 1).")
    std: list[float] | None = Field(None, description="Per-channel std the inputs are divided by after the mean.")
    limit: int | None = Field(None, ge=1, description="Use at most this many samples (the first ones).")


class ModelSource(Strict):
    """How to build a PyTorch model from a state_dict file (.pt/.pth): the user's own nn.Module code."""

    factory: str = Field(
        ...,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="package.module:function (or :Class) that returns the nn.Module the state_dict belongs to; "
        "imported from the working folder or the installed packages. This runs code: edgecli imports it only "
        "with `edgecli --trust-code` (or EDGECLI_TRUST_CODE=1), and only a function or nn.Module class outside "
        "Python's standard library.",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments passed to the factory.")
    input_shape: list[int] | None = Field(
        None,
        min_length=1,
        description="Example input shape with batch, e.g. [1, 1, 28, 28], for export; default: the shape of --data.",
    )
    input_dtype: Literal["float32", "int64", "int32"] = Field("float32", description="Example input dtype.")
    strict: bool = Field(True, description="The state_dict must match the module's parameters key for key.")


class ReadsPyTorch(Strict):
    """A recipe of a verb that can read a PyTorch state_dict."""

    model: ModelSource | None = Field(
        None, description="Needed when MODEL is a state_dict (.pt/.pth): the code that builds the module."
    )


class FinetuneSpec(Strict):
    """Fine-tuning on labelled data after a transformation."""

    epochs: int = Field(0, ge=0, le=1000, description="Epochs of fine-tuning; 0 disables it.")
    lr: float = Field(1e-4, gt=0, le=10, description="Learning rate (small: the model is already trained).")
    batch_size: int = Field(64, ge=1, le=65536, description="Mini-batch size.")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="Optimiser: adam, or sgd with momentum 0.9.")
    schedule: Literal["constant", "onecycle"] = Field(
        "constant", description="Learning-rate schedule: constant, or one-cycle (warm-up then anneal) peaking at lr."
    )
    val_split: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description="Fraction of the training data held out to validate after each epoch (0: none).",
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many epochs without a better validation accuracy (needs val_split); "
        "the best epoch's weights are kept.",
    )
    distill: bool = Field(False, description="Learn from the unpruned model's outputs too (knowledge distillation).")
    temperature: float = Field(4.0, gt=0, le=100, description="distill: softmax temperature of the soft targets.")
    soft_weight: float = Field(0.5, ge=0.0, le=1.0, description="distill: weight of the soft (teacher) loss.")


class ChannelSpec(Strict):
    """method channel: structured pruning of whole channels with Torch-Pruning's dependency graph."""

    importance: Literal["l1", "l2", "bn_scale", "taylor"] = Field(
        "l1",
        description="Channel importance: L1/L2 norm of its weights, BatchNorm scale, or first-order Taylor "
        "(gradient x weight, on a few training batches).",
    )
    ratio: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Target: fraction of channels removed (in each layer, or overall with scope global).",
    )
    macs_ratio: float | None = Field(
        None, gt=0.0, lt=1.0, description="Target: MACs of the pruned model at most this fraction of the dense model's."
    )
    params_ratio: float | None = Field(
        None, gt=0.0, lt=1.0, description="Target: parameters at most this fraction of the dense model's."
    )
    keep_layers: list[str] = Field(
        default_factory=list, description="Layers (module names) never pruned; the classifier's output is always kept."
    )
    round_to: int | None = Field(
        None, ge=1, description="Keep channel counts multiples of this (4 or 8 suit SIMD kernels)."
    )
    max_layer_ratio: float = Field(
        0.9, gt=0.0, lt=1.0, description="No layer loses more than this fraction of its channels."
    )
    steps: int = Field(
        1,
        ge=1,
        le=100,
        description="Iterative pruning steps towards the target (fine-tuning between "
        "steps when finetune.epochs > 0 is split over them).",
    )

    @field_validator("keep_layers", mode="before")
    @classmethod
    def _layer_names_as_text(cls, value: Any) -> Any:
        """nn.Sequential layers are named 0, 1, ...: `keep_layers: [0, 3]` means the names '0', '3'."""
        return (
            [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
            if isinstance(value, list)
            else value
        )


class PruneRecipe(ReadsPyTorch):
    """`edgecli prune`: remove whole channels (a smaller, faster dense model) or zero single weights
    (unstructured, or 2:4 semi-structured), then optionally fine-tune."""

    method: Literal["channel", "magnitude", "2of4"] = Field(
        "magnitude",
        description="channel: structured pruning (.pt2 / state_dict): whole channels removed, the model gets smaller "
        "and faster; magnitude: unstructured, the smallest weights zeroed (.pt2 or ONNX; smaller compressed, not "
        "faster on dense kernels); 2of4: 2:4 semi-structured, two of every four consecutive weights zeroed (sparse tensor cores).",
    )
    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="magnitude: fraction of prunable weights set to zero.")
    scope: Literal["global", "layer"] = Field(
        "global",
        description="global: one threshold (or channel ranking) over all layers; layer: the same fraction in every layer.",
    )
    schedule: Literal["oneshot", "gradual"] = Field(
        "oneshot",
        description="magnitude: all at once, or raised gradually over the fine-tuning epochs (cubic schedule).",
    )
    channel: ChannelSpec = Field(default_factory=ChannelSpec, description="method channel: importance and target.")
    min_params: int = Field(
        64, ge=1, description="Weight tensors with fewer elements than this are left dense (tiny first layers)."
    )
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec, description="Fine-tuning after pruning (masks kept).")
    data: DataSpec = Field(default_factory=DataSpec, description="Labelled training data for fine-tuning.")
    eval_data: DataSpec | None = Field(None, description="Labelled data on which accuracy before/after is reported.")
    seed: int = Field(0, description="Random seed; the same seed gives the same output bytes.")


class StudentSpec(Strict):
    """The student: a built-in family (cnn, mlp) with width and depth knobs, a `.pt2` file, or your code."""

    family: Literal["cnn", "mlp"] | None = Field(
        None,
        description="Built-in family (the default, cnn, when neither path nor factory is given): "
        "cnn: stages of 3x3 conv + BatchNorm + ReLU with 2x2 max-pooling between stages; mlp: dense layers.",
    )
    channels: list[Annotated[int, Field(ge=1)] | list[Annotated[int, Field(ge=1)]]] = Field(
        default_factory=lambda: [16, 32, 64],
        min_length=1,
        description="cnn: output channels of each stage: a number (one conv) or a list (one conv each), "
        "e.g. [[32, 64, 64, 64, 64], 128, 128] is the sample teacher's layout.",
    )
    head: Literal["flatten", "avgpool"] = Field(
        "flatten", description="cnn: flatten the last feature map into the classifier, or global-average-pool it."
    )
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [128], description="mlp: width of each hidden layer."
    )
    width: float = Field(
        1.0, gt=0, le=16, description="Multiplies every channel count / hidden width (0.5: half width)."
    )
    depth: float = Field(
        1.0,
        gt=0,
        le=16,
        description="Multiplies the convs of each cnn stage (or the mlp's hidden layers); at least one is kept.",
    )
    path: Path | None = Field(
        None, description="A .pt2 file (torch.export) to train as the student instead of a built-in family."
    )
    factory: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="package.module:function returning the student nn.Module (your own architecture). This runs "
        "code: imported only with `edgecli --trust-code` (or EDGECLI_TRUST_CODE=1), and only a function or "
        "nn.Module class outside Python's standard library.",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="factory: keyword arguments passed to it.")
    weights: Path | None = Field(
        None, description="factory: a state_dict (.pt/.pth) to start from, read with torch.load(weights_only=True)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> StudentSpec:
        sources = [
            name for name, value in (("family", self.family), ("path", self.path), ("factory", self.factory)) if value
        ]
        if len(sources) > 1:
            raise ValueError(f"give one of student.family, student.path, student.factory (got {', '.join(sources)})")
        if (self.kwargs or self.weights) and not self.factory:
            raise ValueError("student.kwargs and student.weights go with student.factory")
        if not sources:
            self.family = "cnn"
        return self


class AugmentSpec(Strict):
    """Image augmentation for [N, C, H, W] inputs, applied before the teacher sees the batch."""

    hflip: bool = Field(True, description="Mirror each image left-right with probability 0.5.")
    crop_padding: int = Field(
        2, ge=0, le=64, description="Zero-pad by this many pixels, then crop back at a random offset (0: no crops)."
    )
    views: int = Field(
        8,
        ge=1,
        le=1000,
        description="Distinct augmented copies of the training set, used in turn by the epochs; "
        "the teacher's outputs on each are computed once and cached.",
    )


class HintSpec(Strict):
    """FitNets-style feature loss: a student layer, through a learned 1x1 conv / linear adapter, regresses a teacher layer."""

    teacher_layer: str = Field(
        ..., min_length=1, description="ONNX tensor name or .pt2 graph node name in the teacher."
    )
    student_layer: str = Field(
        ..., min_length=1, description="Module name in the student (as in named_modules(), e.g. '5')."
    )
    weight: float = Field(1.0, gt=0, le=1000, description="Weight of the mean-squared feature loss.")


class DistillRecipe(ReadsPyTorch):
    """`edgecli distill`: train a student .pt2 from a teacher of any supported format."""

    student: StudentSpec = Field(default_factory=StudentSpec, description="Student architecture.")
    temperature: float = Field(4.0, gt=0, le=100, description="Softmax temperature T of the soft targets.")
    soft_weight: float = Field(
        0.9, ge=0.0, le=1.0, description="Weight of the T²-scaled KL loss; 1 - soft_weight goes to the label loss."
    )
    hint: HintSpec | None = Field(None, description="Optional feature (hint) loss on an intermediate layer.")
    epochs: int = Field(5, ge=1, le=1000, description="Training epochs.")
    batch_size: int = Field(64, ge=1, le=65536, description="Mini-batch size (the global batch under torchrun).")
    lr: float = Field(2e-3, gt=0, le=10, description="Learning rate (the peak, with onecycle).")
    weight_decay: float = Field(0.0, ge=0, le=1, description="Weight decay (decoupled, with adamw).")
    optimizer: Literal["adam", "adamw", "sgd"] = Field(
        "adam", description="Optimiser: adam, adamw, or sgd with momentum 0.9."
    )
    schedule: Literal["constant", "onecycle", "cosine"] = Field(
        "onecycle",
        description="Learning-rate schedule: constant, one-cycle (warm-up then anneal) peaking at lr, "
        "or cosine decay from lr.",
    )
    augment: AugmentSpec | None = Field(None, description="Image augmentation (flips, crops); none when absent.")
    val_split: float = Field(
        0.1,
        ge=0.0,
        lt=0.5,
        description="Fraction of the training data held out to pick the best epoch (0: keep the last).",
    )
    patience: int | None = Field(
        None, ge=1, description="Stop after this many epochs without a better validation score (needs val_split)."
    )
    baseline: bool = Field(
        False, description="Also train the same student on the labels alone, to report what distillation adds."
    )
    teacher_cache: bool = Field(
        True, description="Cache the teacher's outputs on disk ($EDGECLI_CACHE_DIR, else ~/.cache/edgecli)."
    )
    latency_runs: int = Field(
        200, ge=0, le=100000, description="Batch-1 runs timed for the teacher/student p50 (0: skip)."
    )
    data: DataSpec = Field(default_factory=DataSpec, description="Training data; labels under `y` are optional.")
    eval_data: DataSpec | None = Field(None, description="Labelled data for the accuracy report.")
    seed: int = Field(0, ge=0, description="Random seed; the same seed gives the same student bytes.")

    @model_validator(mode="after")
    def _fits(self) -> DistillRecipe:
        if self.patience is not None and not self.val_split:
            raise ValueError("patience needs val_split > 0")
        return self


class CalibrationSpec(Strict):
    """Static-quantization calibration."""

    method: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="Range estimation method.")
    samples: int = Field(256, ge=1, description="Number of calibration samples taken from the data.")
    batch_size: int = Field(32, ge=1, description="Calibration batch size (models without a dynamic batch use 1).")


class GuardSpec(Strict):
    """The accuracy guard's search: quantized layers moved back to float, most sensitive first."""

    group_size: int = Field(1, ge=1, description="Layers moved to float per step.")
    max_steps: int = Field(8, ge=0, le=1000, description="Steps before giving up (0: measure only, never fall back).")
    samples: int = Field(128, ge=1, description="Calibration samples on which per-layer errors (SNR) are measured.")


class QuantizeRecipe(ReadsPyTorch):
    """`edgecli quantize`: INT8 or FP16 quantization to ONNX (onnxruntime) or TFLite (TensorFlow Lite converter)."""

    mode: Literal["static", "dynamic", "fp16"] = Field(
        "static",
        description="static: INT8 weights and calibrated activations (ONNX QDQ, or TFLite full-integer); "
        "dynamic: INT8 weights only (TFLite: dynamic range); fp16: half-precision weights.",
    )
    format: Literal["onnx", "tflite"] = Field(
        "onnx", description="Output format; TFLite is reached from ONNX (onnx2tf), .pt2 or Keras."
    )
    keep_io_types: bool = Field(True, description="fp16 (ONNX): keep float32 model inputs and outputs.")
    io_type: Literal["float", "int8"] = Field(
        "float",
        description="TFLite static: float32 inputs/outputs, or integer ones for integer-only devices "
        "(int8; int16 when activation_type is int16).",
    )
    activation_type: Literal["int8", "uint8", "int16"] = Field(
        "int8",
        description="Activation integer type (static mode). int16 (TFLite only): 16-bit activations with "
        "8-bit weights, for models whose activations lose too much at 8 bits.",
    )
    weight_type: Literal["int8", "uint8"] = Field("int8", description="Weight integer type.")
    per_channel: bool = Field(True, description="Per-output-channel weight scales.")
    reduce_range: bool | Literal["auto"] = Field(
        "auto",
        description="7-bit weights. onnxruntime's U8S8 int8 kernels saturate on x86 CPUs without VNNI (AVX2 or "
        "AVX-512 only): measured mean relative logit error 0.076 on a small transformer against 0.0018 with it. "
        "auto: on for x86 CPUs without VNNI/AMX, off elsewhere.",
    )
    preprocess: bool = Field(True, description="Run onnxruntime's quant_pre_process (shape inference, fusion) first.")
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names kept in float.")
    exclude_op_types: list[str] = Field(default_factory=list, description="Op types kept in float (e.g. Softmax).")
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec, description="Calibration settings.")
    data: DataSpec = Field(default_factory=DataSpec, description="Calibration data (static mode).")
    eval_data: DataSpec | None = Field(None, description="Labelled data: accuracy of float and INT8 models reported.")
    max_accuracy_drop: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Accuracy guard: largest allowed accuracy drop on labelled eval data (fraction, 0.01 = 1 point).",
    )
    min_agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Accuracy guard without labels: smallest allowed top-1 agreement with the float model.",
    )
    guard: GuardSpec = Field(
        default_factory=GuardSpec, description="How the accuracy guard searches when a target is missed."
    )
    speed_check: bool = Field(
        True, description="Time float and quantized models briefly and warn when the quantized one is not faster."
    )


class ParitySpec(Strict):
    """How a converted model is compared with its parent."""

    atol: float = Field(1e-4, ge=0, description="Largest allowed max abs difference of outputs.")
    min_agreement: float = Field(0.99, ge=0, le=1, description="Smallest allowed top-1 agreement for classifiers.")
    samples: int = Field(256, ge=1, description="Samples of the data used for the check.")
    max_relative_error: float = Field(
        0.1,
        ge=0,
        description="Reduced-precision targets (TFLite float16, dynamic, int8, tflite-micro) are judged by top-1 "
        "agreement and this relative error ||out - ref|| / ||ref|| instead of atol.",
    )


class MicroSpec(Strict):
    """target tflite-micro: the microcontroller's limits."""

    max_arena_bytes: int | None = Field(
        None, ge=1, description="Budget for the tensor arena (RAM for activations); exceeding it exits 1."
    )
    max_model_bytes: int | None = Field(
        None, ge=1, description="Budget for the model flatbuffer (flash); exceeding it exits 1."
    )


class ConvertRecipe(ReadsPyTorch):
    """`edgecli convert`: change the model's format, checked for parity on real inputs."""

    target: Literal["onnx", "tflite", "tflite-micro", "ort", "pt2"] = Field(
        ...,
        description="Output format. onnx; tflite (LiteRT); tflite-micro: full-integer INT8 TFLite verified with the "
        "TensorFlow Lite Micro interpreter; ort: onnxruntime's ORT format for its mobile and minimal builds; "
        "pt2: a torch.export program (from a state_dict and model.factory).",
    )
    opset: int = Field(18, ge=13, le=23, description="ONNX opset (target onnx).")
    dynamic_batch: bool = Field(True, description="Keep the batch dimension dynamic.")
    simplify: bool = Field(
        False, description="target onnx: fold constants and remove redundant nodes with onnxsim (onnx-simplifier)."
    )
    precision: Literal["float32", "float16", "dynamic", "int8"] = Field(
        "float32",
        description="TFLite precision (target tflite): float32; float16 weights; dynamic (int8 weights, float "
        "activations); int8 (full integer, calibrated on --data). tflite-micro is always int8.",
    )
    io_type: Literal["float", "int8"] = Field(
        "float", description="precision int8 / tflite-micro: float32 or int8 model inputs and outputs."
    )
    calibration_samples: int = Field(
        256, ge=1, description="precision int8 / tflite-micro: calibration samples from --data."
    )
    micro: MicroSpec = Field(default_factory=MicroSpec, description="target tflite-micro: memory budgets.")
    ort_optimization: Literal["basic", "extended", "all"] = Field(
        "basic",
        description="target ort: graph optimisations saved into the file. basic and extended run on any CPU "
        "(phones); all adds x86 layout transforms (NCHWc) that only suit the converting machine's kind of CPU.",
    )
    parity: ParitySpec = Field(default_factory=ParitySpec, description="Parity check against the parent model.")
    data: DataSpec = Field(
        default_factory=DataSpec, description="Real inputs for the parity check (and int8 calibration)."
    )

    @model_validator(mode="after")
    def _fields_fit_the_target(self) -> ConvertRecipe:
        if self.simplify and self.target not in ("onnx", "ort"):
            raise ValueError(
                f"simplify applies to targets onnx and ort, not {self.target} (onnx2tf simplifies on its own)"
            )
        if self.target == "tflite-micro" and self.precision not in ("float32", "int8"):
            raise ValueError(f"tflite-micro models are full-integer int8; precision {self.precision} does not apply")
        int8 = self.target == "tflite-micro" or (self.target == "tflite" and self.precision == "int8")
        if self.io_type != "float" and not int8:
            raise ValueError(f"io_type {self.io_type} needs precision int8 (integer inputs need calibrated scales)")
        return self


GATE_METRICS = (
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "std_ms",
    "throughput_per_s",
    "p50_spread",
    "size_bytes",
    "gzip_bytes",
    "params",
    "macs",
    "sparsity",
    "accuracy",
    "accuracy_drop",
    "agreement",
    "max_abs_diff",
    "mean_abs_diff",
    "relative_error",
    "cosine",
    "speedup",
    "size_ratio",
    "peak_mib",
    "model_mib",
)
GATE_PATTERN = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>|==)\s*([-+]?[0-9][0-9_]*\.?[0-9_]*(?:[eE][-+]?[0-9]+)?)\s*$")
DEFAULT_DYNAMIC_DIM = 128  # a dynamic dimension (other than batch) of a synthesised input: sequence-like length
DEFAULT_INT_RANGE = (0, 100)  # [low, high) of synthesised integer inputs (token ids)


def parse_gate(text: str) -> tuple[str, str, float]:
    """'p90_ms <= 5' -> ('p90_ms', '<=', 5.0). Raises ValueError naming the problem."""
    match = GATE_PATTERN.match(text)
    if not match:
        raise ValueError(f"gate '{text}' is not of the form 'metric <= number'")
    metric, op, number = match.groups()
    if metric not in GATE_METRICS:
        close = difflib.get_close_matches(metric, GATE_METRICS, n=1)
        raise ValueError(f"unknown gate metric '{metric}'" + (f", did you mean '{close[0]}'?" if close else ""))
    return metric, op, float(number.replace("_", ""))


Threads = Annotated[int, Field(ge=1, le=256)]
BatchSize = Annotated[int, Field(ge=1, le=65536)]


class BenchRecipe(Strict):
    """`edgecli bench`: size, latency, accuracy and agreement of several models side by side."""

    warmup: int = Field(10, ge=0, description="Untimed runs of each model (at each threads/batch point) before timing.")
    runs: int = Field(100, ge=1, description="Minimum number of timed runs per model and point.")
    min_time_s: float = Field(0.5, ge=0, description="Minimum total timed seconds per model and point.")
    threads: list[Threads] = Field(
        default_factory=lambda: [1],
        min_length=1,
        description="Intra-op threads of each runtime: a number, or a list to sweep (e.g. [1, 2]). Every model is "
        "timed at every (threads, batch_size) point; the first point (first threads, first batch_size) is the "
        "headline: gates, speedup and latency_ms use it.",
    )
    batch_size: list[BatchSize] = Field(
        default_factory=lambda: [1],
        min_length=1,
        description="Batch size of the timed runs: a number, or a list to sweep (e.g. [1, 8]); models whose batch "
        "is fixed by their signature are timed at batch 1 only.",
    )
    max_spread: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Warn when a model's p50 varies by more than this fraction between the 5 consecutive segments "
        "of its timed runs (p50_spread): differences between models smaller than the spread are noise.",
    )
    eval_batch_size: int = Field(64, ge=1, description="Batch size of the accuracy pass.")
    input_shapes: dict[str, list[Annotated[int, Field(ge=1)]]] = Field(
        default_factory=dict,
        description="Synthesised inputs (no --data): the shape of one sample of an input, WITHOUT the batch "
        "dimension, by input name, e.g. {input_ids: [64]}; overrides the model's own dimensions.",
    )
    dynamic_dims: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="Synthesised inputs (no --data): values of dynamic dimensions, by dimension name (ONNX "
        "dim_param, e.g. sequence_length) or by axis index (1 = the first axis after the batch). The batch "
        f"axis comes from batch_size; other dynamic dimensions default to {DEFAULT_DYNAMIC_DIM}.",
    )
    int_range: tuple[int, int] = Field(
        DEFAULT_INT_RANGE,
        description="Synthesised integer inputs (no --data): values drawn uniformly from [low, high), e.g. token "
        "ids; the dtype of the input (e.g. int64) is kept. Inputs whose name contains 'mask' are all ones, "
        "'type_ids' or 'segment' all zeros.",
    )
    memory: bool = Field(
        True,
        description="Peak resident memory of loading and running each model (first threads/batch point, "
        "synthesised inputs), each in a process of its own: peak_mib (runtime included, what the device needs) "
        "and model_mib (above the runtime's import). About 1 s per ONNX/TFLite model, 8 s per .pt2.",
    )
    data: DataSpec = Field(default_factory=DataSpec, description="Evaluation data; labels under `y` give accuracy.")
    gates: list[str] = Field(
        default_factory=list,
        description="Checks on every model but the reference, at the first latency point, e.g. "
        "'accuracy_drop <= 0.01', 'p90_ms <= 5', 'speedup >= 1.5'.",
    )

    @field_validator("threads", "batch_size", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value

    @field_validator("threads", "batch_size")
    @classmethod
    def _no_repeats(cls, values: list[int]) -> list[int]:
        if len(set(values)) != len(values):
            raise ValueError(f"a value is listed twice in {values}")
        return values

    @field_validator("dynamic_dims", mode="before")
    @classmethod
    def _dim_keys_as_text(cls, value: Any) -> Any:
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("int_range")
    @classmethod
    def _range_not_empty(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[0] >= value[1]:
            raise ValueError(f"int_range [low, high) is empty: {list(value)}")
        return value

    @field_validator("gates")
    @classmethod
    def _gates_parse(cls, gates: list[str]) -> list[str]:
        for gate in gates:
            parse_gate(gate)
        return gates


RECIPES: dict[str, type[Strict]] = {
    "prune": PruneRecipe,
    "distill": DistillRecipe,
    "quantize": QuantizeRecipe,
    "convert": ConvertRecipe,
    "bench": BenchRecipe,
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML loading that refuses a key given twice (YAML would silently keep the last one) and
    aliases (*name): a recipe never needs them, and nested aliases expand without bound ("billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in recipes", event.start_mark
            )
        return super().compose_node(parent, index)


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key '{key}' appears twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def recipe_name(text: str) -> str | None:
    """The shipped-recipe name `text` stands for ('int8-static', 'kd.yaml' -> 'kd'), or None when it is
    not a plain name (a '/', '..', a leading '.' or '-', anything but letters, digits, '-' and '_')."""
    stem = text.removesuffix(".yaml") if text.endswith(".yaml") else text.removesuffix(".yml")
    return stem if RECIPE_NAME.fullmatch(stem) else None


def resolve_recipe_path(verb: str, name_or_path: str) -> Path:
    """A recipe path as given, or the plain name of a recipe shipped in configs/<verb>/. A name is
    never joined onto configs/ unless it is plain (recipe_name): `-r ../../x` is a path or nothing."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    folder = CONFIGS_DIR / verb
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    name = recipe_name(name_or_path)
    if name is None:
        raise RecipeError(
            one_line(f"no recipe file '{name_or_path}', and it is not a shipped {verb} recipe name"),
            hint="shipped names are plain: letters, digits, '-' and '_', e.g. " + (names[0] if names else "default"),
        )
    for shipped in (folder / f"{name}.yaml", folder / f"{name}.yml"):
        if shipped.is_file() and shipped.resolve().parent == folder.resolve():
            return shipped
    raise RecipeError(
        f"no recipe file '{name_or_path}' and no shipped {verb} recipe of that name",
        hint=f"shipped: {', '.join(names)}" if names else None,
    )


def parse_set(assignments: list[str]) -> list[tuple[list[str], Any]]:
    """Parse `--set key.sub=value` items; values are read as YAML scalars/lists (safe)."""
    parsed = []
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects key.sub=value, got {one_line(repr(item))}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, RecursionError) as exc:
            raise UsageError(one_line(f"--set {key}: value {raw!r} is not valid YAML: {_yaml_problem(exc)}")) from None
        parsed.append((key.strip().split("."), value))
    return parsed


def _yaml_problem(exc: BaseException) -> str:
    """What is wrong with a YAML text, on one line (a reader error has no `problem`, only lines)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = getattr(exc, "problem", None) or str(exc).strip().split("\n")[0] or type(exc).__name__
    return " ".join(str(text).split())


def _apply_set(raw: dict[str, Any], path: list[str], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise UsageError(one_line(f"--set {'.'.join(path)}: '{part}' is not a section"))
        node = child
    node[path[-1]] = value


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid keys of the recipe section at `loc` (for suggestions)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            break
        annotation = current.model_fields[part].annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            break
        current = nested[0]
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


Overrides = list[tuple[str, list[str]]]  # (the `--set` as typed, its key path)


def blamed(loc: tuple[Any, ...], source: str, overrides: Overrides) -> str:
    """Where the value at `loc` came from: the last `--set` that wrote it (or a section holding it:
    `--set finetune={epochs: -1}`), else `source`. A section-level error in a section a `--set`
    wrote into is the file's section together with that `--set`."""
    where = [str(part) for part in loc]
    for item, path in reversed(overrides):
        if where[: len(path)] == path:
            return f"--set {item}"
    for item, path in reversed(overrides):
        if where and path[: len(where)] == where:
            return f"{source} with --set {item}"
    return source


def _explain(
    exc: ValidationError, model: type[BaseModel], source: str, overrides: Overrides | None = None
) -> RecipeError:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    source = blamed(loc, source, overrides or [])
    key = ".".join(str(p) for p in loc) or "(top level)"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    hint = None
    if err["type"] == "extra_forbidden":
        valid = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = (
            f"did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?"
            if close
            else f"valid keys: {', '.join(valid)}"
        )
        message = f"unknown key '{key}' in {source}{more}"
    elif err["type"] == "value_error" and not loc:
        message = f"{source}: {err['msg'].removeprefix('Value error, ')}{more}"
    elif err["type"] == "missing":
        message = f"'{key}' is required in {source}{more}"
    else:
        message = f"'{key}' in {source}: {err['msg']} (got {err.get('input')!r}){more}"
    return RecipeError(one_line(message), hint=hint and one_line(hint))


def validate_recipe(
    verb: str, raw: dict[str, Any], source: str, model: type[Strict] | None = None, overrides: Overrides | None = None
) -> Strict:
    """Validate a raw recipe dict for `verb` (or against `model`); an error names the `--set` of
    `overrides` that gave the bad value, else `source`."""
    model = model or RECIPES[verb]
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _explain(exc, model, source, overrides) from None


def _read_bounded(path: Path, what: str) -> str:
    """The file's text, reading at most MAX_RECIPE_BYTES + 1 bytes. Raises RecipeError (too large)
    or OSError / UnicodeDecodeError."""
    with path.open("rb") as handle:
        data = handle.read(MAX_RECIPE_BYTES + 1)
    if len(data) > MAX_RECIPE_BYTES:
        raise RecipeError(
            f"{what} {path} is larger than {MAX_RECIPE_BYTES >> 20} MiB; edgecli reads {what}s of at most "
            f"{MAX_RECIPE_BYTES >> 20} MiB"
        )
    return data.decode("utf-8")


def read_yaml_mapping(path: Path, what: str, folder: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping, read with the safe loader (duplicate keys refused), at
    most MAX_RECIPE_BYTES. Raises RecipeError naming the file (and line) for unreadable, too large,
    invalid, empty or non-mapping files."""
    try:
        raw = yaml.load(_read_bounded(path, what), Loader=_UniqueKeyLoader)
    except (yaml.YAMLError, RecursionError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{path}{where} is not valid YAML: {_yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read {what} {path}: {exc}") from None
    if raw is None:
        raise RecipeError(f"{what} {path} is empty", hint=f"see configs/{folder}/ for examples")
    if not isinstance(raw, dict):
        raise RecipeError(f"{what} {path} must be a mapping of keys to values, not {type(raw).__name__}")
    return raw


def code_fields(recipe: BaseModel, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """(location, 'package.module:function') of every field of `recipe` that names code to import:
    the `factory` of a model or student section (security.CODE_FIELDS), at any depth."""
    found = []
    for name in type(recipe).model_fields:
        value = getattr(recipe, name)
        if name == "factory" and isinstance(value, str) and isinstance(recipe, (ModelSource, StudentSpec)):
            found.append(((*prefix, name), value))
        elif isinstance(value, BaseModel):
            found += code_fields(value, (*prefix, name))
    return found


def check_recipe_code(recipe: BaseModel, source: str, overrides: Overrides | None = None) -> None:
    """Refuse a recipe naming code unless --trust-code (and Python's own modules even then), before
    anything is imported. Raises RecipeError (exit 2)."""
    from edgecli.core.security import check_code_allowed

    for loc, spec in code_fields(recipe):
        check_code_allowed(".".join(loc), spec, blamed(loc, source, overrides or []))


def load_recipe(verb: str, name_or_path: str | None, overrides: list[str] | None = None) -> tuple[Strict, Path | None]:
    """Load, override and validate the recipe for `verb`, and refuse code it names unless trusted.
    Returns the recipe and its file (None if defaults)."""
    raw: Any = {}
    path: Path | None = None
    if name_or_path is not None:
        path = resolve_recipe_path(verb, name_or_path)
        raw = read_yaml_mapping(path, "recipe", verb)
    items = overrides or []
    applied: Overrides = []
    for item, (key_path, value) in zip(items, parse_set(items)):
        _apply_set(raw, key_path, value)
        applied.append((one_line(item.strip())[:120], key_path))
    source = str(path) if path is not None else f"the {verb} recipe"
    recipe = validate_recipe(verb, raw, source, overrides=applied)
    check_recipe_code(recipe, source, applied)
    return recipe, path
