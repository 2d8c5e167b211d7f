"""Submission manifests: `submissions/<name>.yaml`, schema `threatbench.submission/1`.

A manifest is data only. It is parsed as safe YAML (no tags, no objects) without anchors, aliases,
merge keys or duplicate keys, at most MAX_MANIFEST_BYTES and MAX_DEPTH deep; every key is checked,
unknown keys are errors, every text field is one line of capped length, and validation never
touches the network. Error messages quote at most a short excerpt of a value. The name may not
collide with a zoo entry, a reference entry or another submission, ignoring case and punctuation.
What it pins:

    schema: threatbench.submission/1
    name: my-defense                  # = the file name without .yaml
    dataset: fashion-mnist            # a dataset of the spec
    paper: https://arxiv.org/abs/...  # https:// on arxiv.org, doi.org, openreview.net, huggingface.co, github.com
    authors: [Ada Lovelace]
    license: MIT
    model:
      repo: my-org/my-defense         # Hugging Face Hub model repository
      revision: <40-hex commit sha>   # never a branch, tag or short sha
      architecture: mnist_a           # a registry name, or "config.json" (a timm config in the repo)
      config_sha256: <64 hex>         # only with architecture: config.json
      weights: model.safetensors      # safetensors only
      sha256: <64 hex>                # of the weights file
      preprocessing: {mean: [0.5], std: [0.5]}   # optional; default: the model takes [0, 1] pixels
      randomized: false
      smoothing: {samples: 16, sigma: 0.06, vote: prediction}   # optional
    claimed:                          # optional: the authors' numbers, accuracy in percent
      source: Table 2
      clean: 84.0
      pgd: 60.1
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from benchmark.errors import ArchitectureError
from benchmark.intake.names import name_key, taken_names
from benchmark.intake.safe_yaml import (  # noqa: F401  (ManifestError and the limits are re-exported)
    MAX_DEPTH,
    MAX_MANIFEST_BYTES,
    ManifestError,
    join_key,
    read_yaml,
)
from benchmark.models.architectures import NOISE_PREFIXES, check_architecture
from benchmark.models.smoothing import VOTES
from benchmark.spec import (
    ADAPTIVE_ATTACK,
    MEASURED_FAMILIES,
    WHITE_BOX_ATTACKS,
    Spec,
    SpecError,
    load_spec,
)
from benchmark.untrusted import (
    FULL_SHA,
    LINK_HOSTS,
    REPO_ID,
    allowed_link,
    control_character,
    excerpt,
    field_name,
)

MANIFEST_SCHEMA = "threatbench.submission/1"
HUB_CONFIG = "config.json"   # `architecture: config.json` = build the timm model its config names
TOP_KEYS = {"schema", "name", "dataset", "paper", "authors", "license", "model", "claimed"}
MODEL_KEYS = {"repo", "revision", "architecture", "config_sha256", "weights", "sha256", "preprocessing",
              "randomized", "smoothing"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".tar", ".h5", ".npy", ".npz")
CLAIM_FAMILIES = (*MEASURED_FAMILIES, "all")
CLAIM_ATTACKS = (*WHITE_BOX_ATTACKS, ADAPTIVE_ATTACK)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_TEXT_CHARS = 200       # any text field without a cap of its own
MAX_AUTHORS = 100
TEXT_LIMITS = {"paper": 300, "license": 100, "claimed.source": 300, "dataset": 64, "model.architecture": 200}


@dataclass(frozen=True)
class Preprocessing:
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Smoothing:
    samples: int
    sigma: float
    vote: str


@dataclass(frozen=True)
class HubModel:
    repo: str
    revision: str
    architecture: str                    # a registry name, or HUB_CONFIG
    weights: str
    sha256: str
    randomized: bool
    config_sha256: str | None = None
    preprocessing: Preprocessing | None = None
    smoothing: Smoothing | None = None

    @property
    def from_config(self) -> bool:
        return self.architecture == HUB_CONFIG

    def files(self) -> dict[str, str]:
        """Every file the harness downloads, with its pinned sha256."""
        files = {self.weights: self.sha256}
        if self.from_config:
            files[HUB_CONFIG] = self.config_sha256
        return files


@dataclass(frozen=True)
class Manifest:
    name: str
    dataset: str
    paper: str
    authors: tuple[str, ...]
    license: str
    model: HubModel
    claimed: dict[str, Any]
    path: Path
    sha256: str

    def summary(self) -> dict[str, Any]:
        return {"file": f"submissions/{self.path.name}", "sha256": self.sha256}


# ---------------------------------------------------------------- checks


class _Checker:
    """Typed reads of a mapping; every error names `<file>: <dotted key>`."""

    def __init__(self, file: str):
        self.file = file

    def fail(self, key: str, message: str) -> ManifestError:
        return ManifestError(f"{self.file}: {key}: {message}")

    def keys(self, table: Any, where: str, required: set[str], allowed: set[str]) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.fail(where or "(top level)", f"expected a mapping, got {type(table).__name__}")
        unknown = sorted(set(map(str, table)) - allowed)
        if unknown:
            raise self.fail(join_key(where, field_name(unknown[0])),
                            f"unknown key (allowed: {', '.join(sorted(allowed))})")
        missing = sorted(required - set(table))
        if missing:
            raise self.fail(join_key(where, missing[0]), "missing (required)")
        return table

    def text(self, value: Any, key: str, pattern: re.Pattern | None = None, hint: str = "") -> str:
        """One line of text of at most TEXT_LIMITS[key] (else MAX_TEXT_CHARS) characters."""
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise self.fail(key, f"YAML read {excerpt(value)} as a number; quote the value: "
                            f"{key.split('.')[-1]}: " '"..."')
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a non-empty string, got {excerpt(value)}")
        limit = TEXT_LIMITS.get(re.sub(r"\[\d+\]$", "", key), MAX_TEXT_CHARS)
        if len(value) > limit:
            raise self.fail(key, f"{excerpt(value)} is longer than {limit} characters; shorten it")
        character = control_character(value)
        if character is not None:
            raise self.fail(key, f"{excerpt(value)} contains the control character {character} (a line "
                            "break, NUL or text-direction override); write one line of plain text")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(key, f"{excerpt(value)} is not valid{': ' + hint if hint else ''}")
        return value

    def number(self, value: Any, key: str, *, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(key, f"expected a number, got {excerpt(value)}")
        if not low <= value <= high:
            raise self.fail(key, f"{excerpt(value)} is outside [{low:g}, {high:g}]")
        return float(value)

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {excerpt(value)}")
        return value


def _relative_file(check: _Checker, value: Any, key: str) -> str:
    text = check.text(value, key)
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts or "\\" in text or text != str(path):
        raise check.fail(key, f"{excerpt(text)} must be a plain path inside the repository, e.g. "
                         "model.safetensors")
    return text


def _weights_file(check: _Checker, value: Any) -> str:
    name = _relative_file(check, value, "model.weights")
    if not name.endswith(".safetensors"):
        hint = (" (a pickle format: threatbench never loads pickles, which can run code)"
                if name.lower().endswith(PICKLE_SUFFIXES) else "")
        raise check.fail("model.weights", f"{excerpt(name)} is not a .safetensors file{hint}; convert with "
                         "safetensors.torch.save_file(model.state_dict(), 'model.safetensors') and "
                         "upload that file")
    return name


def _architecture(check: _Checker, value: Any) -> str:
    name = check.text(value, "model.architecture")
    if name == HUB_CONFIG:
        return name
    try:
        return check_architecture(name)
    except ArchitectureError as error:
        raise check.fail("model.architecture", f"{error}; or use architecture: {HUB_CONFIG} with a "
                         "timm config.json in the repository") from None


def _preprocessing(check: _Checker, value: Any, channels: int) -> Preprocessing | None:
    if value is None:
        return None
    table = check.keys(value, "model.preprocessing", {"mean", "std"}, {"mean", "std"})
    parts = {}
    for key in ("mean", "std"):
        items = table[key]
        if not isinstance(items, list) or len(items) != channels:
            raise check.fail(f"model.preprocessing.{key}", f"expected a list of {channels} numbers (one "
                             f"per input channel), got {excerpt(items)}")
        low = 1e-6 if key == "std" else -10.0
        parts[key] = tuple(check.number(v, f"model.preprocessing.{key}[{i}]", low=low, high=10.0)
                           for i, v in enumerate(items))
    return Preprocessing(**parts)


def _smoothing(check: _Checker, value: Any) -> Smoothing | None:
    if value is None:
        return None
    table = check.keys(value, "model.smoothing", {"samples", "sigma"}, {"samples", "sigma", "vote"})
    samples = table["samples"]
    if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= 1024:
        raise check.fail("model.smoothing.samples", f"expected an integer in [1, 1024], got {excerpt(samples)}")
    vote = table.get("vote", "prediction")
    if not isinstance(vote, str) or vote not in VOTES:
        raise check.fail("model.smoothing.vote", f"{excerpt(vote)} is not one of {', '.join(VOTES)}")
    return Smoothing(samples, check.number(table["sigma"], "model.smoothing.sigma", low=0.0, high=1.0), vote)


def _claimed(check: _Checker, value: Any, eps: float) -> dict[str, Any]:
    if value is None:
        return {}
    allowed = {"source", "eps", *CLAIM_FAMILIES, *CLAIM_ATTACKS}
    table = check.keys(value, "claimed", set(), allowed)
    claimed: dict[str, Any] = {}
    if "source" in table:
        claimed["source"] = check.text(table["source"], "claimed.source")
    if "eps" in table and not math.isclose(check.number(table["eps"], "claimed.eps", low=0, high=1), eps):
        raise check.fail("claimed.eps", f"{excerpt(table['eps'])} differs from the spec's eps {eps:g} for this "
                         "dataset; only claims under the spec's threat model can be compared")
    for key in (*CLAIM_FAMILIES, *CLAIM_ATTACKS):
        if key in table:
            claimed[key] = check.number(table[key], f"claimed.{key}", low=0.0, high=100.0)
    return claimed


def _model(check: _Checker, table: Any, classes: int, channels: int) -> HubModel:
    table = check.keys(table, "model", {"repo", "revision", "architecture", "weights", "sha256", "randomized"},
                       MODEL_KEYS)
    revision = table["revision"]
    if not isinstance(revision, str) or not FULL_SHA.fullmatch(revision):
        raise check.fail("model.revision", f"{excerpt(revision)} is not a full 40-hex commit sha; branches, tags "
                         "and short shas can move or be ambiguous. Find it with "
                         "huggingface_hub.HfApi().model_info(repo, revision='main').sha")
    architecture = _architecture(check, table["architecture"])
    config_sha256 = None
    if architecture == HUB_CONFIG:
        if "config_sha256" not in table:
            raise check.fail("model.config_sha256", "missing: with architecture: config.json, pin the "
                             "sha256 of config.json too (sha256sum config.json)")
        config_sha256 = check.text(table["config_sha256"], "model.config_sha256", SHA256, "64 lowercase hex")
        if "preprocessing" in table:
            raise check.fail("model.preprocessing", "not allowed with architecture: config.json; the "
                             "normalization comes from config.json's pretrained_cfg (mean, std)")
    elif "config_sha256" in table:
        raise check.fail("model.config_sha256", "only used with architecture: config.json")
    randomized = check.boolean(table["randomized"], "model.randomized")
    smoothing = _smoothing(check, table.get("smoothing"))
    if architecture.startswith(NOISE_PREFIXES) and not randomized:
        raise check.fail("model.randomized", f"{architecture} injects weight noise at inference; "
                         "declare randomized: true")
    if smoothing is not None and not randomized:
        raise check.fail("model.randomized", "smoothed inference draws noise; declare randomized: true")
    return HubModel(
        repo=check.text(table["repo"], "model.repo", REPO_ID, "expected <owner>/<name>"),
        revision=revision, architecture=architecture, weights=_weights_file(check, table["weights"]),
        sha256=check.text(table["sha256"], "model.sha256", SHA256, "64 lowercase hex (sha256sum <file>)"),
        randomized=randomized, config_sha256=config_sha256,
        preprocessing=_preprocessing(check, table.get("preprocessing"), channels), smoothing=smoothing,
    )


def _authors(check: _Checker, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise check.fail("authors", f"expected a non-empty list of names, got {excerpt(value)}")
    if len(value) > MAX_AUTHORS:
        raise check.fail("authors", f"{len(value):,} names; at most {MAX_AUTHORS} (add \"et al.\")")
    return tuple(check.text(a, f"authors[{i}]") for i, a in enumerate(value))


def _paper(check: _Checker, value: Any) -> str:
    paper = check.text(value, "paper")
    if allowed_link(paper) is None:
        raise check.fail("paper", f"{excerpt(paper)} is not an https:// link to {', '.join(LINK_HOSTS)}; "
                         "link the paper's page there (e.g. https://arxiv.org/abs/...)")
    return paper


def parse_manifest(document: Any, *, path: Path, sha256: str, spec: Spec) -> Manifest:
    check = _Checker(path.name)
    table = check.keys(document, "", TOP_KEYS - {"claimed"}, TOP_KEYS)
    if table["schema"] != MANIFEST_SCHEMA:
        raise check.fail("schema", f"{excerpt(table['schema'])} is not supported; this threatbench reads "
                         f"{MANIFEST_SCHEMA!r}")
    name = check.text(table["name"], "name", NAME, "letters, digits, '-', '_', '.'; at most 64")
    if name != path.stem:
        raise check.fail("name", f"{name!r} must equal the file name {excerpt(path.stem)} (rename one of them)")
    try:
        dataset = spec.dataset(check.text(table["dataset"], "dataset"))
    except SpecError as error:
        raise check.fail("dataset", str(error)) from None
    return Manifest(
        name=name, dataset=dataset.name, paper=_paper(check, table["paper"]),
        authors=_authors(check, table["authors"]), license=check.text(table["license"], "license"),
        model=_model(check, table["model"], dataset.num_classes, dataset.input_shape[0]),
        claimed=_claimed(check, table.get("claimed"), dataset.eps), path=path, sha256=sha256,
    )


def check_name_is_free(manifest: Manifest, taken: dict[str, str]) -> None:
    holder = taken.get(name_key(manifest.name))
    if holder is not None:
        raise ManifestError(f"{manifest.path.name}: name: {manifest.name!r} is already {holder}; names are "
                            "compared ignoring case and punctuation, so that no submission can be read as "
                            "another entry. Choose another name (and rename the file)")


def load_manifest(path: str | Path, spec: Spec | None = None, *,
                  taken: dict[str, str] | None = None) -> Manifest:
    """Read and validate `path` offline; raises ManifestError naming the key that is wrong.
    `taken`: the names it may not use (default: `taken_names(path)`)."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        raise ManifestError(f"{excerpt(str(path))}: a manifest is a .yaml file (submissions/<name>.yaml)")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {path}") from None
    manifest = parse_manifest(read_yaml(raw, path.name), path=path, sha256=hashlib.sha256(raw).hexdigest(),
                              spec=spec or load_spec())
    check_name_is_free(manifest, taken_names(path) if taken is None else taken)
    return manifest
