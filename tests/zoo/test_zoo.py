"""Issue 19's bar on every zoo model and every verb that applies (see tests/zoo/verbs.py for the bar
and tests/zoo/build.py for the models). Measured with the zoo's own code (onnxruntime, LiteRT, Keras,
torch), not with edgecli's printout. Build the cache first: `make test-zoo` does both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.zoo import verbs
from tests.zoo.conftest import manifest_entries

pytestmark = pytest.mark.zoo

CASES = [(e, v) for e in manifest_entries() for v in e["verbs"]]


@pytest.mark.parametrize(("entry", "verb"), CASES, ids=[f"{e['name']}-{v}" for e, v in CASES])
def test_verb_meets_the_bar(zoo_cache: Path, entry: dict[str, Any], verb: str) -> None:
    result = verbs.run(zoo_cache, entry, verb)
    figures = {k: result[k] for k in ("quality", "size_ratio", "latency_ratio", "params_ratio") if k in result}
    assert result["verdict"] == "pass", (
        f"{result['why']}\n  command (in {zoo_cache}): {result['command']}\n  exit {result['exit']}: "
        f"{result['message']}\n  figures: {figures}"
    )


def test_manifest_has_the_zoo_issue_19_asks_for(zoo_cache: Path) -> None:
    """At least 10 models, and each kind of model the issue lists."""
    entries = manifest_entries()
    assert len(entries) >= 10
    formats = {e["format"] for e in entries}
    assert {"onnx", "tflite", "keras", "pt2", "hf"} <= formats
    kinds = {e["kind"] for e in entries}
    assert {"classifier", "many-class", "dense map", "embedding", "multi-output"} <= kinds
    for entry in entries:
        assert (zoo_cache / entry["file"]).exists(), entry["name"]
        assert (zoo_cache / entry["eval"]).exists() and (zoo_cache / entry["ref"]).exists(), entry["name"]
