"""What each converter and runtime can take: the ONNX ops onnx2tf converts to LiteRT-runnable TFLite,
the TFLite builtins TensorFlow Lite Micro has kernels for, whether onnxruntime's CPU build loads a
model, and which inputs have dynamic shapes. Used by convert's pre-flight (stages/convert/preflight.py)
and by the onnx2tf backend itself before it runs (a .pt2 is checked after its ONNX export).

Hard problems (an op the target cannot express) end the conversion with one TransformError listing
every problem, one line each; soft ones (dynamic shapes) are warnings. Everything here reads the
ONNX graph or asks onnxruntime to load it: no converter runs, so the answer comes in seconds.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecli.core import console
from edgecli.core.errors import TransformError
from edgecli.runtimes.onnx_runner import unoptimized_session

STANDARD_DOMAINS = ("", "ai.onnx")

# onnx2tf writes these with TensorFlow string ops, which have no TFLite builtin: onnx2tf lets the
# converter keep them as Select (Flex) ops, which LiteRT's builtin interpreter cannot run.
FLEX_STRING_OPS = {
    "RegexFullMatch": "tf.strings.regex_full_match",
    "StringConcat": "tf.strings.join",
    "StringNormalizer": "tf.strings.lower/upper",
    "StringSplit": "tf.strings.split",
}

# ONNX op -> the TFLite builtin onnx2tf makes of it (read from onnx2tf/ops/<Op>.py), for builtins that
# TensorFlow Lite Micro registers no kernel for (checked against the tflite-micro package's
# Register_* functions in tests/stages/convert/test_preflight.py). Only ops whose fate is certain.
TFLM_MISSING_BUILTINS = {
    "TopK": "TOPK_V2",
    "NonZero": "WHERE",
    "Tile": "TILE",
    "OneHot": "ONE_HOT",
    "Range": "RANGE",
    "Sign": "SIGN",
    "ReduceProd": "REDUCE_PROD",
    "LRN": "LOCAL_RESPONSE_NORMALIZATION",
    "ReverseSequence": "REVERSE_SEQUENCE",
    "NonMaxSuppression": "NON_MAX_SUPPRESSION_V5",
}


@dataclass
class Findings:
    """What a pre-flight found: problems stop the conversion, warnings do not."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- reading the graph


def _graphs_in(node: Any) -> Iterator[Any]:
    """The subgraphs of a control-flow node (If branches, Loop and Scan bodies)."""
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs


def _static_shaped(proto: Any) -> set[str]:
    """Tensors of the main graph whose shape shape inference fixes completely."""
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # shape inference gives up on some custom ops: then nothing is known static
        return set()
    graph = inferred.graph
    static = set()
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            static.add(value.name)
    return static


def _constant_names(proto: Any) -> set[str]:
    """Tensors onnxsim folds away before onnx2tf sees them: initializers, Constant outputs, shapes of
    statically shaped tensors and outputs of nodes fed only by those."""
    graph = proto.graph
    known = {t.name for t in graph.initializer} | {""}  # "" is an omitted optional input
    static = _static_shaped(proto)
    for node in graph.node:
        fixed_shape = node.op_type in ("Shape", "Size") and node.input and node.input[0] in static
        if node.op_type == "Constant" or fixed_shape or (node.input and all(name in known for name in node.input)):
            known.update(node.output)
    return known


def converted_nodes(proto: Any) -> Iterator[Any]:
    """Every node a converter must translate: the main graph's (minus constant-folded ones), those of
    subgraphs, and the bodies of model-local functions in place of their calls."""
    functions = {(f.domain, f.name): f for f in proto.functions}

    def walk(nodes: Any, skip: set[str], depth: int) -> Iterator[Any]:
        for node in nodes:
            if node.output and all(name in skip for name in node.output):
                continue
            function = functions.get((node.domain, node.op_type))
            if function is not None and depth < 8:
                yield from walk(function.node, set(), depth + 1)
                continue
            yield node
            for graph in _graphs_in(node):
                yield from walk(graph.node, set(), depth + 1)

    weights = {t.name for t in proto.graph.initializer}
    folded = {name for name in _constant_names(proto) if name not in weights}
    yield from walk(proto.graph.node, folded, 0)


def _op_label(node: Any) -> str:
    return node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}::{node.op_type}"


