"""The consistency checks (`benchmark.evaluation.checks`) of a deterministic defense.

Deterministic defenses must agree exactly, label for label. The only tolerance is on the reference
logits: a label within LOGIT_TOLERANCE of the top logit counts as the same answer, so float differences
between batch sizes or kernels at an argmax tie are not refusals. When a grad-mode or batch comparison
disagrees, the calls are repeated to tell apart what it depends on: answers that change on a repeat of
the same call are reported as history (a counter), the others as grad-mode or batch.
Cost: 12 n images through the model plus one input gradient of n images (n = 64: 768 + 64).
"""

from __future__ import annotations

import torch

from benchmark.errors import StatefulDefenseError
from benchmark.evaluation.checks.probe import (
    BATCH,
    FIX,
    GRAD_MODE,
    HISTORY,
    Labels,
    Probe,
    forward_no_grad,
    forward_under_grad,
    odd_chunk_sizes,
    predict,
    predict_in_chunks,
    seeded_order,
)
from benchmark.models.defense import Defense

LOGIT_TOLERANCE = 1e-3       # relative to 1 + the row's largest |logit|; covers TF32 and kernel choice


def accepted_labels(logits: torch.Tensor) -> torch.Tensor:
    """(n, classes) bool: the labels that count as the answer of these logits (the argmax and any
    class tied with it within LOGIT_TOLERANCE)."""
    top = logits.max(dim=1, keepdim=True).values
    scale = 1.0 + logits.abs().max(dim=1, keepdim=True).values
    return logits >= top - LOGIT_TOLERANCE * scale


def disagreements(labels: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
    return ~accepted.gather(1, labels.view(-1, 1).long()).view(-1)


def _signature(labels: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
    """The labels where they disagree with the reference, -1 elsewhere: what a repeat must reproduce."""
    return torch.where(disagreements(labels, accepted), labels.long(), -1)


def check_deterministic(defense: Defense, probe: Probe, seed: int) -> None:
    _check_grad_mode(defense, probe)
    accepted, answers = _check_history(defense, probe)
    _check_batch(defense, probe, accepted, answers, seed)


def _check_grad_mode(defense: Defense, probe: Probe) -> None:
    x, accepted = probe.x, accepted_labels(probe.clean_logits)
    calls: dict[str, Labels] = {
        "predict under no_grad": lambda: predict(defense, x),
        "predict under enable_grad": lambda: predict(defense, x, grad=True),
        "forward under no_grad": lambda: forward_no_grad(defense, x).argmax(dim=1),
    }
    answers = {name: call() for name, call in calls.items()}
    counts = {name: int(disagreements(labels, accepted).sum()) for name, labels in answers.items()}
    worst = max(counts, key=counts.__getitem__)
    if counts[worst] == 0:
        return
    reference: Labels = lambda: forward_under_grad(defense, x).argmax(dim=1)   # noqa: E731
    repeated = [reference, *calls.values()]
    first = [probe.clean_logits.argmax(dim=1), *answers.values()]
    _raise_if_repeats_differ(defense, repeated, first, accepted, f"{worst} on the clean inputs")
    switches = counts["forward under no_grad"] or not torch.equal(answers["predict under no_grad"],
                                                                 answers["predict under enable_grad"])
    what = ("predictions depend on whether gradients are enabled" if switches
            else "predict does not answer the argmax of forward, the logits white-box attacks follow")
    raise StatefulDefenseError(
        f"{defense.name}: refused by the {GRAD_MODE} check: {what} ({worst} and forward under grad "
        f"disagree on {counts[worst]} of {len(x)} clean inputs); {FIX}", GRAD_MODE)


def _check_history(defense: Defense, probe: Probe) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the accepted labels of `pool` under grad and its answers in the original batches."""
    batches = (probe.first, probe.second)
    accepted = torch.cat([accepted_labels(forward_under_grad(defense, batch)) for batch in batches])
    first_time = torch.cat([predict(defense, batch) for batch in batches])
    second_time = torch.cat([predict(defense, batch) for batch in batches])
    fresh = int((disagreements(first_time, accepted) | disagreements(second_time, accepted)).sum())
    changed = int((_signature(first_time, accepted) != _signature(second_time, accepted)).sum())
    total = len(first_time)
    if fresh:
        raise StatefulDefenseError(
            f"{defense.name}: refused by the {HISTORY} check: predictions depend on what was queried "
            f"before ({fresh} of {total} inputs, each asked after an input within eps of it, were "
            f"answered differently from a fresh evaluation of the same batch under grad); {FIX}", HISTORY)
    if changed:
        _raise_history(defense, changed, total, "both batches asked twice")
    return accepted, second_time


def _check_batch(defense: Defense, probe: Probe, accepted: torch.Tensor, original: torch.Tensor,
                 seed: int) -> None:
    pool = probe.pool
    order, sizes = seeded_order(len(pool), seed, "batch-order", 0, pool.device), odd_chunk_sizes(len(pool))
    chunked = predict_in_chunks(defense, pool, order, sizes)
    count = int(disagreements(chunked, accepted).sum())
    if count == 0:
        return
    calls: list[Labels] = [
        lambda: torch.cat([predict(defense, probe.first), predict(defense, probe.second)]),
        lambda: predict_in_chunks(defense, pool, order, sizes),
    ]
    _raise_if_repeats_differ(defense, calls, [original, chunked], accepted, "the shuffled batches")
    raise StatefulDefenseError(
        f"{defense.name}: refused by the {BATCH} check: predictions depend on the batch an input is in "
        f"({count} of {len(pool)} inputs were answered differently in a shuffled order, in batches of "
        f"{', '.join(map(str, sizes))} rows, than in their original batch of {len(probe.first)}); {FIX}",
        BATCH)


def _raise_if_repeats_differ(defense: Defense, calls: list[Labels], first: list[torch.Tensor],
                             accepted: torch.Tensor, where: str) -> None:
    """Repeat every call, in reverse order then in order: a call whose answers change is history,
    whatever else differed (a call counter can make any single comparison look like grad mode)."""
    for order in (reversed(range(len(calls))), range(len(calls))):
        for index in order:
            expected = _signature(first[index], accepted)
            changed = int((_signature(calls[index](), accepted) != expected).sum())
            if changed:
                _raise_history(defense, changed, len(expected), where)


def _raise_history(defense: Defense, changed: int, total: int, where: str) -> None:
    raise StatefulDefenseError(
        f"{defense.name}: refused by the {HISTORY} check: predictions depend on what was queried before "
        f"(repeating the same call on the same batch ({where}) changed {changed} of {total} answers); "
        f"{FIX}", HISTORY)
