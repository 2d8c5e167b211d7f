"""The sections of a dataset's page, each a list of markdown lines (empty when it has nothing to
show): the ranked table of a budget, the flagged, provisional and superseded records, the
submitters' claims, the accuracy-vs-eps sweeps and the reference entries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmark.board.cells import (
    ADAPTIVE_HEADER,
    HEADERS,
    KEY_HEADER,
    KEY_SIZE,
    cells,
    flags_cell,
    key_size,
    p_value_cell,
    percent,
    record_cell,
    table,
    with_interval,
)
from benchmark.board.ranking import Row, budget_rows, current_rows, ranked_rows
from benchmark.board.record_fields import row_anchor
from benchmark.board.references import Reference, hub_link
from benchmark.evaluation.cascade import adaptive_cell
from benchmark.evaluation.diagnostics import ALPHA
from benchmark.spec import FAMILY_LABELS, load_spec
from benchmark.untrusted import link, markdown_code, markdown_text


def render_ranked(dataset: str, budget: str, rows: list[Row]) -> list[str]:
    """One ranked budget's table, each row with its anchor and its record."""
    body = [[str(rank), f'<a id="{row_anchor(row.record)}"></a>'
             + (f"**{markdown_text(row.name)}**" if tied else markdown_text(row.name)),
             markdown_text(row.record["entry"].get("kind", "")), *cells(row.record), record_cell(row)]
            for rank, row, tied in ranked_rows(budget_rows(rows, budget))]
    if not body:
        return []
    return ["", f"## Ranked: the {budget} budget", "", describe_budget(dataset, budget), "",
            *table(["rank", "entry", "kind", *HEADERS, "record (judge commit)"], body)]


def describe_budget(dataset: str, budget: str) -> str:
    """What a ranked budget measures, from the current spec."""
    spec = load_spec()
    dataset_spec = spec.dataset(dataset)
    chosen = dataset_spec.budget(budget)
    iterations = chosen.nattack_max_iterations or dataset_spec.nattack.max_iterations
    smoothed = ("" if chosen.smoothed_n is None else
                f" (smoothed entries, which pay m forward passes per query: n = {chosen.smoothed_n:,}, "
                f"subsample {chosen.smoothed_nattack_n:,})")
    return (f"Spec {spec.version}, budget `{budget}`: n = {chosen.n:,} test images, NAttack on a seeded "
            f"uniform subsample of {chosen.nattack_n:,}{smoothed}, population "
            f"{dataset_spec.nattack.population}, at most {iterations} iterations.")


def render_flagged(rows: list[Row]) -> list[str]:
    """One line per raised gradient-masking flag, for every entry (any budget) that has one."""
    flagged = sorted((r for r in rows if r.masking_flags), key=lambda r: (r.name, r.record["budget"]))
    if not flagged:
        return []
    body = [[markdown_text(row.name), markdown_text(row.record["entry"].get("kind", "")),
             markdown_text(row.record["budget"]), markdown_code(name), p_value_cell(row.record["flags"][name]),
             markdown_text(row.record["flags"][name].get("evidence", "-"))]
            for row in flagged for name in row.masking_flags]
    return ["", "## Flagged (not ranked)", "",
            "A raised gradient-masking flag means the attacks may have been fooled rather than the "
            "defense being robust, so these entries are never ranked, whatever their budget. p: the "
            f"flag's one-sided exact p-value, raised below {ALPHA:g} (see "
            "[docs/ranking.md](../docs/ranking.md)).", "",
            *table(["entry", "kind", "budget", "flag", "p", "evidence"], body)]


def render_provisional(rows: list[Row]) -> list[str]:
    """Current records that are not ranked: quick budget, a family not run, or flagged."""
    provisional = sorted((r for r in rows if not r.rankable), key=lambda r: (r.name, r.record["budget"]))
    if not provisional:
        return []
    return ["", "## Provisional (not ranked)", "",
            "Quick-budget, incomplete or flagged evaluations: useful to see, never ranked, never "
            "cited as leaderboard numbers.", "",
            *table(["entry", "kind", "why provisional", *HEADERS],
                   [[markdown_text(r.name), markdown_text(r.record["entry"].get("kind", "")),
                     r.why_provisional(), *cells(r.record)] for r in provisional])]


def render_superseded(rows: list[Row]) -> list[str]:
    """Records of older specs: their numbers as measured then, never ranked or compared."""
    old = sorted((r for r in rows if r.superseded),
                 key=lambda r: (r.record["spec"]["version"], r.name, r.record["budget"]))
    if not old:
        return []
    current = old[0].current_spec
    body = [[markdown_text(r.name), markdown_text(r.record["spec"]["version"]), markdown_text(r.record["budget"]),
             percent(r.record["clean"]),
             percent(r.record["worst_case"].get("white_box")), adaptive_cell(r.record),
             with_interval(r.record["worst_case"].get("all")), key_size(r.record), flags_cell(r.record)]
            for r in old]
    return ["", "## Superseded records (older specs, never ranked)", "",
            f"Measured under an older threat model; spec {current} changed the attacks "
            "([docs/threat-model.md](../docs/threat-model.md)), so these numbers are kept for the record "
            "only and must not be cited beside current ones. Accuracy in %.", "",
            *table(["entry", "spec", "budget", "clean", f"worst {FAMILY_LABELS['white_box']}", ADAPTIVE_HEADER,
                    KEY_HEADER, KEY_SIZE, "flags (as recorded)"], body)]


