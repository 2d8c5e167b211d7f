"""Reference entries: claimed numbers with pinned Hub revisions, validated, never shown as measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.board.leaderboard import render_pages
from benchmark.board.references import REFERENCES_DIR, ReferenceError, load_references
from benchmark.tools.regression import regression_cases

GOOD = """
schema = "threatbench.references/1"
dataset = "imagenet"
[[references]]
name = "m"
role = "defense"
architecture = "timm:inception_v3.tf_adv_in1k"
paper = "https://arxiv.org/abs/1"
source = "Table 5"
hub = { repo = "timm/m", revision = "909cbadce5c7ab2fa85d7a37d352c350dc2a14b3", file = "model.safetensors" }
claimed = [ { metric = "clean", threatbench = "clean", top1 = 78.0, top5 = 93.9 } ]
"""


def write(tmp_path: Path, text: str) -> Path:
    directory = tmp_path / "references"
    directory.mkdir(exist_ok=True)
    (directory / "imagenet.toml").write_text(text)
    return directory


def test_the_committed_references_load_with_the_papers_numbers_as_accuracies():
    references = load_references(REFERENCES_DIR)
    imagenet = {r.name: r for r in references["imagenet"]}
    assert set(imagenet) >= {"inception_v3.tf_in1k", "inception_v3.tf_adv_in1k", "inception_resnet_v2.tf_in1k",
                             "inception_resnet_v2.tf_ens_adv_in1k", "inception_v4.tf_in1k"}
    adv = {c.threatbench: c for c in imagenet["inception_v3.tf_adv_in1k"].claimed}
    assert (adv["clean"].top1, adv["step_ll"].top1, adv["step_ll"].top5) == (78.0, 73.2, 91.0)   # 100 - Table 5 errors
    cifar = {r.name: r for r in references["cifar10"]}
    assert cifar["smoothed-CNI-W-ResNet-20"].claimed[0].top1 == 60.4


@pytest.mark.parametrize("change, message", [
    (('revision = "909cbadce5c7ab2fa85d7a37d352c350dc2a14b3"', 'revision = "909cbad"'), "not a full 40-hex"),
    (('revision = "909cbadce5c7ab2fa85d7a37d352c350dc2a14b3"', 'revision = ""'), "revision_note: required"),
    (("top1 = 78.0", "top1 = 178.0"), "top1: expected an accuracy in %"),
    (('source = "Table 5"', 'source = "Table 5"\nmeasured = 1'), "measured: unknown key"),
    (('paper = "https://arxiv.org/abs/1"', 'paper = "javascript:alert(1)"'),
     r"\(m\)\.paper: 'javascript:alert\(1\)' is not an https:// link to arxiv.org, doi.org, openreview.net, "
     "huggingface.co, github.com, the hosts a page links to"),
])
def test_a_bad_reference_is_refused_naming_the_key(tmp_path, change, message):
    with pytest.raises(ReferenceError, match=message):
        load_references(write(tmp_path, GOOD.replace(*change)))


def test_claims_appear_as_claimed_and_unmeasured(tmp_path):
    (tmp_path / "results").mkdir()
    write(tmp_path, GOOD)
    page = render_pages(tmp_path / "results", "1.0.0")["imagenet.md"]
    assert "| m | defense | clean | `clean` | 78 | 93.9 | not measured yet |" in page
    assert "No full-budget record" in page


def test_imagenet_references_are_collected_as_regressions_with_dataset_ids():
    ids = [case.test_id for case in regression_cases()]
    assert "imagenet-inception_v3.tf_adv_in1k-step_ll" in ids
    assert "imagenet-inception_v3.tf_adv_in1k-transfer_inception_v4_step_ll" in ids
    assert "cifar10-TRADES-WRN-34-10-pgd" in ids
