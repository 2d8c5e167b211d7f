"""Records are evidence, not claims: every number a record states is recomputed on load.

`benchmark.evaluation.record_check` checks that a record is well formed; this module checks that it is true to
its own evidence and to the spec it names:

- every count, accuracy, interval, spread and query summary, each family's worst case, the ranking
  key (with its two-phase estimate), the cascade and the flags are recomputed from the per-example
  file with the same functions the judge used to write them, and must match;
- budget, n, the NAttack subsample (its size and, under a uniform subsample, which examples), the
  attack list, NAttack's iteration cap, eps and (at a ranked budget) the seed must be those of the
  spec version the record names, whose sha256 must be that of the spec file;
- keys the record format does not define are refused (docs/record-format.md).

What the per-example bits themselves say is checked against the model by the regression replay
(`benchmark.tools.regression`) and by `threatbench leaderboard --check` (the clean bits re-predicted).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.evaluation.cascade import adaptive_subsample
from benchmark.evaluation.plan import white_box_attacks
from benchmark.evaluation.record_numbers import (
    measurement_numbers,
    nattack_cascade,
    record_cascade,
    summarize,
    worst_cases,
)
from benchmark.evaluation.results import Outcomes, RecordError
from benchmark.spec import FAMILIES, Spec, spec_for_record

RECORD_KEYS = {"schema", "entry", "dataset", "spec", "threat_model", "budget", "n", "nattack_n",
               "subset_sha256", "seed", "randomness", "clean", "attacks", "families", "worst_case",
               "diagnostics", "examples_file", "provenance", "cascade", "costs", "flags", "held_out"}
ENTRY_KEYS = {"name", "kind", "architecture", "weights", "paper", "recipe", "smoothing",
              "normalization", "submission", "randomized"}
CLEAN_KEYS = {"accuracy", "correct", "n", "interval", "repeats", "spread", "seconds", "forward_passes",
              "backward_passes"}
MEASUREMENT_KEYS = CLEAN_KEYS | {"family", "params", "queries", "gradient", "cascade"}
FAMILY_KEYS = {"status", "measurements", "sources", "reason", "excluded_sources"}
NUMBER_KEYS = ("accuracy", "correct", "n", "interval", "repeats", "spread", "queries")
TEXT_KEYS = {"definition"}   # written by the judge's code; its wording may change between releases


def fail(path: Path, field: str, problem: str) -> RecordError:
    return RecordError(f"{path}: field '{field}': {problem}")


def check_known_keys(record: dict[str, Any], path: Path) -> None:
    """Refuse any key the record format does not define (a key nobody reads can still mislead)."""
    _only(record, RECORD_KEYS, "", path)
    _only(record["entry"], ENTRY_KEYS, "entry", path)
    _only(record["clean"], CLEAN_KEYS, "clean", path)
    for group in ("attacks", "diagnostics"):
        for name, measurement in record.get(group, {}).items():
            _only(measurement, MEASUREMENT_KEYS, f"{group}.{name}", path)
    for family, status in record["families"].items():
        if family not in FAMILIES:
            raise fail(path, f"families.{family}", f"unknown family; the families are {', '.join(FAMILIES)}")
        _only(status, FAMILY_KEYS, f"families.{family}", path)


def _only(table: Any, allowed: set[str], where: str, path: Path) -> None:
    if not isinstance(table, dict):
        raise fail(path, where, f"expected an object, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        field = f"{where}.{unknown[0]}" if where else unknown[0]
        raise fail(path, field, "not a field of the record format (docs/record-format.md); remove it")


# ---------------------------------------------------------------- against the spec


def check_against_spec(record: dict[str, Any], path: Path) -> Spec:
    """The budget, sizes, attacks and seed are those of the spec version the record names."""
    try:
        spec = spec_for_record(record["spec"]["version"], record["spec"]["sha256"])
    except ValueError as error:
        raise fail(path, "spec", str(error)) from None
    dataset = spec.datasets.get(record["dataset"])
    if dataset is None:
        raise fail(path, "dataset", f"{record['dataset']!r} is not a dataset of spec {spec.version}")
    if record["budget"] not in dataset.budgets:
        raise fail(path, "budget", f"{record['budget']!r} is not a budget of {record['dataset']} in spec "
                   f"{spec.version} ({', '.join(dataset.budgets)})")
    budget = dataset.budget(record["budget"]).for_entry(smoothed=bool(record["entry"].get("smoothing")))
    _expect(path, "n", record["n"], budget.n, f"the {budget.name} budget's n")
    _expect(path, "nattack_n", record["nattack_n"], budget.nattack_n, f"the {budget.name} budget's nattack_n")
    _expect(path, "threat_model.eps", record["threat_model"]["eps"], dataset.eps, "the spec's eps")
    if budget.ranked:
        _expect(path, "seed", record["seed"], spec.seed, "the spec's seed (a ranked budget fixes it)")
    randomized = record["randomness"]["attacked_as_randomized"]
    if record["families"]["white_box"]["status"] == "run":
        names = [n for n, m in record["attacks"].items() if m.get("family") == "white_box"]
        _expect(path, "families.white_box.measurements", names, white_box_attacks(dataset, randomized),
                "the spec's white-box attacks")
    nattack = record["attacks"].get("nattack")
    if nattack is not None:
        cap = budget.nattack_max_iterations or dataset.nattack.max_iterations
        _expect(path, "attacks.nattack.params.max_iterations", nattack["params"].get("max_iterations"), cap,
                "the budget's NAttack iteration cap")
        if spec.adaptive.subsample == "uniform":
            _expect(path, "attacks.nattack.params.subsample_size", nattack["params"].get("subsample_size"),
                    budget.nattack_n, "the budget's nattack_n")
    return spec


def _expect(path: Path, field: str, found: Any, expected: Any, what: str) -> None:
    if found != expected:
        raise fail(path, field, f"{found!r}, but {what} is {expected!r}")


# ---------------------------------------------------------------- against the per-example file


def derived_numbers(record: dict[str, Any], outcomes: dict[str, Outcomes], confidence: float) -> dict[str, Any]:
    """What a record's per-example outcomes determine, by the judge's own functions: `clean`,
    `attacks` and `diagnostics` (name -> numbers), `by_family`, `staged` (the measurement run on a
    subsample, or None), `worst_case`, and `cascade` with NAttack's line of it (None without a
    subsample). Flags are derived from the record with these numbers in it
    (benchmark.evaluation.diagnostics.gradient_masking_flags)."""
    derived: dict[str, Any] = {"clean": summarize(outcomes["clean"].correct, confidence), "by_family": {}}
    for group in ("attacks", "diagnostics"):
        derived[group] = {name: measurement_numbers(outcomes[name], confidence) for name in record[group]}
    for name, measurement in record["attacks"].items():
        derived["by_family"].setdefault(measurement["family"], []).append(name)
    staged = next((name for name, o in outcomes.items() if o.subsample is not None), None)
    cascaded = staged is not None and bool(record["attacks"][staged]["params"].get("cascade"))
    complete = all(record["families"][f]["status"] == "run" for f in FAMILIES)
    derived["staged"] = staged
    derived["worst_case"] = worst_cases(outcomes, derived["by_family"], staged, cascaded, record["nattack_n"],
                                        confidence, complete=complete)
    derived["cascade"] = None if staged is None else record_cascade(outcomes, derived["by_family"], staged)
    derived["nattack_cascade"] = None if staged is None else nattack_cascade(derived["cascade"])
    return derived


def check_derived_numbers(record: dict[str, Any], outcomes: dict[str, Outcomes], spec: Spec, path: Path,
                          *, flags: bool) -> None:
    """Every number the per-example bits determine, recomputed with the judge's own functions.
    `flags`: recompute the flags too (records of the current spec; older records kept their own)."""
    from benchmark.evaluation.diagnostics import gradient_masking_flags

    measured = {"clean", *record["attacks"], *record["diagnostics"]}
    extra = sorted(set(outcomes) - measured)
    if extra:
        raise fail(path, "examples_file", f"holds outcomes of {extra[0]!r}, which the record does not state")
    derived = derived_numbers(record, outcomes, spec.confidence)
    _compare(derived["clean"], record["clean"], "clean", path, NUMBER_KEYS)
    for group in ("attacks", "diagnostics"):
        for name, measurement in record[group].items():
            _compare(derived[group][name], measurement, f"{group}.{name}", path, NUMBER_KEYS)
    for family, status in record["families"].items():
        if status["status"] == "run":
            _expect(path, f"families.{family}.measurements", status.get("measurements"),
                    derived["by_family"].get(family, []), f"the {family} attacks the record states")
    staged = derived["staged"]
    if staged is not None:
        _check_subsample(record, outcomes[staged], spec, path)
    _compare(derived["worst_case"], record["worst_case"], "worst_case", path)
    if staged is not None:
        _compare(derived["cascade"], record.get("cascade"), "cascade", path)
        _compare(derived["nattack_cascade"], record["attacks"][staged].get("cascade"), f"attacks.{staged}.cascade", path)
    elif "cascade" in record:
        raise fail(path, "cascade", "stated, but no measurement of the record ran on a subsample")
    if flags:
        _compare(gradient_masking_flags(record, outcomes), record["flags"], "flags", path)


def _check_subsample(record: dict[str, Any], outcome: Outcomes, spec: Spec, path: Path) -> None:
    """A uniform subsample is the seeded one: which examples NAttack saw is not the submitter's choice."""
    if spec.adaptive.subsample != "uniform":
        return
    expected = adaptive_subsample(record["n"], record["nattack_n"], record["seed"])
    if not np.array_equal(outcome.subsample, expected):
        raise fail(path, "examples_file", "the adaptive subsample is not the seeded uniform one of "
                   f"(n = {record['n']}, nattack_n = {record['nattack_n']}, seed = {record['seed']})")


