"""What the commands that measure print: a record as a table with its notes, and the zoo summary."""

from __future__ import annotations

from benchmark.cli.common import percent, wrap

SUMMARY_HEADERS = ["entry", "clean", "white-box", "transfer", "NAttack broke", "all", "flags"]


def _result_rows(result) -> list[list[str]]:
    rows = []
    for row in result.rows():
        queries = row["median_queries"]
        if row["accuracy"] is None:   # the cascade left NAttack no survivor to attack
            accuracy, interval = "-", "no survivor"   # the cascade note below says of how many
        else:
            low, high = row["interval"]
            accuracy, interval = percent(row["accuracy"]), f"[{100 * low:.1f}, {100 * high:.1f}]"
        rows.append([row["measurement"], row["family"], row["n"], accuracy, interval,
                     "" if queries is None else f"{queries:g}",
                     "" if row["seconds"] is None else f"{row['seconds']:.1f}"])
    return rows


def _header(record: dict) -> list[str]:
    randomness = record["randomness"]
    lines = [
        f"{record['entry']['name']} on {record['dataset']}: eps {record['threat_model']['eps']:g} "
        f"(L-inf), budget {record['budget']} (n = {record['n']}, NAttack on {record['nattack_n']}), "
        f"seed {record['seed']}, spec v{record['spec']['version']}",
    ]
    if randomness["attacked_as_randomized"]:
        lines.append(f"randomized defense (declared: {randomness['declared']}, detected: "
                     f"{randomness['detected']}): EOT gradients, accuracy = mean of "
                     f"{randomness['prediction_repeats']} predictions")
    return lines


def _notes(record: dict) -> list[str]:
    from benchmark.board.ranking import ranked_budgets
    from benchmark.evaluation.cascade import describe_cascade

    lines = []
    for name, diagnostic in record.get("diagnostics", {}).items():
        lines.append(f"diagnostic {name} (eps {diagnostic['params'].get('eps', '?')}, n = "
                     f"{diagnostic['n']}): accuracy {percent(diagnostic['accuracy'])}%")
    if record.get("cascade"):
        lines.append("cascade: " + describe_cascade(record["cascade"]))
    for family, status in record["families"].items():
        if status["status"] != "run":
            lines.append(f"{family} family not run: {status['reason']}")
    if record["worst_case"]["all"] is None:
        lines.append("worst case over all families: not available (a family was not run); "
                     "this record cannot be ranked")
    costs = record.get("costs")
    if costs:
        families = ", ".join(f"{f} {v:.1f}" for f, v in costs["seconds_by_family"].items())
        lines.append(f"cost: {costs['seconds']:.1f} s of compute ({families}), {costs['forward_passes']:,} "
                     f"forward and {costs['backward_passes']:,} backward passes, {costs['queries']:,} NAttack "
                     f"queries; {costs['wall_seconds']:.1f} s wall on {costs['processes']} x "
                     f"{costs['device_name']}, {costs['precision']}")
    raised = [name for name, flag in record["flags"].items() if flag["raised"]]
    lines.append("gradient-masking flags: " + (", ".join(raised) if raised else "none raised"))
    for name in raised:
        lines.append(f"  ! {name}: {record['flags'][name]['evidence']}")
    ranked = ranked_budgets(record["dataset"])   # of the current spec
    if record["budget"] not in ranked:
        lines.append(f"note: the {record['budget']} budget is not ranked; the leaderboard ranks the "
                     f"{' and '.join(ranked) or 'no'} budget{'s' if len(ranked) > 1 else ''}")
    return lines


def format_result(result) -> str:
    from tabulate import tabulate

    table = tabulate(_result_rows(result), tablefmt="github",
                     headers=["measurement", "family", "n", "acc. %", "95% CI", "median queries", "s"])
    lines = [wrap(line) for line in _header(result.record)] + ["", table, ""] + _notes(result.record)
    return "\n".join(line if line.startswith("|") else wrap(line) for line in lines)


# ---------------------------------------------------------------- the zoo summary


def _worst(record, family: str) -> str:
    worst = record["worst_case"].get(family)
    return "n/a" if not worst else percent(worst["accuracy"])


def raised_flags(record) -> list[str]:
    return sorted(n for n, flag in record["flags"].items() if flag.get("raised") is True)


def _flags_cell(record) -> str:
    """A count in the narrow table; `flag_notes` names them below it."""
    raised = raised_flags(record)
    return f"{len(raised)} raised" if raised else "-"


def flag_notes(records: list[dict]) -> list[str]:
    """One wrapped line per entry with a raised masking flag: which flags (kept out of the ranking)."""
    return [wrap(f"{record['entry']['name']}: {', '.join(raised_flags(record))} (gradient masking: not ranked)")
            for record in records if raised_flags(record)]


def _nattack_broke(record: dict) -> str:
    """NAttack in a narrow cell: "k of m" survivors broken (median queries); else the page's cell."""
    nattack = record["attacks"].get("nattack") or {}
    cascade, queries = nattack.get("cascade"), nattack.get("queries", {}).get("median")
    if cascade is None or not nattack["params"].get("cascade"):
        from benchmark.evaluation.cascade import adaptive_cell

        return adaptive_cell(record)
    return f"{cascade['broken']} of {cascade['survivors']}" + ("" if queries is None else f" ({queries:g} q)")


def zoo_summary_rows(records: list[dict]) -> list[list[str]]:
    rows = []
    for record in records:
        rows.append([record["entry"]["name"], percent(record["clean"]["accuracy"]),
                     _worst(record, "white_box"), _worst(record, "transfer"), _nattack_broke(record),
                     _worst(record, "all"), _flags_cell(record)])
    return rows