def _per_op(nodes: list[Any]) -> dict[str, list[Any]]:
    """Nodes grouped by op, in graph order: one problem line per op, naming its nodes."""
    groups: dict[str, list[Any]] = {}
    for node in nodes:
        groups.setdefault(_op_label(node), []).append(node)
    return groups


def _where(nodes: list[Any]) -> str:
    first = nodes[0].name or nodes[0].output[0]
    return f"node '{first}'" + (f" and {len(nodes) - 1} more" if len(nodes) > 1 else "")


# ---------------------------------------------------------------------------- ONNX -> TFLite


@functools.lru_cache(maxsize=1)
def onnx2tf_handlers() -> frozenset[str] | None:
    """The ops onnx2tf converts: one module per op in its package's ops/ folder (found without
    importing onnx2tf, which would load TensorFlow). None when onnx2tf is not installed."""
    spec = importlib.util.find_spec("onnx2tf")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "ops"
    return frozenset(path.stem for path in folder.glob("*.py") if not path.stem.startswith("_"))


def _onnx2tf_problem(node: Any, handlers: frozenset[str]) -> str | None:
    """Why onnx2tf cannot convert this node, or None."""
    if node.domain not in STANDARD_DOMAINS and not (node.domain == "com.microsoft" and node.op_type in handlers):
        return f"custom domain '{node.domain}': onnx2tf converts standard ONNX ops only"
    if node.op_type not in handlers:
        return f"onnx2tf has no converter for {node.op_type} (no onnx2tf/ops/{node.op_type}.py)"
    if node.op_type in FLEX_STRING_OPS:
        return (
            f"onnx2tf writes it as {FLEX_STRING_OPS[node.op_type]}, a TensorFlow Select (Flex) op "
            "that LiteRT's builtin interpreter cannot run"
        )
    return None


def _micro_problem(node: Any) -> str | None:
    """Why TensorFlow Lite Micro cannot run what this node becomes, or None."""
    builtin = TFLM_MISSING_BUILTINS.get(node.op_type) if node.domain in STANDARD_DOMAINS else None
    if builtin is None:
        return None
    return f"becomes TFLite {builtin}, which TensorFlow Lite Micro has no kernel for"


def _problem_lines(nodes: list[Any], judge: Any) -> list[str]:
    """One line per op that `judge` finds a problem with: 'op X (node 'n' and 2 more): why'."""
    lines = []
    for label, group in _per_op(nodes).items():
        why = judge(group[0])
        if why:
            lines.append(f"op {label} ({_where(group)}): {why}")
    return lines


def onnx2tf_problems(proto: Any) -> list[str]:
    """Ops onnx2tf cannot turn into LiteRT-runnable TFLite, one line each ([] without onnx2tf:
    the conversion then stops on the missing backend)."""
    handlers = onnx2tf_handlers()
    if handlers is None:
        return []
    return _problem_lines(list(converted_nodes(proto)), lambda node: _onnx2tf_problem(node, handlers))


def micro_problems(proto: Any) -> list[str]:
    """Ops that become TFLite builtins TensorFlow Lite Micro cannot run, one line each."""
    return _problem_lines(list(converted_nodes(proto)), _micro_problem)


def _dim_text(index: int, dim: Any) -> str:
    return f"dim {index} '{dim.dim_param}'" if dim.dim_param else f"dim {index}"


def _dynamic_dims(value: Any) -> list[tuple[int, Any]]:
    """(index, dim) of every dimension but the batch that has no fixed size."""
    dims = value.type.tensor_type.shape.dim
    return [(i, d) for i, d in enumerate(dims) if i > 0 and not (d.HasField("dim_value") and d.dim_value > 0)]


def _fix_command(proto: Any) -> str:
    """The onnxruntime tool call that pins the dynamic dimensions of the inputs."""
    tool = "python -m onnxruntime.tools.make_dynamic_shape_fixed"
    params = [d.dim_param for value in _real_inputs(proto) for _, d in _dynamic_dims(value) if d.dim_param]
    if params:
        return f"{tool} --dim_param {params[0]} --dim_value N MODEL OUT" + (
            " (once per dim_param)" if len(set(params)) > 1 else ""
        )
    return f"{tool} --input_name NAME --input_shape 1,... MODEL OUT"


