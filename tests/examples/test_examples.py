"""examples/: the Makefile and the CI workflow run the edge-cnn pipeline's commands and make its bytes.

The same chain (prune -> distill -> quantize -> convert, a LiteRT branch, a bench) is made three ways
with the same cheap settings, each in a folder of its own:
  A  `edgecli run edge-cnn --out A --set STEP.key=value ...`
  B  `make -j2 -C examples OUT=B ... PRUNED_ARGS=... STUDENT_ARGS=...` (the two branches side by side)
  C  the commands `edgecli run --dry-run` prints, joined by pipes: prune to a file, then
     distill -o - | quantize - -o - | convert - (tee'd to files), the LiteRT branch reading the same
     student bytes through a FIFO.
Every artifact must be byte for byte the same in all three. The settings only cut the amount of work
(epochs, samples, timed runs); the code paths are those of the full recipes.

The three are built once per test session, also under pytest-xdist: each worker takes the next one
nobody is building yet (a lock and a result file per form in a folder the workers share), so two
workers build them side by side and later tests only read them (tests that change files use copies).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgecli.recipes import load_recipe, resolve_recipe_path
from tests.conftest import ROOT, SAMPLE, leftovers, run_cli

BIN = Path(sys.executable).parent
EDGECLI = BIN / "edgecli"
EXAMPLES = ROOT / "examples"
WORKFLOW = EXAMPLES / "ci" / "edge-cnn.yml"
MODEL = SAMPLE / "fashion_cnn.pt2"
ARTIFACTS = ["pruned.pt2", "student.pt2", "int8.onnx", "mobile.ort", "litert.tflite"]
REPORTS = ["bench.json", "bench.md"]
STEPS = ["pruned", "student", "int8", "mobile", "litert", "bench"]

# Less work, the same code paths: one short distillation epoch, fewer calibration samples and timed
# runs, no per-model memory processes in the bench. (Pruning has no fine-tuning in the pipeline itself.)
# One epoch on 500 images wins back only part of the accuracy (student agreement ~0.34): its answer
# check is lowered here; the full pipeline's student is held to distill's default bar.
CHEAP: dict[str, list[str]] = {
    "pruned": [],
    "student": ["epochs=1", "data.limit=500", "augment.views=1", "latency_runs=0", "answers.min_agreement=0"],
    "int8": ["calibration.samples=64"],
    "mobile": [],
    "litert": ["calibration.samples=64"],
    "bench": ["runs=20", "warmup=1", "min_time_s=0.1", "memory=false", "data.limit=500"],
}
GATE_TIMING = "--set runs=50 --set min_time_s=0.2"

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def settings(**changed: list[str]) -> dict[str, list[str]]:
    return {**CHEAP, **changed}


def run_sets(chosen: dict[str, list[str]] | None = None) -> list[str]:
    """`edgecli run` options: --set STEP.key=value for every setting."""
    return [arg for step, items in (chosen or CHEAP).items() for item in items for arg in ("--set", f"{step}.{item}")]


def step_sets(step: str, chosen: dict[str, list[str]] | None = None) -> list[str]:
    """One step's settings as the verb takes them: --set key=value."""
    return [arg for item in (chosen or CHEAP)[step] for arg in ("--set", item)]


def make_vars(chosen: dict[str, list[str]] | None = None) -> list[str]:
    """examples/Makefile's per-step variables: STUDENT_ARGS=--set epochs=1 ..."""
    return [f"{step.upper()}_ARGS={shlex.join(step_sets(step, chosen))}" for step in STEPS]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path, names: list[str]) -> dict[str, tuple[int, str]]:
    return {name: ((folder / name).stat().st_mtime_ns, sha256(folder / name)) for name in names}


def child_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "EDGECLI_DEBUG"}
    env.update(extra)
    return env


def checkout(folder: Path) -> Path:
    """A folder that stands for the repository root: edgecli/ (the shipped recipes), sample_models/, examples/ linked.

    `edgecli run` keys a step by its settings as typed, and `student.path=A/pruned.pt2` names the
    output folder: a copy of an output folder is up to date when it is used from a folder where it
    has the same relative name."""
    folder.mkdir(parents=True)
    for name in ("edgecli", "sample_models", "examples"):
        (folder / name).symlink_to(ROOT / name, target_is_directory=True)
    return folder


def copy_of_a(forms: dict[str, Any], folder: Path) -> Path:
    """A checkout-like folder holding a copy of form A's output folder (as A, timestamps kept)."""
    work = checkout(folder)
    shutil.copytree(forms["A"]["out"], work / "A")
    return work


