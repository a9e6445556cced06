"""PyTorch -> TFLite: edgecli's onnx2tf path against litert-torch, on the sample Fashion-MNIST CNN.

    .venv/bin/python benchmarks/tflite_converters.py                  # the onnx2tf path only
    .venv/bin/python benchmarks/tflite_converters.py --litert-python /tmp/litert-venv/bin/python

litert-torch cannot live in the project venv (it pins typing_extensions < 4.13 through xdsl, which
downgrades pydantic), so it is run in its own interpreter, made with e.g.

    python3.11 -m venv /tmp/litert-venv
    /tmp/litert-venv/bin/pip install -c constraints.txt torch==2.13.0 litert-torch==0.10.0 ai-edge-litert==2.3.0 numpy

What is measured, with both .tflite files run by the same ai_edge_litert interpreter in this process:
- fidelity: batch-1 outputs on every sample of eval.npz against the eager module
  (sample_models/fashion_cnn.py:build() + fashion_cnn.pt), max / mean abs diff, top-1 agreement;
- conversion time: wall clock of a fresh process that converts (imports included; best of --convert-runs).
  onnx2tf: `edgecli convert fashion_cnn.pt2 -r tflite --data eval.npz` (this includes edgecli's own
  256-sample parity check and lineage); litert-torch: `litert_torch.convert(eager, (x[:1],))` + export;
- latency: p50 / p90 of invoke() at batch 1, 1 thread (XNNPACK, as edgecli's runner), the two models
  interleaved round by round after a warm-up;
- batch: whether the file runs at batch 8 after resize_tensor_input, and for litert-torch whether
  conversion with a dynamic batch dimension works;
- install weight: bytes on disk (from the wheels' RECORD files) of the packages each path adds on top
  of torch + numpy (+ edgecli's own dependencies for the onnx2tf path), and what litert-torch would add
  to / change in this venv.

Not run in CI. Only the standard library is imported at module level: the same file is the worker
run by the litert-torch interpreter (`--worker ...`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models"
PT = SAMPLE / "fashion" / "fashion_cnn.pt"
PT2 = SAMPLE / "fashion" / "fashion_cnn.pt2"
EVAL = SAMPLE / "fashion" / "eval.npz"
PROBE_BATCH = 8


# ---------------------------------------------------------------- helpers usable in both venvs


def eager_model():
    import torch

    sys.path.insert(0, str(SAMPLE))
    from fashion_cnn import build

    model = build()
    model.load_state_dict(torch.load(PT, weights_only=True))
    return model.eval()


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed() -> dict:
    from importlib import metadata

    return {_norm(d.metadata["Name"]): d for d in metadata.distributions()}


def _dist_bytes(dist) -> int:
    total = 0
    for file in dist.files or []:
        try:
            total += os.path.getsize(dist.locate_file(file))
        except OSError:
            pass
    return total


def _closure(dists: dict, roots: list[tuple[str, tuple[str, ...]]]) -> set[str]:
    """Installed distributions reachable from `roots` ((name, extras)) through their Requires-Dist."""
    from packaging.requirements import Requirement

    seen: set[tuple[str, tuple[str, ...]]] = set()
    stack = [(_norm(name), extras) for name, extras in roots]
    while stack:
        name, extras = stack.pop()
        if name not in dists or (name, extras) in seen:
            continue
        seen.add((name, extras))
        for text in dists[name].requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or ("",))):
                stack.append((_norm(req.name), tuple(sorted(req.extras))))
    return {name for name, _ in seen}


def weight(roots: list[tuple[str, tuple[str, ...]]], base: list[tuple[str, tuple[str, ...]]]) -> dict:
    """Bytes of the packages `roots` need beyond what `base` needs, in the running interpreter."""
    dists = _installed()
    extra = _closure(dists, roots) - _closure(dists, base)
    sizes = sorted(((_dist_bytes(dists[n]), n) for n in extra), reverse=True)
    return {
        "bytes": sum(s for s, _ in sizes),
        "packages": len(sizes),
        "largest": [f"{n} {s / 2**20:.0f} MiB" for s, n in sizes[:5]],
        "requires": {n: list(dists[n].requires or []) for n in extra},
        "versions": {n: dists[n].version for n in extra},
        "sizes": {n: s for s, n in sizes},
        "all_versions": {n: d.version for n, d in dists.items()},
    }


def _tail(text: str, lines: int = 1) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])[:200]


def _first(exc: BaseException, chars: int = 120) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:chars] if text else ''}"


# ---------------------------------------------------------------- worker: runs in the litert-torch venv


def worker(mode: str, out: str) -> None:
    started = time.perf_counter()
    import litert_torch
    import numpy as np
    import torch

    imported = time.perf_counter()
    x = np.load(EVAL)["x"]
    model = eager_model()
    result: dict = {
        "import_s": imported - started,
        "litert_torch": litert_torch.__version__,
        "torch": torch.__version__,
    }
    if mode == "convert":
        t = time.perf_counter()
        edge = litert_torch.convert(model, (torch.from_numpy(x[:1]),))
        result["convert_s"] = time.perf_counter() - t
        t = time.perf_counter()
        edge.export(out)
        result["export_s"] = time.perf_counter() - t
    elif mode == "probe-batch":
        try:
            dim = torch.export.Dim("batch", min=1, max=1024)
            edge = litert_torch.convert(model, (torch.from_numpy(x[:2]),), dynamic_shapes=({0: dim},))
            edge.export(out)
            result["dynamic_shapes"] = f"converted: {out}"
        except Exception as exc:
            result["dynamic_shapes"] = f"fails: {_first(exc)}"
        edge = litert_torch.convert(model, (torch.from_numpy(x[:PROBE_BATCH]),))
        static = str(Path(out).with_name(f"static{PROBE_BATCH}.tflite"))
        edge.export(static)
        result["static_n"] = static
    elif mode == "weight":
        result["weight"] = weight([("litert-torch", ()), ("ai-edge-litert", ())], [("torch", ()), ("numpy", ())])
    print("WORKER-JSON " + json.dumps(result))


def run_worker(python: str, mode: str, out: Path) -> tuple[dict, float]:
    t = time.perf_counter()
    proc = subprocess.run([python, __file__, "--worker", mode, str(out)], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    line = next((l for l in proc.stdout.splitlines() if l.startswith("WORKER-JSON ")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"litert-torch worker '{mode}' failed (exit {proc.returncode}): {_tail(proc.stderr, 3)}")
    return json.loads(line.removeprefix("WORKER-JSON ")), wall


# ---------------------------------------------------------------- measurements in the project venv


def interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    return it


def layout(it, x):
    """x (NCHW) in the layout the model's input wants: 'NCHW' kept, or transposed to 'NHWC'."""
    shape = tuple(int(d) for d in it.get_input_details()[0]["shape_signature"][1:])
    if shape == x.shape[1:]:
        return "NCHW", x
    if shape == (x.shape[2], x.shape[3], x.shape[1]):
        return "NHWC", x.transpose(0, 2, 3, 1).copy()
    raise SystemExit(f"input shape {shape} fits neither NCHW nor NHWC of {x.shape[1:]}")


