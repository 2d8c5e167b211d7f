"""The documented Python API keeps its import paths whatever the package layout (README, "Judge your
own checkpoint" and "Compare with the baselines")."""

from __future__ import annotations


def test_the_documented_imports_are_the_implementations():
    from benchmark.board import table
    from benchmark.board.dataframe import table as dataframe_table
    from benchmark.defense import Defense, load
    from benchmark.evaluate import evaluate
    from benchmark.evaluation.loop import evaluate as loop_evaluate
    from benchmark.models.defense import Defense as ModelsDefense
    from benchmark.models.defense import load as models_load

    assert (Defense, load, evaluate, table) == (ModelsDefense, models_load, loop_evaluate, dataframe_table)


def test_the_readme_quotes_the_documented_imports():
    from benchmark import paths

    readme = (paths.REPOSITORY / "README.md").read_text()
    for line in ("from benchmark.defense import Defense, load", "from benchmark.evaluate import evaluate",
                 "from benchmark.board import table"):
        assert line in readme
