"""What the pages and citations read from a record beyond the record loader's own checks: those
fields checked (a malformed one is a one-line RecordError naming it), the record's date, the judge
commit that measured it, and the row's stable anchor."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from pathlib import Path
from typing import Any

from benchmark.evaluation.results import RecordError
from benchmark.untrusted import FULL_SHA, excerpt, field_name


def check_rendered_fields(record: dict[str, Any], path: Path, datasets: tuple[str, ...]) -> None:
    """The fields the pages read beyond what the record loader checks: a malformed one is a one-line
    RecordError naming it, never a traceback in the middle of a page. `datasets`: the spec's, the
    only names a page is written for."""
    if record["dataset"] not in datasets:
        raise _record_error(path, "dataset", f"{excerpt(record['dataset'])} is not a dataset of the spec "
                            f"({', '.join(datasets)}); pages are written only for those")
    _check_flags(record["flags"], path)
    _check_entry(record["entry"], path)
    _check_nattack(record, path)
    _check_provenance(record, path)


def record_date(record: dict[str, Any]) -> dt.date | None:
    """When the record was measured (`provenance.date`), None when it does not say."""
    return _parse_date(record["provenance"].get("date"))


def judge_commit(record: dict[str, Any]) -> str | None:
    """The full commit of the judge that measured the record, when it recorded a clean checkout."""
    git = record["provenance"].get("git")
    return git if isinstance(git, str) and FULL_SHA.fullmatch(git) else None


def row_anchor(record: dict[str, Any]) -> str:
    """`<dataset>-<budget>-<entry>`: the row's HTML id and BibTeX key, only [A-Za-z0-9_-], the same
    for the same record on every regeneration (entry names are unique per dataset and budget)."""
    parts = (record["dataset"], record["budget"], record["entry"]["name"])
    return "-".join(_anchor_part(str(part)) for part in parts)


_ANCHOR_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def _anchor_part(text: str) -> str:
    """`text` when it holds only [A-Za-z0-9_-]; else its safe characters and 8 hex of its sha256,
    so that two names that differ only in unsafe characters never share an anchor."""
    safe = _ANCHOR_UNSAFE.sub("-", text).strip("-")
    if safe == text:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe}-{digest}" if safe else digest


def _record_error(path: Path, field: str, problem: str) -> RecordError:
    return RecordError(f"{path}: field '{field}': {problem}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_flags(flags: Any, path: Path) -> None:
    if not isinstance(flags, dict):
        raise _record_error(path, "flags", f"expected an object of named flags, got {type(flags).__name__}")
    for name, flag in flags.items():
        where = f"flags.{field_name(name)}"
        if not isinstance(flag, dict):
            raise _record_error(path, where, f"expected an object, got {type(flag).__name__}")
        if flag.get("raised") not in (True, False, None):
            raise _record_error(path, f"{where}.raised", f"expected true, false or null, got {excerpt(flag['raised'])}")
        if not isinstance(flag.get("evidence", ""), str):
            raise _record_error(path, f"{where}.evidence", f"expected a string, got {excerpt(flag['evidence'])}")
        if flag.get("p_value") is not None and not _is_number(flag["p_value"]):
            raise _record_error(path, f"{where}.p_value", f"expected a number, got {excerpt(flag['p_value'])}")


def _check_entry(entry: dict[str, Any], path: Path) -> None:
    for key in ("kind", "paper"):
        if key in entry and not isinstance(entry[key], str):
            raise _record_error(path, f"entry.{key}", f"expected a string, got {excerpt(entry[key])}")
    for group, text_keys in (("weights", ("repo", "revision", "file", "sha256")), ("submission", ())):
        table = entry.get(group)
        if table is not None and not isinstance(table, dict):
            raise _record_error(path, f"entry.{group}", f"expected an object, got {type(table).__name__}")
        for key in text_keys:
            if key in (table or {}) and not isinstance(table[key], str):
                raise _record_error(path, f"entry.{group}.{key}", f"expected a string, got {excerpt(table[key])}")
    claimed = (entry.get("submission") or {}).get("claimed")
    if claimed is not None and not isinstance(claimed, dict):
        raise _record_error(path, "entry.submission.claimed", f"expected an object, got {type(claimed).__name__}")
    for key, value in (claimed or {}).items():
        if not (isinstance(value, str) if key == "source" else _is_number(value)):
            expected = "a string" if key == "source" else "a number (accuracy in %)"
            raise _record_error(path, f"entry.submission.claimed.{field_name(key)}",
                                f"expected {expected}, got {excerpt(value)}")


def _check_nattack(record: dict[str, Any], path: Path) -> None:
    """What the NAttack cell (benchmark.evaluation.cascade.adaptive_cell) and the sizes column read."""
    subsample = (record["worst_case"].get("all") or {}).get("subsample")
    if subsample is not None and (isinstance(subsample, bool) or not isinstance(subsample, int)):
        raise _record_error(path, "worst_case.all.subsample", f"expected an integer, got {excerpt(subsample)}")
    nattack = record["attacks"].get("nattack")
    if nattack is None:
        return
    queries = nattack.get("queries", {})
    if not isinstance(queries, dict):
        raise _record_error(path, "attacks.nattack.queries", f"expected an object, got {excerpt(queries)}")
    if queries.get("median") is not None and not _is_number(queries["median"]):
        raise _record_error(path, "attacks.nattack.queries.median",
                            f"expected a number, got {excerpt(queries['median'])}")
    cascade = nattack.get("cascade")
    if cascade is None:
        return
    if not isinstance(cascade, dict) or not isinstance(nattack.get("params"), dict):
        raise _record_error(path, "attacks.nattack.cascade", "expected an object beside attacks.nattack.params")
    for key in ("attacked", "broken", "survivors"):
        if isinstance(cascade.get(key), bool) or not isinstance(cascade.get(key), int):
            raise _record_error(path, f"attacks.nattack.cascade.{key}",
                                f"expected an integer, got {excerpt(cascade.get(key))}")


def _check_provenance(record: dict[str, Any], path: Path) -> None:
    """The two provenance fields the pages read: the judge commit and the date of the record."""
    provenance = record["provenance"]
    if not isinstance(provenance, dict):
        raise _record_error(path, "provenance", f"expected an object, got {type(provenance).__name__}")
    if provenance.get("git") is not None and not isinstance(provenance["git"], str):
        raise _record_error(path, "provenance.git", f"expected a string, got {excerpt(provenance['git'])}")
    if provenance.get("date") is not None and _parse_date(provenance["date"]) is None:
        raise _record_error(path, "provenance.date",
                            f"expected an ISO 8601 date and time, got {excerpt(provenance['date'])}")


def _parse_date(value: Any) -> dt.date | None:
    """The UTC date of an ISO 8601 time stamp, or None when `value` is not one."""
    if not isinstance(value, str):
        return None
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (stamp.astimezone(dt.timezone.utc) if stamp.tzinfo is not None else stamp).date()