def run_batch1(it, x):
    import numpy as np

    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    logits = []
    for i in range(len(x)):
        it.set_tensor(inp, x[i : i + 1])
        it.invoke()
        logits.append(it.get_tensor(out).copy())
    return np.concatenate(logits)


def fidelity(path: Path, x, reference, labels) -> dict:
    import numpy as np

    it = interpreter(path)
    kind, fed = layout(it, x)
    got = run_batch1(it, fed)
    diff = np.abs(got - reference)
    return {
        "layout": kind,
        "input": [int(d) for d in it.get_input_details()[0]["shape_signature"]],
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "agreement": float((got.argmax(1) == reference.argmax(1)).mean()),
        "accuracy": float((got.argmax(1) == labels).mean()),
    }


def batch_probe(path: Path, x, reference) -> str:
    """Does the file run at batch PROBE_BATCH after resize_tensor_input?"""
    import numpy as np

    it = interpreter(path)
    _, fed = layout(it, x[:PROBE_BATCH])
    try:
        detail = it.get_input_details()[0]
        it.resize_tensor_input(detail["index"], list(fed.shape), strict=False)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], fed)
        it.invoke()
        got = it.get_tensor(it.get_output_details()[0]["index"])
        return f"batch {PROBE_BATCH} runs (max diff {np.abs(got - reference[:PROBE_BATCH]).max():.1e})"
    except Exception as exc:
        return f"batch {PROBE_BATCH} fails ({_first(exc, 40)})"


def static_batch(path: Path, x, reference) -> str:
    """A model converted at a fixed batch N: run it on x in chunks of N, then try batch 1."""
    import numpy as np

    it = interpreter(path)
    shape = [int(d) for d in it.get_input_details()[0]["shape_signature"]]
    n = shape[0]
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    diffs = []
    for start in range(0, len(x) - n + 1, n):
        it.set_tensor(inp, x[start : start + n])
        it.invoke()
        diffs.append(np.abs(it.get_tensor(out) - reference[start : start + n]).max())
    try:
        it.resize_tensor_input(inp, [1, *shape[1:]], strict=False)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x[:1])
        it.invoke()
        one = "batch 1 runs too"
    except Exception as exc:
        one = f"batch 1 fails ({_first(exc, 60)})"
    return f"input {shape}, max diff {max(diffs):.2e} over {len(diffs) * n} samples at batch {n}; {one}"