# ---- the three forms, built once per session -------------------------------------------------


def build_run(root: Path) -> dict[str, Any]:
    """A: `edgecli run edge-cnn --out A` from a checkout-like folder."""
    work = checkout(root / "work-a")
    result = run_cli("run", "edge-cnn", "--out", "A", *run_sets(), "--json", "-", "-q", cwd=work)
    report = json.loads(result.stdout) if result.code == 0 else {}
    return {
        "code": result.code,
        "stderr": result.stderr[-4000:],
        "work": str(work),
        "out": str(work / "A"),
        "statuses": {step["name"]: step["status"] for step in report.get("steps", [])},
    }


def build_make(root: Path) -> dict[str, Any]:
    """B: `make -j2 -C examples OUT=B` with the venv's edgecli and the per-step variables."""
    out = root / "B"
    proc = subprocess.run(
        ["make", "-j2", "-C", str(EXAMPLES), f"OUT={out}", f"EDGECLI={EDGECLI}", *make_vars()],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=900,
    )
    return {"code": proc.returncode, "stderr": (proc.stdout + proc.stderr)[-4000:], "out": str(out)}


def pipe_script(folder: Path, fifo: Path) -> str:
    """C's shell script: the commands `edgecli run --dry-run` prints, with the models between them
    passed through pipes (-o - / -) instead of files; the student is tee'd to the LiteRT branch."""
    dry = run_cli("run", "edge-cnn", "--dry-run", "--out", folder, *run_sets())
    assert dry.code == 0, dry.stderr
    planned = {
        Path(argv[argv.index("-o") + 1]).stem: argv
        for argv in map(shlex.split, dry.stdout.decode().splitlines())
        if "-o" in argv
    }
    assert list(planned) == STEPS[:-1], f"the pipeline's steps changed: {list(planned)}"

    def command(step: str, source: str | None = None, output: str | None = None) -> str:
        argv = [str(EDGECLI), *planned[step][1:]]
        if source is not None:
            argv[2] = source
        if output is not None:
            argv[argv.index("-o") + 1] = output
        return shlex.join(argv)

    student, int8_file, pipe = (shlex.quote(str(p)) for p in (folder / "student.pt2", folder / "int8.onnx", fifo))
    return "\n".join(
        [
            command("pruned"),
            f"{command('litert', source='-')} < {pipe} &",  # the second branch reads the student's bytes from the FIFO
            f"{command('student', output='-')} | tee {student} {pipe} | {command('int8', source='-', output='-')}"
            f" | tee {int8_file} | {command('mobile', source='-')}",
            "wait $!",
        ]
    )


def build_pipes(root: Path) -> dict[str, Any]:
    """C: prune to a file, then one pipe distill | quantize | convert and the LiteRT branch beside it."""
    out, fifo = root / "C", root / "student.fifo"
    out.mkdir()
    os.mkfifo(fifo)
    script = pipe_script(out, fifo)
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script], cwd=ROOT, capture_output=True, env=child_env(), timeout=900
    )
    return {
        "code": proc.returncode,
        "stderr": proc.stderr.decode("utf-8", "replace")[-4000:],
        "out": str(out),
        "script": script,
    }


BUILDERS: dict[str, Callable[[Path], dict[str, Any]]] = {"A": build_run, "B": build_make, "C": build_pipes}


def shared_root(factory: pytest.TempPathFactory) -> Path:
    """A folder all pytest-xdist workers of this session see (the session's own without xdist)."""
    base = factory.getbasetemp()
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    root = base.parent / f"examples-{run_id}" if os.environ.get("PYTEST_XDIST_WORKER") and run_id else base / "examples"
    root.mkdir(exist_ok=True)
    return root