def _compare(expected: Any, found: Any, field: str, path: Path, keys: tuple[str, ...] | None = None) -> None:
    """`found` must equal `expected` (floats to 1e-9); with `keys`, only those keys of an object."""
    if keys is not None:
        for key in keys:
            if key in expected or key in found:
                _compare(expected.get(key), found.get(key), f"{field}.{key}", path)
        return
    if isinstance(expected, dict) and isinstance(found, dict):
        for key in sorted(set(expected) | set(found)):
            if key in TEXT_KEYS:
                continue
            if key not in found or key not in expected:
                state = "missing" if key not in found else "not derived from the per-example outcomes"
                raise fail(path, f"{field}.{key}", f"{state}; recompute the record (threatbench evaluate)")
            _compare(expected[key], found[key], f"{field}.{key}", path)
        return
    if isinstance(expected, list | tuple) and isinstance(found, list | tuple) and len(expected) == len(found):
        for index, (a, b) in enumerate(zip(expected, found, strict=True)):
            _compare(a, b, f"{field}[{index}]", path)
        return
    if _same(expected, found):
        return
    raise fail(path, field, f"{_short(found)}, but the per-example outcomes give {_short(expected)}")


def _same(expected: Any, found: Any) -> bool:
    numbers = (int, float, np.integer, np.floating)
    if isinstance(expected, bool) or isinstance(found, bool) or expected is None or found is None:
        return type(expected) is type(found) and expected == found
    if isinstance(expected, numbers) and isinstance(found, numbers):
        return math.isclose(float(expected), float(found), rel_tol=1e-9, abs_tol=1e-12)
    return expected == found


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
