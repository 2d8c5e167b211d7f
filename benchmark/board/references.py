"""Reference entries: published defenses with their papers' own numbers, recorded as *claimed*.

`leaderboard/references/<dataset>.toml` (schema `threatbench.references/1`). A claimed number is
never shown as measured: the pages print it in its own column, and a measured record appears beside
it only when `leaderboard/results/<dataset>/` holds one for the same entry name.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark import paths
from benchmark.errors import ThreatbenchError
from benchmark.untrusted import LINK_HOSTS, allowed_link, excerpt, hub_tree_link, markdown_code

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REFERENCES_SCHEMA = "threatbench.references/1"
REFERENCES_DIR = paths.LEADERBOARD_DIR / "references"
FULL_SHA = re.compile(r"[0-9a-f]{40}")
REFERENCE_KEYS = {"name", "role", "architecture", "paper", "source", "hub", "revision_note", "randomized",
                  "claimed"}
CLAIM_KEYS = {"metric", "threatbench", "top1", "top5"}


class ReferenceError(ThreatbenchError, ValueError):
    """A references file is invalid; the message names the file, the entry and the key."""


@dataclass(frozen=True)
class Claim:
    metric: str              # the paper's wording
    threatbench: str         # the matching threatbench measurement name
    top1: float
    top5: float | None = None


@dataclass(frozen=True)
class Reference:
    name: str
    role: str
    architecture: str
    paper: str
    source: str
    hub_repo: str | None
    hub_revision: str | None         # a full 40-hex sha, or None while it is not pinned
    hub_file: str | None
    revision_note: str
    randomized: bool
    claimed: tuple[Claim, ...]


def _claims(items: Any, where: str) -> tuple[Claim, ...]:
    if not isinstance(items, list) or not items:
        raise ReferenceError(f"{where}.claimed: expected a non-empty list of claims")
    claims = []
    for index, item in enumerate(items):
        here = f"{where}.claimed[{index}]"
        if not isinstance(item, dict) or set(item) - CLAIM_KEYS or not {"metric", "threatbench", "top1"} <= set(item):
            raise ReferenceError(f"{here}: expected keys metric, threatbench, top1 and optionally top5")
        for key in ("top1", "top5"):
            value = item.get(key)
            if key in item and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100):
                raise ReferenceError(f"{here}.{key}: expected an accuracy in % (0-100), got {value!r}")
        claims.append(Claim(item["metric"], item["threatbench"], float(item["top1"]),
                            None if "top5" not in item else float(item["top5"])))
    return tuple(claims)


def _reference(table: dict[str, Any], where: str) -> Reference:
    unknown = sorted(set(table) - REFERENCE_KEYS)
    if unknown:
        raise ReferenceError(f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(sorted(REFERENCE_KEYS))}")
    for key in ("name", "role", "architecture", "paper", "source"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise ReferenceError(f"{where}.{key}: missing or not a string")
    where = f"{where} ({table['name']})"
    if allowed_link(table["paper"]) is None:
        raise ReferenceError(f"{where}.paper: {excerpt(table['paper'])} is not an https:// link to "
                             f"{', '.join(LINK_HOSTS)}, the hosts a page links to")
    hub = table.get("hub") or {}
    revision = hub.get("revision") or None
    if revision is not None and not FULL_SHA.fullmatch(revision):
        raise ReferenceError(f"{where}.hub.revision: {revision!r} is not a full 40-hex commit sha; a "
                             "branch or short sha can move, so pin the full sha")
    note = table.get("revision_note", "")
    if revision is None and not note:
        raise ReferenceError(f"{where}.revision_note: required when no Hub revision is pinned (say why)")
    return Reference(name=table["name"], role=table["role"], architecture=table["architecture"],
                     paper=table["paper"], source=table["source"], hub_repo=hub.get("repo"),
                     hub_revision=revision, hub_file=hub.get("file"), revision_note=note,
                     randomized=bool(table.get("randomized", False)), claimed=_claims(table.get("claimed"), where))


def load_references(directory: Path = REFERENCES_DIR) -> dict[str, list[Reference]]:
    """{dataset: references}, every file validated."""
    by_dataset: dict[str, list[Reference]] = {}
    for path in sorted(directory.glob("*.toml")):
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ReferenceError(f"{path}: not valid TOML ({error})") from None
        if table.get("schema") != REFERENCES_SCHEMA:
            raise ReferenceError(f"{path}: schema is {table.get('schema')!r}, expected {REFERENCES_SCHEMA!r}")
        dataset = table.get("dataset")
        if dataset != path.stem:
            raise ReferenceError(f"{path}: dataset is {dataset!r}; the file must be named <dataset>.toml")
        by_dataset[dataset] = [_reference(item, f"{path}: references[{i}]")
                               for i, item in enumerate(table.get("references", []))]
    return by_dataset


def hub_link(reference: Reference) -> str:
    """Markdown for a page: the pinned Hub revision as a link, its repository as code otherwise."""
    if reference.hub_repo is None:
        return "not on the Hub"
    if reference.hub_revision is None:
        return f"{markdown_code(reference.hub_repo)} (revision not pinned yet)"
    return hub_tree_link(reference.hub_repo, reference.hub_revision)
