"""`threatbench sweep`: PGD accuracy vs eps, stored as a curve and drawn on the leaderboard page."""

from __future__ import annotations

from benchmark.board.leaderboard import write_pages
from benchmark.board.sweeps import eps_sweep
from benchmark.spec import load_spec
from tests.conftest import requires_fashion


@requires_fashion
def test_the_curve_starts_at_clean_accuracy_and_falls(tmp_path, trained_defense, fashion_test_batch):
    out = tmp_path / "leaderboard" / "sweeps" / "fashion-mnist" / "mlp.json"
    out.parent.mkdir(parents=True)
    record = eps_sweep(trained_defense, dataset="fashion-mnist", spec=load_spec(), eps_values=[0.0, 0.05, 0.2],
                       n=40, entry={"name": "mlp"}, out=out, batch_size=20, progress=False)
    x, y = fashion_test_batch
    clean = int((trained_defense.predict(x[:40]) == y[:40]).sum()) / 40
    accuracy = [p["accuracy"] for p in record["points"]]
    assert accuracy[0] == clean                       # eps 0: PGD is the identity
    assert accuracy[0] >= accuracy[1] >= accuracy[2] and accuracy[2] < 0.2
    assert all(p["interval"][0] <= p["accuracy"] <= p["interval"][1] for p in record["points"])
    assert record["provenance"]["backward_passes"] == 3 * 40 * 40    # 3 eps x 40 images x 40 steps

    written = write_pages(tmp_path / "leaderboard", "1.0.0")
    png = tmp_path / "leaderboard" / "fashion-mnist-eps.png"
    assert png in written and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "leaderboard" / "fashion-mnist.md").read_text()
    assert "![accuracy under PGD vs eps](fashion-mnist-eps.png)" in page and "| mlp | pgd |" in page


def test_the_sweep_command_refuses_bad_eps(capsys):
    from benchmark.cli import main

    assert main(["sweep", "--eps", "0,abc", "--entries", "D"]) == 2
    assert "--eps must be comma-separated numbers" in capsys.readouterr().err
    assert main(["sweep", "--eps", "0,2", "--entries", "D"]) == 2
    assert "must lie in [0, 1]" in capsys.readouterr().err
