"""The zoo's own measurements: run a model file with its runtime (onnxruntime, LiteRT, Keras, torch,
transformers), never with edgecli's code, and compare outputs with a measure that fits the output kind.

Every zoo model is described by a manifest entry (see tests/zoo/build.py); `feeds` turns rows of its
data file (edgecli's .npz format: one row per sample) into what the model takes, including inputs
whose batch axis is not the first (silero's `state [2, B, 128]`) and rank-0 inputs (`sr int64[]`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Feeds = dict[str, np.ndarray]
Predict = Callable[[Feeds], list[np.ndarray]]


# ---------------------------------------------------------------- feeds


def feeds(entry: dict[str, Any], data: dict[str, np.ndarray], start: int, stop: int) -> Feeds:
    """Rows [start, stop) of a dataset as model feeds: each input by name (or 'x' for one input),
    moved to its batch axis; a rank-0 input takes the value of the first row."""
    out: Feeds = {}
    specs = entry["inputs"]
    for spec in specs:
        key = spec["name"] if spec["name"] in data else "x"
        rows = np.asarray(data[key][start:stop]).astype(spec["dtype"])
        axis = spec.get("batch_axis", 0)
        if axis is None:
            out[spec["name"]] = np.asarray(rows[0])
        elif axis != 0:
            out[spec["name"]] = np.ascontiguousarray(np.moveaxis(rows, 0, axis))
        else:
            out[spec["name"]] = rows
    return out


def rows_of(data: dict[str, np.ndarray]) -> int:
    return len(next(v for k, v in data.items() if k != "y"))


def input_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files}


# ---------------------------------------------------------------- runners


def _onnx(path: Path, threads: int) -> tuple[Predict, list[str]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    types = {i.name: i.type for i in session.get_inputs()}
    dtype = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}

    def run(f: Feeds) -> list[np.ndarray]:
        mapped = _by_name(f, names)
        mapped = {k: v.astype(dtype.get(types[k], v.dtype)) for k, v in mapped.items()}
        return [np.asarray(o) for o in session.run(None, mapped)]

    return run, names


def _by_name(f: Feeds, names: list[str]) -> Feeds:
    """Feeds keyed by the model's own input names: by name where they match, else in order."""
    if set(names) <= set(f):
        return {n: f[n] for n in names}
    values = list(f.values())
    return dict(zip(names, values))


def _tflite(path: Path, threads: int) -> tuple[Predict, list[str]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    names = [d["name"] for d in inputs]

    def fit(value: np.ndarray, detail: dict) -> np.ndarray:
        """One sample, laid out as the interpreter wants (NCHW data for an NHWC model is transposed)."""
        shape = tuple(int(d) for d in detail["shape"])
        if value.shape != shape and value.ndim == 4 and tuple(np.transpose(value, (0, 2, 3, 1)).shape) == shape:
            value = np.transpose(value, (0, 2, 3, 1))
        if value.ndim == 3 and value.shape != shape and tuple(np.transpose(value, (0, 2, 1)).shape) == shape:
            value = np.transpose(value, (0, 2, 1))
        scale, zero = detail["quantization"]
        if detail["dtype"] in (np.int8, np.uint8, np.int16) and scale:
            info = np.iinfo(detail["dtype"])
            value = np.clip(np.round(value / scale + zero), info.min, info.max)
        return value.astype(detail["dtype"])

    def out_value(detail: dict) -> np.ndarray:
        value = interpreter.get_tensor(detail["index"])
        scale, zero = detail["quantization"]
        if detail["dtype"] in (np.int8, np.uint8, np.int16) and scale:
            value = (value.astype(np.float32) - zero) * scale
        return np.asarray(value, np.float32)

    def run(f: Feeds) -> list[np.ndarray]:
        mapped = list(f.values()) if not set(names) <= set(f) else [f[n] for n in names]
        count = len(mapped[0]) if mapped[0].ndim else 1
        per_output: list[list[np.ndarray]] = [[] for _ in outputs]
        for row in range(count):
            for detail, value in zip(inputs, mapped):
                interpreter.set_tensor(detail["index"], fit(value[row : row + 1], detail))
            interpreter.invoke()
            for slot, detail in enumerate(outputs):
                per_output[slot].append(out_value(detail))
        return [np.concatenate(v) for v in per_output]

    return run, names


def _keras(path: Path) -> tuple[Predict, list[str]]:
    import keras

    model = keras.models.load_model(str(path), compile=False)
    names = [t.name for t in model.inputs]

    def run(f: Feeds) -> list[np.ndarray]:
        values = list(f.values())
        if values[0].ndim == 4 and values[0].shape[1] != model.inputs[0].shape[1]:
            values = [np.transpose(v, (0, 2, 3, 1)) for v in values]
        out = model(values[0] if len(values) == 1 else values, training=False)
        outs = out if isinstance(out, list | tuple) else [out]
        return [np.asarray(o) for o in outs]

    return run, names


def _pt2(path: Path, threads: int) -> tuple[Predict, list[str]]:
    import torch

    torch.set_num_threads(threads)
    program = torch.export.load(str(path))
    module = program.module()
    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]

    def run(f: Feeds) -> list[np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(v)) for v in f.values()]
        with torch.no_grad():
            out = module(*args)
        outs = out if isinstance(out, list | tuple) else [out]
        return [o.detach().numpy() for o in outs]

    return run, names


