"""Who is being judged: the record's `entry` field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class EntryInfo:
    """Who is being judged; goes into the record's `entry` field."""

    name: str
    kind: str = "user"                      # baseline | submission | reference | user
    architecture: str | None = None
    weights: dict[str, Any] | None = None   # {"file", "sha256"}, plus "repo" and "revision" from the Hub
    paper: str | None = None
    recipe: dict[str, Any] | None = None      # {"file": ..., "sha256": ..., "epoch": ...} for baselines
    smoothing: dict[str, Any] | None = None   # {"samples", "sigma", "vote"} for smoothed inference
    normalization: dict[str, list[float]] | None = None   # {"mean", "std"} replacing the architecture's
    submission: dict[str, Any] | None = None  # manifest file + sha256, authors, license, claimed numbers
