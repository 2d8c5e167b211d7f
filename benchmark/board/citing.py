"""BibTeX for the benchmark and for one leaderboard row (README.md, "How to cite").

`cite_row` cites a ranked record by what the record itself says: entry, dataset, budget, its worst
case over all families with the 95% interval and the n it stands on, the spec version and sha256,
the judge commit, the threatbench version and the date it was measured. Never by its rank, which
changes as entries are added. A provisional, flagged or superseded record is refused: the pages
say those are not leaderboard numbers. Every text from a record is escaped for BibTeX.

    python -m benchmark.board.citing leaderboard/results/fashion-mnist/A_adv-standard.json
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from benchmark.board.ranking import Row, spec_datasets
from benchmark.board.record_fields import (
    check_rendered_fields,
    judge_commit,
    record_date,
    row_anchor,
)
from benchmark.errors import ThreatbenchError
from benchmark.evaluation.record_check import load_record
from benchmark.paths import LEADERBOARD_DIR
from benchmark.spec import load_spec
from benchmark.untrusted import _CONTROL
from benchmark.version import __version__, release

AUTHORS = "the threatbench authors"
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
REPOSITORY_ROOT = LEADERBOARD_DIR.parent

# Braces become commands, not \{ and \}: BibTeX counts every brace, escaped or not, so a lone one
# would end the field early or swallow the rest of the entry.
_ESCAPES = {"\\": r"\textbackslash{}", "{": r"\textbraceleft{}", "}": r"\textbraceright{}",
            "%": r"\%", "&": r"\&", "$": r"\$", "#": r"\#", "_": r"\_",
            "^": r"\textasciicircum{}", "~": r"\textasciitilde{}"}
_SPECIAL = re.compile("[" + re.escape("".join(_ESCAPES)) + "]")


class CitationError(ThreatbenchError, ValueError):
    """The record is not a leaderboard number (provisional, flagged or superseded)."""


def bibtex_text(value: Any) -> str:
    """`value` as literal text inside a braced BibTeX field, on one line."""
    return _SPECIAL.sub(lambda match: _ESCAPES[match.group()], _CONTROL.sub(" ", str(value)))


def _entry(kind: str, key: str, fields: list[tuple[str, str]]) -> str:
    """A BibTeX entry; field values are already BibTeX (escaped text, or a month macro)."""
    width = max(len(name) for name, _ in fields)
    body = "".join(f"  {name.ljust(width)} = {value},\n" for name, value in fields)
    return f"@{kind}{{{key},\n{body}}}\n"


def cite_benchmark(spec_version: str | None = None) -> str:
    """BibTeX for threatbench itself, at this version and the spec it judges with."""
    spec_version = spec_version or load_spec().version
    return _entry("misc", "threatbench", [
        ("author", f"{{{{{bibtex_text(AUTHORS)}}}}}"),
        ("title", "{{threatbench}: a reproducible adversarial-robustness benchmark}"),
        ("version", f"{{{bibtex_text(__version__)}}}"),
        ("note", f"{{{bibtex_text(release(spec_version))}; MIT license}}"),
    ])


def _key_with_its_n(key: dict[str, Any]) -> str:
    """The worst case over all families, its 95% interval and the examples it stands on."""
    low, high = key["interval"]
    size = (f"n = {key['n']}, NAttack subsample {key['subsample']} (two-phase estimate)"
            if key.get("method") == "two-phase" else f"n = {key['n']}")
    return (f"{100 * key['accuracy']:.1f}% (95% CI {100 * low:.1f}--{100 * high:.1f}), {size}")


def _measured_by(record: dict[str, Any]) -> str:
    version = record["provenance"].get("threatbench")
    commit = judge_commit(record)
    by = "threatbench" if version is None else f"threatbench {version}"
    return f"measured by {by} at commit {commit}" if commit else f"measured by {by}, commit not recorded"


def _refuse_unless_ranked(record: dict[str, Any], path: Path) -> None:
    row = Row(path, record, load_spec().version)
    if row.superseded:
        raise CitationError(f"{path}: a spec {record['spec']['version']} record, superseded by spec "
                            f"{row.current_spec}: not a leaderboard number")
    if not row.rankable:
        raise CitationError(f"{path}: a provisional record ({row.why_provisional() or 'incomplete'}), never "
                            "cited as a leaderboard number")


def cite_row(record: dict[str, Any], path: str | Path | None = None) -> str:
    """BibTeX for one ranked row; `path`: the record file as the citation should name it."""
    where = Path(path) if path is not None else Path("<record>")
    check_rendered_fields(record, where, spec_datasets())
    _refuse_unless_ranked(record, where)
    anchor = row_anchor(record)
    name, dataset, budget = record["entry"]["name"], record["dataset"], record["budget"]
    spec = record["spec"]
    title = (f"{{{{{bibtex_text(name)}}} on the threatbench {bibtex_text(dataset)} leaderboard "
             f"({bibtex_text(budget)} budget, spec {bibtex_text(spec['version'])})}}")
    note = (f"Worst case over all attack families (white-box, transfer, NAttack): "
            f"{_key_with_its_n(record['worst_case']['all'])}. "
            + (f"Record {path}, " if path is not None else "")
            + f"{_measured_by(record)}; spec sha256 {spec['sha256']}")
    fields = [("author", f"{{{{{bibtex_text(AUTHORS)}}}}}"), ("title", title)]
    measured = record_date(record)
    if measured is not None:
        fields += [("year", f"{{{measured.year}}}"), ("month", MONTHS[measured.month - 1])]
    fields += [("howpublished", f"{{{bibtex_text(f'leaderboard/{dataset}.md#{anchor}')}}}"),
               ("note", f"{{{bibtex_text(note)}}}")]
    return _entry("misc", f"threatbench-{anchor}", fields)


def _as_cited(path: Path) -> Path:
    """The record's path from the repository root when it lies inside it, else as given."""
    try:
        return path.resolve().relative_to(REPOSITORY_ROOT)
    except ValueError:
        return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.board.citing", description=(
        "Print BibTeX for ranked leaderboard records, or for threatbench itself with no record."))
    parser.add_argument("records", nargs="*", type=Path, help="result records (.json)")
    args = parser.parse_args(argv)
    try:
        entries = [cite_row(load_record(path), _as_cited(path)) for path in args.records]
    except ThreatbenchError as error:
        print(f"threatbench: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(entries or [cite_benchmark()]), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
