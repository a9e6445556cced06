"""Peak memory of `edgecli quantize` (static INT8 calibration) and `edgecli distill` against the size
of the dataset file, stored and compressed, measured in one run on one machine.

    .venv/bin/python benchmarks/data_memory.py [--samples 5000 50000 200000] [--storage stored compressed]
        [--verbs quantize distill] [--python PATH] [--code DIR]

The datasets are the sample train.npz (5000 Fashion-MNIST images) tiled to each number of samples,
written chunk by chunk (so this process stays small) both as `np.savez` (stored) and as
`np.savez_compressed` files. For each file, one fresh child process runs

    edgecli quantize sample_models/fashion/fashion_cnn.onnx -r int8-static --data DATA \
        --eval-data sample_models/fashion/eval.npz -o OUT.onnx -q
    edgecli distill sample_models/fashion/fashion_cnn.onnx -r kd --data DATA \
        --eval-data sample_models/fashion/eval.npz --set epochs=1 --set augment.views=1 -o OUT.pt2 -q

with its own empty EDGECLI_CACHE_DIR; each figure is that child's peak resident set (ru_maxrss from
os.wait4), so runs do not share memory. quantize calibrates on the first 512 samples (the recipe's
calibration.samples) and distill trains one epoch on all of them (10% held out), so a verb that
streams its data stays flat as the file grows. A failed run is a table row, not an error.

To measure another checkout (e.g. before a change), pass --code DIR: the child runs from DIR with
PYTHONPATH=DIR, so `import edgecli` (and its shipped recipes) come from there:

    git worktree add /tmp/before 3300f4e
    .venv/bin/python benchmarks/data_memory.py --code /tmp/before
    git worktree remove --force /tmp/before

Prints which code was measured (its git revision), then a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "fashion"
MIB = 1024.0 * 1024.0


def _write_member(archive: zipfile.ZipFile, name: str, source: np.ndarray, samples: int) -> None:
    """Write `source` tiled along axis 0 to `samples` rows as the .npy member `name`, one copy of
    `source` at a time: the same bytes as np.savez(..., name=np.resize(source, ...)) would write."""
    header = {
        "descr": np.lib.format.dtype_to_descr(source.dtype),
        "fortran_order": False,
        "shape": (samples, *source.shape[1:]),
    }
    source = np.ascontiguousarray(source)
    with archive.open(f"{name}.npy", "w", force_zip64=True) as stream:
        try:
            np.lib.format.write_array_header_1_0(stream, header)
        except ValueError:  # header too long for format 1.0 (never for these shapes)
            np.lib.format.write_array_header_2_0(stream, header)
        for start in range(0, samples, len(source)):
            stream.write(source[: samples - start].tobytes())


def build_dataset(path: Path, x: np.ndarray, y: np.ndarray, samples: int, storage: str) -> None:
    """An .npz of `samples` images and labels: train.npz repeated (np.tile order), uncompressed
    ('stored', as np.savez) or deflated ('compressed', as np.savez_compressed)."""
    compression = zipfile.ZIP_DEFLATED if storage == "compressed" else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=compression, allowZip64=True) as archive:
        _write_member(archive, "x", x, samples)
        _write_member(archive, "y", y, samples)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:160].replace("|", "\\|") if lines else "(no stderr)"


def measure(command: list[str], env: dict[str, str], cwd: Path, stderr_path: Path) -> tuple[int, float, float, str]:
    """Run `command` in a fresh child process: (exit code, peak RSS in MiB, wall seconds, last stderr line)."""
    with stderr_path.open("wb") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (
        proc.returncode,
        usage.ru_maxrss / 1024.0,
        seconds,
        last_line(stderr_path.read_text(errors="replace")),
    )  # Linux: KiB


def verb_command(python: str, verb: str, data: Path, out_dir: Path) -> list[str]:
    model, eval_data = SAMPLE / "fashion_cnn.onnx", SAMPLE / "eval.npz"
    if verb == "quantize":
        return [
            python,
            "-m",
            "edgecli",
            "quantize",
            str(model),
            "-r",
            "int8-static",
            "--data",
            str(data),
            "--eval-data",
            str(eval_data),
            "-o",
            str(out_dir / "out.onnx"),
            "-q",
        ]
    return [
        python,
        "-m",
        "edgecli",
        "distill",
        str(model),
        "-r",
        "kd",
        "--data",
        str(data),
        "--eval-data",
        str(eval_data),
        "--set",
        "epochs=1",
        "--set",
        "augment.views=1",
        "-o",
        str(out_dir / "out.pt2"),
        "-q",
    ]


def describe_code(python: str, env: dict[str, str], cwd: Path) -> str:
    """The git revision of the checkout the child imports edgecli from (and that file), for the header."""
    found = subprocess.run(
        [python, "-c", "import edgecli; print(edgecli.__file__)"], cwd=cwd, env=env, capture_output=True, text=True
    )
    if found.returncode != 0:
        return f"edgecli not importable with {python}: {last_line(found.stderr)}"
    package = Path(found.stdout.strip()).resolve().parent
    rev = subprocess.run(["git", "-C", str(package), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    dirty = subprocess.run(
        # configs/: where the shipped recipes were before they moved into the package (older checkouts)
        ["git", "-C", str(package.parent), "status", "--porcelain", "--", "edgecli", "configs"],
        capture_output=True,
        text=True,
    )
    revision = rev.stdout.strip()[:90] if rev.returncode == 0 else "no git revision"
    if rev.returncode == 0 and dirty.stdout.strip():
        changed = [line[3:] for line in dirty.stdout.splitlines()]
        revision += f" + uncommitted changes to {', '.join(changed[:6])}{' ...' if len(changed) > 6 else ''}"
    return f"edgecli from {package.parent} ({revision}), python {python}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[5000, 50000, 200000])
    parser.add_argument("--storage", nargs="+", default=["stored", "compressed"], choices=["stored", "compressed"])
    parser.add_argument("--verbs", nargs="+", default=["quantize", "distill"], choices=["quantize", "distill"])
    parser.add_argument("--python", default=sys.executable, help="interpreter of the child processes")
    parser.add_argument("--code", type=Path, help="checkout of edgecli to measure (child gets PYTHONPATH=DIR)")
    args = parser.parse_args()

    env, cwd = dict(os.environ), ROOT
    if args.code is not None:
        cwd = args.code.resolve()
        env["PYTHONPATH"] = str(cwd)
    print(f"code measured: {describe_code(args.python, env, cwd)}\n", flush=True)

    with np.load(SAMPLE / "train.npz") as train:
        x, y = train["x"], train["y"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgecli-data-memory-") as folder:
        folder = Path(folder)
        for samples in args.samples:
            for storage in args.storage:
                data = folder / f"train-{samples}-{storage}.npz"
                build_dataset(data, x, y, samples, storage)
                for verb in args.verbs:
                    run = folder / f"{verb}-{samples}-{storage}"
                    (run / "cache").mkdir(parents=True)
                    code, peak, seconds, error = measure(
                        verb_command(args.python, verb, data, run),
                        {**env, "EDGECLI_CACHE_DIR": str(run / "cache")},
                        cwd,
                        run / "stderr.txt",
                    )
                    rows.append((verb, storage, samples, samples * x[0].size * 4 / MIB, code, peak, seconds, error))
                    print(
                        f"  {verb} {storage} {samples}: exit {code}, {peak:.0f} MiB, {seconds:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                data.unlink()
    print("| verb | storage | samples | data (float32 MiB) | peak RSS MiB | seconds |")
    print("|---|---|---|---|---|---|")
    for verb, storage, samples, data_mib, code, peak, seconds, error in sorted(
        rows, key=lambda r: (args.verbs.index(r[0]), args.storage.index(r[1]), r[2])
    ):
        rss = f"{peak:.0f}" if code == 0 else f"failed: {error} (exit {code}, peak {peak:.0f})"
        print(f"| {verb} | {storage} | {samples} | {data_mib:.0f} | {rss} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
