"""`threatbench sweep`: PGD accuracy vs eps, stored as a curve and drawn on the leaderboard page."""

from __future__ import annotations

import json
from pathlib import Path

from records import write_true_record

from benchmark.board.leaderboard import write_pages
from benchmark.board.sweeps import EPS_SWEEP_SCHEMA, eps_sweep
from benchmark.spec import load_spec
from tests.conftest import requires_fashion

VERSION = load_spec().version


def judged_weights(board: Path, name: str) -> dict:
    """Write a standard record of `name`; the weights it judged."""
    path = write_true_record(board, name, clean=0.9, white_box=0.5, transfer=0.7, nattack=0.6)
    return json.loads(path.read_text())["entry"]["weights"]


@requires_fashion
def test_the_curve_starts_at_clean_accuracy_and_falls(tmp_path, trained_defense, fashion_test_batch):
    out = tmp_path / "leaderboard" / "sweeps" / "fashion-mnist" / "mlp.json"
    out.parent.mkdir(parents=True)
    weights = judged_weights(tmp_path / "leaderboard", "mlp")
    record = eps_sweep(trained_defense, dataset="fashion-mnist", spec=load_spec(), eps_values=[0.0, 0.05, 0.2],
                       n=40, entry={"name": "mlp", "weights": weights}, out=out, batch_size=20, progress=False)
    x, y = fashion_test_batch
    clean = int((trained_defense.predict(x[:40]) == y[:40]).sum()) / 40
    accuracy = [p["accuracy"] for p in record["points"]]
    assert accuracy[0] == clean                       # eps 0: PGD is the identity
    assert accuracy[0] >= accuracy[1] >= accuracy[2] and accuracy[2] < 0.2
    assert all(p["interval"][0] <= p["accuracy"] <= p["interval"][1] for p in record["points"])
    assert record["provenance"]["backward_passes"] == 3 * 40 * 40    # 3 eps x 40 images x 40 steps

    written = write_pages(tmp_path / "leaderboard", VERSION)
    png = tmp_path / "leaderboard" / "fashion-mnist-eps.png"
    assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "leaderboard" / "fashion-mnist.md").read_text()
    assert "![accuracy under PGD vs eps](fashion-mnist-eps.png)" in page and "| mlp | pgd |" in page


def write_sweep(board: Path, name: str, weights: dict, version: str = VERSION) -> None:
    """A sweep file as `threatbench sweep` writes it, with made-up points."""
    path = board / "sweeps" / "fashion-mnist" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    points = [{"eps": eps, "accuracy": a, "correct": int(200 * a), "interval": [a - 0.05, a + 0.05]}
              for eps, a in ((0.0, 0.9), (0.1, 0.5))]
    path.write_text(json.dumps({
        "schema": EPS_SWEEP_SCHEMA, "entry": {"name": name, "architecture": "mnist_a", "weights": weights},
        "dataset": "fashion-mnist", "spec": {"version": version, "sha256": "0" * 64}, "spec_eps": 0.1,
        "attack": {"name": "pgd"}, "n": 200, "subset_sha256": "1" * 64, "seed": 0, "points": points,
        "provenance": {"device": "cpu"}}))


def test_a_sweep_of_other_weights_or_an_older_spec_is_not_drawn_beside_the_records(tmp_path):
    board = tmp_path / "leaderboard"
    write_sweep(board, "current", judged_weights(board, "current"))
    retrained = {**judged_weights(board, "retrained"), "sha256": "f" * 64}
    write_sweep(board, "retrained", retrained)             # the zoo's model was retrained since
    write_sweep(board, "old-spec", judged_weights(board, "old-spec"), version="1.0.0")

    write_pages(board, VERSION)
    page = (board / "fashion-mnist.md").read_text()
    assert "| current | pgd | 90.0 | 50.0 |" in page
    assert "| retrained | pgd |" not in page and "| old-spec | pgd |" not in page
    assert ("Not shown: sweeps measured on other weights than this page's current records, or under an older "
            "spec: old-spec (spec 1.0.0, weights") in page
    assert "retrained (spec " + VERSION + ", weights `ffffffffffff`)" in page
    assert "`threatbench sweep --dataset fashion-mnist --entries old-spec,retrained`" in page
    assert (board / "fashion-mnist-eps.png").is_file()

    (board / "sweeps" / "fashion-mnist" / "current.json").unlink()
    write_pages(board, VERSION)
    page = (board / "fashion-mnist.md").read_text()
    assert "![accuracy under PGD vs eps]" not in page and "Not shown: sweeps" in page
    assert not (board / "fashion-mnist-eps.png").exists()    # no plot of curves the page does not show


def test_the_sweep_command_refuses_bad_eps(capsys):
    from benchmark.cli import main

    assert main(["sweep", "--eps", "0,abc", "--entries", "D"]) == 2
    assert "--eps must be comma-separated numbers" in capsys.readouterr().err
    assert main(["sweep", "--eps", "0,2", "--entries", "D"]) == 2
    assert "must lie in [0, 1]" in capsys.readouterr().err


def test_an_entry_without_weights_is_reported_and_the_others_are_swept(tmp_path, monkeypatch, capsys):
    """As `run`: C cannot be rebuilt on every machine; that must not cost the other entries' curves."""
    import baselines.zoo as zoo_module
    import benchmark.board.sweeps as sweeps_module
    from benchmark.cli import main

    swept = []

    def fake_defense(entry, *args, **kwargs):
        if entry.name == "C":
            raise zoo_module.ZooError("C: the weights rebuilt from fashion-mnist/C.toml hash to 6fe0...")
        return entry.name

    def fake_sweep(defense, **kwargs):
        swept.append(defense)
        return {"points": [{"eps": 0.0, "accuracy": 0.5}]}

    monkeypatch.setattr(zoo_module, "entry_defense", fake_defense)
    monkeypatch.setattr(sweeps_module, "eps_sweep", fake_sweep)
    assert main(["sweep", "--entries", "C,D", "--out-dir", str(tmp_path)]) == 2
    output = capsys.readouterr()
    assert swept == ["D"]
    assert "C: not swept: C: the weights rebuilt" in output.out
    assert "1 of 2 entries not swept" in output.err and "Traceback" not in output.err