def render_submission_claims(rows: list[Row]) -> list[str]:
    """Submitters' own numbers (from their manifests) beside what the judge measured."""
    body = []
    for row in sorted(rows, key=lambda r: (r.name, r.record["budget"])):
        claimed = ((row.record["entry"].get("submission") or {}).get("claimed")) or {}
        for key, value in claimed.items():
            if key == "source":
                continue
            summary = _measured_summary(row.record, key)
            measured = ("not measured" if summary is None
                        else f"{with_interval(summary)} ({markdown_text(row.record['budget'])})")
            body.append([markdown_text(row.name), markdown_code(key), f"{value:g}", measured,
                         markdown_text(claimed.get("source", "-"))])
    if not body:
        return []
    return ["", "## Submitters' claims", "",
            "Numbers the submitters claim in their manifests, beside the judge's measurement of the same "
            "quantity under this spec. A claim is never shown as measured.", "",
            *table(["entry", "claim", "claimed", "measured [95% CI]", "source"], body)]


def _measured_summary(record: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The record's number for a claim key: clean, a family's worst case ("all" too), or an attack."""
    if key == "clean":
        return record["clean"]
    if key in record["worst_case"]:
        return record["worst_case"][key]
    return record["attacks"].get(key)


def load_eps_sweeps(sweeps_dir: Path, dataset: str) -> list[dict[str, Any]]:
    from benchmark.board.sweeps import EPS_SWEEP_SCHEMA
    from benchmark.evaluation.results import read_json

    records = [read_json(path) for path in sorted((sweeps_dir / dataset).glob("*.json"))]
    return [r for r in records if isinstance(r, dict) and r.get("schema") == EPS_SWEEP_SCHEMA]


def plot_name(dataset: str) -> str:
    return f"{dataset}-eps.png"


def split_eps_sweeps(sweeps: list[dict[str, Any]], rows: list[Row],
                     spec_version: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(shown, stale): a sweep is shown only if it was measured under the page's spec on the weights
    that a current record of the same entry judged; a curve of other weights (an older, retrained
    model) would sit beside numbers it does not describe."""
    judged = {(row.name, _weights_sha256(row.record["entry"])) for row in current_rows(rows)}
    shown, stale = [], []
    for record in sweeps:
        current = (record["spec"]["version"] == spec_version
                   and (record["entry"]["name"], _weights_sha256(record["entry"])) in judged)
        (shown if current else stale).append(record)
    return shown, stale


def _weights_sha256(entry: dict[str, Any]) -> str | None:
    weights = entry.get("weights")
    return weights.get("sha256") if isinstance(weights, dict) else None


def render_eps_sweeps(dataset: str, sweeps: list[dict[str, Any]], stale: list[dict[str, Any]] = ()) -> list[str]:
    if not sweeps and not stale:
        return []
    lines = ["", "## Accuracy vs eps", ""]
    if sweeps:
        lines += [f"![accuracy under PGD vs eps]({plot_name(dataset)})", "",
                  f"PGD (EPGD for randomized entries) with the spec's schedule scaled to each eps; n = "
                  f"{sweeps[0]['n']} (`threatbench sweep`). Accuracy in %.", ""]
        eps_values = sorted({p["eps"] for record in sweeps for p in record["points"]})
        body = []
        for record in sorted(sweeps, key=lambda r: r["entry"]["name"]):
            by_eps = {p["eps"]: p for p in record["points"]}
            body.append([markdown_text(record["entry"]["name"]), markdown_text(record["attack"]["name"]),
                         *(percent(by_eps.get(eps)) for eps in eps_values)])
        lines += table(["entry", "attack", *(f"eps {eps:g}" for eps in eps_values)], body)
    if stale:
        described = ", ".join(
            f"{markdown_text(r['entry']['name'])} (spec {markdown_text(r['spec']['version'])}, weights "
            f"`{markdown_text(str(_weights_sha256(r['entry']))[:12])}`)"
            for r in sorted(stale, key=lambda r: r["entry"]["name"]))
        names = ",".join(sorted({r["entry"]["name"] for r in stale}))
        lines += ([""] if sweeps else []) + [
                  f"Not shown: sweeps measured on other weights than this page's current records, or "
                  f"under an older spec: {described}. Rerun them with "
                  f"`threatbench sweep --dataset {dataset} --entries {markdown_text(names)}`."]
    return lines


def render_references(references: list[Reference], rows: list[Row]) -> list[str]:
    lines = ["", "## Reference entries (numbers claimed by their papers)", "",
             "The papers' own numbers, converted to accuracy where they report error rates. *Claimed* is "
             "never *measured*: a measured number appears beside a claim only when a record of the same "
             "entry exists, with its budget.", ""]
    body = []
    for reference in references:
        for claim in reference.claimed:
            paper = link("paper", reference.paper)
            source = markdown_text(reference.source)
            body.append([markdown_text(reference.name), markdown_text(reference.role),
                         markdown_text(claim.metric), markdown_code(claim.threatbench),
                         f"{claim.top1:g}", "-" if claim.top5 is None else f"{claim.top5:g}",
                         _measured_beside(claim.threatbench, rows, reference.name),
                         source if paper is None else f"{paper}: {source}", hub_link(reference)])
    lines += table(["entry", "role", "claim", "threatbench measurement", "claimed top-1",
                    "claimed top-5", "measured top-1 [95% CI]", "source", "weights"], body)
    notes = [f"- {markdown_text(r.name)}: {markdown_text(r.revision_note)}" for r in references if r.revision_note]
    return lines + (["", *notes] if notes else [])


def _measured_beside(claim_measurement: str, rows: list[Row], name: str) -> str:
    for row in rows:
        if row.name == name and (claim_measurement == "clean" or claim_measurement in row.record["attacks"]):
            summary = row.record["clean"] if claim_measurement == "clean" else row.record["attacks"][claim_measurement]
            return f"{with_interval(summary)} ({markdown_text(row.record['budget'])})"
    return "not measured yet"
