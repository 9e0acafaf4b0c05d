"""The import graph of docs/architecture.md: every import points down a layer, and none loops.

Imports inside functions and under ``TYPE_CHECKING`` count too: a lazy import is still a
dependency, only a cheaper one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "stabsweep"

# Lowest first. A module may import its own package and any package of a lower layer.
LAYERS = [
    {"errors", "records", "version", "numbers"},  # the records every layer shares; they import nothing of the package
    {"optim", "workloads"},  # registries of optimizers and schedules; the workload API and built-ins
    {"config"},  # the schema checks names against those registries
    {"analysis"},  # the rules and the findings: functions of records and config
    {"training"},  # the two loops, which call the rules' predicates
    {"engine", "results"},  # which trials run where; the run folder
    {"report"},  # console, progress and plots
    {"procedures"},  # plan, run, store, analyse, report
    {"api"},  # one call per command, and the result objects: the one code path
    {"cli"},  # the thin shell over the API
    {"__init__", "__main__"},  # the public API and `python -m stabsweep`
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(path: Path) -> set[str]:
    """Every ``stabsweep.*`` module the file imports, wherever in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("stabsweep"):
                out.add(node.module)
                out.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.startswith("stabsweep"))
    return out


def package_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


GRAPH = {name: {m for m in imports_of(path) if m in modules()} - {name} for name, path in modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_every_import_points_down_a_layer(module):
    here = package_of(module) if module != "stabsweep.__main__" else "__main__"
    assert here in LAYER, f"{module}: package '{here}' has no layer in docs/architecture.md"
    upward = [m for m in GRAPH[module] if LAYER[package_of(m)] > LAYER[here]]
    assert not upward, f"{module} imports up a layer: {upward}"


def test_records_import_nothing_of_the_package():
    assert GRAPH["stabsweep.records"] == set()
    assert GRAPH["stabsweep.errors"] == set()


def test_no_import_cycle_between_modules():
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            cycle = [*trail[trail.index(module) :], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in GRAPH.get(module, ()):
            if target != module and not module.startswith(target + "."):  # a package's own __init__
                visit(target, [*trail, module])
        done.add(module)

    for module in GRAPH:
        visit(module, [])


def test_statuses_are_written_only_in_the_enum():
    """A status is TrialStatus everywhere: no module but records.py spells one as a string."""
    statuses = {"ok", "unstable", "diverged", "learned_nothing", "failed"}
    for name, path in modules().items():
        if name == "stabsweep.records":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in statuses, (
                    f"{path.relative_to(ROOT)}:{node.lineno}: status literal {node.value!r}"
                )
