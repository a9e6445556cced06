"""Shared fixtures: the committed sample model and a helper that runs the real CLI in a subprocess."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import types
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

# Three selections (Makefile). `make test` (the README's test command, under 10 minutes on 2 cores)
# runs every test not marked slow; `make test-slow` (run by CI after it) runs the rest; `make
# test-fast` (the edit loop, under a minute) runs only the tests not marked slow or e2e.
#
# slow: the whole example chain, the README's commands, training-heavy files, the verb x case
# matrices of tests/robustness beyond the verbs in FAST_VERBS (each kind of bad input still meets
# inspect and quantize in `make test`), and SLOW_TESTS: the tests measured heaviest.
SLOW_FILES = (
    "tests/examples/",
    "tests/test_readme.py",
    "tests/stages/distill/test_stage.py",
    "tests/stages/quantize/test_tflite.py",
    "tests/stages/quantize/test_transformer.py",
)
MATRIX_FILES = ("tests/robustness/",)
FAST_VERBS = {"inspect", "quantize"}
# Every test over 15 s (setup included) in a timed `make test` (EDGECLI_TEST_TIMES below; 2 workers on
# a shared machine at load 4-8: ranks, not absolute figures), except the ones that are the end-to-end
# case of their verb in `make test`: prune without fine-tuning (test_prune_without_finetune_zeroes_
# exactly_the_target), quantize (test_static_int8_is_qdq_4x_smaller_and_accurate, test_dynamic_int8_on_
# an_mlp_is_4x_smaller_and_accurate), convert to ONNX and TFLite (test_pt2_to_onnx_is_self_contained_
# and_matches, test_pt2_to_tflite_in_one_step), distill (robustness/test_trust_code.py::test_trusted_
# student_factory_trains), bench (test_shipped_ci_gates_hold_for_int8_against_float_size_and_accuracy),
# run (pipeline/test_run.py's first_run tests), and the ORT file (test_ort_file_is_benchmarked_and_inspected).
SLOW_TESTS = (
    "tests/stages/prune/test_stage.py::test_finetune_keeps_zeros_and_recovers_accuracy",  # 125 s
    "tests/cli/test_pipes_reproducible.py::test_piped_artifact_equals_file_artifact[convert-onnx-tflite-micro]",  # 122
    "tests/stages/bench/test_stage.py::test_one_call_over_float_int8_and_tflite_writes_table_json_markdown_csv_and_plot",
    "tests/pipeline/test_run.py::test_a_changed_setting_reruns_that_step_and_what_follows",  # 111
    "tests/stages/prune/test_structured.py::test_residual_network_prunes_and_still_converts",  # 111
    "tests/cli/test_bench_outputs.py::test_bench_writes_markdown_csv_json_and_plot_before_a_failing_gate_exits_1",
    "tests/cli/test_pipes_reproducible.py::test_piped_artifact_equals_file_artifact[convert-onnx-tflite]",  # 82
    "tests/cli/test_pipes_reproducible.py::test_piped_artifact_equals_file_artifact[quantize-onnx-tflite-int8]",  # 68
    "tests/stages/convert/test_micro.py::test_sample_model_runs_under_tflm_with_the_reported_arena",  # 65
    "tests/cli/test_pipes_reproducible.py::test_piped_artifact_equals_file_artifact[convert-pt2-onnx]",  # 61
    "tests/stages/quantize/test_stage.py::test_quantize_reads_pt2_through_a_checked_onnx_export",  # 58
    "tests/stages/bench/test_stage.py::test_multi_input_integer_transformer_without_data",  # 58
    "tests/stages/prune/test_structured.py::test_channels50_halves_every_layer_and_finetunes",  # 56
    "tests/stages/quantize/test_stage.py::test_missed_accuracy_gate_writes_model_and_exits_1",  # 52
    "tests/cli/test_pipes_reproducible.py::test_piped_artifact_equals_file_artifact[prune-pt2-channel]",  # 51
    "tests/stages/bench/test_stage.py::test_accuracy_and_agreement_are_real",  # 50
    "tests/cli/test_pipes_reproducible.py::test_piped_artifact_equals_file_artifact[distill-onnx-teacher-pt2]",  # 50
    "tests/cli/test_pipes_reproducible.py::test_keras_on_stdin",  # 45
    "tests/stages/convert/test_precisions.py::test_dynamic_range_and_float16_shrink_the_weights_and_agree",  # 43
    "tests/cli/test_cli.py::test_pipe_convert_into_quantize",  # 42
    "tests/stages/quantize/test_stage.py::test_quantize_to_onnx_refuses_tflite_with_exit_2",  # 41
    "tests/cli/test_pipes_reproducible.py::test_piped_artifact_equals_file_artifact[convert-state-dict-pt2]",  # 39
    "tests/cli/test_exit_codes.py::test_failed_parity_is_4",  # 39
    "tests/stages/prune/test_structured.py::test_macs_target_from_a_state_dict",  # 38
    "tests/cli/test_cli.py::test_data_shape_mismatch_is_exit_3",  # 37
    "tests/stages/quantize/test_stage.py::test_dynamic_int8_leaves_conv_float",  # 35
    "tests/cli/test_lineage_chain.py::test_a_student_trained_from_a_sparse_model_reports_the_lost_sparsity",  # 33
    "tests/stages/quantize/test_tflite_layers.py",  # 100 s for 9 tests: TFLite conversions in module fixtures
    "tests/stages/quantize/test_guard.py::test_guard_keeps_sensitive_layers_float_until_the_drop_budget_holds",  # 30
    "tests/stages/quantize/test_stage.py::test_excluded_op_type_stays_float",  # 30
    "tests/cli/test_cli.py::test_quiet_success_prints_nothing",  # 29
    "tests/stages/convert/test_precisions.py::test_full_integer_int8_agrees_with_float_on_held_out_samples",  # 28
    "tests/stages/quantize/test_stage.py::test_entropy_calibration_per_tensor",  # 27
    "tests/stages/prune/test_structured.py::test_a_construct_that_cannot_follow_is_refused_naming_it",  # 25
    "tests/stages/prune/test_stage.py::test_same_seed_same_bytes",  # 25
    "tests/cli/test_pipes_reproducible.py::test_piped_artifact_equals_file_artifact[quantize-onnx-int8-static]",  # 25
    "tests/stages/convert/test_precisions.py::test_keras_and_saved_model_to_tflite_match_keras",  # 24
    "tests/stages/prune/test_unstructured.py::test_two_four_pattern_holds_after_finetuning",  # 21
    "tests/stages/prune/test_unstructured.py::test_gradual_magnitude_reaches_the_target_exactly",  # 20
    "tests/cli/test_pipes_reproducible.py::test_piped_artifact_equals_file_artifact[prune-onnx-magnitude]",  # 20
    "tests/stages/quantize/test_guard.py::test_guard_that_cannot_meet_the_target_writes_the_best_and_exits_1",  # 18
    "tests/stages/convert/test_preflight.py::test_pt2_export_failure_names_the_op",  # 18
    "tests/stages/prune/test_structured.py::test_unknown_keep_layer_is_a_usage_error",  # 17
    "tests/cli/test_lineage_chain.py::test_sparsity_and_int8_are_carried_to_the_ort_file",  # 17
    "tests/stages/prune/test_structured.py::test_bad_channel_recipes[sets1-labelled training data]",  # 17
    # second timing (`make test` 569 s, load 2-4): the tests that inherited a moved test's fixture
    "tests/stages/bench/test_stage.py::test_report_has_the_documented_fields",  # 58 s: `report`, 3 models benched
    "tests/stages/bench/test_stage.py::test_macs_of_the_sample_are_exact_in_every_format",  # `report`
    "tests/stages/bench/test_stage.py::test_params_and_sparsity",  # `report`
    "tests/stages/bench/test_stage.py::test_table_on_stderr_lists_every_model",  # `report`
    "tests/stages/convert/test_micro.py::test_budgets_exceeded_write_the_model_and_exit_1",  # 42: `tiny_keras`
    "tests/stages/convert/test_micro.py::test_op_without_a_tflm_kernel_exits_4_naming_it",  # 22
    "tests/stages/convert/test_ort.py::test_ort_format_matches_its_parent_and_keeps_lineage[pt2]",  # 38
    "tests/stages/prune/test_unstructured.py::test_two_four_report",  # 36: `two_four` fine-tunes
    "tests/stages/quantize/test_guard.py::test_fp16_on_cpu_is_reported_not_faster_with_the_reason",  # 26
    # tests/robustness, measured with run_cli forked off the zygote
    "tests/robustness/test_untrusted_pt2.py::test_a_genuine_edgecli_pt2_still_loads_and_converts",  # 194 (313 before)
    "tests/robustness/test_concurrency.py::test_four_processes_in_one_folder",  # 91
    "tests/robustness/test_bad_recipes_data.py::test_data_larger_than_memory_streams_and_is_refused_only_where_it",
    "tests/robustness/test_outputs.py::test_sigkill_leaves_nothing_the_next_run_does_not_remove",  # 39
)

# e2e: what `make test-fast` leaves out. A test is e2e when it or a fixture it uses (following the
# functions of tests/ they call) names E2E_NAMES (edgecli's CLI in a process, any process, the
# unit_helpers builders that convert with onnx2tf or TensorFlow), uses a fixture of E2E_FIXTURES
# (models built by the CLI or by onnx2tf/Keras), or is in E2E_TESTS (measured over a second in
# process: conversions, plots, child-process probes). Everything else runs library functions on small
# inputs (the tiny torch CNN of unit_helpers.torch_models included: exported once, in seconds).
E2E_NAMES = {"run_cli", "run_cli_process", "subprocess", "Popen", "tflite_cnn", "keras_models"}
E2E_FIXTURES = {"sample_tflite", "sample_int8", "tiny_transformer", "real_models"}
E2E_TESTS = (
    "tests/stages/quantize/test_tflite_layers.py",
    "tests/robustness/test_fuzz.py::test_deeply_nested_yaml_is_a_recipe_error[5000]",  # 17 s
    "tests/stages/bench/test_memory.py",  # bench's memory probes run in child processes: 16 s
    "tests/cli/test_bench_outputs.py::test_plot_",  # matplotlib: 13 s for 3 tests
    "tests/stages/prune/test_structured.py::test_lift_",  # 2.6 s
)


def _reaches(func: object, seen: set[object]) -> str | None:
    """The first of E2E_NAMES that `func` (or a function of tests/ it names, and so on) names."""
    func = getattr(func, "__wrapped__", func)
    code = getattr(func, "__code__", None)
    if code is None or func in seen:
        return None
    seen.add(func)
    namespace = getattr(func, "__globals__", {})
    codes = [code]
    while codes:
        current = codes.pop()
        codes.extend(const for const in current.co_consts if isinstance(const, types.CodeType))
        for name in current.co_names:
            if name in E2E_NAMES:
                return name
            target = namespace.get(name)
            if isinstance(target, types.FunctionType) and target.__module__.startswith("tests"):
                found = _reaches(target, seen)
                if found:
                    return f"{name} > {found}"
    return None


def _is_e2e(item: pytest.Item) -> bool:
    if item.nodeid.startswith(E2E_TESTS) or E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    seen: set[object] = set()
    if _reaches(getattr(item, "function", None), seen):
        return True
    info = getattr(item, "_fixtureinfo", None)
    definitions = info.name2fixturedefs.values() if info is not None else ()
    return any(_reaches(definition.func, seen) for defs in definitions for definition in defs)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        verb = params.get("verb")
        if (
            item.nodeid.startswith(SLOW_FILES)
            or item.nodeid.startswith(SLOW_TESTS)
            or (item.nodeid.startswith(MATRIX_FILES) and isinstance(verb, str) and verb not in FAST_VERBS)
        ):
            item.add_marker(pytest.mark.slow)
        if _is_e2e(item):
            item.add_marker(pytest.mark.e2e)


# Per-test timings for ranking the suite: EDGECLI_TEST_TIMES=times.jsonl appends one JSON line per
# phase (setup, call, teardown) of every test, written by the xdist controller (or the only process).
# Session fixtures show up in the setup of the first test that asks for them. Rank them with
# jq -s 'group_by(.nodeid) | map({t: (map(.duration) | add), id: .[0].nodeid}) | sort_by(-.t)' times.jsonl
# On a shared machine absolute figures are inflated; their order is not.
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


def run_cli_process(
    *args: object, stdin: bytes | None = None, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> CliResult:
    """Run `python -m edgecli ARGS` in a fresh interpreter, stdin and stdout pipes, as a shell does;
    stdout is kept as bytes (it may carry a model). For the cases where the start-up, the pipes or
    signals are the subject; every other test uses run_cli (below)."""
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


# ---- run_cli: a real process per case, forked from a warm interpreter ---------------------------
#
# Starting `python -m edgecli` costs more than most refusal cases: the interpreter, then torch,
# onnxruntime, TensorFlow. A zygote (one per test process, started on first use) imports those once
# and forks a child per case; the child points fds 0-2 at the case's files, takes its environment,
# working folder and argv, and calls edgecli's entry point (edgecli.cli.app.main, what
# edgecli/__main__.py calls), then exits as the interpreter would. Each case is still its own process:
# nothing it does (a crafted payload that runs, a native crash, module state, signal handlers) reaches
# the test process or the next case. What differs from run_cli_process: the interpreter start-up itself, the
# frameworks already imported, and stdin/stdout/stderr being files, not pipes. Cases where those
# matter (closed descriptors, pipes and terminals, signals, start-up, import-time behaviour) use
# run_cli_process or their own subprocess. EDGECLI_TESTS_SUBPROCESS=1 sends every run_cli call through
# run_cli_process (the slow, fully real way).

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


def run_cli(
    *args: object, stdin: bytes | None = None, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> CliResult:
    """`edgecli ARGS` in a process of its own, forked off a warm interpreter (see above): what
    run_cli_process returns, without the interpreter start and the framework imports."""
    global _zygote
    if os.environ.get(SUBPROCESS_ENV) == "1":
        return run_cli_process(*args, stdin=stdin, env=env, cwd=cwd)
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
