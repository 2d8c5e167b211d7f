"""The judge never imports a contestant's code: `benchmark/` reaches `baselines/` (our own defenses,
judged like any submission) only from the command-line front-end, which trains and exports them.
Everything else reads the zoo as data (its TOML and sha256-pinned safetensors), as it reads a
submission."""

from __future__ import annotations

import ast
import subprocess
import sys

from benchmark import paths

FRONT_END = "cli"


def _imported_modules(source: str) -> set[str]:
    """Top-level names of every module imported anywhere in `source`, lazily imported ones too."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(str(node.args[0].value).split(".")[0])
    return names


def test_the_judge_never_imports_baselines():
    judge = [path for path in paths.PACKAGE_DIR.rglob("*.py")
             if path.relative_to(paths.PACKAGE_DIR).parts[0] != FRONT_END]
    offenders = [str(path.relative_to(paths.REPOSITORY)) for path in judge
                 if "baselines" in _imported_modules(path.read_text())]
    assert offenders == [], f"the judge imports the baselines' code: {offenders}"


def test_the_import_finder_sees_lazy_and_dynamic_imports():
    source = "def f():\n    import baselines.zoo\nimportlib.import_module('baselines.train')\nfrom os import path\n"
    assert _imported_modules(source) == {"baselines", "os"}


def test_importing_every_judge_module_leaves_baselines_unloaded():
    script = (
        "import importlib, pkgutil, sys, benchmark\n"
        "for m in pkgutil.walk_packages(benchmark.__path__, 'benchmark.'):\n"
        f"    if m.name.split('.')[1] not in ('{FRONT_END}', '__main__') and not m.name.endswith('test_regression'):\n"
        "        importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'baselines'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=paths.REPOSITORY)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
