"""Shared fixtures: the committed sample model and a helper that runs the real CLI in a subprocess."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parents[1]

# With one pytest-xdist worker per core, a PyTorch process with a thread per core oversubscribes the
# machine: measured 220 s against 46 s for the same fine-tuning test under `-n 2`. Commands the tests
# start inherit this (results stay deterministic: the same settings give the same bytes).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= (os.cpu_count() or 1):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
SAMPLE = ROOT / "sample_models" / "fashion"

# Two tiers. `make test` (the README's test command, under 10 minutes on 2 cores) runs every test not
# marked slow; `make test-slow` (run by CI after it) runs the rest: the whole example chain, the
# README's commands, training-heavy files, and the verb x case matrices of tests/robustness beyond
# the verbs in FAST_VERBS (each kind of bad input still meets inspect and quantize in the fast tier).
SLOW_FILES = (
    "tests/examples/",
    "tests/test_readme.py",
    "tests/stages/distill/test_stage.py",
    "tests/stages/quantize/test_tflite.py",
    "tests/stages/quantize/test_transformer.py",
)
MATRIX_FILES = ("tests/robustness/",)
FAST_VERBS = {"inspect", "quantize"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        verb = params.get("verb")
        if item.nodeid.startswith(SLOW_FILES) or (
            item.nodeid.startswith(MATRIX_FILES) and isinstance(verb, str) and verb not in FAST_VERBS
        ):
            item.add_marker(pytest.mark.slow)


# Per-test timings for ranking the suite: EDGECLI_TEST_TIMES=times.jsonl appends one JSON line per
# phase (setup, call, teardown) of every test, written by the xdist controller (or the only process).
# Session fixtures show up in the setup of the first test that asks for them. Rank with
# tests/timings.py (or jq); on a shared machine absolute figures are inflated, their order is not.
TIMES_FILE = os.environ.get("EDGECLI_TEST_TIMES")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not TIMES_FILE or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    gateway = getattr(getattr(report, "node", None), "gateway", None)
    row = {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "duration": round(report.duration, 4),
        "start": getattr(report, "start", None),
        "worker": getattr(gateway, "id", None),
        "slow": "slow" in report.keywords,
    }
    with open(TIMES_FILE, "a", encoding="utf-8") as log:
        log.write(json.dumps(row) + "\n")


_DATA_FILES = {
    "prune": ("train.npz", "eval.npz"),
    "distill": ("train.npz", "eval.npz"),
    "quantize": ("calib.npz", "eval.npz"),
    "convert": ("eval.npz", None),
    "bench": ("eval.npz", None),
}


def data_args(verb: str) -> list[str]:
    """The sample datasets for a verb, as a user passes them: --data (and --eval-data)."""
    data, evaluation = _DATA_FILES[verb]
    args = ["--data", str(SAMPLE / data)]
    return [*args, "--eval-data", str(SAMPLE / evaluation)] if evaluation else args


@dataclass
class CliResult:
    code: int
    stdout: bytes
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_cli(
    *args: object, stdin: bytes | None = None, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> CliResult:
    """Run `python -m edgecli ARGS` as a user would; stdout is kept as bytes (it may carry a model)."""
    full_env = {k: v for k, v in os.environ.items() if k != "EDGECLI_DEBUG"}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "edgecli", *map(str, args)],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        cwd=cwd,
        env=full_env,
        timeout=600,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))


# ---- run_cli_forked: a real process per case, forked from a warm interpreter ----------------------
#
# Starting `python -m edgecli` costs more than most refusal cases: the interpreter, then torch,
# onnxruntime, TensorFlow. A zygote (one per test process, started on first use) imports those once
# and forks a child per case; the child points fds 0-2 at the case's files, takes its environment,
# working folder and argv, and calls edgecli's entry point (edgecli.cli.app.main, what
# edgecli/__main__.py calls), then exits as the interpreter would. Each case is still its own process:
# nothing it does (a crafted payload that runs, a native crash, module state, signal handlers) reaches
# the test process or the next case. What differs from run_cli: the interpreter start-up itself, the
# frameworks already imported, and stdin/stdout/stderr being files, not pipes. Cases where those
# matter (closed descriptors, pipes and terminals, signals, start-up, import-time behaviour) use
# run_cli or their own subprocess. EDGECLI_TESTS_SUBPROCESS=1 sends every run_cli_forked call through
# run_cli (the slow, fully real way).

SUBPROCESS_ENV = "EDGECLI_TESTS_SUBPROCESS"
ZYGOTE_PRELOAD = (  # what the commands import lazily and would import again in every case (measured: -X importtime)
    "numpy",
    "torch",
    "torch.export",
    "torch.export.pt2_archive._package",
    "torch._export.serde.serialize",
    "torch._dynamo",
    "torch._inductor.config",
    "torch._inductor.ir",
    "torch.export._trace",
    "onnx",
    "onnxruntime",
    "tensorflow",
    "keras",
    "edgecli.cli.app",
)

_ZYGOTE = r"""
import json, os, sys

