"""The layering of DESIGN.md, read from the code's own imports (lazy ones inside functions too).

CLI (click only there) → verbs' flows → runtime_check / passes / distill, ship, exporter, models
internals → ground floor (gencompress/: errors, model I/O, inputs). Nothing imports upward: no
cycle between folders or between files, and ``passes/`` stays pure graph code.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the public API facade: it names every verb (by string, loaded on first use), above every layer
FACADE = "gencompress"
PURE_PASS_FORBIDDEN = ("onnxruntime", "torch", "click", "gencompress.runtime_check", "gencompress.verbs",
                       "gencompress.cli", "gencompress.distillation", "gencompress.edge", "gencompress.sweeps")


def package_folders() -> dict[str, Path]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {pkg: ROOT / folder for pkg, folder in config["package-dir"].items()}


def modules() -> dict[str, Path]:
    found = {}
    for pkg, folder in package_folders().items():
        for path in sorted(folder.glob("*.py")):
            found[pkg if path.name == "__init__.py" else f"{pkg}.{path.stem}"] = path
    return found


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """Every module this file imports (at any depth of the code), as dotted names, plus the string
    arguments of ``importlib.import_module`` (a registry loading modules by name imports them too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & set(known)
            names.update(submodules)
            if len(submodules) < len(node.names):  # names defined in the module itself (not only its submodules)
                names.add(node.module)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return names


def folder_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and module in package_folders()) else "gencompress"


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {}
    for module, path in known.items():
        if module == FACADE:
            continue
        targets = set()
        for name in imports_of(path, known):
            # importing a.b.c runs a/__init__ and a/b/__init__ too, but those are not this file's choice:
            # count the module named, or the nearest package of it that is ours
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and name != FACADE:
                targets.add(name)
        edges[module] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_cycle_between_files():
    assert cycles(graph()) == []


def test_no_cycle_between_folders():
    folders: dict[str, set[str]] = {}
    for module, targets in graph().items():
        here = folder_of(module)
        folders.setdefault(here, set()).update(folder_of(t) for t in targets if folder_of(t) != here)
    assert cycles(folders) == []


def test_passes_are_pure_graph_code():
    known = modules()
    offenders = {}
    for module, path in known.items():
        if folder_of(module) != "passes":
            continue
        bad = sorted(n for n in imports_of(path, known) if n.startswith(PURE_PASS_FORBIDDEN) and
                     any(n == p or n.startswith(p + ".") for p in PURE_PASS_FORBIDDEN))
        if bad:
            offenders[module] = bad
    assert offenders == {}


def test_click_only_in_the_cli():
    known = modules()
    users = sorted(m for m, p in known.items() if folder_of(m) != "cli" and
                   any(n == "click" or n.startswith("click.") for n in imports_of(p, known)))
    assert users == []


def test_the_test_sees_the_code():
    """The checks above read real imports: the CLI imports the verbs, the verbs the passes."""
    edges = graph()
    assert any(t.startswith("gencompress.verbs.") for t in edges["gencompress.cli.quantize"])
    assert any(t.startswith("gencompress.passes.") for t in edges["gencompress.verbs.quantize"])
    assert "gencompress.errors" in edges["gencompress.passes.registry"]


@pytest.mark.parametrize("toy, expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_cycle_finder(toy, expected):
    assert cycles(toy) == expected
