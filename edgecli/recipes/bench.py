"""`edgecli bench`'s recipe: timing points, synthesised inputs, memory and gates (parse_gate)."""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any

from pydantic import Field, field_validator

from edgecli.recipes.base import DEFAULT_DYNAMIC_DIM, DEFAULT_INT_RANGE, DataSpec, Strict

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

    warmup: int = Field(
        default=10, ge=0, description="Untimed runs of each model (at each threads/batch point) before timing."
    )
    runs: int = Field(default=100, ge=1, description="Minimum number of timed runs per model and point.")
    min_time_s: float = Field(default=0.5, ge=0, description="Minimum total timed seconds per model and point.")
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
        default=0.05,
        gt=0,
        le=1,
        description="Warn when a model's p50 varies by more than this fraction between the 5 consecutive segments "
        "of its timed runs (p50_spread): differences between models smaller than the spread are noise.",
    )
    eval_batch_size: int = Field(default=64, ge=1, description="Batch size of the accuracy pass.")
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
        default=DEFAULT_INT_RANGE,
        description="Synthesised integer inputs (no --data): values drawn uniformly from [low, high), e.g. token "
        "ids; the dtype of the input (e.g. int64) is kept. Inputs whose name contains 'mask' are all ones, "
        "'type_ids' or 'segment' all zeros.",
    )
    memory: bool = Field(
        default=True,
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