def _real_inputs(proto: Any) -> list[Any]:
    """Graph inputs that are fed at run time (not initializers listed as inputs), with a tensor type."""
    weights = {t.name for t in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in weights and v.type.HasField("tensor_type")]


def dynamic_shape_warnings(proto: Any) -> list[str]:
    """One line per graph input with a dynamic dimension other than the batch, then one line with the fix."""
    lines = []
    for value in _real_inputs(proto):
        if not value.type.tensor_type.HasField("shape"):
            lines.append(f"TFLite delegates (GPU/NNAPI/NPU) need static shapes: input '{value.name}' has no shape")
            continue
        dims = _dynamic_dims(value)
        if dims:
            which = ", ".join(_dim_text(i, d) for i, d in dims)
            verb = "is" if len(dims) == 1 else "are"
            lines.append(
                f"TFLite delegates (GPU/NNAPI/NPU) need static shapes: input '{value.name}' {which} {verb} dynamic"
            )
    if lines:
        lines.append(f"fix dynamic shapes before converting: {_fix_command(proto)}")
    return lines


def tflite_findings(proto: Any, micro: bool) -> Findings:
    """ONNX -> TFLite (onnx2tf) pre-flight; `micro` adds TensorFlow Lite Micro's limits."""
    problems = onnx2tf_problems(proto) + (micro_problems(proto) if micro else [])
    return Findings(problems, dynamic_shape_warnings(proto))


QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "ConvInteger",
    }
)


def is_quantized_onnx(proto: Any) -> bool:
    """Whether the graph holds INT8 quantization ops (QDQ or QOperator format)."""
    return any(node.op_type in QUANTIZED_OPS for node in proto.graph.node)


def require_onnx2tf_support(proto: Any, what: str) -> None:
    """Raise TransformError listing every op onnx2tf cannot convert (called before onnx2tf runs, so
    that .pt2 models are checked after their ONNX export too). Silent when all is well."""
    report(Findings(onnx2tf_problems(proto)), what)


# ---------------------------------------------------------------------------- ONNX -> ORT

_NO_KERNEL = re.compile(r"Could not find an implementation for (\S+)\((\d+)\) node with name '([^']*)'")
_NOT_REGISTERED = re.compile(r"(\S+):(\S+)\(-?\d+\) is not a registered function/op")
_NO_SCHEMA = re.compile(r"No Op registered for (\S+) with domain_version of (\d+)")


def _ort_problem(message: str) -> str:
    """onnxruntime's load error as one problem line naming the op."""
    import onnxruntime

    found = _NO_KERNEL.search(message)
    if found:
        op, version, node = found.groups()
        where = f"node '{node}'" if node else "a node (or the function it expands)"
        return f"op {op} (opset {version}, {where}): onnxruntime {onnxruntime.__version__} has no CPU kernel for it with these input types"
    found = _NOT_REGISTERED.search(message)
    if found:
        domain, op = found.groups()
        return f"op {domain}::{op}: onnxruntime has no kernel for custom domain '{domain}' (register a custom-op library or rewrite the op)"
    found = _NO_SCHEMA.search(message)
    if found:
        op, version = found.groups()
        return f"op {op}: not an op of ONNX opset {version} as onnxruntime {onnxruntime.__version__} knows it"
    first = next((line for line in message.splitlines() if line.strip()), message)
    return f"onnxruntime cannot load the model: {first.strip()[:240]}"


def ort_problems(model: Path | bytes) -> list[str]:
    """Whether onnxruntime's CPU build can load the model (every op has a kernel): [] or one line.
    onnxruntime stops at the first op it cannot place, so at most one op is named per run."""
    try:
        unoptimized_session(model)
    except Exception as exc:  # onnxruntime's Fail / InvalidGraph / NotImplemented
        return [_ort_problem(str(exc))]
    return []


# ---------------------------------------------------------------------------- reporting


def report(findings: Findings, what: str) -> None:
    """Warn the soft findings; raise one TransformError whose message holds every problem, one per line."""
    for warning in findings.warnings:
        console.warn(warning)
    if not findings.problems:
        return
    if len(findings.problems) == 1:
        raise TransformError(f"{what}: {findings.problems[0]}")
    raise TransformError(
        f"{what}: {len(findings.problems)} problems, nothing was converted:",
        details=[f"  - {problem}" for problem in findings.problems],
    )