def latency(paths: dict[str, Path], x, runs: int, warmup: int) -> dict[str, dict]:
    """p50/p90 ms of invoke() at batch 1, 1 thread, the models interleaved (order alternating per round)."""
    models = {}
    for name, path in paths.items():
        it = interpreter(path)
        _, fed = layout(it, x[:1])
        it.set_tensor(it.get_input_details()[0]["index"], fed)
        for _ in range(warmup):
            it.invoke()
        models[name] = it
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for r in range(runs):
        for name in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter_ns()
            models[name].invoke()
            times[name].append((time.perf_counter_ns() - t) / 1e6)
    return {n: {"p50": statistics.median(v), "p90": statistics.quantiles(v, n=10)[-1]} for n, v in times.items()}


def best_of(runs: int, fn):
    results = [fn() for _ in range(runs)]
    return min(results, key=lambda r: r[1])


def convert_onnx2tf(out: Path) -> tuple[str, float]:
    cmd = [sys.executable, "-m", "edgecli", "convert", str(PT2), "-r", "tflite", "--data", str(EVAL), "-o", str(out)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "250"})
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"edgecli convert failed (exit {proc.returncode}): {_tail(proc.stderr, 3)}")
    found = re.search(r"parity .*?top-1 agreement [0-9.]+ on \d+ samples", " ".join(proc.stderr.split()))
    parity = found.group(0) if found else "(no parity line found)"
    return parity, wall


def project_weight() -> dict:
    result = weight([("edgecli", ("tflite",)), ("onnx2tf", ()), ("tf-keras", ())], [("edgecli", ())])
    result["base"] = sorted(_closure(_installed(), [("edgecli", ())]))
    return result


def litert_in_project(litert: dict) -> tuple[str, list[str]]:
    """What installing litert-torch into this venv would add (packages not here), which installed
    versions the new packages' requirements reject, and which installed packages would then have to
    move too (they require a version of that package that the litert-torch venv's resolve excludes)."""
    from packaging.requirements import Requirement

    installed = _installed()
    here = {n: d.version for n, d in installed.items()}
    new = [n for n in litert["versions"] if n not in here]
    added = sum(litert["sizes"][n] for n in new)
    lines = []
    for owner in new:
        for text in litert["requires"][owner]:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = _norm(req.name)
            if name in here and req.specifier and not req.specifier.contains(here[name], prereleases=True):
                lines.append(f"{owner} {litert['versions'][owner]} needs {req.name}{req.specifier} (here {here[name]})")
                resolved = litert["all_versions"].get(name)
                for dependant, dist in installed.items():
                    for other in dist.requires or []:
                        dep = Requirement(other)
                        ok = dep.marker is None or dep.marker.evaluate({"extra": ""})
                        if (
                            ok
                            and _norm(dep.name) == name
                            and resolved
                            and not dep.specifier.contains(resolved, prereleases=True)
                        ):
                            moved = litert["all_versions"].get(dependant, "?")
                            lines.append(
                                f"  -> {dependant} {here[dependant]} needs {dep.name}{dep.specifier}: "
                                f"pip moves it (litert venv has {dependant} {moved})"
                            )
    return f"+{added / 2**20:.0f} MiB in {len(new)} packages", list(dict.fromkeys(lines))


def du(path: Path) -> str:
    proc = subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True)
    return proc.stdout.split()[0] if proc.returncode == 0 else "?"


