"""The zoo tier: third-party pretrained models, run by `make test-zoo` (marker `zoo`).

Its tests run only when asked for (`-m zoo`, or EDGECLI_ZOO=1): `make test` and `make test-slow`
collect tests/ too, and the zoo needs the zoo extra installed and its cache built
(`python -m tests.zoo.build`). EDGECLI_ZOO_CACHE names the cache (default .zoo-cache/).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

ZOO_DIR = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "zoo: the third-party model zoo tier, run by `make test-zoo` (tests/zoo)")


def _asked(config: pytest.Config) -> bool:
    return "zoo" in (config.getoption("markexpr", "") or "") or os.environ.get("EDGECLI_ZOO") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _asked(config):
        return
    zoo = [i for i in items if ZOO_DIR in Path(str(i.fspath)).parents]
    if zoo:
        config.hook.pytest_deselected(items=zoo)
        items[:] = [i for i in items if i not in zoo]


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECLI_ZOO_CACHE", ".zoo-cache")).resolve()


@pytest.fixture(scope="session")
def zoo_cache() -> Path:
    cache = cache_dir()
    if not (cache / "manifest.json").exists():
        pytest.fail(f"no zoo cache at {cache}: build it with `python -m tests.zoo.build --cache {cache}`")
    return cache


def manifest_entries() -> list[dict[str, Any]]:
    """The manifest's models (empty when the cache is not built: the tests then fail in zoo_cache)."""
    import json

    path = cache_dir() / "manifest.json"
    return json.loads(path.read_text())["models"] if path.exists() else []