@contextlib.contextmanager
def flock(path: Path, wait: bool) -> Iterator[bool]:
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure(root: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each named form built once: take any not yet built that no other worker is building; when
    all that are left are being built elsewhere, wait for one."""
    pending = list(names)
    while pending:
        for name in list(pending):
            with flock(root / f"{name}.lock", wait=False) as mine:
                if not mine:
                    continue
                done = root / f"{name}.json"
                if not done.exists():
                    started = time.perf_counter()
                    try:
                        result = BUILDERS[name](root)
                    except Exception as exc:  # recorded: the other worker must not build it again
                        result = {"code": -1, "stderr": f"{type(exc).__name__}: {exc}"}
                    result["seconds"] = round(time.perf_counter() - started, 1)
                    done.write_text(json.dumps(result))
                pending.remove(name)
        if pending:
            with flock(root / f"{pending[0]}.lock", wait=True):
                pass
    results = {name: json.loads((root / f"{name}.json").read_text()) for name in names}
    for result in results.values():
        if "out" in result:
            result["out"] = Path(result["out"])
    return results


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    built = ensure(shared_root(tmp_path_factory), ["A", "B", "C"])
    for name, result in built.items():
        assert result["code"] == 0, f"form {name} failed (exit {result['code']}):\n{result['stderr']}"
    return built


# ---- same bytes three ways ---------------------------------------------------------------------


def test_run_make_and_pipes_make_the_same_bytes(forms):
    a, b, c = (forms[name]["out"] for name in "ABC")
    assert forms["A"]["statuses"] == {step: "ran" for step in STEPS}
    for name in ARTIFACTS:
        assert sha256(b / name) == sha256(a / name), f"{name}: make differs from edgecli run"
        assert sha256(c / name) == sha256(a / name), f"{name}: the pipes differ from edgecli run"
    # nothing else in the folders: no temporary file of an atomic write (make -j2 included), no FIFO
    assert leftovers(a) == sorted([".edgecli-run.json", ".edgecli-run.lock", *ARTIFACTS, *REPORTS])
    assert leftovers(b) == sorted([*ARTIFACTS, *REPORTS])
    assert leftovers(c) == sorted(ARTIFACTS)
    assert "mobile.ort" in (a / "bench.md").read_text() and "litert.tflite" in (b / "bench.md").read_text()


def test_lineage_of_the_piped_artifacts_chains_by_sha256(forms):
    c = forms["C"]["out"]
    result = run_cli("inspect", c / "mobile.ort", "--json", "-")
    assert result.code == 0, result.stderr
    steps = json.loads(result.stdout)["lineage"]["steps"]
    assert [step["verb"] for step in steps] == ["prune", "distill", "quantize", "convert"]
    prune, distill, quantize, convert = steps
    assert prune["parent"]["sha256"] == sha256(MODEL)
    assert distill["parent"]["sha256"] == sha256(MODEL)  # the teacher
    assert distill["files"]["student.path"] == {"name": "pruned.pt2", "sha256": sha256(c / "pruned.pt2")}
    assert quantize["parent"]["sha256"] == sha256(c / "student.pt2")
    assert convert["parent"]["sha256"] == sha256(c / "int8.onnx")
    assert [step["recipe_name"] for step in steps] == ["macs-2x", "kd-recover", "int8-static", "ort-mobile"]
    assert convert["recipe"]["ort_optimization"] == "extended"

    litert = run_cli("inspect", c / "litert.tflite", "--json", "-")
    assert litert.code == 0, litert.stderr
    branch = json.loads(litert.stdout)["lineage"]["steps"]
    assert [step["verb"] for step in branch] == ["prune", "distill", "quantize"]
    assert branch[-1]["parent"]["sha256"] == sha256(c / "student.pt2") and branch[:2] == steps[:2]


# ---- edgecli run: a second run does no work; a changed setting reruns that step and the bench -------


def test_second_run_is_up_to_date_and_a_changed_setting_reruns_only_its_step(forms, tmp_path):
    work = copy_of_a(forms, tmp_path / "work")
    out = work / "A"
    files = [*ARTIFACTS, *REPORTS]
    before = snapshot(out, files)

    dry = run_cli("run", "edge-cnn", "--out", "A", *run_sets(), "--dry-run", cwd=work)
    assert dry.code == 0, dry.stderr
    assert [line.endswith("# up to date") for line in dry.stdout.decode().splitlines()] == [True] * len(STEPS)

    again = run_cli("run", "edge-cnn", "--out", "A", *run_sets(), "--json", "-", cwd=work)
    assert again.code == 0, again.stderr
    report = json.loads(again.stdout)
    assert {step["name"]: step["status"] for step in report["steps"]} == {step: "up to date" for step in STEPS}
    assert "0 of 6 steps ran" in again.stderr
    assert snapshot(out, files) == before  # not rewritten: same bytes, same mtime

    changed = settings(mobile=["parity.samples=128"])  # the cheapest step to redo (the bench reruns too)
    third = run_cli("run", "edge-cnn", "--out", "A", *run_sets(changed), "--json", "-", cwd=work)
    assert third.code == 0, third.stderr
    statuses = {step["name"]: step["status"] for step in json.loads(third.stdout)["steps"]}
    assert statuses == {**{step: "up to date" for step in STEPS}, "mobile": "ran", "bench": "ran"}
    after = snapshot(out, files)
    kept = ["pruned.pt2", "student.pt2", "int8.onnx", "litert.tflite"]
    assert {name: after[name] for name in kept} == {name: before[name] for name in kept}
    assert after["mobile.ort"][1] != before["mobile.ort"][1]  # the recipe in its lineage changed at least
    assert after["bench.json"][0] > before["bench.json"][0]
    assert leftovers(out) == sorted([".edgecli-run.json", ".edgecli-run.lock", *files])


# ---- examples/Makefile ------------------------------------------------------------------------


def _absolute(argv: list[str], cwd: Path) -> list[str]:
    """A command with every path made absolute and -r NAME turned into the shipped recipe's file."""
    verb, normal = argv[1], argv[:2]
    for previous, arg in itertools.pairwise(argv[1:]):
        if previous == "-r":
            arg = str((cwd / arg).resolve() if (cwd / arg).is_file() else resolve_recipe_path(verb, arg).resolve())
        elif previous == "--set":
            key, _, value = arg.partition("=")
            arg = f"{key}={(cwd / value).resolve()}" if "/" in value else arg
        elif "/" in arg:
            arg = str((cwd / arg).resolve())
        normal.append(arg)
    return normal


@needs_make
def test_make_runs_the_commands_edgecli_run_plans(tmp_path):
    """`make -n` prints exactly the commands of `edgecli run --dry-run` (paths and recipe names aside)."""
    out = tmp_path / "out"
    dry = run_cli("run", "edge-cnn", "--dry-run", "--out", out, *run_sets())
    assert dry.code == 0, dry.stderr
    planned = [shlex.split(line.split("   #")[0]) for line in dry.stdout.decode().splitlines()]
    proc = subprocess.run(
        ["make", "-n", "-B", "-C", str(EXAMPLES), f"OUT={out}", "EDGECLI=edgecli", *make_vars()],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    made = [
        shlex.split(line) for line in re.sub(r"\\\n\s*", " ", proc.stdout).splitlines() if line.startswith("edgecli ")
    ]
    assert [_absolute(argv, EXAMPLES) for argv in made] == [_absolute(argv, ROOT) for argv in planned]
    assert len(made) == len(STEPS)


@needs_make
def test_a_failed_make_step_leaves_no_target(forms, tmp_path):
    """A bad value in one step: make stops there; that target and the later ones do not exist."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("pruned.pt2", "student.pt2"):  # earlier steps done (timestamps kept: make takes them as up to date)
        shutil.copy2(forms["B"]["out"] / name, out / name)
    before = snapshot(out, ["pruned.pt2", "student.pt2"])
    proc = subprocess.run(
        [
            "make",
            "-C",
            str(EXAMPLES),
            f"OUT={out}",
            f"EDGECLI={EDGECLI}",
            *make_vars(settings(int8=["calibration.samples=-1"])),
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert proc.returncode != 0
    assert "calibration.samples" in proc.stderr and "int8.onnx" in proc.stderr
    assert leftovers(out) == ["pruned.pt2", "student.pt2"]  # no int8.onnx, mobile.ort, litert, bench; no .tmp
    assert snapshot(out, ["pruned.pt2", "student.pt2"]) == before


@needs_make
def test_a_broken_bench_gate_leaves_no_report_for_make(forms, tmp_path):
    """bench writes its reports, then exits 1 for a broken gate: .DELETE_ON_ERROR removes them, so
    the next make checks again instead of taking them for up to date."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ARTIFACTS:
        shutil.copy2(forms["B"]["out"] / name, out / name)
    chosen = settings(bench=["runs=5", "min_time_s=0", "memory=false", "gates=[accuracy_drop<=0]"])
    proc = subprocess.run(
        ["make", "-C", str(EXAMPLES), f"OUT={out}", f"EDGECLI={EDGECLI}", *make_vars(chosen)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert proc.returncode != 0
    assert "Deleting file" in proc.stderr and "bench.json" in proc.stderr
    assert leftovers(out) == sorted(ARTIFACTS)


# ---- examples/ci/edge-cnn.yml ------------------------------------------------------------------


def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


def local_steps(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's own commands: the `run:` steps but the installation."""
    return [step for step in document["jobs"]["edge-cnn"]["steps"] if "run" in step and step.get("id") != "install"]


def run_job(
    document: dict[str, Any], cwd: Path, summary: Path, **env: str
) -> dict[str, subprocess.CompletedProcess | None]:
    """The local steps as GitHub runs them: bash -eo pipefail, the workflow's env, later steps skipped
    after a failure unless `if: always()`. Step id -> its process (None: skipped)."""
    base = child_env(**{key: str(value) for key, value in document["env"].items()})
    base.update(env, GITHUB_STEP_SUMMARY=str(summary), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    results: dict[str, subprocess.CompletedProcess | None] = {}
    failed = False
    for step in local_steps(document):
        if failed and "always()" not in str(step.get("if", "")):
            results[step["id"]] = None
            continue
        script = summary.parent / f"step-{step['id']}.sh"
        script.write_text(step["run"])
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=cwd,
            env={**base, **{k: str(v) for k, v in step.get("env", {}).items()}},
            capture_output=True,
            text=True,
            timeout=900,
        )
        results[step["id"]] = proc
        failed = failed or proc.returncode != 0
    return results


def test_workflow_installs_like_make_install_and_posts_its_reports():
    document = workflow()
    steps = document["jobs"]["edge-cnn"]["steps"]
    uses = [step.get("uses", "").split("@")[0] for step in steps]
    assert uses[:2] == ["actions/checkout", "actions/setup-python"]
    assert steps[1]["with"]["python-version"] == "3.11"
    install = next(step for step in steps if step.get("id") == "install")["run"]
    pins = re.search(r"--no-deps (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert "-c constraints.txt" in install and f"--no-deps {' '.join(pins)}" in install
    cache = next(step for step in steps if step.get("uses", "").startswith("actions/cache"))
    assert cache["with"]["path"] == "~/.cache/edgecli"
    assert uses.index("actions/cache") < [step.get("id") for step in steps].index("pipeline")
    for step in local_steps(document):
        assert "${{" not in step["run"], f"step {step['id']} needs GitHub to expand it: it cannot run locally"
    summary = next(step for step in steps if step.get("id") == "summary")
    assert summary["if"] == "always()" and "GITHUB_STEP_SUMMARY" in summary["run"]
    assert (
        next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact"))["if"] == "always()"
    )
    assert document["env"]["EDGECLI_RUN_ARGS"] == "" and document["env"]["EDGECLI_GATE_ARGS"] == ""
    recipe, _ = load_recipe("bench", str(EXAMPLES / "ci" / "gates.yaml"), [])
    assert {gate.split()[0] for gate in recipe.gates} == {"size_bytes", "accuracy_drop", "speedup"}


@pytest.mark.parametrize("case", ["broken", "loosened"])
def test_workflow_steps_locally(forms, tmp_path, case):
    """The job on the cheap pipeline output: run (up to date), gate, summary. Cheap settings cost
    accuracy, so the accuracy gate breaks: the gate step exits 1 and the summary still gets both
    reports; with the gates loosened through EDGECLI_GATE_ARGS the job passes."""
    work = copy_of_a(forms, tmp_path / "work")
    summary = tmp_path / "summary.md"
    gate_args = GATE_TIMING + (
        "" if case == "broken" else " --set gates=[size_bytes<=500000,accuracy_drop<=1,speedup>=1]"
    )
    results = run_job(
        workflow(), work, summary, EDGECLI_OUT="A", EDGECLI_RUN_ARGS=shlex.join(run_sets()), EDGECLI_GATE_ARGS=gate_args
    )
    assert list(results) == ["pipeline", "gate", "summary"]
    pipeline, gate, post = results["pipeline"], results["gate"], results["summary"]
    assert pipeline.returncode == 0 and "0 of 6 steps ran" in pipeline.stderr, pipeline.stderr[-2000:]
    assert post.returncode == 0, post.stderr
    text = summary.read_text()
    assert "`litert.tflite`" in text  # the pipeline's bench.md
    assert "### Gates" in text and "`mobile.ort`" in text
    if case == "broken":
        assert gate.returncode == 1, gate.stderr[-2000:]
        assert re.search(r"❌ \| `accuracy_drop <= [0-9.]+` \| `mobile.ort`", text), text
        assert "gate checks failed" in text
    else:
        assert gate.returncode == 0, gate.stderr[-2000:]
        assert "✅ all 3 gate checks passed" in text
    assert {"gate.json", "gate.md"} <= set(leftovers(work / "A"))
    assert not any(name.endswith(".tmp") for name in leftovers(work / "A"))
