"""The package's layering, read from the source with ast: every import between edgecli modules, at
module level and inside functions (and under TYPE_CHECKING), absolute and relative.

    cli, pipeline          the commands and chains (may use everything below)
    stages/<verb>/         one subpackage per verb; stages/artifact.py is shared by all of them
    backends, runtimes, formats, analysis, data, training, models
    core                   errors, console, json, security, resources: imports nothing else of edgecli

Rules: no import cycle among edgecli modules; core imports only core; the layers below the stages
never import edgecli.stages, edgecli.cli or edgecli.pipeline; stages never import edgecli.cli or
edgecli.pipeline; a stage subpackage uses another only through an exception listed in
CROSS_STAGE (prefer moving shared code below the stages).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgecli"

BELOW_STAGES = ("formats", "runtimes", "backends", "analysis", "data", "training", "models")
ABOVE_STAGES = ("edgecli.stages", "edgecli.cli", "edgecli.pipeline")
SHARED_STAGE_CODE = ("artifact",)  # edgecli.stages.artifact: what every stage returns

# (importer, imported): why one stage subpackage uses another's module.
CROSS_STAGE = {
    ("edgecli.stages.convert.tflite", "edgecli.stages.quantize.tflite"): (
        "convert's INT8 TFLite precisions (dynamic, int8) and tflite-micro are quantize's TFLite quantizer "
        "(one calibration, no accuracy guard: convert's parity check judges the result)"
    ),
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every dotted name an import in `source` (the text of `module`) names: `import a.b` gives a.b,
    `from a import b` gives a.b (module b of package a, or name b of module a), relative imports
    resolved against `module`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)  # the module a.b, else a (see _resolve)
    return names


def _resolve(name: str, modules: set[str]) -> str | None:
    """The edgecli module a dotted name refers to: the longest module prefix of it."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the edgecli modules it imports}."""
    paths = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        found = imported_names(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
        resolved = {_resolve(name, modules) for name in found if name.split(".")[0] == root.name}
        graph[module] = {target for target in resolved if target and target != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _stage(module: str) -> str | None:
    """The verb subpackage a module belongs to (edgecli.stages.<verb>...), None elsewhere and for the
    code all stages share (edgecli.stages, edgecli.stages.artifact)."""
    parts = module.split(".")
    return parts[2] if len(parts) >= 3 and parts[1] == "stages" and parts[2] not in SHARED_STAGE_CODE else None


def _edges(
    graph: dict[str, set[str]], source: str, targets: tuple[str, ...], allowed: tuple[str, ...] = ()
) -> list[str]:
    """ "a -> b" for every import of a module in `source` of one in `targets` (but not in `allowed`)."""
    return sorted(
        f"{a} -> {b}"
        for a, imported in graph.items()
        if _within(a, source)
        for b in imported
        if any(_within(b, t) for t in targets) and not any(_within(b, t) for t in allowed)
    )


def test_the_reader_sees_function_level_relative_and_type_checking_imports(tmp_path):
    package = tmp_path / "edgecli"
    (package / "stages" / "convert").mkdir(parents=True)
    for init in (package, package / "stages", package / "stages" / "convert"):
        (init / "__init__.py").write_text("")
    (package / "core.py").write_text("")
    (package / "stages" / "artifact.py").write_text("")
    (package / "stages" / "convert" / "stage.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from edgecli import core\n"
        "def run():\n    from ..artifact import Artifact\n    from . import micro\n"
    )
    (package / "stages" / "convert" / "micro.py").write_text("import edgecli.stages.convert.stage as s\n")
    found = import_graph(package)
    assert found["edgecli.stages.convert.stage"] == {
        "edgecli.core",
        "edgecli.stages.artifact",
        "edgecli.stages.convert.micro",
    }
    assert cycles(found) == [["edgecli.stages.convert.micro", "edgecli.stages.convert.stage"]]


def test_the_graph_covers_the_package(graph):
    assert {"edgecli.core.errors", "edgecli.stages.convert.stage", "edgecli.backends.micro"} <= set(graph)
    assert "edgecli.backends.micro" in graph["edgecli.runtimes.micro_runner"]  # a function-level import is seen


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_core_imports_nothing_else_of_edgecli(graph):
    assert _edges(graph, "edgecli.core", ("edgecli",), allowed=("edgecli.core",)) == []


@pytest.mark.parametrize("layer", BELOW_STAGES)
def test_layers_below_the_stages_never_import_stages_cli_or_pipeline(graph, layer):
    assert _edges(graph, f"edgecli.{layer}", ABOVE_STAGES) == []


def test_stages_never_import_cli_or_pipeline(graph):
    assert _edges(graph, "edgecli.stages", ("edgecli.cli", "edgecli.pipeline")) == []


def test_one_stage_uses_another_only_through_a_listed_exception(graph):
    crossing = {
        (a, b) for a, imported in graph.items() for b in imported if _stage(a) and _stage(b) and _stage(a) != _stage(b)
    }
    assert sorted(crossing - set(CROSS_STAGE)) == []
    assert sorted(set(CROSS_STAGE) - crossing) == []  # an exception no longer needed is removed from the list
