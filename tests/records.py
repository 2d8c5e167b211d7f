"""True records for page tests: per-example bits chosen by the test, every number derived from them
with the judge's own functions, sizes and attack lists those of the current spec (so that the records
pass benchmark.evaluation.record_verify exactly as a measured record does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmark.evaluation.cascade import adaptive_subsample
from benchmark.evaluation.diagnostics import gradient_masking_flags
from benchmark.evaluation.plan import white_box_attacks
from benchmark.evaluation.record_verify import derived_numbers
from benchmark.evaluation.results import RESULT_SCHEMA, Outcomes, examples_document, write_result
from benchmark.spec import FAMILIES, load_spec

DATASET = "fashion-mnist"


def prefix_bits(fraction: float, n: int) -> np.ndarray:
    """bool [1, n]: the first round(fraction * n) examples correct."""
    row = np.zeros((1, n), dtype=bool)
    row[0, :round(fraction * n)] = True
    return row


def write_true_record(directory: Path, name: str, *, clean: float, white_box: float, transfer: float,
                      nattack: float | None, budget: str = "standard", kind: str = "baseline",
                      above_clean: bool = False) -> Path:
    """A record of `name` whose examples are correct, in index order, on the given fractions: clean,
    every white-box attack, every transfer attack, NAttack (None: the adaptive family not run).
    `above_clean`: transfer FGSM leaves every example correct (a non-masking flag is raised)."""
    spec = load_spec()
    dataset = spec.dataset(DATASET)
    plan = dataset.budget(budget)
    n = plan.n
    outcomes = {"clean": Outcomes(prefix_bits(clean, n))}
    attacks: dict[str, dict] = {}
    for attack in white_box_attacks(dataset, randomized=False):
        outcomes[attack] = Outcomes(prefix_bits(white_box, n))
        attacks[attack] = {"family": "white_box", "params": {}}
    for attack in ("fgsm", "pgd"):
        above = above_clean and attack == "fgsm"
        outcomes[f"transfer/B/{attack}"] = Outcomes(np.ones((1, n), dtype=bool) if above else prefix_bits(transfer, n))
        attacks[f"transfer/B/{attack}"] = {"family": "transfer", "params": {"source": "B"}}
    staged = None
    if nattack is not None:
        staged = "nattack"
        subsample = adaptive_subsample(n, plan.nattack_n, spec.seed)
        prior = np.logical_and.reduce([o.correct for o in outcomes.values()])[0]
        attacked = subsample & prior
        correct = np.where(attacked, prefix_bits(nattack, n)[0], outcomes["clean"].correct[0])[None, :]
        outcomes[staged] = Outcomes(correct, np.where(attacked, 1500, 0), subsample=subsample, attacked=attacked)
        attacks[staged] = {"family": "adaptive", "params": {
            "max_iterations": plan.nattack_max_iterations or dataset.nattack.max_iterations,
            "subsample": "uniform", "subsample_size": plan.nattack_n, "cascade": True}}
    outcomes["pgd_unbounded"] = Outcomes(np.zeros((1, spec.diagnostics.unbounded_pgd_examples), dtype=bool))
    diagnostics = {"pgd_unbounded": {"family": "diagnostic", "params": {"eps": 1.0}}}

    families = {family: {"status": "run", "measurements": [a for a, m in attacks.items() if m["family"] == family]}
                if any(m["family"] == family for m in attacks.values())
                else {"status": "not_run", "reason": "not requested"} for family in FAMILIES}
    record = {
        "schema": RESULT_SCHEMA,
        "entry": {"name": name, "kind": kind, "architecture": "mnist_a", "paper": "https://arxiv.org/abs/1705.07204",
                  "weights": {"file": f"{name}.safetensors", "sha256": (name.encode().hex() * 64)[:64]},
                  "randomized": False, "smoothing": None},
        "dataset": DATASET, "spec": {"version": spec.version, "sha256": spec.sha256},
        "threat_model": {"norm": spec.norm, "eps": dataset.eps}, "budget": budget, "n": n,
        "nattack_n": plan.nattack_n, "subset_sha256": "1" * 64, "seed": spec.seed,
        "randomness": {"declared": False, "detected": False, "attacked_as_randomized": False,
                       "prediction_repeats": 1},
        "clean": {}, "attacks": attacks, "families": families, "worst_case": {},
        "diagnostics": diagnostics, "provenance": {"device": "cpu"}, "examples_file": f"{name}.examples.json",
    }
    fill_derived(record, outcomes)
    path = directory / "results" / DATASET / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_result(path, record, outcomes)
    return path


def fill_derived(record: dict, outcomes: dict[str, Outcomes]) -> None:
    """Write into `record` every number its outcomes determine (benchmark.evaluation.record_verify.derived_numbers),
    then the flags."""
    derived = derived_numbers(record, outcomes, load_spec().confidence)
    record["clean"].update(derived["clean"])
    for group in ("attacks", "diagnostics"):
        for name, numbers in derived[group].items():
            record[group][name].update(numbers)
    record["worst_case"] = derived["worst_case"]
    if derived["staged"] is not None:
        record["cascade"] = derived["cascade"]
        record["attacks"][derived["staged"]]["cascade"] = derived["nattack_cascade"]
    record["flags"] = gradient_masking_flags(record, outcomes)


def rederive(path: Path) -> None:
    """Recompute every number of a record file from its (edited) per-example file with the judge's
    own functions: the consistent forgery that only re-running the model can reveal."""
    import json

    from benchmark.evaluation.results import examples_path, read_outcomes

    outcomes, record = read_outcomes(path), json.loads(path.read_text())
    staged = next((name for name, o in outcomes.items() if o.subsample is not None), None)
    if staged is not None:   # a non-attacked example holds its clean outcome (loop.with_cascade_masks)
        nattack = outcomes[staged]
        nattack.correct = np.where(nattack.attacked[None, :], nattack.correct, outcomes["clean"].correct)
        examples_path(path).write_text(json.dumps(examples_document(outcomes)))
    fill_derived(record, outcomes)
    path.write_text(json.dumps(record))
