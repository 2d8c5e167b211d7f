"""One record's numbers as the pages' table cells, and the markdown table they go in.

Every text that comes from a record is escaped for markdown and HTML (benchmark.untrusted), and
links are only https:// to the hosts a manifest may name.
"""

from __future__ import annotations

import re
from typing import Any

from benchmark.board.ranking import Row
from benchmark.board.record_fields import judge_commit
from benchmark.evaluation.cascade import adaptive_cell
from benchmark.evaluation.diagnostics import is_masking
from benchmark.spec import FAMILIES, FAMILY_LABELS
from benchmark.untrusted import FULL_SHA, hub_tree_link, link, markdown_code, markdown_text

# The adaptive family has a cell of its own (adaptive_cell): the others show their worst case.
WORST_CASE_FAMILIES = tuple(family for family in FAMILIES if family != "adaptive")
ADAPTIVE_HEADER = f"{FAMILY_LABELS['adaptive']} (median queries)"
KEY_HEADER = "worst over all families [95% CI]"
KEY_SIZE = "n of the key (NAttack subsample)"
HEADERS = ["clean", *(f"worst {FAMILY_LABELS[family]}" for family in WORST_CASE_FAMILIES), ADAPTIVE_HEADER,
           KEY_HEADER, KEY_SIZE, "flags", "budget", "spec", "provenance"]


def cells(record: dict[str, Any]) -> list[str]:
    """A record's cells under HEADERS."""
    worst = record["worst_case"]
    return [percent(record["clean"]), *(percent(worst.get(family)) for family in WORST_CASE_FAMILIES),
            adaptive_cell(record), with_interval(worst.get("all")), key_size(record), flags_cell(record),
            markdown_text(record["budget"]), markdown_text(record["spec"]["version"]), provenance_cell(record)]


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(row) + " |" for row in rows)]


def percent(summary: dict[str, Any] | None) -> str:
    return "n/a" if summary is None else f"{100 * summary['accuracy']:.1f}"


def with_interval(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "n/a"
    low, high = summary["interval"]
    return f"{100 * summary['accuracy']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def flags_cell(record: dict[str, Any]) -> str:
    """The raised flags; those that do not gate the ranking say so."""
    flags = record["flags"]
    raised = sorted(name for name, flag in flags.items() if flag.get("raised") is True)
    unknown = sum(1 for flag in flags.values() if flag.get("raised") is None)
    text = ", ".join(markdown_code(name) + ("" if is_masking(name, flags[name]) else " (not masking)")
                     for name in raised) or "none"
    return text + (f" ({unknown} not evaluated)" if unknown else "")


def p_value_cell(flag: dict[str, Any]) -> str:
    """Flags that are observations, not tests, and records from before flags had p-values carry none."""
    p_value = flag.get("p_value")
    return "-" if p_value is None else f"{p_value:.2g}"


def provenance_cell(record: dict[str, Any]) -> str:
    """The paper (a link only to an allowed host), the Hub repository at its commit, the sha256."""
    entry, parts = record["entry"], []
    paper = link("paper", entry.get("paper"))
    if paper is not None:
        parts.append(paper)
    weights = entry.get("weights") or {}
    if weights.get("repo") and weights.get("revision"):
        parts.append(hub_tree_link(weights["repo"], weights["revision"]))
    if weights.get("sha256"):
        parts.append(markdown_code(weights["sha256"][:12]))
    return " ".join(parts) or "-"


def key_size(record: dict[str, Any]) -> str:
    """The examples the worst case over all families stands on, which can be fewer than the other
    columns' n: n and the NAttack subsample of the two-phase key (spec v2), or "50 of 500" for a
    spec v1 key measured on the first `nattack_n` examples only. Without a key: the row's n and the
    subsample NAttack would use."""
    n, key = record["n"], record["worst_case"].get("all")
    if key is None:
        return str(n) if record["nattack_n"] == n else f"{n} ({record['nattack_n']})"
    if key.get("method") == "two-phase":
        return f"{key['n']} ({key['subsample']})"
    return str(n) if key["n"] == n else f"{key['n']} of {n}"


_RECORD_LINK = re.compile(r"results(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)+\.json")


def record_cell(row: Row) -> str:
    """A link to the record file (relative: the repository's URL is not known offline) and the judge
    commit that measured it."""
    record = f"[record]({row.link})" if row.link and _RECORD_LINK.fullmatch(row.link) else "record"
    commit = judge_commit(row.record)
    git = row.record["provenance"].get("git")
    if commit is not None:
        return f"{record}, judge `{commit[:12]}`"
    if isinstance(git, str) and git.endswith("+dirty") and FULL_SHA.fullmatch(git[:-len("+dirty")]):
        return f"{record}, judge `{git[:12]}` with uncommitted changes"
    return f"{record}, judge commit not recorded"
