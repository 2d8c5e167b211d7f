"""The user's threatbench cache: trained models, crafted transfer examples."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$THREATBENCH_CACHE, else $XDG_CACHE_HOME/threatbench, else ~/.cache/threatbench."""
    if os.environ.get("THREATBENCH_CACHE"):
        return Path(os.environ["THREATBENCH_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "threatbench"