def _hf(path: Path, threads: int) -> tuple[Predict, list[str]]:
    import torch
    from transformers import AutoModel

    torch.set_num_threads(threads)
    model = AutoModel.from_pretrained(str(path)).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]

    def run(f: Feeds) -> list[np.ndarray]:
        t = {k: torch.from_numpy(np.ascontiguousarray(f[k])) for k in names if k in f}
        with torch.no_grad():
            hidden = model(**t).last_hidden_state
        return [mean_pool(hidden.numpy(), f["attention_mask"])]

    return run, names


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' mean pooling over the unmasked tokens, then L2 normalisation
    (all-MiniLM-L6-v2's modules.json: Transformer, Pooling(mean), Normalize)."""
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def model_format(path: Path) -> str:
    if path.is_dir():
        return "hf" if (path / "config.json").exists() else "savedmodel"
    head = path.read_bytes()[:8]
    if head[4:8] == b"TFL3":
        return "tflite"
    if head[:4] == b"PK\x03\x04":
        return "keras" if path.suffix == ".keras" else "pt2"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "keras"
    return "onnx"


def load(path: Path, threads: int = 1) -> tuple[Predict, list[str]]:
    """A function from feeds to outputs for any zoo model file, and its input names."""
    kind = model_format(path)
    if kind == "onnx":
        return _onnx(path, threads)
    if kind == "tflite":
        return _tflite(path, threads)
    if kind == "keras":
        return _keras(path)
    if kind == "pt2":
        return _pt2(path, threads)
    if kind == "hf":
        return _hf(path, threads)
    raise ValueError(f"no zoo runner for {path}")


def predict(
    entry: dict[str, Any], path: Path, data: dict[str, np.ndarray], batch: int = 16, threads: int = 2
) -> list[np.ndarray]:
    """Every output of the model over every row of `data`, batched where the model allows it."""
    run, _ = load(path, threads)
    batch = batch if entry.get("batchable", True) else 1
    total = rows_of(data)
    parts: list[list[np.ndarray]] = []
    for start in range(0, total, batch):
        outs = run(feeds(entry, data, start, min(total, start + batch)))
        outs = [_batch_first(o, entry, i) for i, o in enumerate(outs)]
        parts.append(outs)
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def _batch_first(out: np.ndarray, entry: dict[str, Any], index: int) -> np.ndarray:
    outputs = entry.get("outputs") or []
    axis = outputs[index].get("batch_axis", 0) if index < len(outputs) else 0
    return np.moveaxis(out, axis, 0) if axis else out


# ---------------------------------------------------------------- comparison


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = den == 0
    return np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den))


