"""`threatbench compare`: records side by side per family, with a paired exact test on the same examples.

Two records are comparable only when they were judged on the same examples under the same threat
model: same dataset, spec (version and sha256), budget, n, NAttack subsample size, seed and evaluation
subset. Then each family's per-example worst case (correct on the clean input and under every attack of
the family) is compared example by example: the discordant examples (one entry correct, the other not)
decide, by the exact sign test (McNemar's test with one prediction per example; Dixon & Mood's with
repeated predictions of a randomized entry, `benchmark.evaluation.stats.paired_test`), two-sided. Paired tests
see differences that the two entries' separate 95% intervals hide. The NAttack family and the worst case
over all families exist per example only on the NAttack subsample, and are compared there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import ThreatbenchError
from benchmark.evaluation.record_check import load_record
from benchmark.evaluation.results import Outcomes, read_outcomes, record_paths
from benchmark.evaluation.stats import paired_test
from benchmark.spec.names import FAMILY_LABELS

SAME = (("dataset",), ("spec", "version"), ("spec", "sha256"), ("budget",), ("n",), ("nattack_n",), ("seed",),
        ("subset_sha256",))
ROW_LABELS = {"clean": "clean", **{f: f"worst {FAMILY_LABELS[f]}" for f in ("white_box", "transfer")},
              "all": "worst over all families (NAttack subsample)"}
ALPHA = 0.05


class CompareError(ThreatbenchError):
    """Records that cannot be compared example by example; the message says which field differs."""


@dataclass(frozen=True)
class Compared:
    path: Path
    record: dict[str, Any]
    outcomes: dict[str, Outcomes]

    @property
    def name(self) -> str:
        return self.record["entry"]["name"]


@dataclass(frozen=True)
class FamilyTest:
    family: str
    examples: int
    accuracy: tuple[float, float]
    a_only: int
    b_only: int
    p_value: float          # two-sided exact


def load_compared(path: str | Path) -> Compared:
    """A record verified on load (benchmark.evaluation.record_verify), with its per-example outcomes."""
    path = Path(path)
    return Compared(path, load_record(path), read_outcomes(path))


def _field(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    value = record
    for key in keys:
        value = value[key]
    return value


def check_comparable(a: Compared, b: Compared) -> None:
    for keys in SAME:
        first, second = _field(a.record, keys), _field(b.record, keys)
        if first != second:
            raise CompareError(
                f"{a.path.name} and {b.path.name} were not judged on the same examples under the same threat "
                f"model: {'.'.join(keys)} is {first!r} in one and {second!r} in the other; compare records of "
                "one dataset, spec, budget and seed (re-run one of them with those)")


def family_bits(compared: Compared) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{family: (example indices, bool [repeats, k] per-example worst case on them)}."""
    record, outcomes = compared.record, compared.outcomes
    clean = outcomes["clean"].correct
    n = clean.shape[1]
    by_family: dict[str, list[str]] = {}
    for name, measurement in record["attacks"].items():
        by_family.setdefault(measurement["family"], []).append(name)
    bits = {"clean": (np.arange(n), clean)}
    for family in ("white_box", "transfer"):
        if by_family.get(family):
            bits[family] = (np.arange(n), np.logical_and.reduce([clean, *(outcomes[m].correct
                                                                          for m in by_family[family])]))
    adaptive = by_family.get("adaptive", [])
    if adaptive and record["worst_case"].get("all") is not None:
        staged = outcomes[adaptive[0]]
        columns = np.flatnonzero(staged.subsample) if staged.subsample is not None \
            else np.arange(record["nattack_n"])   # spec v1: NAttack on the first nattack_n examples
        # Under the cascade an example NAttack did not attack holds its clean outcome, so this is the
        # per-example worst case; a spec v1 NAttack outcome covers only the first nattack_n examples.
        rows = [clean[:, columns], *(outcomes[m].correct[:, columns] if outcomes[m].n == n
                                     else outcomes[m].correct[:, :len(columns)] for m in record["attacks"])]
        bits["all"] = (columns, np.logical_and.reduce(rows))
    return bits


