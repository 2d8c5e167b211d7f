"""Entry names: a submission's name may not be read as another entry's (a zoo baseline, a reference
entry, another submission), ignoring case and punctuation."""

from __future__ import annotations

import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from benchmark.paths import SUBMISSIONS_DIR, ZOO_FILES_DIR


def name_key(name: str) -> str:
    """What two entry names share when a reader could take one for the other."""
    return re.sub(r"[^0-9a-z]", "", name.casefold())


def taken_names(manifest_path: Path, submissions_dir: Path = SUBMISSIONS_DIR) -> dict[str, str]:
    """name_key -> what holds it: every zoo entry, reference entry and submission other than the
    one `manifest_path` names (in the repository's submissions/ and beside the manifest)."""
    from benchmark.board.references import load_references

    taken: dict[str, str] = {}
    for directory in (submissions_dir, manifest_path.parent):
        for other in sorted(directory.glob("*.y*ml")):
            if other.suffix in (".yaml", ".yml") and other.stem != manifest_path.stem:
                taken.setdefault(name_key(other.stem), f"the submission {other.stem!r} ({other.name})")
    for dataset, references in load_references().items():
        for reference in references:
            taken[name_key(reference.name)] = f"the reference entry {reference.name!r} ({dataset})"
    for dataset, name in zoo_entry_names():
        taken[name_key(name)] = f"the zoo entry {name!r} ({dataset})"
    return taken


def zoo_table(zoo_file: Path) -> dict:
    """One zoo file (baselines/zoo/<dataset>.toml) read as data: the judge never imports the
    baselines' code (tests/test_boundary.py)."""
    return tomllib.loads(zoo_file.read_text(encoding="utf-8"))


def named_entries(table: dict) -> list[dict]:
    return [entry for entry in table.get("entries", []) if isinstance(entry, dict) and "name" in entry]


def zoo_entry_names() -> list[tuple[str, str]]:
    """(dataset, name) of every baseline in baselines/zoo/*.toml."""
    names = []
    for zoo_file in sorted(ZOO_FILES_DIR.glob("*.toml")):
        table = zoo_table(zoo_file)
        names += [(str(table.get("dataset", zoo_file.stem)), str(entry["name"])) for entry in named_entries(table)]
    return names
