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
        result["likely_reasons"] = reasons or ["unknown: compare with `edgecli bench` over more runs"]
        console.warn(
            f"the quantized model is not faster on this machine: p50 {quant_p50:.3g} ms vs float {float_p50:.3g} ms "
            f"(1 thread, batch 1); likely: {result['likely_reasons'][0]}"
        )
    return result
