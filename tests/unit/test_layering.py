"""The package's layering: no import cycle between cellmamba's sub-packages and top-level modules,
counting imports inside functions too (a function-level import hides a cycle from Python, not
from a reader). Checked by reading the source, so a new cycle fails here before anything runs."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "cellmamba"


def _unit(module: str) -> str:
    """cellmamba.tasks.run -> cellmamba.tasks (a sub-package); cellmamba.io -> cellmamba.io."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _modules() -> dict[str, Path]:
    mods = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _imports(module: str, path: Path, mods) -> set[str]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base
                if target in mods:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in mods}
    return found


def _unit_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in mods.items():
        for target in _imports(module, path, mods):
            a, b = _unit(module), _unit(target)
            if a != b:
                graph.setdefault(a, set()).add(b)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_on_a_hand_made_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["e", "f"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_function_level_and_relative_imports():
    graph = _unit_graph()
    # run.py imports the checkpoint helpers inside a function, two levels up
    assert "cellmamba.models" in graph["cellmamba.tasks"]
    assert "cellmamba.keys" in graph["cellmamba.datasets"]


def test_no_import_cycle_between_subpackages():
    cycles = _cycles(_unit_graph())
    assert not cycles, f"import cycles between cellmamba's parts (function-level imports included): {cycles}"
