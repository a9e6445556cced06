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


@dataclass
class Unit:
    """What the accuracy guard moves to float in one piece: a single layer, or a pattern of ops that
    only works in float as a whole (a decomposed LayerNorm: E[x^2] - E[x]^2 cancels in INT8; a
    decomposed softmax; an attention block), whose single layers each look harmless.

    kind: 'layer', 'norm', 'softmax', 'attention' or 'block'.
    nodes: the node names kept in float with it (topological order).
    position: the topological index of its last node (the guard escalates from the output back).
    sensitivity: the relative noise the unit adds itself (rel_mse at its output minus the largest
            rel_mse of its inputs from outside).
    """

    name: str
    kind: str
    nodes: list[str]
    position: int
    sensitivity: float

    def describe(self) -> str:
        return self.name if self.kind == "layer" else f"{self.kind} {self.name} ({len(self.nodes)} ops)"


def layer_units(layers: list[LayerError]) -> list[Unit]:
    """One unit per quantized layer (no graph known: the layers' order stands for the topology)."""
    return [
        Unit(layer.node, "layer", [layer.node], index, layer.sensitivity)
        for index, layer in enumerate(layers)
        if layer.quantized
    ]


def ranked_units(units: list[Unit]) -> list[Unit]:
    """Units by the noise they add, worst first. A pattern that holds a smaller unit adding at least
    80% of its noise comes right after that smaller unit (the compact answer is tried first)."""
    order = sorted(units, key=lambda u: (-u.sensitivity, len(u.nodes), u.position))
    result: list[Unit] = []
    for unit in order:
        if unit in result:
            continue
        members = set(unit.nodes)
        for inner in order:
            if (
                inner is not unit
                and inner not in result
                and len(inner.nodes) < len(unit.nodes)
                and set(inner.nodes) <= members
                and inner.sensitivity >= 0.8 * unit.sensitivity
            ):
                result.append(inner)
                break
        result.append(unit)
    return result
