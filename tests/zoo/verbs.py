"""Run one edgecli verb on one zoo model with its data, then measure the artifact with the zoo's own
code (tests/zoo/measure.py) against the float model, and judge it against issue 19's bar.

    python -m tests.zoo.verbs [--cache DIR] [--only NAME ...] [--verbs VERB ...] [--json OUT]

Verb ids: inspect, bench, quantize:<recipe>, convert:<recipe>, prune:<recipe>, distill:<recipe>,
each run with the shipped recipe of that name. Results go to <cache>/runs/<model>/<verb>.json.

The bar (`judge`):
- quantize: exit 0 only with score >= 0.95 (cosine >= 0.98 for embeddings), size <= 0.3x the float
  file and p50 latency not above the float model's (interleaved, 1 thread, batch 1; 5% noise
  allowance), answers not collapsed; else the verb must refuse with exit 1 (gate) or 4 (failed).
- convert: exit 0 only with score >= 0.98 (a float conversion keeps the answers), else exit 1/4.
- prune, distill: exit 0 only with a smaller model (params and bytes) whose answers did not collapse
  (score >= 0.5; cosine >= 0.8) and a message that says what was kept; else exit 1/4.
- exit 4 from an "internal error" (a crash, not a decision) is a failure too.
- inspect: exit 0 with a params count within 10% of the zoo's own count (weights in initializers,
  Constant nodes and subgraphs); bench: exit 0.
Exit 2 (usage), 3 (unreadable) or 5 (missing backend) on a zoo model with its data and a shipped
recipe is always a failure: the model and data are valid, the recipe is shipped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.zoo import measure

REPO = Path(__file__).resolve().parents[2]
EDGECLI = [sys.executable, "-m", "edgecli"]
INT8_BAR = {"embedding": 0.98}
INT8_DEFAULT_BAR = 0.95
INT8_SIZE = 0.3
LATENCY_NOISE = 1.05
CONVERT_BAR = 0.98
KEEP_BAR = {"embedding": 0.8}
KEEP_DEFAULT_BAR = 0.5
VERB_TIMEOUT_S = 900


def output_suffix(entry: dict[str, Any], verb: str) -> str | None:
    name, _, recipe = verb.partition(":")
    if name in ("inspect", "bench"):
        return None
    if name == "quantize":
        return ".tflite" if recipe.startswith("tflite") else ".onnx"
    if name == "convert":
        return ".tflite" if recipe.startswith("tflite") else ".onnx"
    return ".pt2"


def command(cache: Path, entry: dict[str, Any], verb: str, out: Path | None, report: Path) -> list[str]:
    """The exact edgecli command line (paths relative to the cache folder, where it runs)."""
    name, _, recipe = verb.partition(":")
    model = entry["file"]
    data, evaluation = entry["data"], entry["eval"]
    if name == "inspect":
        return ["inspect", model, "--json", str(report)]
    if name == "bench":
        return ["bench", model, "-r", "default", "--data", evaluation, "--json", str(report)]
    args = [name, model, "-r", recipe, "-o", str(out)]
    if name == "convert":
        return [*args, "--data", evaluation]
    args += ["--data", data]
    if entry.get("labelled"):
        args += ["--eval-data", evaluation]
    return [*args, "--report", str(report)]


def message(stderr: str, code: int) -> str:
    """The one line that matters: the error line for a failure, else the last warning, else the last line."""
    lines = [re.sub(r"\s+", " ", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("W0000", "I0000", "WARNING: All log"))]
    lines = [line for line in lines if "oneDNN" not in line and "cpu_feature_guard" not in line]
    if not lines:
        return ""
    if code != 0:
        errors = [line for line in lines if line.lower().startswith(("error", "edgecli: error"))] or lines
        return errors[-1][:300]
    for prefix in ("warning:", "wrote "):  # edgecli's own lines, not Python's warnings module
        said = [line for line in lines if line.lower().startswith(prefix)]
        if said:
            return said[-1][:300]
    return lines[-1][:300]


# ---------------------------------------------------------------- parameter counts


def onnx_params(path: Path) -> int:
    """Float weights of an ONNX file: initializers and Constant-node tensors of 2+ values, in every
    subgraph (If/Loop bodies too)."""
    import onnx

    model = onnx.load(str(path))
    total = 0

    def tensor_size(tensor) -> int:
        if tensor.data_type not in (
            onnx.TensorProto.FLOAT,
            onnx.TensorProto.FLOAT16,
            onnx.TensorProto.INT8,
            onnx.TensorProto.UINT8,
        ):
            return 0
        size = int(np.prod(tensor.dims)) if tensor.dims else 1
        return size if size >= 2 else 0

    def walk(graph) -> None:
        nonlocal total
        total += sum(tensor_size(t) for t in graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if node.op_type == "Constant" and attr.name == "value":
                    total += tensor_size(attr.t)
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return total


def pt2_params(path: Path) -> int:
    import torch

    program = torch.export.load(str(path))
    named = dict(program.state_dict)
    named.update({k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)})
    return int(sum(v.numel() for k, v in named.items() if v.is_floating_point() and "running_" not in k))


def params_of(path: Path) -> int | None:
    fmt = measure.model_format(path)
    if fmt == "onnx":
        return onnx_params(path)
    if fmt == "pt2":
        return pt2_params(path)
    if fmt == "keras":
        import keras

        return int(keras.models.load_model(str(path), compile=False).count_params())
    if fmt == "hf":
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), "np") as f:
            return int(sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys()))  # noqa: SIM118 (safe_open is not iterable)
    return None


# ---------------------------------------------------------------- one run


def baseline_for(cache: Path, entry: dict[str, Any], artifact: Path) -> Path:
    """The float file an artifact's size and latency are compared with: the source when it is in the
    artifact's runtime format, else the entry's float baseline in that format, else the source."""
    source = cache / entry["file"]
    fmt = measure.model_format(artifact)
    if measure.model_format(source) == fmt:
        return source
    base = entry.get("baseline", {}).get(fmt)
    return cache / base if base else source


def run(cache: Path, entry: dict[str, Any], verb: str, latency: bool = True) -> dict[str, Any]:
    """Run `verb` on `entry` and measure what it wrote; the result is also stored in runs/."""
    folder = cache / "runs" / entry["name"]
    folder.mkdir(parents=True, exist_ok=True)
    stem = verb.replace(":", "-")
    suffix = output_suffix(entry, verb)
    out = Path("runs") / entry["name"] / f"{stem}{suffix}" if suffix else None
    report = Path("runs") / entry["name"] / f"{stem}.report.json"
    for stale in (out, report):
        if stale is not None and (cache / stale).exists():
            (cache / stale).unlink()
    args = command(cache, entry, verb, out, report)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            EDGECLI + args,
            cwd=cache,
            capture_output=True,
            text=True,
            timeout=VERB_TIMEOUT_S,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        code, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, stderr = -9, f"timeout after {VERB_TIMEOUT_S} s\n{exc.stderr or ''}"
    result: dict[str, Any] = {
        "model": entry["name"],
        "verb": verb,
        "command": "edgecli " + " ".join(args),
        "exit": code,
        "message": message(stderr, code),
        "seconds": round(time.perf_counter() - started, 1),
        "stderr_tail": stderr.strip().splitlines()[-40:],
    }
    if verb == "inspect" and code == 0:
        reported = json.loads((cache / report).read_text()).get("params")
        result["params_reported"] = reported
        result["params_counted"] = params_of(cache / entry["file"])
    if out is not None and (cache / out).exists():
        result.update(measure_artifact(cache, entry, verb, cache / out, latency))
    result["verdict"], result["why"] = judge(entry, result)
    (folder / f"{stem}.json").write_text(json.dumps(result, indent=1))
    return result


def measure_artifact(cache: Path, entry: dict[str, Any], verb: str, artifact: Path, latency: bool) -> dict[str, Any]:
    figures: dict[str, Any] = {"artifact": str(artifact.relative_to(cache))}
    data = measure.input_arrays(cache / entry["eval"])
    with np.load(cache / entry["ref"]) as ref_file:
        reference = [ref_file[f"out{i}"] for i in range(len(ref_file.files))]
    try:
        candidate = measure.predict(entry, artifact, data)
        figures["quality"] = measure.quality(entry, reference, candidate, data.get("y"))
        figures["collapsed"] = measure.collapsed(entry, candidate)
    except Exception as exc:  # the artifact does not run, or gives the wrong shapes
        figures["quality"] = {"score": 0.0}
        figures["run_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        figures["collapsed"] = True
    base = baseline_for(cache, entry, artifact)
    figures["baseline"] = str(base.relative_to(cache))
    figures["size_bytes"] = measure.size_of(artifact)
    figures["size_ratio"] = round(measure.size_of(artifact) / measure.size_of(base), 4)
    source = cache / entry["file"]
    if verb.startswith(("prune", "distill")):
        before, after = params_of(source), params_of(artifact)
        if before and after is not None:
            figures["params_ratio"] = round(after / before, 4)
    if latency and "run_error" not in figures:
        try:
            ratio, p_ref, p_cand = measure.latency_ratio(entry, base, artifact, data)
            figures["latency_ratio"] = round(ratio, 3)
            figures["latency_ms"] = [round(p_ref, 3), round(p_cand, 3)]
            figures["same_runtime"] = measure.model_format(base) == measure.model_format(artifact)
        except Exception as exc:
            figures["latency_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return figures


def judge(entry: dict[str, Any], r: dict[str, Any]) -> tuple[str, str]:
    """'pass' or 'fail', and why (issue 19's bar, see the module docstring)."""
    verb, code = r["verb"].split(":")[0], r["exit"]
    if code in (2, 3, 5) or code < 0 or code > 5:
        return "fail", f"exit {code} on a valid model, its data and a shipped recipe"
    if verb == "bench":
        return ("pass", "ran") if code == 0 else ("fail", f"exit {code}")
    if verb == "inspect":
        if code != 0:
            return "fail", f"exit {code}"
        reported, counted = r.get("params_reported"), r.get("params_counted")
        if counted and not reported:
            return "fail", f"params {reported} reported, {counted:,} counted"
        if counted and abs(reported - counted) > 0.1 * counted:
            return "fail", f"params {reported:,} reported, {counted:,} counted"
        return "pass", "params within 10%" if counted else "ran"
    if code == 4 and r.get("message", "").lower().startswith("internal error"):
        return "fail", "exit 4 from a crash (internal error), not a refusal"
    if code in (1, 4):
        return "pass", f"refused (exit {code})"
    if "artifact" not in r:
        return "fail", "exit 0 without an artifact"
    q = r.get("quality", {})
    score = q.get("score", 0.0)
    if r.get("run_error"):
        return "fail", f"exit 0, the artifact does not run: {r['run_error']}"
    if r.get("collapsed"):
        return "fail", "exit 0 with collapsed answers"
    kind = entry["kind"]
    problems = []
    if verb == "quantize":
        bar = INT8_BAR.get(kind, INT8_DEFAULT_BAR)
        if score < bar:
            problems.append(f"score {score:.3f} < {bar}")
        if r["size_ratio"] > INT8_SIZE:
            problems.append(f"size {r['size_ratio']:.2f}x > {INT8_SIZE}x")
        if r.get("latency_ratio", 0) > LATENCY_NOISE:
            problems.append(f"latency {r['latency_ratio']:.2f}x float")
    elif verb == "convert":
        if score < CONVERT_BAR:
            problems.append(f"score {score:.3f} < {CONVERT_BAR}")
    else:  # prune, distill
        bar = KEEP_BAR.get(kind, KEEP_DEFAULT_BAR)
        if score < bar:
            problems.append(f"answers collapsed: score {score:.3f} < {bar}")
        # params where both sides have a count (a .pt2 student of an ONNX teacher: bytes of two formats)
        shrink = r["params_ratio"] if r.get("params_ratio") is not None else r["size_ratio"]
        if shrink >= 0.95:
            problems.append(f"not smaller: params {r.get('params_ratio', '?')}x, size {r['size_ratio']:.2f}x")
        said = " ".join(r.get("stderr_tail", []))
        if not re.search(r"kept|keeps|remov|params|MACs", said, re.IGNORECASE):
            problems.append("does not say what it kept")
    if problems:
        return "fail", "exit 0: " + "; ".join(problems)
    return "pass", "meets the bar"


def main(argv: list[str] | None = None) -> int:
    from tests.zoo.build import DEFAULT_CACHE, load_manifest

    parser = argparse.ArgumentParser(description="run edgecli's verbs on the zoo and measure them")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--only", nargs="*", help="model names")
    parser.add_argument("--verbs", nargs="*", help="verb ids")
    parser.add_argument("--no-latency", action="store_true")
    args = parser.parse_args(argv)
    cache = args.cache.resolve()
    for entry in load_manifest(cache):
        if args.only and entry["name"] not in args.only:
            continue
        for verb in entry["verbs"]:
            if args.verbs and verb not in args.verbs:
                continue
            r = run(cache, entry, verb, latency=not args.no_latency)
            score = r.get("quality", {}).get("score")
            print(
                f"{entry['name']:<20} {verb:<24} exit {r['exit']:>2}  {r['verdict']:<4}  "
                f"score {'' if score is None else f'{score:.3f}'}  size {r.get('size_ratio', '')}  "
                f"lat {r.get('latency_ratio', '')}  {r['seconds']}s  {r['why']} | {r['message'][:150]}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
