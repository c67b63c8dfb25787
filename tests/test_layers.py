"""The import layers of the package: no cycles (counting imports inside functions), the spec layer
without torch, NNI only in its wing, the engine below everything that uses it."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dmtg_nas"
HEAVY = {"torch", "torchvision", "torchmetrics", "pytorch_lightning", "lightning", "lightning_fabric", "nni", "timm"}
# the spec layer: loading and validating a spec
SPEC_LAYER = "dmtg_nas.config"
WING = "dmtg_nas.nni"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@cache
def _imports(name: str) -> frozenset[str]:
    """Every module ``name`` imports at run time, at module level or inside functions (not under
    ``if TYPE_CHECKING:``), as absolute names; ``from x import y`` counts ``x.y`` when it is a module
    (and ``x`` when some name is not one)."""
    path = _modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    module = ".".join([*base, child.module] if child.module else base)
                else:
                    module = child.module or ""
                submodules = {f"{module}.{alias.name}" for alias in child.names} & set(_modules())
                found.update(submodules)
                if len(submodules) < len(child.names):  # names of the module itself, not only submodules
                    found.add(module)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return frozenset(found)


@cache
def _graph() -> dict[str, set[str]]:
    return {name: {m for m in _imports(name) if m in _modules() and m != name} for name in _modules()}


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def _reachable(start: str) -> set[str]:
    graph, seen, todo = _graph(), {start}, [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_spec_layer_imports_no_torch() -> None:
    layer = _reachable(SPEC_LAYER)
    assert {"dmtg_nas.catalog", "dmtg_nas.schema"} <= layer
    heavy = {f"{m} imports {i}" for m in layer for i in _imports(m) if i.split(".")[0] in HEAVY}
    assert not heavy, sorted(heavy)


def test_nni_is_imported_only_in_its_wing() -> None:
    outside = {
        f"{m} imports {i}"
        for m in _modules()
        if m != WING and not m.startswith(WING + ".")
        for i in _imports(m)
        if i.split(".")[0] == "nni"
    }
    assert not outside, sorted(outside)
    assert any(i.split(".")[0] == "nni" for i in _imports("dmtg_nas.nni.router"))  # the test sees real imports


@pytest.mark.parametrize("layer", ["dmtg_nas.engine", "dmtg_nas.catalog"])
def test_lower_layers_do_not_reach_up(layer: str) -> None:
    above = ("dmtg_nas.pipeline", "dmtg_nas.nni", "dmtg_nas.baselines", "dmtg_nas.localsearch", "dmtg_nas.warmstart")
    above += ("dmtg_nas.runner", "dmtg_nas.tuning", "dmtg_nas.suite", "dmtg_nas.benchmark", "dmtg_nas.cli")
    for name in [m for m in _modules() if m == layer or m.startswith(layer + ".")]:
        reached = sorted(m for m in _reachable(name) if m.startswith(above))
        assert not reached, f"{name} reaches {reached}"
