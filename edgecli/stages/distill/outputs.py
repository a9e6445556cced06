"""What a teacher's output is: logits, softmax probabilities or sigmoid probabilities.

Knowledge distillation softens the teacher's *logits* with a temperature. Many published models end
with a Softmax or a Sigmoid, so their outputs are already probabilities: softmax(p / T) of those is
nearly flat (every p / T lies in [0, 1/T]) and the student learns almost nothing. The kind is read
from the graph's last computing op where the format shows it (ONNX, .pt2), else from the values the
teacher gave on the training data (rows in [0, 1] that sum to 1: softmax; all in [0, 1]: sigmoid),
and the targets are turned back into logits: log p for softmax (softmax(log p / T) is the tempered
distribution p^(1/T) / sum), log(p / (1 - p)) for sigmoid (trained with a binary KD loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile

Kind = Literal["logits", "softmax", "sigmoid"]

# Ops that move or reshape values without computing them: looked through to the op that made the output.
PASS_THROUGH = {
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Transpose",
    "Cast",
    "view",
    "reshape",
    "flatten",
    "squeeze",
    "unsqueeze",
    "_unsafe_view",
    "clone",
    "contiguous",
    "permute",
    "alias",
    "_to_copy",
    "to",
}
PROBABILITY_OPS: dict[str, Kind] = {"Softmax": "softmax", "softmax": "softmax", "_softmax": "softmax"}
PROBABILITY_OPS |= {"Sigmoid": "sigmoid", "sigmoid": "sigmoid"}
# Ops whose outputs are logits (or log-probabilities, which soften as logits do).
LOGIT_OPS = {"Gemm", "MatMul", "Conv", "LogSoftmax", "linear", "addmm", "mm", "matmul", "log_softmax", "_log_softmax"}
SUM_TOLERANCE = 1e-3
EPS = 1e-12


@dataclass(frozen=True)
class OutputKind:
    """The teacher's output kind and how it was told."""

    kind: Kind
    evidence: str  # e.g. "the graph's last op is Softmax", "rows in [0, 1] that sum to 1"

    def describe(self) -> str:
        names = {"logits": "logits", "softmax": "softmax probabilities", "sigmoid": "sigmoid probabilities"}
        return f"{names[self.kind]} ({self.evidence})"


def value_kind(outputs: np.ndarray) -> Kind:
    """The kind the values show: rows in [0, 1] summing to 1 are softmax, all in [0, 1] sigmoid."""
    values = np.asarray(outputs, dtype=np.float64)
    if values.ndim != 2 or not values.size or not np.isfinite(values).all():
        return "logits"
    if values.min() < 0.0 or values.max() > 1.0:
        return "logits"
    if values.shape[1] >= 2 and np.abs(values.sum(axis=1) - 1.0).max() <= SUM_TOLERANCE:
        return "softmax"
    return "sigmoid"


def _onnx_last_op(model: ModelFile) -> str | None:
    import onnx

    graph = onnx.load(str(model.path), load_external_data=False).graph
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get(graph.output[0].name) if graph.output else None
    while node is not None and node.op_type in PASS_THROUGH and node.input:
        node = producers.get(node.input[0])
    return None if node is None else node.op_type


def _pt2_last_op(model: ModelFile) -> str | None:
    from edgecli.formats import pt2_file

    graph = pt2_file.load(model.path).graph
    output = next(n for n in graph.nodes if n.op == "output")
    results = output.args[0]
    node = results[0] if isinstance(results, (list, tuple)) else results
    while getattr(node, "op", None) == "call_function":
        name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        if name not in PASS_THROUGH:
            return name
        node = node.args[0] if node.args else None
    return None


def graph_last_op(model: ModelFile) -> str | None:
    """The op that computes the first output (looking through reshapes), for ONNX and .pt2; None
    where the format does not show it or the graph cannot be read here."""
    try:
        if model.format is Format.ONNX:
            return _onnx_last_op(model)
        if model.format is Format.PT2:
            return _pt2_last_op(model)
    except Exception:  # the runner reads the model anyway; the values decide then
        return None
    return None


def detect(model: ModelFile, outputs: np.ndarray) -> OutputKind:
    """The teacher's output kind: from its graph's last op where it says, else from its values."""
    op = graph_last_op(model)
    if op in PROBABILITY_OPS:
        kind = PROBABILITY_OPS[op]
        if value_kind(outputs) != "logits":  # a Softmax on another axis would not give such rows
            return OutputKind(kind, f"the graph's last op is {op}")
    if op in LOGIT_OPS:
        return OutputKind("logits", f"the graph's last op is {op}")
    kind = value_kind(outputs)
    if kind == "softmax":
        return OutputKind(kind, "its outputs on the data are rows in [0, 1] that sum to 1")
    if kind == "sigmoid":
        return OutputKind(kind, "its outputs on the data all lie in [0, 1]")
    return OutputKind("logits", "its outputs on the data are not probabilities")


def as_logits(outputs: np.ndarray, kind: Kind) -> np.ndarray:
    """Targets the KD loss softens with T: the logits themselves, log p (softmax), log(p / (1 - p))
    (sigmoid); probabilities of 0 or 1 are clipped to EPS from them."""
    if kind == "logits":
        return outputs
    p = np.clip(np.asarray(outputs, dtype=np.float64), EPS, 1.0 - EPS if kind == "sigmoid" else 1.0)
    logits = np.log(p) if kind == "softmax" else np.log(p) - np.log1p(-p)
    return logits.astype(np.float32)


def _fx_last_op(module: Any) -> str | None:
    """The op computing a torch.fx module's first output (call_function or call_module)."""
    graph = getattr(module, "graph", None)
    if graph is None:
        return None
    output = next((n for n in graph.nodes if n.op == "output"), None)
    if output is None:
        return None
    results = output.args[0]
    node = results[0] if isinstance(results, (list, tuple)) and results else results
    modules = dict(module.named_modules())
    while getattr(node, "op", None) in ("call_function", "call_module", "call_method"):
        if node.op == "call_module":
            name = type(modules.get(str(node.target))).__name__
        else:
            name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        if name not in PASS_THROUGH:
            return name
        node = node.args[0] if node.args else None
    return None


def student_kind(module: Any, outputs: Any) -> Kind:
    """What the student outputs: probabilities when its last op is a Softmax/Sigmoid (an nn.Sequential's
    last layer, or a graph module's last node) or its rows sum to 1; else logits."""
    last = None
    children = list(module.children()) if hasattr(module, "children") else []
    if type(module).__name__ == "Sequential" and children:
        last = type(children[-1]).__name__
    last = last or _fx_last_op(module)
    if last in PROBABILITY_OPS:
        return PROBABILITY_OPS[last]
    values = np.asarray(outputs.detach().numpy() if hasattr(outputs, "detach") else outputs)
    return "softmax" if value_kind(values) == "softmax" and last not in LOGIT_OPS else "logits"


def torch_logits(outputs: Any, kind: Kind) -> Any:
    """as_logits for a student's outputs during training (differentiable)."""
    import torch

    if kind == "logits":
        return outputs
    if kind == "softmax":
        return torch.log(outputs.clamp_min(EPS))
    p = outputs.clamp(EPS, 1.0 - EPS)
    return torch.log(p) - torch.log1p(-p)


def probability_head(kind: Kind) -> Any:
    """The module that turns a student's logits into the teacher's kind of output (None for logits)."""
    from torch import nn

    return {"softmax": nn.Softmax(dim=1), "sigmoid": nn.Sigmoid()}.get(kind)
