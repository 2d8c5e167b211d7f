"""Regression replay of recorded leaderboard numbers: `pytest benchmark -k <dataset>`.

Only records of the current spec are replayed; records of an older spec are superseded (kept and shown
on the pages, never re-judged: the attacks they were measured with no longer exist as such).

Each recorded (entry, measurement) is re-evaluated on the regression subset, the first
`REGRESSION_N` examples of the record's own evaluation subset (`REGRESSION_N_RANDOMIZED` for a
randomized entry; NAttack: the first `REGRESSION_NATTACK_N` examples it attacked, or
`..._RANDOMIZED`), and compared with the record's per-example outcomes on those examples.
Every random draw is keyed by (seed, measurement, example index), so a deterministic defense on
the same device type must reproduce the recorded bits exactly; a randomized one (or another
device type) must agree within the 95% intervals.

The entry is rebuilt from the record alone: its registry architecture, its smoothing, and weights
found by their sha256 (committed zoo weights, the judge's sources, or the cache). A missing
resource (data, weights, GPU) is a skip that names it, never a pass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmark import paths
from benchmark.board.references import load_references
from benchmark.data import DataError, load_evaluation_set
from benchmark.evaluation.record_check import load_record
from benchmark.evaluation.results import RecordError, read_outcomes, record_paths
from benchmark.evaluation.stats import intervals_overlap, wilson_interval
from benchmark.models.defense import Defense, file_sha256
from benchmark.models.entries import judged_defense
from benchmark.runtime.cache import cache_dir
from benchmark.spec import Spec, load_spec, spec_for_record

REPOSITORY = paths.REPOSITORY
RESULTS_DIR = REPOSITORY / "leaderboard" / "results"
REGRESSION_N = 40
REGRESSION_N_RANDOMIZED = 6    # compared within intervals anyway, so these replays mostly catch breakage;
                               # EPGD averages 8 gradient draws per step and every accuracy is 5 predict
                               # calls, so A_pni's replay takes 77 s on a 2-core CPU even at this size
REGRESSION_NATTACK_N = 2       # the record's first attacked examples: survivors, often the whole budget
                               # (population x cap: 21,000 queries at the standard budget) each
REGRESSION_NATTACK_N_RANDOMIZED = 1   # one A_pni image: 26 s on a 2-core CPU
REGRESSION_BUDGET = "regression"


class MissingResource(Exception):
    """What a regression test needs and this machine lacks; the test skips with this reason."""


@dataclass(frozen=True)
class RegressionCase:
    record_path: Path | None          # None: a reference entry with claimed numbers only
    dataset: str
    entry: str
    measurement: str

    @property
    def test_id(self) -> str:
        return "-".join((self.dataset.replace("-", "_"), self.entry, self.measurement.replace("/", "_")))


def regression_cases(results_dir: Path = RESULTS_DIR, references_dir: Path | None = None) -> list[RegressionCase]:
    """One case per recorded (entry, measurement), plus one per claim of a reference not yet measured."""
    cases, measured = [], set()
    current = load_spec().version
    for path in record_paths(results_dir):
        record = load_record(path, check_examples=False)
        if record["spec"]["version"] != current:   # superseded: shown on the pages, judged no more
            continue
        measured.add((record["dataset"], record["entry"]["name"]))
        for measurement in ("clean", *record["attacks"]):
            if record["attacks"].get(measurement, {}).get("cascade", {}).get("attacked") == 0:
                continue   # the cascade left NAttack nothing to attack: no outcome of its own to replay
            cases.append(RegressionCase(path, record["dataset"], record["entry"]["name"], measurement))
    references = load_references(references_dir or results_dir.parent / "references")
    for dataset, entries in sorted(references.items()):
        for reference in entries:
            if (dataset, reference.name) not in measured:
                cases += [RegressionCase(None, dataset, reference.name, claim.threatbench)
                          for claim in reference.claimed]
    return cases


def unmeasured_reason(case: RegressionCase) -> str:
    """Why a reference entry has nothing to replay: the missing data first, else the missing record."""
    try:
        load_evaluation_set(case.dataset, 1, download=False)
    except DataError as error:
        return f"{case.entry}: claimed numbers only; measuring it needs the {case.dataset} data: {error}"
    return (f"{case.entry}: claimed numbers only, no measured record in leaderboard/results/{case.dataset}/ "
            "yet (measure it with the full budget, then its regressions replay)")


def weight_search_dirs() -> list[Path]:
    return [REPOSITORY / "baselines" / "zoo" / "weights", REPOSITORY / "benchmark" / "resources" / "sources",
            cache_dir() / "models", cache_dir() / "training", cache_dir() / "sources",
            cache_dir() / "submissions"]


@cache
def _sha256_of(path: Path, size: int, mtime: float) -> str:
    return file_sha256(path)


def find_weights(sha256: str) -> Path:
    """A local safetensors file with this sha256 (committed, or trained into the cache)."""
    for directory in weight_search_dirs():
        for path in sorted(directory.rglob("*.safetensors")) if directory.is_dir() else []:
            if path.name.startswith("checkpoint"):
                continue
            stat = path.stat()
            if _sha256_of(path, stat.st_size, stat.st_mtime) == sha256:
                return path
    raise MissingResource(f"weights with sha256 {sha256[:12]}... are not in the repository or the cache "
                          f"({cache_dir()}); train or download them first")


def defense_from_record(record: dict[str, Any], spec: Spec, device: torch.device) -> Defense:
    entry = record["entry"]
    dataset = spec.dataset(record["dataset"])
    return judged_defense(entry["architecture"], find_weights(entry["weights"]["sha256"]),
                          sha256=entry["weights"]["sha256"], num_classes=dataset.num_classes,
                          in_channels=dataset.input_shape[0], name=entry["name"],
                          randomized=bool(entry.get("randomized")),
                          normalization=entry.get("normalization"), smoothing=entry.get("smoothing"),
                          device=device)


def regression_spec(spec: Spec, record: dict[str, Any], n: int | None = None) -> Spec:
    """The spec with a `regression` budget: the record's budget cut to the first examples."""
    dataset = spec.dataset(record["dataset"])
    recorded = dataset.budget(record["budget"])
    randomized = record["randomness"]["attacked_as_randomized"]
    if n is None:
        n = REGRESSION_N_RANDOMIZED if randomized else REGRESSION_N
    nattack_n = REGRESSION_NATTACK_N_RANDOMIZED if randomized else REGRESSION_NATTACK_N
    budget = dataclasses.replace(recorded, name=REGRESSION_BUDGET, n=min(n, record["n"]),
                                 nattack_n=min(nattack_n, record["nattack_n"]),
                                 smoothed_n=None, smoothed_nattack_n=None)   # n is the record's own already
    return spec.with_budget(record["dataset"], budget)


