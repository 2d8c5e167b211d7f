"""Which records are ranked, and in what order (docs/ranking.md).

Only records of a ranked budget of the current spec with every family measured and no raised
gradient-masking flag are ranked, by the per-example worst case over all families (estimated in two
phases under the cascade, benchmark.evaluation.cascade), within one budget: budgets whose attack
parameters differ are never ranked together. Entries whose 95% interval overlaps the best one's are
tied with it. Records of an older spec are kept as superseded rows, never ranked.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from benchmark.board.record_fields import check_rendered_fields
from benchmark.evaluation.diagnostics import is_masking
from benchmark.evaluation.record_check import load_record
from benchmark.evaluation.results import RecordError, record_paths
from benchmark.evaluation.stats import intervals_overlap
from benchmark.spec import SpecError, load_spec
from benchmark.untrusted import excerpt, markdown_text


@cache
def spec_datasets() -> tuple[str, ...]:
    """The datasets of the current spec: the only page names there are."""
    return tuple(load_spec().datasets)


@cache   # asked for every row of every page: read the spec once
def ranked_budgets(dataset: str) -> tuple[str, ...]:
    """The current spec's ranked budgets of a dataset (none for a dataset it does not define)."""
    try:
        return tuple(load_spec().dataset(dataset).ranked_budgets())
    except SpecError:
        return ()


@dataclass(frozen=True)
class Row:
    path: Path
    record: dict[str, Any]
    current_spec: str | None = None   # the spec version this threatbench judges with
    link: str | None = None           # the record file, relative to the page (results/<dataset>/<file>)

    @property
    def superseded(self) -> bool:
        """Measured under an older spec: kept readable, shown apart, never ranked."""
        return self.current_spec is not None and self.record["spec"]["version"] != self.current_spec

    @property
    def name(self) -> str:
        return self.record["entry"]["name"]

    @property
    def ranked_budget(self) -> bool:
        return self.record["budget"] in ranked_budgets(self.record["dataset"])

    @property
    def complete(self) -> bool:
        """A ranked budget with every family measured."""
        return self.ranked_budget and self.record["worst_case"].get("all") is not None

    @property
    def masking_flags(self) -> list[str]:
        """The raised gradient-masking flags, by name."""
        return sorted(name for name, flag in self.record["flags"].items()
                      if flag.get("raised") is True and is_masking(name, flag))

    @property
    def rankable(self) -> bool:
        return self.complete and not self.masking_flags and not self.superseded

    def why_provisional(self) -> str:
        reasons = []
        if not self.ranked_budget:
            reasons.append(f"{markdown_text(self.record['budget'])} budget (n = {self.record['n']})")
        missing = [f for f, status in self.record["families"].items() if status.get("status") != "run"]
        if missing:
            reasons.append("not run: " + ", ".join(map(markdown_text, missing)))
        if self.masking_flags:
            reasons.append("flagged: " + ", ".join(map(markdown_text, self.masking_flags)))
        return "; ".join(reasons)


def collect(results_dir: Path, spec_version: str | None) -> dict[str, list[Row]]:
    """Every record under `results_dir`, validated, grouped by dataset; records of another spec
    version than `spec_version` are kept as superseded rows."""
    by_dataset: dict[str, list[Row]] = {}
    seen: dict[tuple[str, str, str, str], Path] = {}
    datasets = spec_datasets()
    for path in record_paths(results_dir):
        record = load_record(path)
        check_rendered_fields(record, path, datasets)
        key = (record["dataset"], record["entry"]["name"], record["budget"], record["spec"]["version"])
        if key in seen:
            raise RecordError(f"{path}: entry {excerpt(key[1])} already has a {key[2]}-budget {key[0]} record of "
                              f"spec {key[3]} in {seen[key]}; entry names are unique per dataset (rename "
                              "the submission or remove the older record)")
        seen[key] = path
        link = path.relative_to(results_dir.parent).as_posix()
        by_dataset.setdefault(record["dataset"], []).append(Row(path, record, spec_version, link))
    return by_dataset


def current_rows(rows: list[Row]) -> list[Row]:
    return [row for row in rows if not row.superseded]


def budget_rows(rows: list[Row], budget: str) -> list[Row]:
    return [row for row in rows if row.record["budget"] == budget]


def ranked_rows(rows: list[Row]) -> list[tuple[int, Row, bool]]:
    """(rank, row, tied with the best) for rankable rows, best first; ties share no rank numbers."""
    rankable = sorted((r for r in rows if r.rankable),
                      key=lambda r: (-r.record["worst_case"]["all"]["accuracy"], r.name))
    if not rankable:
        return []
    best = rankable[0].record["worst_case"]["all"]["interval"]
    return [(index + 1, row, intervals_overlap(row.record["worst_case"]["all"]["interval"], best))
            for index, row in enumerate(rankable)]