requests_fd, replies_fd = os.dup(0), os.dup(1)  # the protocol moves off 0-2: nothing printed can corrupt it
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 1)
os.close(null)
for name in json.loads(sys.argv[1]):
    try:
        __import__(name)
    except ImportError:
        pass
import edgecli

# sys.path without the zygote's own first entry and PYTHONPATH: each case puts its own in front
_own = set(filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)))
base_path = [entry for entry in sys.path[1:] if entry not in _own]


def child(request):
    os.close(requests_fd)
    os.close(replies_fd)
    for fd, (path, flags) in enumerate(
        [(request["stdin"], os.O_RDONLY), (request["stdout"], os.O_WRONLY), (request["stderr"], os.O_WRONLY)]
    ):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    import tempfile

    tempfile.tempdir = None  # found again from this case's TMPDIR (an import may have cached the zygote's)
    # what `python -m edgecli` has: argv[0] the module's file, the working folder first on sys.path,
    # streams on fds 0-2 as Python opens them for files under a UTF-8 locale
    sys.argv = [os.path.join(os.path.dirname(edgecli.__file__), "__main__.py"), *request["args"]]
    extra = [os.path.abspath(p) for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [request["cwd"], *extra, *base_path]
    sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", errors="surrogateescape", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    code = 0
    try:
        from edgecli.cli.app import main

        main()
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code & 0xFF
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:  # the interpreter dies of the signal
        import signal, traceback

        traceback.print_exc()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    import atexit, threading

    for thread in threading.enumerate():  # the interpreter waits for non-daemon threads, then runs atexit
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except Exception:
        code = code or 120  # what Python exits with when flushing stdout fails at exit
    try:
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(code)


buffered = b""
while True:
    while b"\n" not in buffered:
        chunk = os.read(requests_fd, 65536)
        if not chunk:
            sys.exit(0)
        buffered += chunk
    line, buffered = buffered.split(b"\n", 1)
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            child(request)
        finally:
            os._exit(70)
    os.write(replies_fd, f"{pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    os.write(replies_fd, f"{os.waitstatus_to_exitcode(status)}\n".encode())
"""


class _Zygote:
    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "EDGECLI_DEBUG"}
        for key, value in (("TF_CPP_MIN_LOG_LEVEL", "3"), ("TF_ENABLE_ONEDNN_OPTS", "0")):
            env.setdefault(key, value)  # what main() sets before TensorFlow loads
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE, json.dumps(ZYGOTE_PRELOAD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
        )
        self.buffered = b""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _line(self, deadline: float) -> str:
        import select
        import time

        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffered:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"the test zygote died (exit {self.proc.wait()})")
            self.buffered += chunk
        line, self.buffered = self.buffered.split(b"\n", 1)
        return line.decode()

    def run(self, request: dict[str, Any], timeout: float) -> int:
        import signal
        import time

        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout + 600  # the first case waits for the imports too
        pid = int(self._line(deadline))
        deadline = time.monotonic() + timeout
        try:
            return int(self._line(deadline))
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self._line(time.monotonic() + 60)
            raise subprocess.TimeoutExpired(["edgecli", *request["args"]], timeout) from None

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_zygote: _Zygote | None = None


def run_cli_forked(
    *args: object, stdin: bytes | None = None, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> CliResult:
    """What run_cli returns, from a process forked off a warm interpreter (see above)."""
    global _zygote
    if os.environ.get(SUBPROCESS_ENV) == "1":
        return run_cli(*args, stdin=stdin, env=env, cwd=cwd)
    import atexit
    import tempfile

    if _zygote is None or not _zygote.alive():
        _zygote = _Zygote()
        atexit.register(_zygote.close)
    full_env = {k: v for k, v in os.environ.items() if k != "EDGECLI_DEBUG"}
    full_env.update(env or {})
    with tempfile.TemporaryDirectory(prefix="cli-case-") as folder:
        files = {name: Path(folder) / name for name in ("stdin", "stdout", "stderr")}
        files["stdin"].write_bytes(stdin or b"")
        files["stdout"].touch()
        files["stderr"].touch()
        request: dict[str, Any] = {"args": [str(a) for a in args], "env": full_env, "cwd": str(cwd)}
        request.update({name: str(path) for name, path in files.items()})
        code = _zygote.run(request, timeout=600)
        return CliResult(code, files["stdout"].read_bytes(), files["stderr"].read_bytes().decode("utf-8", "replace"))


def leftovers(folder: Path) -> list[str]:
    """Files in `folder` (temporary files of an atomic write included)."""
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Teacher-output caches go to a folder of this test session, never to the user's ~/.cache."""
    os.environ["EDGECLI_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgecli-cache"))


@pytest.fixture(scope="session")
def sample() -> dict[str, Path]:
    paths = {
        "pt2": SAMPLE / "fashion_cnn.pt2",
        "onnx": SAMPLE / "fashion_cnn.onnx",
        "train": SAMPLE / "train.npz",
        "calib": SAMPLE / "calib.npz",
        "eval": SAMPLE / "eval.npz",
    }
    missing = [str(p) for p in paths.values() if not p.exists()]
    assert not missing, f"sample model files missing: {missing} (run sample_models/train.py)"
    return paths


T = TypeVar("T")


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], T]) -> T:
    """What `build(folder)` returns, built once per test session rather than once per xdist worker:
    the first worker that asks builds it into a folder every worker of the session sees (under a file
    lock) and leaves its result there (pickled: paths and numbers the tests wrote themselves); the
    others wait for it and read it. A build that fails leaves nothing, and the next worker tries again."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    import pickle
    import shutil

    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the session's folder, above each worker's own
    folder, result = shared / f"built-{name}", shared / f"built-{name}.pickle"
    with FileLock(str(shared / f"built-{name}.lock")):
        if result.exists():
            return pickle.loads(result.read_bytes())
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        value = build(folder)
        result.write_bytes(pickle.dumps(value))
        return value


def _convert_to_tflite(onnx: Path, folder: Path) -> Path:
    out = folder / "fashion.tflite"
    result = run_cli("convert", onnx, "-r", "tflite", *data_args("convert"), "-o", out, "-q")
    assert result.code == 0, result.stderr
    return out


def _quantize_int8(onnx: Path, folder: Path) -> Path:
    out = folder / "fashion.int8.onnx"
    result = run_cli("quantize", onnx, "-r", "int8-static", *data_args("quantize"), "-o", out, "-q")
    assert result.code == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def sample_tflite(sample: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample ONNX model converted to TFLite once for the whole session (all workers)."""
    return built_once(tmp_path_factory, "tflite", functools.partial(_convert_to_tflite, sample["onnx"]))


@pytest.fixture(scope="session")
def sample_int8(sample: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample ONNX model quantized (static INT8) once for the whole session (all workers)."""
    return built_once(tmp_path_factory, "int8", functools.partial(_quantize_int8, sample["onnx"]))


@pytest.fixture(scope="session")
def tiny_transformer(tmp_path_factory: pytest.TempPathFactory):
    """A tiny BERT-like classifier with integer inputs (input_ids, attention_mask, token_type_ids),
    trained, exported to ONNX and .pt2 with its calib.npz/eval.npz once per session, all workers
    (tests/tiny_transformer.py)."""
    from tests.tiny_transformer import build_tiny_transformer

    return built_once(tmp_path_factory, "tiny-transformer", build_tiny_transformer)