def _device_for(record: dict[str, Any]) -> torch.device:
    recorded = record["provenance"].get("device", "cpu")
    if str(recorded).startswith("cuda"):
        if not torch.cuda.is_available():
            raise MissingResource("the record was measured on a GPU and this machine has none")
        return torch.device("cuda")
    return torch.device("cpu")


def regression_sample(record_path: Path, n: int, size: int) -> np.ndarray:
    """The examples a replay re-measures: `size` of the record's n, uniformly at random, keyed by the
    sha256 of the record file, so that no fixed part of the subset is the only one ever replayed.
    A record with m of its n per-example bits changed is caught by one replay with probability
    1 - C(n - m, size) / C(n, size) (leaderboard/README.md quotes it)."""
    from benchmark.evaluation.cascade import adaptive_subsample

    key = int(file_sha256(record_path)[:15], 16)
    return np.flatnonzero(adaptive_subsample(n, min(size, n), key))


def adaptive_replay_examples(record: dict[str, Any], outcomes: dict[str, Any]) -> np.ndarray | None:
    """The examples whose NAttack outcome a replay re-measures: the record's first attacked ones (its
    subsample under spec v2 is spread over all n). None for a spec v1 record (its first examples)."""
    nattack = outcomes.get("nattack")
    if nattack is None or nattack.attacked is None:
        return None
    randomized = record["randomness"]["attacked_as_randomized"]
    count = REGRESSION_NATTACK_N_RANDOMIZED if randomized else REGRESSION_NATTACK_N
    return np.flatnonzero(nattack.attacked)[:count]


