"""What a page says about itself before any table: the release and the date of its data, then a
status line (what is measured and ranked, what is only claimed, and why). Pages are deterministic,
so they are dated by their newest record, never by the time they were rendered."""

from __future__ import annotations

from benchmark.board.ranking import Row, budget_rows, current_rows, ranked_budgets, ranked_rows
from benchmark.board.record_fields import record_date
from benchmark.board.references import Reference
from benchmark.untrusted import markdown_text
from benchmark.version import release


def data_date(rows: list[Row]) -> str | None:
    """The newest record's date."""
    dates = [date for date in (record_date(row.record) for row in rows) if date is not None]
    return max(dates).isoformat() if dates else None


def release_line(spec_version: str, date: str | None, newest: str) -> str:
    """The page's first line: the leaderboard release and the date of its data, `date` being that
    of the newest record `newest` says where."""
    dated = "no dated record yet" if date is None else f"data as of {date} (the newest record {newest})"
    return f"**Release:** {release(spec_version)}, {dated}."


def page_release(spec_version: str, rows: list[Row], board_date: str | None) -> str:
    """Dated by the page's own records, else (a page without any) by the whole leaderboard's."""
    if not rows:
        return release_line(spec_version, board_date, "of the leaderboard; none on this page")
    return release_line(spec_version, data_date(rows), "on this page")


def status_line(dataset: str, rows: list[Row], references: list[Reference], spec_version: str) -> str:
    """What the page measures, what it only claims, and why nothing is ranked when nothing is."""
    current, budgets = current_rows(rows), ranked_budgets(dataset)
    nothing = "" if any(ranked_rows(budget_rows(current, b)) for b in budgets) else (
        f"No {' or '.join(budgets) or 'ranked'}-budget record with all three families and no raised "
        "masking flag yet: nothing is ranked. ")
    return (f"**Status:** {nothing}Measured under spec {markdown_text(spec_version)}: "
            f"{measured_status(dataset, rows)}. Claimed only: {_claimed_status(references, rows)}.")


def measured_status(dataset: str, rows: list[Row]) -> str:
    """What the records of a dataset measure: ranked per budget, provisional, superseded."""
    current = current_rows(rows)
    parts = [_budget_status(budget, budget_rows(current, budget)) for budget in ranked_budgets(dataset)]
    provisional = [r for r in current if not r.rankable]
    flagged = sum(1 for r in provisional if r.masking_flags)
    if provisional:
        parts.append(f"{len(provisional)} provisional (quick, incomplete or flagged; {flagged} flagged)")
    if len(rows) > len(current):
        parts.append(f"{len(rows) - len(current)} superseded (older specs, kept for the record only)")
    return "; ".join(parts) if rows else "nothing yet"


def _budget_status(budget: str, records: list[Row]) -> str:
    ranked = len(ranked_rows(records))
    if ranked:
        return f"{ranked} {'entry' if ranked == 1 else 'entries'} ranked in the `{budget}` budget"
    if not records:
        return f"no `{budget}`-budget record yet"
    if len(records) == 1:
        return f"its `{budget}`-budget record is not rankable"
    return f"none of its {len(records)} `{budget}`-budget records is rankable"


def claimed_only(references: list[Reference], rows: list[Row]) -> list[Reference]:
    """Reference entries with no current record of their name: only their papers' numbers."""
    measured = {row.name for row in current_rows(rows)}
    return [reference for reference in references if reference.name not in measured]


def _claimed_status(references: list[Reference], rows: list[Row]) -> str:
    """How many entries are only claimed, and why each group is not measured yet."""
    claimed = claimed_only(references, rows)
    if not claimed:
        return "none"
    unpinned = sum(1 for reference in claimed if reference.hub_revision is None)
    reasons = [f"{unpinned} {'has' if unpinned == 1 else 'have'} no weights pinned at a Hub revision, "
               "which an evaluation needs"] if unpinned else []
    if len(claimed) > unpinned:
        reasons.append(f"{len(claimed) - unpinned} {'is' if len(claimed) - unpinned == 1 else 'are'} "
                       "pinned but not evaluated yet")
    return (f"{len(claimed)} reference {'entry' if len(claimed) == 1 else 'entries'} with their papers' own "
            f"numbers; {'; '.join(reasons)} (notes under \"Reference entries\")")


def index_row(dataset: str, rows: list[Row], references: list[Reference]) -> str:
    """A dataset's line on the index: what is measured and what is only claimed, in words."""
    claimed = len(claimed_only(references, rows))
    entries = "none" if not claimed else f"{claimed} reference {'entry' if claimed == 1 else 'entries'}"
    return f"| [{dataset}]({dataset}.md) | {measured_status(dataset, rows)} | {entries} |"
