"""The pieces every recipe shares: the strict base model, data and model-source sections, fine-tuning,
and the defaults of synthesised inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_DYNAMIC_DIM = 128  # a dynamic dimension (other than batch) of a synthesised input: sequence-like length
DEFAULT_INT_RANGE = (0, 100)  # [low, high) of synthesised integer inputs (token ids)


class Strict(BaseModel):
    """Base of every recipe section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class DataSpec(Strict):
    """A dataset in an .npz file: inputs under `x` (or under the model's input names), labels under `y`."""

    path: Path | None = Field(
        default=None, description="Path of the .npz file; `--data` on the command line overrides it."
    )
    scale: float = Field(
        default=1.0, gt=0, description="Inputs are multiplied by this after conversion to float (e.g. 1/255)."
    )
    mean: list[float] | None = Field(
        default=None, description="Per-channel mean subtracted after scaling (channel axis 1)."
    )
    std: list[float] | None = Field(
        default=None, description="Per-channel std the inputs are divided by after the mean."
    )
    limit: int | None = Field(default=None, ge=1, description="Use at most this many samples (the first ones).")


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
        default=None,
        min_length=1,
        description="Example input shape with batch, e.g. [1, 1, 28, 28], for export; default: the shape of --data.",
    )
    input_dtype: Literal["float32", "int64", "int32"] = Field(default="float32", description="Example input dtype.")
    strict: bool = Field(default=True, description="The state_dict must match the module's parameters key for key.")


class ReadsPyTorch(Strict):
    """A recipe of a verb that can read a PyTorch state_dict."""

    model: ModelSource | None = Field(
        default=None, description="Needed when MODEL is a state_dict (.pt/.pth): the code that builds the module."
    )


class FinetuneSpec(Strict):
    """Fine-tuning on labelled data after a transformation."""

    epochs: int = Field(default=0, ge=0, le=1000, description="Epochs of fine-tuning; 0 disables it.")
    lr: float = Field(default=1e-4, gt=0, le=10, description="Learning rate (small: the model is already trained).")
    batch_size: int = Field(default=64, ge=1, le=65536, description="Mini-batch size.")
    optimizer: Literal["adam", "sgd"] = Field(default="adam", description="Optimiser: adam, or sgd with momentum 0.9.")
    schedule: Literal["constant", "onecycle"] = Field(
        default="constant",
        description="Learning-rate schedule: constant, or one-cycle (warm-up then anneal) peaking at lr.",
    )
    val_split: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.5,
        description="Fraction of the training data held out to validate after each epoch (0: none).",
    )
    patience: int | None = Field(
        default=None,
        ge=1,
        description="Stop after this many epochs without a better validation accuracy (needs val_split); "
        "the best epoch's weights are kept.",
    )
    distill: bool = Field(
        default=False, description="Learn from the unpruned model's outputs too (knowledge distillation)."
    )
    temperature: float = Field(
        default=4.0, gt=0, le=100, description="distill: softmax temperature of the soft targets."
    )
    soft_weight: float = Field(default=0.5, ge=0.0, le=1.0, description="distill: weight of the soft (teacher) loss.")


class AnswersSpec(Strict):
    """The answer check of a verb that writes a model (quantize, prune, convert at reduced precision):
    every output of the new model is measured against its parent's, the way that output is read
    (edgecli.analysis.answers), and a model whose answers collapsed is written, then exit 1. The
    defaults catch collapse and pass honest INT8 (the sample CNN: agreement 0.99, cosine 0.999)."""

    min_agreement: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Class scores (logits or probabilities), yes/no scores and integer outputs: smallest top-1 "
        "(or decision, or exact-match) agreement with the parent.",
    )
    min_within_one: float = Field(
        default=0.95,
        ge=0,
        le=1,
        description="Outputs with 100 classes or more (pitch bins, ImageNet): smallest fraction of samples whose "
        "top-1 is within one bin of the parent's, or has the parent's top-1 among its top 5 (their top-1 "
        "agreement is reported, not judged: rounding flips neighbouring bins).",
    )
    min_cosine: float = Field(
        default=0.95,
        ge=-1,
        le=1,
        description="Embeddings and dense maps: smallest mean per-sample cosine similarity with the parent's output.",
    )
    min_iou: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Probability maps (masks, heat maps): smallest IoU of the maps thresholded at 0.5.",
    )
    max_relative_error: float = Field(
        default=0.5,
        ge=0,
        description="Regression outputs (one value per sample): largest ||out - ref|| / ||ref|| over the samples.",
    )
    samples: int = Field(default=256, ge=1, le=100000, description="Samples of the data the answers are checked on.")
