"""A quick latency comparison of the float and quantized models on this machine, and the likely
reason when the quantized one is not faster (the most common surprise of INT8 on CPU)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from edgecli.analysis.latency import NOT_FASTER, latency_stats, measure_latency, slow_quantization_reasons
from edgecli.core import console
from edgecli.data.dataset import Dataset, synthetic_dataset
from edgecli.formats.detect import Format
from edgecli.formats.model_file import ModelFile
from edgecli.recipes import BenchRecipe, QuantizeRecipe
from edgecli.runtimes import open_runner
from edgecli.stages.artifact import Artifact, staged
from edgecli.stages.quantize.onnx import op_counts

QUICK = BenchRecipe(warmup=5, runs=30, min_time_s=0.3, threads=[1], batch_size=[1])


def speed_check(
    model: ModelFile, artifact: Artifact, recipe: QuantizeRecipe, data: Dataset | None, float_layers: int
) -> dict[str, Any]:
    """p50 latency of float and quantized models at 1 thread, batch 1, interleaved; warns when the
    quantized model is not faster. Timings go to the report, never to the lineage."""
    with staged(artifact) as candidate:
        runners = [open_runner(model, threads=1), open_runner(candidate, threads=1)]
        source = data if data is not None else synthetic_dataset(runners[0].inputs, 1)
        feeds = [r.feeds(source.batch(0, 1)) for r in runners]
        timings = measure_latency(runners, feeds, QUICK)
    float_p50, quant_p50 = (latency_stats(t, 1)["p50"] for t in timings)
    result: dict[str, Any] = {
        "float_format": model.format.value,  # the float model in its own runtime (ONNX: onnxruntime)
        "quantized_format": artifact.format.value,
        "threads": 1,
        "batch_size": 1,
        "runs": [len(t) for t in timings],
        "float_p50_ms": float_p50,
        "quantized_p50_ms": quant_p50,
        "latency_ratio": quant_p50 / float_p50 if float_p50 > 0 else float(np.nan),
        "faster": quant_p50 < NOT_FASTER * float_p50,
    }
    ops = op_counts(artifact.payload) if artifact.format is Format.ONNX else Counter()
    if not result["faster"]:
        reasons = slow_quantization_reasons(recipe, ops, float_layers, float_p50)
        if artifact.format is Format.ONNX:
            reasons = conv1d_reasons(artifact.payload) + reasons
        result["likely_reasons"] = reasons or ["unknown: compare with `edgecli bench` over more runs"]
        console.warn(
            f"the quantized model is not faster on this machine: p50 {quant_p50:.3g} ms vs float {float_p50:.3g} ms "
            f"(1 thread, batch 1); likely: {result['likely_reasons'][0]}"
        )
    return result


# Ops whose INT8 kernels can be slower than float on a CPU (the candidates to keep float).
FALLBACK_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Gather", "LSTM", "GRU")


def conv1d_reasons(proto: Any) -> list[str]:
    """A real reason for a slow INT8 model when it holds 1-D convolutions (a kernel of k x 1 or 1-D):
    onnxruntime lowers them to QLinearConv / ConvInteger, whose kernels are tuned for 2-D images."""
    from onnx import helper

    from edgecli.analysis.latency import machine_info

    dequantized = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    long_1d = []
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "ConvInteger") or (node.op_type == "Conv" and node.input[1] not in dequantized):
            continue  # a float Conv is not the slow one
        kernel: list[int] = next(
            (helper.get_attribute_value(a) for a in node.attribute if a.name == "kernel_shape"), []
        )
        if kernel and (len(kernel) == 1 or (len(kernel) == 2 and min(kernel) == 1 and max(kernel) > 3)):
            long_1d.append("x".join(map(str, kernel)))
    if not long_1d:
        return []
    flags = set(machine_info()["cpu_flags"])
    isa = "AVX-512 VNNI" if "avx512_vnni" in flags else ("AVX2 without VNNI" if "avx2" in flags else "this CPU")
    kernels = ", ".join(sorted(set(long_1d))[:3])
    return [
        f"{len(long_1d)} Conv1d layer(s) (kernel {kernels}) lowered to QLinearConv without a fast INT8 kernel "
        f"for 1-D shapes on {isa}"
    ]


def faster_variant(int8_p50: float, variant_p50: dict[str, float], spread: float) -> str | None:
    """The variant (op type kept float) measured fastest, if it beats the INT8 model by more than the
    measurement's spread (and at least the 5% that counts as 'not faster'); else None."""
    if not variant_p50:
        return None
    fastest = min(variant_p50, key=variant_p50.__getitem__)
    return fastest if variant_p50[fastest] < int8_p50 * (1 - max(spread, 1 - NOT_FASTER)) else None


