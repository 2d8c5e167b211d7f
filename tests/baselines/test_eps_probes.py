"""Eps probes: a claim's two sides measured on the same examples at several eps, resumable, on the page."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from baselines.eps_probes import (
    EpsProbe,
    ProbePoint,
    Side,
    probe_points,
    probe_table,
    run_probe,
)
from benchmark.data.evaluation_set import EvaluationSet, InMemoryImages
from benchmark.errors import ThreatbenchError
from benchmark.models.defense import Defense
from benchmark.spec import AttackParams, load_spec

DATASET = "fashion-mnist"


def tiny_set(n: int = 30) -> EvaluationSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return EvaluationSet(DATASET, n, "s" * 64, labels, InMemoryImages(images))


def linear_defense(seed: int, *, randomized: bool = False) -> Defense:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    return Defense(model.eval(), 10, randomized=randomized, name=f"linear{seed}")


PROBE = EpsProbe("a", "T", Side("T", "fgsm"), Side("T", "transfer/S/fgsm"), "why.", eps=(0.05, 0.1))


def test_attacks_scale_their_steps_with_eps_and_fgsm_needs_none():
    pgd = AttackParams("pgd", "true", steps=40, step_size=0.00625, random_start=True)
    rand = AttackParams("rand_fgsm", "true", alpha=0.05)
    assert pgd.at_eps(0.3, 0.1).step_size == pytest.approx(0.01875)
    assert rand.at_eps(0.3, 0.1).alpha == pytest.approx(0.15)
    fgsm = AttackParams("fgsm", "true")
    assert fgsm.at_eps(0.3, 0.1) == fgsm


def test_a_probe_measures_both_sides_at_every_eps_and_resumes(tmp_path, monkeypatch):
    import baselines.eps_probes as probes

    out = tmp_path / "probe.json"
    defenses, weights = {"T": linear_defense(0)}, {"T": "a" * 64}
    sources = {"S": linear_defense(1)}
    record = run_probe(PROBE, defenses, weights, sources, dataset=DATASET, spec=load_spec(), eval_set=tiny_set(),
                       out=out, device=torch.device("cpu"), batch_size=10, progress=False)
    points = probe_points(record, PROBE)
    assert [p.eps for p in points] == [0.05, 0.1]
    assert all(p.high.shape == (30,) and p.low.shape == (30,) for p in points)
    # white-box FGSM on the target itself is no weaker than clean, and stronger at the larger eps
    assert points[1].high.sum() <= points[0].high.sum()

    def fail(*args, **kwargs):
        raise AssertionError("a stored point was measured again")

    monkeypatch.setattr(probes, "measure_side", fail)
    again = run_probe(PROBE, defenses, weights, sources, dataset=DATASET, spec=load_spec(), eval_set=tiny_set(),
                      out=out, device=torch.device("cpu"), batch_size=10, progress=False)
    assert again["points"] == record["points"]
    with pytest.raises(AssertionError, match="measured again"):   # other weights: measured afresh
        run_probe(PROBE, defenses, {"T": "b" * 64}, sources, dataset=DATASET, spec=load_spec(),
                  eval_set=tiny_set(), out=out, device=torch.device("cpu"), batch_size=10, progress=False)


def test_a_randomized_model_is_refused_with_its_name(tmp_path):
    with pytest.raises(ThreatbenchError, match="T is randomized"):
        run_probe(PROBE, {"T": linear_defense(0, randomized=True)}, {"T": "a" * 64}, {"S": linear_defense(1)},
                  dataset=DATASET, spec=load_spec(), eval_set=tiny_set(), out=tmp_path / "p.json",
                  device=torch.device("cpu"), progress=False)


def bits(correct: int, n: int = 100) -> np.ndarray:
    return np.arange(n) < correct


def test_the_table_says_where_the_claimed_direction_holds_after_bonferroni():
    points = [ProbePoint(0.1, bits(60), bits(58)),      # 2 discordant pairs: nowhere near significant
              ProbePoint(0.3, bits(60), bits(40))]      # 20 discordant, all one way: p = 2**-20
    sentence, headers, rows = probe_table(PROBE, points, spec_eps=0.1)
    assert "holds (paired exact test, p < 0.025, Bonferroni over 2 eps) at eps 0.3." in sentence
    assert rows[0][0] == "0.1 (spec)" and rows[1][0] == "0.3"
    assert rows[1][3] == "+20.0" and rows[1][4] == "9.5e-07"
    sentence, _, _ = probe_table(PROBE, points[:1], spec_eps=0.1)
    assert "holds at none of the 1 eps measured" in sentence
    assert "fools the model less" not in sentence


def test_an_attack_weaker_at_a_larger_eps_is_called_out_as_masking():
    points = [ProbePoint(0.05, bits(40), bits(30)), ProbePoint(0.1, bits(60), bits(20))]  # high rises 40 -> 60
    sentence, _, rows = probe_table(PROBE, points, spec_eps=0.1)
    assert "T fgsm is more accurate at eps 0.1 than at 0.05 (+20.0 points, paired p = 9.5e-07)" in sentence
    assert "masked gradient" in sentence and "T transfer/S/fgsm is more accurate" not in sentence
    underflow = ProbePoint(0.3, bits(2000, 2000), bits(0, 2000))      # p = 2**-2000 underflows to 0
    assert probe_table(PROBE, [underflow], spec_eps=0.1)[2][0][4] == "< 1e-300"


def test_the_page_shows_a_probe_beside_its_claim_only_for_the_weights_it_judges():
    from baselines.reproduction import FASHION_PROBES, render_page
    from tests.baselines.test_reproduction import N, masked_records

    probe = next(p for p in FASHION_PROBES if p.claim == "a")
    record = {"high": {"model": probe.high.model, "measurement": probe.high.measurement},
              "low": {"model": probe.low.model, "measurement": probe.low.measurement}, "n": N,
              "weights_sha256": {"A_adv": "f" * 64},          # the weights of masked_records()
              "points": [{"eps": "0.1", "bits": {probe.high.label(): _encode(bits(350, N)),
                                                   probe.low.label(): _encode(bits(250, N))}}]}
    page = render_page(DATASET, "quick", masked_records(), {}, {f"a-{probe.name}": record})
    section = page.split("## (a)")[1].split("## (b)")[0]
    assert f"Measured across eps (n = {N}" in section and "| 0.1 (spec) | 70.0 [" in section
    assert "--only probe-b-A_adv" in page.split("## (b)")[1].split("## (c)")[0]
    stale = {**record, "weights_sha256": {"A_adv": "0" * 64}}   # measured before a retraining
    page = render_page(DATASET, "quick", masked_records(), {}, {f"a-{probe.name}": stale})
    section = page.split("## (a)")[1].split("## (b)")[0]
    assert "| 0.1 (spec)" not in section and "not measured yet on this page's models" in section


def _encode(values: np.ndarray) -> str:
    from benchmark.evaluation.results import encode_bits

    return encode_bits(values)


def test_only_rejects_a_name_the_plan_does_not_have():
    from baselines.reproduction import check_only

    check_only(DATASET, ["A_adv", "probe-a-A_adv", "A_pni-smoothing"])
    with pytest.raises(ThreatbenchError, match="--only names 'probe-z'.*choose from"):
        check_only(DATASET, ["probe-z"])
