"""How fast `edgecli --help` answers, and proof that no heavy framework is imported for it.

    .venv/bin/python benchmarks/cli_startup.py [--runs 10]

Prints the median wall time of `edgecli --help` (a fresh process each run) next to the import
time of each heavy framework measured the same way, so the ratio is taken on one machine in one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "tensorflow", "onnxruntime", "onnx", "onnx2tf")


def wall_ms(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    python = sys.executable
    probe = f"import sys, edgecli.cli.app; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True).stdout.strip()
    results = {
        "edgecli_help_ms": wall_ms([python, "-m", "edgecli", "--help"], args.runs),
        "python_bare_ms": wall_ms([python, "-c", "pass"], args.runs),
        "heavy_modules_loaded_by_cli": loaded.split(",") if loaded else [],
    }
    for module in ("torch", "tensorflow", "onnxruntime"):
        try:
            results[f"import_{module}_ms"] = wall_ms([python, "-c", f"import {module}"], max(3, args.runs // 3))
        except subprocess.CalledProcessError:
            results[f"import_{module}_ms"] = None
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
