"""bench, memory: peak resident memory of loading and running one model, in a process of its own.

Each model is measured in a fresh child process (`python -m edgecli.stages.bench.memory ...`), so
the models of one bench call, and the parent's own heap, never show up in each other's figure. The
child reports one JSON line on stdout; the parent turns it into a dict, or into the edgecli error
the child hit (a corrupt model gives a ModelReadError, exit code 3).

How the child measures (Linux):
  1. import edgecli, numpy and the runtime for the model's format (onnxruntime, torch + torch.export,
     ai_edge_litert, TensorFlow/Keras), and read the inputs: prepared feeds (an .npz in the model's
     own names, layout and dtypes, run as they are: what bench timed), or the first batch of the data;
  2. baseline: the resident set (VmRSS) now; then the high-water mark is reset
     (`/proc/self/clear_refs` <- 5), so the next peak belongs to the model alone;
  3. load: `open_runner(ModelFile.open(path), threads)`; load peak = VmHWM, then reset again;
  4. run: `runs` batches of `batch_size` (the feeds, the data's first batch, or inputs synthesised
     from the signature); run peak = VmHWM over the runs only.

VmHWM is read rather than `getrusage(RUSAGE_SELF).ru_maxrss` because on Linux ru_maxrss survives
exec: a child started by a parent holding 500 MiB reports ru_maxrss >= 500 MiB before doing anything.
Where /proc is missing (macOS) ru_maxrss is the fallback, and the figures are then monotonic
high-water marks (`method` in the result says which was used).

The runner's lineage read is skipped in the child: for ONNX it parses the whole protobuf with the
`onnx` package and for ORT it opens a second session, which a device never does. The lineage only
orders the NCHW/NHWC preference for real data whose shape fits both ways; memory does not depend on it.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edgecli.core import errors
from edgecli.core.errors import EdgecliError, ModelReadError, TransformError, UsageError, last_line

TIMEOUT_S = 300.0
KIB = 1024.0
# The modules a runner of each format imports, so that the baseline holds the framework and the
# figures above it are the model's own cost. Keys are Format values (the enum is not imported here).
RUNTIME_MODULES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnxruntime", "edgecli.runtimes.onnx_runner"),
    "ort": ("onnxruntime", "edgecli.formats.ort_file", "edgecli.runtimes.onnx_runner"),
    # torch.export.load pulls in ~400 more modules (export tracing, functorch, inductor, sympy, networkx)
    "pt2": (
        "torch",
        "torch.export",
        "torch.export.pt2_archive",
        "torch.export._trace",
        "torch.export._unlift",
        "torch._inductor.sizevars",
        "sympy.combinatorics",
        "edgecli.runtimes.torch_runner",
    ),
    "tflite": ("ai_edge_litert.interpreter", "edgecli.runtimes.tflite_runner"),
    "keras": ("tensorflow", "keras", "edgecli.runtimes.keras_runner"),
    "saved_model": ("tensorflow", "edgecli.runtimes.keras_runner"),
}


def measure_memory(
    model_path: Path,
    threads: int,
    batch_size: int,
    runs: int = 5,
    data_path: Path | None = None,
    timeout_s: float = TIMEOUT_S,
    synthetic: dict[str, Any] | None = None,
    feeds_path: Path | None = None,
) -> dict[str, Any]:
    """Peak resident memory of loading and running the model at `model_path`, measured in a child
    process of its own. Figures are MiB (2**20 bytes):

      baseline_mib   resident set of the child after importing edgecli and the model's runtime
                     (onnxruntime, torch, LiteRT, TensorFlow), before the model is opened
      load_peak_mib  absolute peak while opening the model (runner created, weights resident)
      run_peak_mib   absolute peak while running `runs` batches of the loaded model
      peak_mib       max(load_peak_mib, run_peak_mib): what a device needs, runtime included
      load_mib       load_peak_mib - baseline_mib: the model's cost of loading
      run_mib        run_peak_mib - baseline_mib: the model's cost while running (weights + activations)
      model_mib      peak_mib - baseline_mib: the model's cost at its worst moment

    and `batch` (the batch actually run: 1 for a model with a fixed batch dimension), `runs`,
    `format`, `method` ("VmHWM", or "ru_maxrss" where /proc is missing) and `seconds` (wall time of
    the child). Deltas can come out slightly negative for tiny models (the allocator returns memory).

    threads: intra-op threads of the runtime (0: the runtime's default, every core). data_path: an
    .npz whose first batch is fed (unscaled: values do not change memory); without it, inputs are
    synthesised from the model's signature by edgecli.data.dataset.synthetic_dataset, with `synthetic` as its
    keyword arguments (JSON-able, e.g. {"dims": {"sequence": 128}}, as the bench recipe gives them:
    dynamic dimensions change the activations' memory). feeds_path: an .npz of prepared feeds (input
    name -> array in the model's own layout and dtype, rank-0 scalars included), run as they are;
    it wins over data_path and synthetic (bench passes the batch it timed, from --data or synthesised).

    Raises UsageError for a batch_size or runs below 1; the edgecli error the child hit
    (ModelReadError for a missing or corrupt model, DataError for unusable data, BackendMissing for
    a missing runtime); TransformError if running the model failed, or the child died (e.g. killed
    when out of memory) or took over `timeout_s`.
    """
    if batch_size < 1 or runs < 1 or threads < 0:
        raise UsageError(
            f"memory measurement needs batch_size >= 1, runs >= 1, threads >= 0 (got {batch_size}, {runs}, {threads})"
        )
    command = [
        sys.executable, "-m", "edgecli.stages.bench.memory",
        "--model", str(model_path), "--threads", str(threads), "--batch", str(batch_size), "--runs", str(runs),
    ]  # fmt: skip
    if feeds_path is not None:
        command += ["--feeds", str(feeds_path)]
    elif data_path is not None:
        command += ["--data", str(data_path)]
    if synthetic:
        command += ["--synthetic", json.dumps(synthetic)]
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise TransformError(
            f"measuring the memory of {model_path} took more than {timeout_s:.0f} s",
            hint="try fewer runs or a smaller batch",
        ) from None
    seconds = time.perf_counter() - start
    stderr = proc.stderr.decode("utf-8", "replace")
    if os.environ.get("EDGECLI_DEBUG") and stderr.strip():
        sys.stderr.write(stderr)
    report = _last_json(proc.stdout.decode("utf-8", "replace"))
    if report is None:
        raise TransformError(f"measuring the memory of {model_path} failed: {_death(proc.returncode, stderr)}")
    if "error" in report:
        raise _error(report["error"])
    report["seconds"] = round(seconds, 2)
    return report


def _last_json(stdout: str) -> dict[str, Any] | None:
    """The child's report: the last stdout line holding a JSON object (a runtime may print before it)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


def _death(returncode: int, stderr: str) -> str:
    if returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        cause = " (out of memory?)" if name == "SIGKILL" else ""
        return f"the measuring process was killed by {name}{cause}"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return f"the measuring process exited with code {returncode}" + (f": {lines[-1][:240]}" if lines else "")


def _error(payload: dict[str, Any]) -> EdgecliError:
    """The edgecli error named by the child, with its message and hint."""
    cls = getattr(errors, str(payload.get("type", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, EdgecliError)):
        cls = TransformError
    return cls(str(payload.get("message", "unknown error")), hint=payload.get("hint"))


# ----------------------------------------------------------------------------------- the child


def _read_status() -> dict[str, int] | None:
    """VmRSS and VmHWM of this process in KiB, or None without /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            lines = handle.readlines()
    except OSError:
        return None
    values = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values if len(values) == 2 else None


class _Meter:
    """Resident set and its high-water mark, with the mark reset between phases where Linux allows."""

    def __init__(self) -> None:
        self.method = "VmHWM" if _read_status() is not None else "ru_maxrss"
        self.can_reset = self.method == "VmHWM" and self._reset()

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
            return True
        except OSError:
            return False

    @staticmethod
    def _maxrss_kib() -> float:
        import resource

        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return value / KIB if sys.platform == "darwin" else float(value)  # bytes on macOS, KiB on Linux

    def current_mib(self) -> float:
        status = _read_status()
        return (status["VmRSS"] if status else self._maxrss_kib()) / KIB

    def peak_mib(self) -> float:
        status = _read_status()
        return (status["VmHWM"] if status else self._maxrss_kib()) / KIB

    def start_phase(self) -> None:
        gc.collect()
        if self.can_reset:
            self._reset()


def _import_runtime(fmt: str) -> None:
    import importlib

    for name in RUNTIME_MODULES.get(fmt, ()):
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # no runtime: open_runner raises BackendMissing; a moved private module: a smaller baseline


def _first_batch(data_path: Path, batch_size: int) -> dict[str, Any]:
    import numpy as np

    from edgecli.data.dataset import load_dataset
    from edgecli.recipes import DataSpec

    dataset = load_dataset(DataSpec(), override=data_path)
    return {k: np.array(v) for k, v in dataset.batch(0, batch_size).items()}  # copies: the rest is freed


def _read_feeds(path: Path) -> dict[str, Any]:
    import numpy as np

    from edgecli.core.errors import DataError

    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: np.array(archive[name]) for name in archive.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the prepared inputs {path}: {last_line(exc)}") from None


def _measure_here(
    model_path: Path,
    threads: int,
    batch_size: int,
    runs: int,
    data_path: Path | None,
    synthetic: dict[str, Any],
    feeds_path: Path | None = None,
) -> dict[str, Any]:
    """The measurement itself, in the current (child) process."""
    from edgecli.data.dataset import Dataset, synthetic_dataset
    from edgecli.formats.model_file import ModelFile
    from edgecli.runtimes import open_runner

    meter = _Meter()
    model = ModelFile.open(model_path)
    model._lineage, model._lineage_read = None, True  # see the module docstring
    _import_runtime(model.format.value)
    prepared = _read_feeds(feeds_path) if feeds_path is not None else None
    batch = _first_batch(data_path, batch_size) if data_path is not None and prepared is None else None

    meter.start_phase()
    baseline = meter.current_mib()
    phase = "load"
    try:
        runner = open_runner(model, threads or None)
        load_peak = meter.peak_mib()

        phase = "run"
        size = batch_size if runner.dynamic_batch else 1
        if prepared is not None:
            feeds, size = prepared, batch_size
        else:
            if batch is not None:
                source = Dataset(batch, None, str(data_path))
            else:
                source = synthetic_dataset(runner.inputs, size, **synthetic)
            feeds = runner.feeds(source.batch(0, size))
        meter.start_phase()
        for _ in range(runs):
            runner.run_feeds(feeds)
        run_peak = meter.peak_mib()
    except EdgecliError:
        raise
    except Exception as exc:  # a runtime's own error types
        if phase == "load":
            raise ModelReadError(f"cannot load {model_path}: {last_line(exc)}") from exc
        raise TransformError(f"running {model_path} failed: {last_line(exc)}") from exc
    if not meter.can_reset:
        run_peak = max(run_peak, load_peak)  # a monotonic high-water mark
    peak = max(load_peak, run_peak)
    return {
        "baseline_mib": round(baseline, 2),
        "load_peak_mib": round(load_peak, 2),
        "run_peak_mib": round(run_peak, 2),
        "peak_mib": round(peak, 2),
        "load_mib": round(load_peak - baseline, 2),
        "run_mib": round(run_peak - baseline, 2),
        "model_mib": round(peak - baseline, 2),
        "batch": int(size if prepared is not None else next(iter(feeds.values())).shape[0]),
        "runs": runs,
        "format": model.format.value,
        "method": meter.method,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgecli.stages.bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--feeds", type=Path, default=None, help="an .npz of prepared feeds, run as they are")
    parser.add_argument("--synthetic", type=json.loads, default={}, help="JSON keyword arguments of synthetic_dataset")
    args = parser.parse_args(argv)
    synthetic = dict(args.synthetic)
    if "int_range" in synthetic:
        synthetic["int_range"] = tuple(synthetic["int_range"])
    try:
        report = _measure_here(args.model, args.threads, args.batch, args.runs, args.data, synthetic, args.feeds)
    except EdgecliError as exc:
        if os.environ.get("EDGECLI_DEBUG"):
            import traceback

            traceback.print_exc()
        report = {"error": {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}}
    except Exception as exc:
        if os.environ.get("EDGECLI_DEBUG"):
            import traceback

            traceback.print_exc()
        message = f"measuring {args.model}: {last_line(exc)}"
        report = {"error": {"type": "TransformError", "message": message, "hint": None}}
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    return 0 if "error" not in report else 1


if __name__ == "__main__":
    sys.exit(main())
