"""Validation of a result record when it is loaded: every field the pages and regressions read.

A record that is of another schema or spec version, lacks a field, has a string where a number
belongs, or whose per-example file disagrees with its numbers raises `RecordError` naming the file
and the dotted field, so a hand-edited or truncated record can never reach a page.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.evaluation.record_verify import (
    check_against_spec,
    check_derived_numbers,
    check_known_keys,
)
from benchmark.evaluation.results import (
    RESULT_SCHEMA,
    RecordError,
    examples_path,
    read_json,
    read_outcomes,
)
from benchmark.spec import FAMILIES, load_spec

BUDGETS = ("quick", "standard", "full")


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, problem: str) -> RecordError:
        return RecordError(f"{self.path}: field '{field}': {problem}")

    def get(self, table: Any, key: str, where: str) -> Any:
        field = f"{where}.{key}" if where else key
        if not isinstance(table, dict):
            raise self.fail(where, f"expected an object, got {type(table).__name__}")
        if key not in table:
            raise self.fail(field, "missing")
        return table[key]

    def number(self, table: Any, key: str, where: str, *, low: float | None = None,
               high: float | None = None) -> float:
        field = f"{where}.{key}" if where else key
        value = self.get(table, key, where)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(field, f"expected a number, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.fail(field, f"{value!r} is outside [{low}, {high}]")
        return float(value)

    def integer(self, table: Any, key: str, where: str, *, low: int = 0) -> int:
        field = f"{where}.{key}" if where else key
        value = self.get(table, key, where)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self.fail(field, f"expected an integer >= {low}, got {value!r}")
        return value

    def text(self, table: Any, key: str, where: str, choices: tuple[str, ...] | None = None) -> str:
        field = f"{where}.{key}" if where else key
        value = self.get(table, key, where)
        if not isinstance(value, str):
            raise self.fail(field, f"expected a string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(field, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def accuracy(self, table: Any, where: str) -> None:
        """accuracy, correct, n and a 95% interval that contains the accuracy; an estimate (the
        two-phase ranking key) has no count of its own; NAttack with no survivor to attack has none."""
        if table.get("accuracy", 0) is None and table.get("cascade", {}).get("attacked") == 0:
            return
        accuracy = self.number(table, "accuracy", where, low=0.0, high=1.0)
        n = self.integer(table, "n", where, low=1)
        if table.get("method") != "two-phase":
            correct = self.integer(table, "correct", where)
            if correct > n:
                raise self.fail(f"{where}.correct", f"{correct} correct out of n = {n}")
        interval = self.get(table, "interval", where)
        if (not isinstance(interval, list) or len(interval) != 2
                or any(isinstance(v, bool) or not isinstance(v, int | float) for v in interval)):
            raise self.fail(f"{where}.interval", f"expected [low, high] numbers, got {interval!r}")
        if not interval[0] - 1e-9 <= accuracy <= interval[1] + 1e-9 and "repeats" not in table:
            raise self.fail(f"{where}.interval", f"{interval} does not contain the accuracy {accuracy}")


def check_record(record: Any, path: str | os.PathLike, *, spec_version: str | None = None,
                 check_examples: bool = True) -> dict[str, Any]:
    """Raise RecordError unless `record` is a complete, consistent threatbench.result/1 record."""
    checker = _Checker(Path(path))
    if not isinstance(record, dict):
        raise checker.fail("", f"expected a JSON object, got {type(record).__name__}")
    schema = checker.text(record, "schema", "")
    if schema != RESULT_SCHEMA:
        raise checker.fail("schema", f"{schema!r}, expected {RESULT_SCHEMA!r}")
    checker.text(checker.get(record, "entry", ""), "name", "entry")
    checker.text(record, "dataset", "")
    version = checker.text(checker.get(record, "spec", ""), "version", "spec")
    if spec_version is not None and version != spec_version:
        raise checker.fail("spec.version", f"{version!r}, but this threatbench judges with spec "
                           f"{spec_version!r}; re-evaluate the entry under the current spec")
    checker.text(record["spec"], "sha256", "spec")
    checker.number(checker.get(record, "threat_model", ""), "eps", "threat_model", low=0.0, high=1.0)
    checker.text(record, "budget", "", BUDGETS)
    n = checker.integer(record, "n", "", low=1)
    checker.integer(record, "nattack_n", "")
    checker.text(record, "subset_sha256", "")
    checker.integer(record, "seed", "")
    checker.accuracy(checker.get(record, "clean", ""), "clean")
    attacks = checker.get(record, "attacks", "")
    if not isinstance(attacks, dict):
        raise checker.fail("attacks", "expected an object of measurements")
    for name, attack in attacks.items():
        checker.accuracy(attack, f"attacks.{name}")
    families = checker.get(record, "families", "")
    for family in FAMILIES:
        checker.text(checker.get(families, family, "families"), "status", f"families.{family}")
    worst = checker.get(record, "worst_case", "")
    for family in (*FAMILIES, "all"):
        if checker.get(worst, family, "worst_case") is not None:
            checker.accuracy(worst[family], f"worst_case.{family}")
    checker.get(record, "flags", "")
    checker.get(record, "provenance", "")
    if record["clean"]["n"] != n:
        raise checker.fail("clean.n", f"{record['clean']['n']} differs from the record's n = {n}")
    check_known_keys(record, Path(path))
    spec = check_against_spec(record, Path(path))
    if check_examples:
        _check_examples_agree(record, Path(path), checker)
        current = spec.version == load_spec().version
        check_derived_numbers(record, read_outcomes(Path(path)), spec, Path(path), flags=current)
    return record


def _check_examples_agree(record: dict[str, Any], path: Path, checker: _Checker) -> None:
    """Every measurement's correct count equals what its per-example bits say."""
    if not examples_path(path).is_file():
        raise checker.fail("examples_file", f"{examples_path(path).name} is missing beside the record")
    outcomes = read_outcomes(path)
    measured = {"clean": record["clean"], **record["attacks"]}
    for name, summary in measured.items():
        if name not in outcomes:
            raise checker.fail(f"attacks.{name}", f"no per-example outcomes in {examples_path(path).name}")
        correct = outcomes[name].correct
        if outcomes[name].attacked is not None:   # NAttack under the cascade: what it attacked
            correct = correct[:, outcomes[name].attacked]
        if correct.shape[1] != summary["n"]:
            raise checker.fail(f"attacks.{name}.n", f"{summary['n']}, but the examples file holds "
                               f"{correct.shape[1]} examples")
        expected = int(round(float(np.asarray(correct.sum(axis=1), dtype=float).mean())))
        if expected != summary["correct"]:
            field = "clean.correct" if name == "clean" else f"attacks.{name}.correct"
            raise checker.fail(field, f"{summary['correct']}, but the per-example outcomes count "
                               f"{expected} correct")


def load_record(path: str | os.PathLike, *, spec_version: str | None = None,
                check_examples: bool = True) -> dict[str, Any]:
    """Read and validate a record (and, by default, its per-example file)."""
    return check_record(read_json(path), path, spec_version=spec_version, check_examples=check_examples)
