"""The README's verb examples run as written and succeed, in order (later ones use earlier outputs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def readme_commands() -> list[str]:
    """Shell commands of the ```sh blocks in the README's 'The verbs' section, continuations joined,
    each prefixed with the variable assignments (S=...) the README makes before them."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The verbs", 1)[1].split("\n## ", 1)[0]
    commands, setup = [], []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  # ")[0].strip()
            if re.match(r"^[A-Z_]+=", line):
                setup.append(line)
            elif line.startswith("edgecli"):
                commands.append("; ".join([*setup, line]))
    return commands


def test_readme_has_an_example_for_every_verb():
    verbs = {command.split("; ")[-1].split()[1] for command in readme_commands()}
    assert {"prune", "distill", "quantize", "convert", "bench", "inspect"} <= verbs


def test_readme_examples_run(tmp_path: Path):
    (tmp_path / "sample_models").symlink_to(ROOT / "sample_models")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("EDGECLI_DEBUG", None)
    for command in readme_commands():
        if " distill " in f" {command} ":
            command += " --set epochs=1"  # the README trains 8 epochs; one is enough to prove it runs
        proc = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stderr}"
    for artifact in ("pruned.pt2", "student.pt2", "model.int8.onnx", "model.dyn.onnx", "pruned.onnx",
                     "model.tflite", "model.int8.tflite", "report.json", "pruned.int8.onnx"):
        assert (tmp_path / artifact).stat().st_size > 0, artifact
