"""Per-layer quantization error: what a quantized layer loses against the float model, as SNR (dB)
and relative MSE, shared by the ONNX and TFLite paths, the accuracy guard and `--report`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# An additive attention mask's sentinel: -1e4 (older BERTs) down to float32's lowest (-3.4e38).
# Tensors that carry it have no useful INT8 scale, so both quantizers keep them in float.
MASK_VALUE = 1e4


@dataclass
class LayerError:
    """One layer (node) of a quantized model compared with the same layer of the float model.

    snr_db: 10*log10(|float|^2 / |float - quantized|^2) of the layer's output over the data
            (inf when identical); the error accumulated up to and including this layer.
    rel_mse: |float - quantized|^2 / |float|^2 (the same figure, linear).
    sensitivity: the relative noise this layer adds itself (its rel_mse minus the largest rel_mse of
            its inputs); the accuracy guard keeps the layers with the largest values in float first.
    quantized: False when the layer runs in float; `reason` then says why.
    """

    node: str
    op_type: str
    output: str
    snr_db: float
    rel_mse: float
    sensitivity: float = 0.0
    quantized: bool = True
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        for key in ("snr_db", "rel_mse", "sensitivity"):
            value = row[key]
            row[key] = None if value is None or not math.isfinite(value) else float(f"{value:.6g}")
        if not row["extra"]:
            row.pop("extra")
        return row


class ErrorAccumulator:
    """Sums signal and noise energy of one tensor over batches, so SNR needs no stored activations."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        reference = np.asarray(reference, dtype=np.float64)
        candidate = np.asarray(candidate, dtype=np.float64).reshape(reference.shape)
        self.signal += float(np.sum(reference * reference))
        self.noise += float(np.sum((reference - candidate) ** 2))

    @property
    def rel_mse(self) -> float:
        if self.signal == 0.0:
            return 0.0 if self.noise == 0.0 else math.inf
        return self.noise / self.signal

    @property
    def snr_db(self) -> float:
        rel = self.rel_mse
        if rel == 0.0:
            return math.inf
        return -10.0 * math.log10(rel) if math.isfinite(rel) else -math.inf


def snr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """SNR in dB of `candidate` as an approximation of `reference`."""
    acc = ErrorAccumulator()
    acc.add(reference, candidate)
    return acc.snr_db


def most_sensitive(layers: list[LayerError]) -> list[LayerError]:
    """Quantized layers ordered by the noise each adds itself, worst first (ties: lower SNR first)."""
    candidates = [layer for layer in layers if layer.quantized]
    return sorted(candidates, key=lambda l: (-l.sensitivity, l.snr_db))