def _replay_evaluation(record: dict[str, Any], spec: Spec, device: torch.device, families: tuple[str, ...],
                       **options: Any) -> dict[str, Any]:
    return _replay(record, spec, device, families, **options).outcomes


def _replay(record: dict[str, Any], spec: Spec, device: torch.device, families: tuple[str, ...],
            **options: Any):
    from benchmark.evaluation.entry import EntryInfo
    from benchmark.evaluation.loop import evaluate

    defense = defense_from_record(record, spec, device)
    try:
        return evaluate(defense, record["dataset"], budget=REGRESSION_BUDGET, seed=record["seed"],
                        device=device, batch_size=record["provenance"].get("batch_size"), spec=spec,
                        progress=False, entry=EntryInfo(name=record["entry"]["name"]), families=families,
                        memory_format=record["provenance"].get("memory_format", "contiguous"),
                        cudnn_autotune=record["provenance"].get("cudnn_autotune", False), **options)
    except DataError as error:
        raise MissingResource(f"the {record['dataset']} data directory is missing: {error}") from None


def replays_consistency_checks(record: dict[str, Any]) -> bool:
    """Whether a replay runs the admission checks (benchmark.evaluation.checks) again: not for a smoothed
    entry, where they are most of the replay (200 of 480 s for A_pni-smoothed on 2 cores: every
    prediction is m draws, each with its own weight noise) and decide no recorded number; the checks
    of smoothed defenses are tested in tests/evaluation/test_checks.py."""
    return not record["entry"].get("smoothing")