def latency_fallback(
    quantizer: Any,
    model: ModelFile,
    result: Any,
    evaluate: Any,
    target: Any,
    recipe: QuantizeRecipe,
    data: Dataset | None,
) -> Any:
    """When the quantized model is measured slower than float (interleaved, 1 thread, batch 1), try
    it with each weighted op type present kept float (Conv, MatMul...), all measured interleaved
    with float and the current INT8 model; keep the fastest that beats the current INT8 model by
    more than the measured spread and still meets the recipe's target. The decision and every
    measured ratio are printed; a decision that changed the model goes to artifact.metrics['latency_fallback']
    (no timings: they would make the bytes differ run to run). Returns the (possibly new) result."""
    import contextlib

    from edgecli.analysis.latency import p50_spread

    if not recipe.speed_check or recipe.format != "onnx" or recipe.mode == "fp16":
        return result
    present = op_counts(quantizer.float_proto)
    candidates: dict[str, Any] = {}
    op_nodes = {
        op: [n.name for n in quantizer.float_proto.graph.node if n.op_type == op]
        for op in FALLBACK_OPS
        if present.get(op) and op not in recipe.exclude_op_types
    }

    def measure(artifacts: list[Artifact]) -> tuple[list[float], float]:
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(staged(a)) for a in artifacts]
            runners = [open_runner(model, threads=1)] + [open_runner(f, threads=1) for f in files]
            source = data if data is not None else synthetic_dataset(runners[0].inputs, 1)
            feeds = [r.feeds(source.batch(0, 1)) for r in runners]
            timings = measure_latency(runners, feeds, QUICK, label="timing float / INT8 variants")
        return [latency_stats(t, 1)["p50"] for t in timings], max(p50_spread(t) for t in timings)

    (float_p50, int8_p50), _ = measure([result.artifact])
    if int8_p50 < NOT_FASTER * float_p50 or not op_nodes:
        return result
    for op, nodes in op_nodes.items():
        candidates[op] = quantizer.quantize(list(dict.fromkeys([*result.float_nodes, *nodes])))
    p50s, spread = measure([result.artifact, *candidates.values()])
    float_p50, int8_p50, variant_p50 = p50s[0], p50s[1], dict(zip(candidates, p50s[2:]))
    ratios = {f"{op} float": p50 / float_p50 for op, p50 in variant_p50.items()}
    decision: dict[str, Any] = {
        "int8_vs_float": int8_p50 / float_p50,
        "ratios_vs_float": ratios,
        "spread": spread,
        "kept_float_op_types": [],
    }
    fastest = faster_variant(int8_p50, variant_p50, spread)
    if fastest is not None:
        chosen = candidates[fastest]
        if evaluate is not None:
            chosen.metrics.update(evaluate(chosen))
        if target is None or not target.is_set or target.met(chosen.metrics):
            result.artifact = chosen
            result.float_nodes = list(dict.fromkeys([*result.float_nodes, *op_nodes[fastest]]))
            decision["kept_float_op_types"] = [fastest]
            step = {
                "step": len(result.steps),
                "float_layers": list(result.float_nodes),
                "tried": f"latency: {fastest} float",
            }
            result.steps.append(
                {**step, **{k: chosen.metrics[k] for k in ("agreement", "accuracy_drop") if k in chosen.metrics}}
            )
            console.warn(
                f"INT8 was measured {int8_p50 / float_p50:.2f}x the float latency; {fastest} kept float "
                f"({len(op_nodes[fastest])} node(s)): {variant_p50[fastest] / float_p50:.2f}x float"
            )
        else:
            decision["refused"] = f"with {fastest} float the target is missed"
    # measured timings stay out of the artifact's lineage (the same input and recipe give the same bytes);
    # the decision is recorded only when it changed the model, the ratios are printed
    console.info(
        "latency fallback: INT8 "
        f"{decision['int8_vs_float']:.2f}x float, "
        + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
        + f" (spread {decision['spread']:.2f})"
    )
    if decision["kept_float_op_types"] or "refused" in decision:
        result.artifact.metrics["latency_fallback"] = {
            k: decision[k] for k in ("kept_float_op_types", "refused") if k in decision
        }
    return result
