"""The package's shape, checked: layered imports without a cycle, modules and functions small enough
to read, and nothing that points readers outside the repository (docs/architecture.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from benchmark import paths

PACKAGE = paths.PACKAGE_DIR
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# The layers, bottom first: a subpackage imports only from its own layer or the ones below it.
LAYERS = (
    {"errors", "paths", "untrusted", "version", "spec"},
    {"runtime"},
    {"data"},
    {"models"},
    {"attacks"},
    {"evaluation"},
    {"board", "intake", "tools"},
    {"cli", "defense", "evaluate", "__main__"},
)


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every benchmark module `path` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in MODULES}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else module
    return next(i for i, layer in enumerate(LAYERS) if top in layer or module == "benchmark")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*trail[trail.index(target):], target] if target in trail else [node, target]
            if target not in state and (found := visit(target, [*trail, target])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_module_imports_itself_back():
    graph = {name: _imports(path) - {name} for name, path in MODULES.items()}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_subpackages_import_only_their_layer_or_below():
    upward = [f"{name} imports {target}" for name, path in MODULES.items() if name != "benchmark"
              for target in _imports(path) if target != "benchmark" and _layer(target) > _layer(name)]
    assert not upward, "imports against the layering of docs/architecture.md:\n" + "\n".join(upward)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_readable(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines; split it by concern"


def _long_functions(path: Path) -> list[str]:
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            reason = "long because" in (ast.get_docstring(node) or "")
            if length > MAX_FUNCTION_LINES and not reason:
                long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({length} lines)")
    return long


def test_functions_stay_short_or_say_why():
    sources = [*PACKAGE.rglob("*.py"), *(paths.REPOSITORY / "baselines").glob("*.py")]
    long = [entry for path in sources for entry in _long_functions(path)]
    assert not long, "functions over 60 lines without 'long because' in the docstring:\n" + "\n".join(long)


def test_every_subpackage_says_what_it_holds():
    for init in PACKAGE.glob("*/__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"


def test_code_cites_only_the_repository_and_papers():
    outside = re.compile(r"shared/|DESIGN\.md")
    sources = [*PACKAGE.rglob("*.py"), *(paths.REPOSITORY / "baselines").rglob("*.py")]
    hits = [f"{p}: {line.strip()}" for p in sources for line in p.read_text().splitlines() if outside.search(line)]
    assert not hits, "comments must cite docs/ or papers, never files outside the repository:\n" + "\n".join(hits)