@cache
def replay(record_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Re-evaluate a record's entry on the regression subset:
    {measurement: (example indices, bool [repeats, k] outcomes on them)}.

    Under spec v2 NAttack is replayed apart, without the cascade, on the record's first attacked
    examples (`adaptive_replay_examples`): they survived the other families in the record, so the
    cascade attacked them there, and per-example draws make the search the same."""
    record = load_record(record_path)
    device = _device_for(record)
    spec = regression_spec(load_spec(), record)
    if spec.version != record["spec"]["version"]:
        raise MissingResource(f"the record is of spec {record['spec']['version']}, this threatbench "
                              f"judges with {spec.version}")
    families = tuple(name for name, status in record["families"].items() if status.get("status") == "run")
    chosen = adaptive_replay_examples(record, read_outcomes(record_path))
    replayed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    first = tuple(f for f in families if f != "adaptive") if chosen is not None else families
    check = replays_consistency_checks(record)
    if first and chosen is not None:   # spec v2: a random sample of the record's n examples
        sample = regression_sample(record_path, record["n"], spec.dataset(record["dataset"]).budgets[
            REGRESSION_BUDGET].n)
        spec = regression_spec(load_spec(), record, n=record["n"])
        outcomes = _replay_evaluation(record, spec, device, first, examples=sample, consistency_check=check)
        for name, outcome in outcomes.items():
            if outcome.n == record["n"]:   # not the eps = 1 diagnostic (its first examples only)
                replayed[name] = (sample, outcome.correct[:, sample])
    elif first:   # spec v1 records are superseded and not replayed; kept for a replay of the first n
        outcomes = _replay_evaluation(record, spec, device, first, consistency_check=check)
        for name, outcome in outcomes.items():
            replayed[name] = (np.arange(outcome.n), outcome.correct)
    if chosen is not None and "adaptive" in families:
        n = int(chosen[-1]) + 1 if chosen.size else 1
        mask = np.zeros(n, dtype=bool)
        mask[chosen] = True
        spec = regression_spec(load_spec(), record, n=n)
        # The admission checks run once per entry: above, with the other families, when there are any.
        outcomes = _replay_evaluation(record, spec, device, ("adaptive",), cascade=False, adaptive_examples=mask,
                                      consistency_check=check and not first)
        replayed["nattack"] = (chosen, outcomes["nattack"].correct[:, chosen])
    return replayed


def compare(record_path: Path, measurement: str) -> None:
    """Assert the replayed outcomes of one measurement agree with the recorded ones."""
    record = load_record(record_path)
    columns, replayed = replay(record_path)[measurement]
    problem = disagreement(record, measurement, columns, replayed,
                           read_outcomes(record_path)[measurement].correct[:, columns])
    assert problem is None, problem


def disagreement(record: dict[str, Any], measurement: str, columns: np.ndarray, replayed: np.ndarray,
                 recorded: np.ndarray) -> str | None:
    """Why replayed outcomes disagree with recorded ones (None: they agree): bit for bit for a
    deterministic entry on the recorded device type, else within overlapping 95% intervals."""
    k = replayed.shape[1]
    if k == 0:
        return f"{record['entry']['name']} {measurement}: nothing was replayed"
    exact = (not record["randomness"]["attacked_as_randomized"]
             and _device_for(record).type == record["provenance"].get("device", "cpu").split(":")[0])
    if exact:
        differing = np.flatnonzero(replayed[0] != recorded[0])
        if differing.size == 0:
            return None
        where = (f"of the first {k}" if np.array_equal(columns, np.arange(k))
                 else f"(by index in the evaluation subset) of the {k} replayed")
        shown = columns[differing][:10].tolist()
        more = f" and {differing.size - len(shown)} more" if differing.size > len(shown) else ""
        return (f"{record['entry']['name']} {measurement}: examples {shown}{more} {where} changed outcome "
                f"({int(recorded[0].sum())} correct recorded, {int(replayed[0].sum())} now)")
    recorded_interval = wilson_interval(int(round(recorded.sum(axis=1).mean())), k)
    replayed_interval = wilson_interval(int(round(replayed.sum(axis=1).mean())), k)
    if intervals_overlap(recorded_interval, replayed_interval):
        return None
    return (f"{record['entry']['name']} {measurement}: accuracy on {k} replayed examples moved from "
            f"{recorded_interval} to {replayed_interval} (95% intervals no longer overlap)")


def check_clean_bits(record_path: Path) -> None:
    """Re-predict every clean example of a record, and check the evaluation subset's sha256.

    The cheapest evidence against a per-example file edited together with every number derived from
    it (benchmark.evaluation.record_verify cannot see that): raises RecordError when the bits or the subset differ,
    MissingResource when the weights or the data are not on this machine."""
    record = load_record(record_path)
    spec = spec_for_record(record["spec"]["version"], record["spec"]["sha256"])
    spec = regression_spec(spec, record, n=record["n"])
    result = _replay(record, spec, _device_for(record), (), consistency_check=False)
    if result.record["subset_sha256"] != record["subset_sha256"]:
        raise RecordError(f"{record_path}: field 'subset_sha256': {record['subset_sha256'][:12]}..., but the "
                          f"first {record['n']} {record['dataset']} evaluation examples hash to "
                          f"{result.record['subset_sha256'][:12]}...")
    columns = np.arange(record["n"])
    problem = disagreement(record, "clean", columns, result.outcomes["clean"].correct,
                           read_outcomes(record_path)["clean"].correct)
    if problem is not None:
        raise RecordError(f"{record_path}: the per-example file does not match the model: {problem}")


def check_committed_evidence(results_dir: Path, spec_version: str) -> list[str]:
    """`threatbench leaderboard --check`: every record verified on load (benchmark.evaluation.record_verify), and
    the clean bits of every current-spec record re-predicted; one line per record."""
    lines = []
    for path in record_paths(results_dir):
        record = load_record(path)
        name = f"{record['dataset']}/{record['entry']['name']} ({record['budget']}, spec {record['spec']['version']})"
        if record["spec"]["version"] != spec_version:
            lines.append(f"{name}: numbers recomputed from its per-example file (superseded: not re-predicted)")
            continue
        try:
            check_clean_bits(path)
        except MissingResource as missing:
            raise RecordError(f"{path}: cannot verify its clean bits: {missing}") from None
        lines.append(f"{name}: numbers recomputed; {record['n']} clean predictions re-made, agreeing")
    return lines
