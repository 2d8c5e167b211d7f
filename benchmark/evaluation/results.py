"""The result record (schema `threatbench.result/1`), its per-example bitmask file, atomic writes,
and the checkpoint state that lets an interrupted evaluation resume.

A record is JSON with numbers as numbers. Per-example outcomes (1 = correctly classified) sit beside
it in `<stem>.examples.json`: one base64 bit string per measurement, so worst cases can be recomputed.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.errors import RecordError, ThreatbenchError  # noqa: F401  (RecordError re-exported)
from benchmark.runtime.files import (  # noqa: F401  (re-exported)
    atomic_write_json,
    atomic_write_text,
    check_output_path,
    read_json,
)

RESULT_SCHEMA = "threatbench.result/1"
EXAMPLES_SCHEMA = "threatbench.examples/1"
STATE_SCHEMA = "threatbench.state/1"


def encode_bits(outcomes: np.ndarray) -> str:
    bits = np.packbits(np.asarray(outcomes, dtype=bool), bitorder="little")
    return base64.b64encode(bits.tobytes()).decode("ascii")


def decode_bits(text: str, n: int) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    if raw.size != (n + 7) // 8:
        raise ValueError(f"bit string holds {raw.size * 8} bits, expected {n}")
    return np.unpackbits(raw, bitorder="little")[:n].astype(bool)


def record_paths(results_dir: str | os.PathLike) -> list[Path]:
    """The result records under `results_dir`, sorted: not their per-example files, and not the hidden
    checkpoint (`.<name>.state.json`) of an evaluation still running beside them."""
    root = Path(results_dir)
    return [path for path in sorted(root.rglob("*.json"))
            if not path.name.endswith(".examples.json")
            and not any(part.startswith(".") for part in path.relative_to(root).parts)]


def examples_path(record_path: str | os.PathLike) -> Path:
    record_path = Path(record_path)
    return record_path.with_name(record_path.stem + ".examples.json")


@dataclass
class Outcomes:
    """Per-example outcomes of one measurement.

    `correct` is bool [repeats, n]: one row per repeated prediction (1 row for a deterministic
    defense). `queries` holds the queries used per example, for query-based attacks.

    The adaptive family under spec v2 also carries two bool [n] masks: `subsample`, its seeded
    subsample of the evaluation set, and `attacked`, the examples it attacked (with the cascade, the
    subsample's survivors of every earlier family). An example it did not attack holds its clean
    outcome (docs/ranking.md, "The cascade").
    """

    correct: np.ndarray
    queries: np.ndarray | None = None
    subsample: np.ndarray | None = None
    attacked: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.correct.shape[1])

    @property
    def repeats(self) -> int:
        return int(self.correct.shape[0])


def examples_document(outcomes: dict[str, Outcomes]) -> dict[str, Any]:
    measurements = {}
    for name, outcome in outcomes.items():
        entry: dict[str, Any] = {"n": outcome.n, "bits": [encode_bits(row) for row in outcome.correct]}
        if outcome.queries is not None:
            entry["queries"] = [int(q) for q in outcome.queries]
        for mask in ("subsample", "attacked"):
            if getattr(outcome, mask) is not None:
                entry[mask] = encode_bits(getattr(outcome, mask))
        measurements[name] = entry
    return {
        "schema": EXAMPLES_SCHEMA,
        "meaning": "bits[r][i] = 1 when example i of the evaluation subset was classified correctly "
                   "in repeated prediction r; queries[i] = queries spent on example i; subsample[i] and "
                   "attacked[i] = 1 when the adaptive family's subsample holds example i and when it "
                   "attacked example i",
        "measurements": measurements,
    }


def write_result(path: str | os.PathLike, record: dict[str, Any], outcomes: dict[str, Outcomes]) -> None:
    """Write the examples file, then the record (which names the examples file last, atomically)."""
    path = check_output_path(path)
    atomic_write_json(examples_path(path), examples_document(outcomes))
    atomic_write_json(path, record)


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    record = read_json(path)
    if not isinstance(record, dict) or record.get("schema") != RESULT_SCHEMA:
        found = record.get("schema") if isinstance(record, dict) else type(record).__name__
        raise RecordError(f"{path}: field 'schema' is {found!r}, expected {RESULT_SCHEMA!r}")
    return record


def read_outcomes(record_path: str | os.PathLike) -> dict[str, Outcomes]:
    path = examples_path(record_path)
    document = read_json(path)
    if not isinstance(document, dict) or document.get("schema") != EXAMPLES_SCHEMA:
        raise RecordError(f"{path}: field 'schema' is not {EXAMPLES_SCHEMA!r}")
    outcomes = {}
    for name, entry in document.get("measurements", {}).items():
        try:
            correct = np.stack([decode_bits(text, entry["n"]) for text in entry["bits"]])
            queries = entry.get("queries")
            if queries is not None:
                queries = np.asarray(queries, dtype=np.int64)
                if queries.shape != (entry["n"],):
                    raise ValueError(f"{queries.size} query counts for n = {entry['n']}")
            masks = {mask: decode_bits(entry[mask], entry["n"]) for mask in ("subsample", "attacked")
                     if mask in entry}
        except (ValueError, TypeError, KeyError) as error:
            raise RecordError(f"{path}: field 'measurements.{name}': {error}") from None
        if "attacked" in masks and "subsample" in masks and (masks["attacked"] & ~masks["subsample"]).any():
            raise RecordError(f"{path}: field 'measurements.{name}.attacked': an attacked example lies "
                              "outside the subsample")
        outcomes[name] = Outcomes(correct, queries, **masks)
    return outcomes


# ---------------------------------------------------------------- resumable state


class EvaluationState:
    """Per-measurement outcomes of an evaluation in progress, saved atomically after each chunk.

    The state is tied to a configuration key (spec, weights, subset, seed, batch size, ...); a state
    with another key belongs to another evaluation and is never mixed in.
    """

    def __init__(self, path: Path | None, key: str):
        self.path, self.key = path, key
        self.measurements: dict[str, dict[str, Any]] = {}

    @classmethod
    def open(cls, path: Path | None, key: str) -> EvaluationState:
        state = cls(path, key)
        if path is not None and path.is_file():
            document = read_json(path)
            if document.get("schema") == STATE_SCHEMA and document.get("key") == key:
                state.measurements = document["measurements"]
        return state

    def done(self, name: str) -> bool:
        return self.measurements.get(name, {}).get("done", False)

    def progress(self, name: str, repeats: int, n: int) -> tuple[Outcomes, int, dict[str, Any]]:
        """(outcomes so far, number of examples finished, accumulated costs) of a measurement."""
        entry = self.measurements.get(name)
        if entry is None:
            return Outcomes(np.zeros((repeats, n), dtype=bool), np.zeros(n, dtype=np.int64)), 0, {}
        correct = np.stack([decode_bits(text, n) for text in entry["bits"]])
        queries = np.asarray(entry["queries"], dtype=np.int64)
        return Outcomes(correct, queries), entry["finished"], entry["costs"]

    def update(self, name: str, outcomes: Outcomes, finished: int, costs: dict[str, Any],
               done: bool) -> None:
        self.measurements[name] = {
            "bits": [encode_bits(row) for row in outcomes.correct],
            "queries": [int(q) for q in outcomes.queries],
            "finished": finished, "costs": costs, "done": done,
        }
        self.save()

    def save(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, {"schema": STATE_SCHEMA, "key": self.key,
                                          "measurements": self.measurements})

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
