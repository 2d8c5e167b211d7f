"""The judge's standard training: seeded, resumable to identical weights, safetensors only."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import benchmark.models.training as training
from benchmark.models.defense import file_sha256
from benchmark.models.training import StandardRecipe, train_standard
from tests.conftest import requires_fashion

pytestmark = requires_fashion
RECIPE = StandardRecipe(architecture="mnist_d", epochs=2, batch_size=64, train_limit=1280)


def test_training_changes_the_weights_and_records_its_recipe(tmp_path):
    model = train_standard(RECIPE, tmp_path / "m", progress=False)
    assert model.sha256 == file_sha256(model.weights)
    card = (tmp_path / "m" / "model.json").read_text()
    assert RECIPE.sha256() in card
    torch.manual_seed(RECIPE.seed)
    initial = training.build("mnist_d", 10).network.state_dict()
    trained = load_file(str(model.weights))
    assert not torch.equal(initial["1.weight"], trained["1.weight"])


def test_interrupted_training_resumes_to_identical_weights(tmp_path, monkeypatch):
    uninterrupted = train_standard(RECIPE, tmp_path / "a", progress=False)

    original = training.train_epoch

    def interrupt_second_epoch(network, optimizer, x, y, recipe, epoch, steps, progress):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(network, optimizer, x, y, recipe, epoch, steps, progress)

    monkeypatch.setattr(training, "train_epoch", interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_standard(RECIPE, tmp_path / "b", progress=False)
    assert (tmp_path / "b" / "checkpoint.safetensors").is_file()
    monkeypatch.setattr(training, "train_epoch", original)
    first_session = training.checkpoint_seconds(tmp_path / "b" / "checkpoint.safetensors")
    assert first_session > 0
    resumed = train_standard(RECIPE, tmp_path / "b", progress=False)
    assert resumed.sha256 == uninterrupted.sha256
    assert not (tmp_path / "b" / "checkpoint.safetensors").exists()
    # The card's wall time covers both sessions, and names what trained it.
    card = json.loads((tmp_path / "b" / "model.json").read_text())["training"]
    assert card["seconds"] > first_session and card["device"].startswith("cpu: ")
    assert card["train_images"] == RECIPE.train_limit


def test_a_finished_model_is_reused_not_retrained(tmp_path, monkeypatch):
    first = train_standard(RECIPE, tmp_path / "m", progress=False)
    monkeypatch.setattr(training, "train_epoch", lambda *a: pytest.fail("retrained a cached model"))
    assert train_standard(RECIPE, tmp_path / "m", progress=False).sha256 == first.sha256


@pytest.mark.parametrize("process_threads", [1, 3])
def test_cpu_training_runs_at_the_fixed_thread_count_and_restores_the_callers(tmp_path, monkeypatch,
                                                                              process_threads):
    seen = []
    real_epoch = training.train_epoch
    monkeypatch.setattr(training, "train_epoch",
                        lambda *args: seen.append(torch.get_num_threads()) or real_epoch(*args))
    previous = torch.get_num_threads()
    torch.set_num_threads(process_threads)
    try:
        train_standard(RECIPE, tmp_path / "m", progress=False)
        assert torch.get_num_threads() == process_threads
    finally:
        torch.set_num_threads(previous)
    assert seen == [training.CPU_TRAINING_THREADS] * RECIPE.epochs


def test_weights_do_not_depend_on_the_callers_thread_count(tmp_path):
    previous = torch.get_num_threads()
    hashes = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            hashes.append(train_standard(RECIPE, tmp_path / f"t{threads}", progress=False).sha256)
    finally:
        torch.set_num_threads(previous)
    assert hashes[0] == hashes[1]
