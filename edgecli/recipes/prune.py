"""`edgecli prune`'s recipe: channel (structured) or magnitude / 2:4 pruning, then fine-tuning."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edgecli.recipes.base import AnswersSpec, DataSpec, FinetuneSpec, ReadsPyTorch, Strict


class ChannelSpec(Strict):
    """method channel: structured pruning of whole channels with Torch-Pruning's dependency graph."""

    importance: Literal["l1", "l2", "bn_scale", "taylor"] = Field(
        default="l1",
        description="Channel importance: L1/L2 norm of its weights, BatchNorm scale, or first-order Taylor "
        "(gradient x weight, on a few training batches).",
    )
    ratio: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Target: fraction of channels removed (in each layer, or overall with scope global).",
    )
    macs_ratio: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Target: MACs of the pruned model at most this fraction of the dense model's.",
    )
    params_ratio: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="Target: parameters at most this fraction of the dense model's."
    )
    keep_layers: list[str] = Field(
        default_factory=list, description="Layers (module names) never pruned; the classifier's output is always kept."
    )
    round_to: int | None = Field(
        default=None, ge=1, description="Keep channel counts multiples of this (4 or 8 suit SIMD kernels)."
    )
    max_layer_ratio: float = Field(
        default=0.9, gt=0.0, lt=1.0, description="No layer loses more than this fraction of its channels."
    )
    steps: int = Field(
        default=1,
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
        default="magnitude",
        description="channel: structured pruning (.pt2 / state_dict): whole channels removed, the model gets smaller "
        "and faster; magnitude: unstructured, the smallest weights zeroed (.pt2 or ONNX; smaller compressed, not "
        "faster on dense kernels); 2of4: 2:4 semi-structured, two of every four consecutive weights zeroed (sparse tensor cores).",
    )
    sparsity: float = Field(
        default=0.5, ge=0.0, lt=1.0, description="magnitude: fraction of prunable weights set to zero."
    )
    scope: Literal["global", "layer"] = Field(
        default="global",
        description="global: one threshold (or channel ranking) over all layers; layer: the same fraction in every layer.",
    )
    schedule: Literal["oneshot", "gradual"] = Field(
        default="oneshot",
        description="magnitude: all at once, or raised gradually over the fine-tuning epochs (cubic schedule).",
    )
    channel: ChannelSpec = Field(default_factory=ChannelSpec, description="method channel: importance and target.")
    min_params: int = Field(
        default=64, ge=1, description="Weight tensors with fewer elements than this are left dense (tiny first layers)."
    )
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec, description="Fine-tuning after pruning (masks kept).")
    data: DataSpec = Field(default_factory=DataSpec, description="Labelled training data for fine-tuning.")
    eval_data: DataSpec | None = Field(
        default=None, description="Labelled data on which accuracy before/after is reported."
    )
    answers: AnswersSpec = Field(
        default_factory=AnswersSpec,
        description="The answer check: every output of the pruned model measured against the unpruned one on the "
        "eval data (else the training data, else synthesised inputs); collapsed answers write the model, then exit 1.",
    )
    seed: int = Field(default=0, description="Random seed; the same seed gives the same output bytes.")

    @model_validator(mode="after")
    def _fits(self) -> PruneRecipe:
        if self.schedule == "gradual" and self.method != "magnitude":
            raise ValueError(
                f"schedule gradual applies to method magnitude, not {self.method} (--set schedule=oneshot)"
            )
        if self.schedule == "gradual" and not self.finetune.epochs:
            raise ValueError(
                "schedule gradual raises sparsity during fine-tuning: it needs finetune.epochs >= 1 "
                "(--set finetune.epochs=3, or --set schedule=oneshot)"
            )
        if self.method == "channel":
            spec = self.channel
            targets = [name for name in ("ratio", "macs_ratio", "params_ratio") if getattr(spec, name) is not None]
            if len(targets) != 1:
                raise ValueError(
                    "method channel needs exactly one target: channel.ratio, channel.macs_ratio or channel.params_ratio"
                    + (f" (got {', '.join(targets)})" if targets else "")
                )
            if self.finetune.patience is not None and not self.finetune.val_split:
                raise ValueError("finetune.patience needs finetune.val_split > 0 (the validation data it watches)")
        return self