def _two_sided(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    one_way, other_way = paired_test(a, b), paired_test(b, a)
    return one_way.a_only, one_way.b_only, min(1.0, 2 * min(one_way.p_value, other_way.p_value))


def compare_pair(a: Compared, b: Compared) -> list[FamilyTest]:
    check_comparable(a, b)
    first, second = family_bits(a), family_bits(b)
    tests = []
    for family in ROW_LABELS:
        if family not in first or family not in second:
            continue
        (columns, a_bits), (other_columns, b_bits) = first[family], second[family]
        if not np.array_equal(columns, other_columns):   # same seed and n: cannot happen for v2 records
            raise CompareError(f"{a.path.name} and {b.path.name}: the {family} examples differ")
        a_only, b_only, p_value = _two_sided(a_bits, b_bits)
        tests.append(FamilyTest(family, len(columns), (float(a_bits.mean()), float(b_bits.mean())),
                                a_only, b_only, p_value))
    return tests


def resolve_against(first: Compared, against: list[str], results_dir: Path) -> list[Path]:
    """`zoo`: every baseline record of the first record's dataset, spec and budget; else those entries'."""
    folder = results_dir / first.record["dataset"]
    budget, version = first.record["budget"], first.record["spec"]["version"]
    candidates = {}
    for path in record_paths(folder) if folder.is_dir() else []:
        record = load_record(path)
        if record["budget"] == budget and record["spec"]["version"] == version \
                and path.resolve() != first.path.resolve():
            candidates[record["entry"]["name"]] = (path, record["entry"]["kind"])
    if against == ["zoo"]:
        paths = [path for path, kind in candidates.values() if kind == "baseline"]
        if not paths:
            raise CompareError(f"no committed {budget}-budget baseline record of spec {version} in {folder} "
                               "to compare against")
        return sorted(paths)
    missing = [name for name in against if name not in candidates]
    if missing:
        raise CompareError(f"no committed {budget}-budget record of {missing[0]!r} (spec {version}) in {folder}; "
                           f"the entries with one: {', '.join(sorted(candidates)) or 'none'}")
    return [candidates[name][0] for name in against]


def render(records: list[Compared]) -> str:
    """The entries' numbers side by side, then every pair's paired tests (first record against the rest
    when there are more than two; all pairs otherwise)."""
    from tabulate import tabulate

    header = ["entry", *ROW_LABELS.values(), "ranking key [95% CI]"]
    rows = []
    for compared in records:
        bits = family_bits(compared)
        key = compared.record["worst_case"].get("all")
        key_text = "n/a" if key is None else (f"{100 * key['accuracy']:.1f} [{100 * key['interval'][0]:.1f}, "
                                               f"{100 * key['interval'][1]:.1f}]")
        rows.append([compared.name, *(f"{100 * bits[f][1].mean():.1f}" if f in bits else "n/a"
                                      for f in ROW_LABELS), key_text])
    first = records[0].record
    lines = [f"{first['dataset']}, spec {first['spec']['version']}, budget {first['budget']}, n = {first['n']} "
             f"(NAttack subsample {first['nattack_n']}), seed {first['seed']}; accuracy %:", "",
             tabulate(rows, header, tablefmt="github"), ""]
    pairs = [(records[0], other) for other in records[1:]]
    tests = [(a, b, compare_pair(a, b)) for a, b in pairs]
    count = sum(len(t) for _, _, t in tests)
    table = []
    for a, b, family_tests in tests:
        for test in family_tests:
            significant = test.p_value < ALPHA / count
            table.append([f"{a.name} vs {b.name}", ROW_LABELS[test.family], test.examples,
                          test.a_only, test.b_only, f"{test.p_value:.2g}" if test.p_value > 0 else "< 1e-300",
                          (f"{a.name if test.a_only > test.b_only else b.name} better" if significant
                           else "no significant difference")])
    lines += [f"paired exact test on the same examples, two-sided; significant below {ALPHA} / {count} "
              f"(Bonferroni over the {count} tests shown):", "",
              tabulate(table, ["pair", "family", "examples", "only first correct", "only second correct", "p",
                               "verdict"], tablefmt="github")]
    return "\n".join(lines)