# ---------------------------------------------------------------- report


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--litert-python", help="python of a venv with litert-torch 0.10 (never the project venv)")
    parser.add_argument("--runs", type=int, default=1000, help="timed batch-1 invokes per model")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--convert-runs", type=int, default=2, help="conversions per path; the fastest is reported")
    parser.add_argument("--keep", type=Path, help="folder to keep the .tflite files in (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return

    import numpy as np
    import torch

    with tempfile.TemporaryDirectory(prefix="tflite-converters-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        data = np.load(EVAL)
        x, labels = data["x"], data["y"]
        with torch.no_grad():
            reference = eager_model()(torch.from_numpy(x)).numpy()

        files = {"onnx2tf": folder / "onnx2tf.tflite"}
        print("converting with edgecli (onnx2tf) ...", file=sys.stderr)
        parity, wall = best_of(args.convert_runs, lambda: convert_onnx2tf(files["onnx2tf"]))
        res: dict[str, dict] = {"onnx2tf": {"convert_wall_s": wall, "edgecli_parity": parity}}
        res["onnx2tf"]["weight"] = project_weight()
        res["onnx2tf"]["venv"] = f"{du(Path(sys.prefix))} ({sys.prefix})"

        if args.litert_python:
            files["litert-torch"] = folder / "litert_torch.tflite"
            print("converting with litert-torch ...", file=sys.stderr)
            info, wall = best_of(
                args.convert_runs, lambda: run_worker(args.litert_python, "convert", files["litert-torch"])
            )
            probe, _ = run_worker(args.litert_python, "probe-batch", folder / "litert_dynamic.tflite")
            weigh, _ = run_worker(args.litert_python, "weight", folder / "unused")
            res["litert-torch"] = {**info, "convert_wall_s": wall, "probe": probe, "weight": weigh["weight"]}
            venv = Path(args.litert_python).parents[1]
            res["litert-torch"]["venv"] = f"{du(venv)} ({venv})"
            res["litert-torch"]["static_n"] = static_batch(Path(probe["static_n"]), x, reference)

        print(f"fidelity on {len(x)} samples, latency over {args.runs} interleaved runs ...", file=sys.stderr)
        for name, path in files.items():
            res[name]["fidelity"] = fidelity(path, x, reference, labels)
            res[name]["batch"] = batch_probe(path, x, reference)
            res[name]["bytes"] = path.stat().st_size
        for name, lat in latency(files, x, args.runs, args.warmup).items():
            res[name]["latency"] = lat

        base = set(res["onnx2tf"]["weight"]["base"])

        def beyond_base(r: dict) -> int:
            """Bytes of the path's packages that edgecli's own dependencies do not already bring."""
            return sum(size for name, size in r["weight"]["sizes"].items() if name not in base)

        names = list(files)
        row = lambda label, fn: (label, *[fn(res[n]) for n in names])  # noqa: E731
        rows = [
            ("", *names),
            row("path", lambda r: ".pt2 -> ONNX -> onnx2tf" if "edgecli_parity" in r else "eager nn.Module -> TFLite"),
            row("max abs diff vs eager", lambda r: f"{r['fidelity']['max_abs']:.2e}"),
            row("mean abs diff vs eager", lambda r: f"{r['fidelity']['mean_abs']:.2e}"),
            row("top-1 agreement", lambda r: f"{r['fidelity']['agreement']:.4f}"),
            row(
                f"accuracy (eager {float((reference.argmax(1) == labels).mean()):.4f})",
                lambda r: f"{r['fidelity']['accuracy']:.4f}",
            ),
            row("input layout / shape", lambda r: f"{r['fidelity']['layout']} {r['fidelity']['input']}"),
            row("file size", lambda r: f"{r['bytes']:,} B"),
            row("conversion, fresh process", lambda r: f"{r['convert_wall_s']:.1f} s"),
            row("p50 / p90 batch 1, 1 thread", lambda r: f"{r['latency']['p50']:.3f} / {r['latency']['p90']:.3f} ms"),
            row("resize to batch 8", lambda r: r["batch"]),
            row("install: adds to edgecli's base", lambda r: f"{beyond_base(r) / 2**20:,.0f} MiB"),
            row("install: whole venv (du)", lambda r: r["venv"].split()[0]),
        ]
        print(table(rows))
        print(
            f"load average while measuring: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores"
        )
        print()
        o = res["onnx2tf"]
        print(f"onnx2tf: edgecli's own check: {o['edgecli_parity']}")
        print(
            f"onnx2tf: conversion time includes edgecli's 256-sample parity check; largest packages: {', '.join(o['weight']['largest'])}"
        )
        print(
            f"onnx2tf: base = edgecli's own dependencies (torch, onnx, onnxruntime, onnxscript, ...); venv {o['venv']}"
        )
        if "litert-torch" in res:
            lt = res["litert-torch"]
            print(
                f"litert-torch {lt['litert_torch']} (torch {lt['torch']}): import {lt['import_s']:.1f} s, convert() {lt['convert_s']:.1f} s, export {lt['export_s']:.2f} s"
            )
            print(f"litert-torch: dynamic batch (Dim('batch') with a batch-2 example): {lt['probe']['dynamic_shapes']}")
            print(f"litert-torch: converted with a batch-{PROBE_BATCH} example instead: {lt['static_n']}")
            print(
                f"litert-torch: base = torch + numpy; largest packages: {', '.join(lt['weight']['largest'])}; venv {lt['venv']}"
            )
            added, conflicts = litert_in_project(lt["weight"])
            print(f"litert-torch in this venv would add {added}; what it would change here:")
            for line in conflicts or ["none"]:
                print(f"  {line}")
        if args.json:
            args.json.write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