def _ctc(seq: np.ndarray) -> tuple[int, ...]:
    """Greedy CTC decode (argmax, collapse repeats, drop blank 0) of one [T, classes] row."""
    best = seq.argmax(-1)
    keep = [int(c) for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]
    return tuple(keep)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def align(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """The candidate in the reference's layout (an NHWC output of a converted model back to NCHW)."""
    if candidate.shape == reference.shape:
        return candidate
    if candidate.size == reference.size:
        for perm in ((0, 3, 1, 2), (0, 2, 3, 1), (0, 2, 1)):
            if candidate.ndim == len(perm) and np.transpose(candidate, perm).shape == reference.shape:
                return np.transpose(candidate, perm)
        return candidate.reshape(reference.shape)
    raise ValueError(f"output shape {candidate.shape} does not match the reference {reference.shape}")


def quality(
    entry: dict[str, Any], reference: list[np.ndarray], candidate: list[np.ndarray], labels: np.ndarray | None = None
) -> dict[str, float]:
    """The figures that fit the entry's kind, candidate against the float reference.

    `score` is the one figure the bar is set on (`bar` in the entry): top-1 agreement (classifier),
    within-tolerance agreement (many-class with `within` bins), decoded-sequence agreement (CTC),
    mean IoU of the thresholded map (dense map), mean cosine (embedding), the worst output's figure
    (multi-output)."""
    kind = entry["kind"]
    if len(candidate) < len(reference):
        raise ValueError(f"the candidate has {len(candidate)} outputs, the reference {len(reference)}")
    pairs = [(r, align(r, c)) for r, c in zip(reference, candidate)]
    fig: dict[str, float] = {}
    if any(not np.isfinite(c).all() for _, c in pairs):
        fig["nan"] = 1.0
        fig["score"] = 0.0
        return fig
    ref, cand = pairs[0]
    if kind in ("classifier", "many-class"):
        if entry.get("ctc"):
            same = [_ctc(r) == _ctc(c) for r, c in zip(ref, cand)]
            fig["sequence_agreement"] = float(np.mean(same))
            fig["token_agreement"] = float((ref.argmax(-1) == cand.argmax(-1)).mean())
            fig["score"] = fig["sequence_agreement"]
        else:
            top_r, top_c = ref.argmax(-1), cand.argmax(-1)
            fig["agreement"] = float((top_r == top_c).mean())
            k = min(5, ref.shape[-1])
            top5 = np.argsort(-cand, axis=-1)[..., :k]
            fig["top5"] = float((top5 == top_r[..., None]).any(-1).mean())
            within = entry.get("within")
            if within:
                fig[f"within_{within}"] = float((np.abs(top_r - top_c) <= within).mean())
                fig["score"] = fig[f"within_{within}"]
            else:
                fig["score"] = fig["agreement"]
            if labels is not None:
                fig["accuracy"] = float((top_c == labels).mean())
                fig["accuracy_float"] = float((top_r == labels).mean())
    elif kind == "dense map":
        threshold = entry.get("threshold", 0.3)
        ious = [_iou(r > threshold, c > threshold) for r, c in zip(ref, cand)]
        fig["iou"] = float(np.mean(ious))
        fig["iou_min"] = float(np.min(ious))
        fig["score"] = fig["iou"]
    elif kind == "embedding":
        cos = _cosine_rows(ref, cand)
        fig["cosine"] = float(cos.mean())
        fig["cosine_min"] = float(cos.min())
        fig["score"] = fig["cosine"]
    elif kind == "multi-output":
        scores = []
        for index, (r, c) in enumerate(pairs):
            measure = (entry.get("output_measures") or {}).get(str(index), "cosine")
            if measure == "binary":
                value = float(((r > 0.5) == (c > 0.5)).mean())
            else:
                value = float(_cosine_rows(r, c).mean())
            fig[f"out{index}_{measure}"] = value
            scores.append(value)
        fig["score"] = float(min(scores))
    else:
        raise ValueError(f"unknown kind {kind}")
    rel = np.abs(ref - cand).max() / max(float(np.abs(ref).max()), 1e-12)
    fig["max_rel_diff"] = float(rel)
    return fig


def collapsed(entry: dict[str, Any], candidate: list[np.ndarray]) -> bool:
    """Whether the answers collapsed: NaN, or the same answer (top-1 or vector) for every input."""
    first = candidate[0]
    if not np.isfinite(first).all():
        return True
    if entry["kind"] in ("classifier", "many-class") and not entry.get("ctc"):
        return len(np.unique(first.argmax(-1))) == 1 and len(first) > 4
    flat = first.reshape(len(first), -1)
    return bool(np.allclose(flat, flat[:1], atol=1e-6)) and len(first) > 4


# ---------------------------------------------------------------- latency


def latency_ratio(
    entry: dict[str, Any], reference: Path, candidate: Path, sample: dict[str, np.ndarray], budget_s: float = 1.5
) -> tuple[float, float, float]:
    """p50 latency of the candidate over the reference's, one thread, batch 1, timed interleaved
    (one reference call, one candidate call, ...) after a warm-up, so drifts hit both alike.
    Returns (ratio, reference p50 ms, candidate p50 ms)."""
    run_ref, _ = load(reference, 1)
    run_cand, _ = load(candidate, 1)
    f = feeds(entry, sample, 0, 1)
    for _ in range(5):
        run_ref(f)
        run_cand(f)
    t_ref: list[float] = []
    t_cand: list[float] = []
    started = time.perf_counter()
    while len(t_ref) < 400 and (time.perf_counter() - started < budget_s or len(t_ref) < 15):
        t0 = time.perf_counter()
        run_ref(f)
        t1 = time.perf_counter()
        run_cand(f)
        t2 = time.perf_counter()
        t_ref.append(t1 - t0)
        t_cand.append(t2 - t1)
    p_ref, p_cand = statistics.median(t_ref), statistics.median(t_cand)
    return p_cand / p_ref, p_ref * 1e3, p_cand * 1e3


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
