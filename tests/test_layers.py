"""The package's layers import one way, core → data → models → engine → methods → world → study → cli, counting
every import (those inside functions too), and no modules import each other in a circle."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "udet_core"
LAYERS = ("core", "data", "models", "engine", "methods", "world", "study", "cli")


def modules(root: Path) -> dict[str, Path]:
    """Module name (`udet_core.data.images`; a package by its own name) -> file, for every file of the package."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = [root.name, *f.relative_to(root).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its file (module level, functions, branches)."""
    mods, graph = modules(root), {}
    for name, f in mods.items():
        package = name if f.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names}
        graph[name] = {t for t in targets if t in mods and t != name}
    return graph


def layer(module: str) -> int:
    """The layer index of a module (the package root and `__main__` count as core and cli)."""
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    if parts[1] == "__main__":
        return len(LAYERS) - 1
    return LAYERS.index(parts[1])


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a layer above its own (or from a folder that is no layer)."""
    bad = []
    for src, targets in graph.items():
        for t in sorted(targets):
            try:
                if layer(t) > layer(src):
                    bad.append(f"{src} ({LAYERS[layer(src)]}) imports {t} ({LAYERS[layer(t)]})")
            except ValueError as e:
                bad.append(f"{src} -> {t}: not in a layer ({e})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_import_goes_down_the_layers():
    graph = import_graph()
    assert {m.split(".")[1] for m in graph if "." in m} <= {*LAYERS, "__main__"}, "a folder outside the layers"
    assert layer_violations(graph) == []


def test_no_import_circles_counting_imports_inside_functions():
    assert cycles(import_graph()) == []


def test_data_imports_nothing_above_core():
    graph = import_graph()
    above = {t for m, ts in graph.items() if m.startswith("udet_core.data") for t in ts if layer(t) > 1}
    assert above == set()


def test_the_checks_catch_an_upward_import_inside_a_function(tmp_path):
    """The checks can fail: a copy of the package with one upward, function-level import added."""
    copy = tmp_path / "udet_core"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    images = copy / "data" / "images.py"
    images.write_text(images.read_text() + "\n\ndef _upward():\n    from udet_core.study.workbench import Workbench\n"
                      "    return Workbench\n")
    graph = import_graph(copy)
    assert layer_violations(graph) == ["udet_core.data.images (data) imports udet_core.study.workbench (study)"]
    assert any("udet_core.data.images" in c and "udet_core.study.workbench" in c for c in cycles(graph))
