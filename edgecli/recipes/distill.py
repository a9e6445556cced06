"""`edgecli distill`'s recipe: the student, the losses, augmentation and training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from edgecli.recipes.base import AnswersSpec, DataSpec, ReadsPyTorch, Strict


def _default_channels() -> list[int | list[int]]:
    """StudentSpec.channels' default (a function: a lambda's list would be typed list[int])."""
    return [16, 32, 64]


class StudentSpec(Strict):
    """The student: a built-in family (cnn, mlp) with width and depth knobs, a `.pt2` file, or your code."""

    family: Literal["cnn", "mlp"] | None = Field(
        default=None,
        description="Built-in family (the default, cnn, when neither path nor factory is given): "
        "cnn: stages of 3x3 conv + BatchNorm + ReLU with 2x2 max-pooling between stages; mlp: dense layers.",
    )
    channels: list[Annotated[int, Field(ge=1)] | list[Annotated[int, Field(ge=1)]]] = Field(
        default_factory=_default_channels,
        min_length=1,
        description="cnn: output channels of each stage: a number (one conv) or a list (one conv each), "
        "e.g. [[32, 64, 64, 64, 64], 128, 128] is the sample teacher's layout.",
    )
    head: Literal["flatten", "avgpool"] = Field(
        default="flatten",
        description="cnn: flatten the last feature map into the classifier, or global-average-pool it.",
    )
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [128], description="mlp: width of each hidden layer."
    )
    width: float = Field(
        default=1.0, gt=0, le=16, description="Multiplies every channel count / hidden width (0.5: half width)."
    )
    depth: float = Field(
        default=1.0,
        gt=0,
        le=16,
        description="Multiplies the convs of each cnn stage (or the mlp's hidden layers); at least one is kept.",
    )
    path: Path | None = Field(
        default=None, description="A .pt2 file (torch.export) to train as the student instead of a built-in family."
    )
    factory: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="package.module:function returning the student nn.Module (your own architecture). This runs "
        "code: imported only with `edgecli --trust-code` (or EDGECLI_TRUST_CODE=1), and only a function or "
        "nn.Module class outside Python's standard library.",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="factory: keyword arguments passed to it.")
    weights: Path | None = Field(
        default=None,
        description="factory: a state_dict (.pt/.pth) to start from, read with torch.load(weights_only=True).",
    )
    allow_larger: bool = Field(
        default=False,
        description="Train a student with as many weights as the teacher or more (refused otherwise: "
        "distillation is meant to shrink the model).",
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

    hflip: bool = Field(default=True, description="Mirror each image left-right with probability 0.5.")
    crop_padding: int = Field(
        default=2,
        ge=0,
        le=64,
        description="Zero-pad by this many pixels, then crop back at a random offset (0: no crops).",
    )
    views: int = Field(
        default=8,
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
    weight: float = Field(default=1.0, gt=0, le=1000, description="Weight of the mean-squared feature loss.")


class DistillAnswersSpec(AnswersSpec):
    """distill's answer check: the student (as written, with the teacher's kind of head) against the
    teacher. A student is another, smaller network, expected to disagree more than a quantized copy:
    the defaults catch a student that learned nothing (fer's mini-Xception distilled on 128 faces:
    agreement 0.26 on 7 classes), not one a few points less accurate."""

    min_agreement: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Smallest top-1 (or yes/no decision) agreement of the student with the teacher.",
    )
    min_within_one: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Teachers with 100 classes or more: smallest fraction of samples whose top-1 is within one "
        "class of the teacher's, or has the teacher's top-1 among its top 5.",
    )


class DistillRecipe(ReadsPyTorch):
    """`edgecli distill`: train a student .pt2 from a teacher of any supported format."""

    student: StudentSpec = Field(default_factory=StudentSpec, description="Student architecture.")
    temperature: float = Field(default=4.0, gt=0, le=100, description="Softmax temperature T of the soft targets.")
    soft_weight: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="Weight of the T²-scaled KL loss; 1 - soft_weight goes to the label loss.",
    )
    hint: HintSpec | None = Field(default=None, description="Optional feature (hint) loss on an intermediate layer.")
    epochs: int = Field(default=5, ge=1, le=1000, description="Training epochs.")
    batch_size: int = Field(
        default=64, ge=1, le=65536, description="Mini-batch size (the global batch under torchrun)."
    )
    lr: float = Field(default=2e-3, gt=0, le=10, description="Learning rate (the peak, with onecycle).")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="Weight decay (decoupled, with adamw).")
    optimizer: Literal["adam", "adamw", "sgd"] = Field(
        default="adam", description="Optimiser: adam, adamw, or sgd with momentum 0.9."
    )
    schedule: Literal["constant", "onecycle", "cosine"] = Field(
        default="onecycle",
        description="Learning-rate schedule: constant, one-cycle (warm-up then anneal) peaking at lr, "
        "or cosine decay from lr.",
    )
    augment: AugmentSpec | None = Field(
        default=None,
        description="Image augmentation (flips, crops); none when absent, and dropped with a warning when the data "
        "is not float images [N,C,H,W].",
    )
    val_split: float = Field(
        default=0.1,
        ge=0.0,
        lt=0.5,
        description="Fraction of the training data held out to pick the best epoch (0: keep the last).",
    )
    patience: int | None = Field(
        default=None,
        ge=1,
        description="Stop after this many epochs without a better validation score (needs val_split).",
    )
    baseline: bool = Field(
        default=False, description="Also train the same student on the labels alone, to report what distillation adds."
    )
    teacher_cache: bool = Field(
        default=True, description="Cache the teacher's outputs on disk ($EDGECLI_CACHE_DIR, else ~/.cache/edgecli)."
    )
    latency_runs: int = Field(
        default=200, ge=0, le=100000, description="Batch-1 runs timed for the teacher/student p50 (0: skip)."
    )
    data: DataSpec = Field(default_factory=DataSpec, description="Training data; labels under `y` are optional.")
    eval_data: DataSpec | None = Field(default=None, description="Labelled data for the accuracy report.")
    answers: DistillAnswersSpec = Field(
        default_factory=DistillAnswersSpec,
        description="The answer check: the student measured against the teacher on the eval data (else the "
        "training data); a student whose answers collapsed is written, then exit 1.",
    )
    seed: int = Field(default=0, ge=0, description="Random seed; the same seed gives the same student bytes.")

    @model_validator(mode="after")
    def _fits(self) -> DistillRecipe:
        if self.patience is not None and not self.val_split:
            raise ValueError("patience needs val_split > 0")
        return self
