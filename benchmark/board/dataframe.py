"""A leaderboard as a pandas DataFrame: `benchmark.board.dataframe.table("fashion-mnist")`.

The same records, checks and ranking as the generated pages (benchmark.board.ranking): every record
verified on load, only records of the current spec, ranked by the worst case over all families within
each ranked budget. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.board.ranking import Row, collect, ranked_budgets, ranked_rows
from benchmark.paths import LEADERBOARD_DIR
from benchmark.spec import load_spec

COLUMNS = ("rank", "entry", "kind", "budget", "n", "nattack_subsample", "clean", "worst_white_box",
           "worst_transfer", "worst_case", "worst_case_low", "worst_case_high", "tied_with_best", "flags",
           "spec", "record")


def _accuracy(summary: dict[str, Any] | None) -> float | None:
    return None if summary is None else summary.get("accuracy")


def _row(row: Row, rank: int | None, tied: bool) -> dict[str, Any]:
    record = row.record
    key = record["worst_case"].get("all")
    return {
        "rank": rank, "entry": row.name, "kind": record["entry"]["kind"], "budget": record["budget"],
        "n": record["n"], "nattack_subsample": record["nattack_n"], "clean": _accuracy(record["clean"]),
        "worst_white_box": _accuracy(record["worst_case"].get("white_box")),
        "worst_transfer": _accuracy(record["worst_case"].get("transfer")),
        "worst_case": _accuracy(key), "worst_case_low": None if key is None else key["interval"][0],
        "worst_case_high": None if key is None else key["interval"][1], "tied_with_best": tied,
        "flags": ", ".join(row.masking_flags), "spec": record["spec"]["version"], "record": str(row.path),
    }


def table(dataset: str, *, budget: str | None = None, results_dir: str | Path | None = None):
    """One row per current record of `dataset` (optionally one budget): ranked rows first, by budget
    and rank (`rank` 1 is the best of its budget), then the unranked ones (`rank` None)."""
    import pandas as pd

    results = Path(results_dir) if results_dir is not None else LEADERBOARD_DIR / "results"
    rows = [row for row in collect(results, load_spec().version).get(dataset, [])
            if not row.superseded and (budget is None or row.record["budget"] == budget)]
    ranked, placed = [], set()
    for name in ranked_budgets(dataset):
        for rank, row, tied in ranked_rows([r for r in rows if r.record["budget"] == name]):
            ranked.append(_row(row, rank, tied))
            placed.add(row.path)
    rest = [_row(row, None, False) for row in sorted(rows, key=lambda r: (r.record["budget"], r.name))
            if row.path not in placed]
    return pd.DataFrame(ranked + rest, columns=list(COLUMNS))
