"""The perturbation-condition conventions (cellmamba.conditions) and the import layering around them."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cellmamba
from cellmamba.conditions import CTRL, canonical_condition, condition_genes, gene_set, invalid_conditions
from cellmamba.errors import InputError

SRC = Path(cellmamba.__file__).parent


def test_condition_parsing():
    assert CTRL == "ctrl"
    assert condition_genes("ctrl") == ()
    assert condition_genes("ctrl+B") == condition_genes("B+ctrl") == ("B",)
    assert condition_genes("B+A") == ("A", "B")
    assert canonical_condition("ctrl") == "ctrl"
    assert canonical_condition("ctrl+B") == "B"
    assert canonical_condition("B+A") == canonical_condition("A+B") == "A+B"
    assert gene_set("B+A") == gene_set("A+B") == frozenset({"A", "B"})
    for bad in ("A", "A+A", "A+B+C", " A+B", "ctrl+ctrl", "+B", ""):
        with pytest.raises(InputError, match="expected 'ctrl'"):
            condition_genes(bad)
    assert invalid_conditions(["ctrl", "A+ctrl", "A", "B+A", "A", "ctrl+ctrl"]) == ["A", "ctrl+ctrl"]
    assert invalid_conditions(["ctrl", "ctrl+B"]) == []


def _imports(path: Path) -> set[str]:
    """cellmamba subpackages / top-level modules that ``path`` imports, at any level (function-level too)."""
    rel = path.relative_to(SRC).with_suffix("").parts
    package = list(rel[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                parts = base + (node.module.split(".") if node.module else [])
                if not node.module:   # from . import x
                    parts = base + [node.names[0].name]
            elif node.module and node.module.startswith("cellmamba."):
                parts = node.module.split(".")[1:]
            else:
                continue
            if parts:
                out.add(parts[0])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("cellmamba."))
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        top = path.relative_to(SRC).parts[0].removesuffix(".py")
        graph.setdefault(top, set()).update(_imports(path) - {top})
    return graph


def test_conditions_is_below_the_packages_that_use_it():
    graph = _graph()
    assert graph["conditions"] <= {"errors"}
    assert not graph["datasets"] & {"baselines", "metrics", "tasks", "plots"}


def test_no_import_cycle_between_baselines_and_datasets():
    graph = _graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    assert "datasets" in graph["baselines"]   # baselines read datasets ...
    assert not reaches("datasets", "baselines")   # ... and nothing under datasets/ leads back
