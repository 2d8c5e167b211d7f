"""The threat-model spec: load `spec/v<N>.toml`, validate every key, freeze it into dataclasses.

The spec is data (`v1.toml`, `v2.toml`; a frozen version never changes). `names.py` holds every
family, attack and budget name, `schema.py` the dataclasses, `parse.py` the strict validation.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from benchmark import paths
from benchmark.spec.names import *  # noqa: F403  (the spec's names are its API)
from benchmark.spec.names import __all__ as _names
from benchmark.spec.parse import SPEC_SCHEMA, parse_spec
from benchmark.spec.schema import (
    AdaptivePolicy,
    AttackParams,
    Budget,
    DatasetSpec,
    Diagnostics,
    HeldOutSource,
    HubFile,
    NAttackParams,
    Preprocessing,
    RandomizedPolicy,
    Spec,
    SpecError,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SPEC_DIR = paths.SPEC_DIR
DEFAULT_SPEC_PATH = SPEC_DIR / "v2.toml"
# Byte forms of a frozen spec that records pin besides the file's own: v1.toml's header comment once
# cited a file outside the repository (tests/spec/test_spec.py restores those bytes; no value differs).
EARLIER_SHA256 = {"1.0.0": ("6d9fd7b89bfab4fd43e89a1355165bd34396ca1544d2ad9b6c1d81b78c7400cc",)}

__all__ = [*_names, "SPEC_SCHEMA", "SPEC_DIR", "DEFAULT_SPEC_PATH", "EARLIER_SHA256", "AdaptivePolicy",
           "AttackParams", "Budget", "DatasetSpec", "Diagnostics", "HeldOutSource", "HubFile",
           "NAttackParams", "Preprocessing", "RandomizedPolicy", "Spec", "SpecError", "parse_spec",
           "load_spec", "spec_for_record"]


def load_spec(path: str | Path | None = None) -> Spec:
    """Load and validate a spec file (default: the current one, `DEFAULT_SPEC_PATH`)."""
    path = Path(path) if path is not None else DEFAULT_SPEC_PATH
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: not valid TOML: {error}") from None
    try:
        return parse_spec(document, sha256=hashlib.sha256(raw).hexdigest(), path=path)
    except SpecError as error:
        raise SpecError(f"{path.name}: {error}") from None


def spec_for_record(version: str, sha256: str) -> Spec:
    """The packaged spec of `version`, if `sha256` is its file's (or an earlier byte form of it)."""
    for path in sorted(SPEC_DIR.glob("v*.toml")):
        spec = load_spec(path)
        if spec.version != version:
            continue
        if sha256 not in (spec.sha256, *EARLIER_SHA256.get(version, ())):
            raise SpecError(f"sha256 {sha256[:12]}... is not that of spec {version} ({spec.sha256[:12]}...): "
                            "the record was measured under another threat model; re-evaluate it")
        return spec
    raise SpecError(f"version {version!r} is not a spec this threatbench knows "
                    f"({', '.join(sorted(p.stem for p in SPEC_DIR.glob('v*.toml')))})")
