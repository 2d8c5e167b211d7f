"""The committed zoo: every entry's weights match their sha256 and recipe; bad zoo files are refused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from baselines.train import TrainedWeights, TrainingRun
from baselines.zoo import (
    ZOO_DIR,
    ZooError,
    check_recipe,
    entry_defense,
    export_entry,
    load_zoo,
    parse_zoo,
    render_zoo,
)
from benchmark.models.defense import file_sha256
from benchmark.models.smoothing import SmoothedDefense
from tests.conftest import REPLAY_CACHE

ZOO = load_zoo("fashion-mnist")
WEIGHTED = [entry for entry in ZOO.entries if entry.base is None and entry.committed]
REBUILT = [entry for entry in ZOO.entries if entry.base is None and not entry.committed]
ZOO_LIMIT_BYTES = 50 * 10**6


@pytest.mark.parametrize("entry", WEIGHTED, ids=lambda e: e.name)
def test_committed_weights_match_their_sha256(entry):
    assert entry.weights.is_file(), f"{entry.weights} is missing"
    assert file_sha256(entry.weights) == entry.sha256


@pytest.mark.parametrize("entry", WEIGHTED, ids=lambda e: e.name)
def test_committed_entries_were_trained_from_the_committed_recipe(entry):
    check_recipe(entry)


def test_the_whole_zoo_weighs_at_most_50_mb():
    total = sum(path.stat().st_size for path in (ZOO_DIR / "weights").rglob("*.safetensors"))
    assert total <= ZOO_LIMIT_BYTES, f"{total / 1e6:.1f} MB"


@pytest.mark.parametrize("entry", [e for e in ZOO.entries if e.committed], ids=lambda e: e.name)
def test_each_entry_loads_as_a_defense_and_classifies(entry):
    """Entries rebuilt from their recipe are loaded by the slow rebuild test instead."""
    defense = entry_defense(entry, 10)
    torch.manual_seed(0)
    labels = defense.predict(torch.rand(3, 1, 28, 28))
    assert labels.shape == (3,)
    assert defense.randomized == entry.randomized
    assert isinstance(defense, SmoothedDefense) == (entry.smoothing is not None)


GOOD = """
schema = "threatbench.zoo/1"
dataset = "fashion-mnist"

[[entries]]
name = "X"
role = "defense"
architecture = "mnist_d"
weights = "w.safetensors"
sha256 = "{sha}"
recipe = "fashion-mnist/D.toml"
recipe_sha256 = "{sha}"
epoch = 1

[[entries]]
name = "X-smoothed"
base = "X"
[entries.smoothing]
samples = 8
sigma = 0.1
vote = "soft"
""".replace("{sha}", "a" * 64)


def test_a_smoothed_variant_inherits_its_base_weights():
    zoo = parse_zoo(GOOD, Path("/zoo/z.toml"))
    base, smoothed = zoo.entries
    assert smoothed.weights == base.weights == Path("/zoo/w.safetensors")
    assert smoothed.smoothing.samples == 8 and smoothed.smoothing.vote == "soft"
    assert smoothed.randomized and not base.randomized


@pytest.mark.parametrize("change, message", [
    (('role = "defense"', 'role = "hero"'), "role: 'hero' is not one of"),
    (("epoch = 1", "epoch = 1\ncolour = 1"), "colour: unknown key"),
    (('base = "X"', 'base = "Y"'), "base: 'Y' is not an earlier entry"),
    (('vote = "soft"', 'vote = "median"'), "smoothing: smoothing vote must be one of"),
    (("samples = 8", "samples = 0"), "smoothing: smoothing samples must be"),
    (("epoch = 1", 'epoch = "one"'), "epoch: must be a int"),
    (('name = "X-smoothed"', 'name = "X"'), "name: 'X' appears twice"),
    (("sha256 = \"" + "a" * 64, "sha256 = \"" + "g" * 64), "sha256: not a 64-hex sha256"),
    (('schema = "threatbench.zoo/1"', 'schema = "threatbench.zoo/2"'), "this threatbench reads"),
])
def test_a_bad_zoo_file_names_the_entry_and_key(change, message):
    with pytest.raises(ZooError) as error:
        parse_zoo(GOOD.replace(*change, 1), Path("z.toml"))
    assert message in str(error.value)
    assert "z.toml" in str(error.value)


def test_a_weights_file_that_does_not_match_is_refused(tmp_path):
    entry = ZOO.entry("D")
    copy = tmp_path / "D.safetensors"
    data = bytearray(entry.weights.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    from dataclasses import replace

    from benchmark.errors import WeightsError
    with pytest.raises(WeightsError, match="sha256 is"):
        entry_defense(replace(entry, weights=copy), 10)


def test_export_writes_fp16_weights_and_a_loadable_entry(tmp_path):
    from baselines.recipes import load_recipe
    from benchmark.models.architectures import build

    recipe = load_recipe("fashion-mnist/D.toml")
    torch.manual_seed(0)
    network = build("mnist_d", 10).network
    source = tmp_path / "trained.safetensors"
    from safetensors.torch import save_file
    save_file(network.state_dict(), str(source))
    run = TrainingRun(recipe, tmp_path, TrainedWeights(source, file_sha256(source), 6), {})
    zoo_file = tmp_path / "zoo" / "fashion-mnist.toml"
    zoo_file.parent.mkdir()
    entry = export_entry(run, name="D2", role="static", epoch=None, storage="float16", paper="",
                         zoo_file=zoo_file)
    exported = zoo_file.parent / entry["weights"]
    assert exported.stat().st_size < source.stat().st_size * 0.6
    zoo = load_zoo("fashion-mnist", zoo_file)
    loaded = entry_defense(zoo.entry("D2"), 10)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded(x), network.eval()(x), atol=1e-2)
    first = zoo_file.read_text()
    export_entry(run, name="D2", role="static", epoch=None, storage="float16", paper="", zoo_file=zoo_file)
    assert zoo_file.read_text() == first, "exporting the same run twice must give the same bytes"


def test_export_records_how_long_and_on_what_the_entry_trained(tmp_path):
    """The zoo file keeps model.json's training block: images, wall time (up to the exported epoch:
    a kept snapshot has its own), device; the zoo table shows them."""
    import json

    from baselines.recipes import load_recipe
    from baselines.zoo_table import _training_time

    recipe = load_recipe("fashion-mnist/D.toml")
    source = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file
    torch.manual_seed(0)
    from benchmark.models.architectures import build
    save_file(build("mnist_d", 10).network.state_dict(), str(source))
    (tmp_path / "model.json").write_text(json.dumps(
        {"training": {"seconds": 1200.0, "device": "cpu: x86_64, 2 threads", "train_images": 60000}}))
    final = TrainedWeights(source, file_sha256(source), 6, 1200.0)
    snapshot = TrainedWeights(source, file_sha256(source), 3, 610.0)
    run = TrainingRun(recipe, tmp_path, final, {3: snapshot})
    zoo_file = tmp_path / "zoo" / "fashion-mnist.toml"
    zoo_file.parent.mkdir()
    export_entry(run, name="D6", role="static", epoch=None, storage="float16", paper="", zoo_file=zoo_file)
    export_entry(run, name="D3", role="static", epoch=3, storage="float16", paper="", zoo_file=zoo_file)
    zoo = load_zoo("fashion-mnist", zoo_file)
    six, three = zoo.entry("D6"), zoo.entry("D3")
    assert (six.train_images, six.training_seconds, six.training_device) == (60000, 1200.0, "cpu: x86_64, 2 threads")
    assert three.training_seconds == 610.0 and three.epoch == 3
    assert _training_time(six) == "20 min (CPU, 2 threads)"


def test_the_readme_zoo_table_is_current():
    from baselines.zoo_table import readme_table_is_current

    assert readme_table_is_current(), "run `threatbench zoo table --write-readme` and commit README.md"


def test_rendering_is_deterministic_and_round_trips():
    entries = [{"name": "X", "role": "defense", "architecture": "mnist_d", "weights": "w.safetensors",
                "sha256": "b" * 64, "recipe": "r.toml", "recipe_sha256": "c" * 64, "epoch": 2,
                "notes": 'say "hi"'}]
    text = render_zoo("fashion-mnist", entries)
    assert text == render_zoo("fashion-mnist", entries)
    assert parse_zoo(text, Path("z.toml")).entries[0].notes == 'say "hi"'


def _rebuild_before_replays(entry):
    """Under xdist, run the rebuild on the worker that replays the entry's records (benchmark/tools/test_regression.py
    groups them as <dataset>-<entry>); slow tests run first (tests/conftest.py orders them), so on a fresh
    cache the replays find the rebuilt weights instead of skipping."""
    return pytest.param(entry, id=entry.name, marks=pytest.mark.xdist_group(f"{ZOO.dataset}-{entry.name}"))


@pytest.mark.slow
@pytest.mark.rebuild
@pytest.mark.parametrize("entry", [_rebuild_before_replays(entry) for entry in REBUILT])
def test_weights_that_are_not_committed_are_rebuilt_bit_identically_from_their_recipe(entry):
    """Training is seeded and deterministic: the rebuilt file must hash to the pinned sha256."""
    from baselines.zoo import entry_weights, recorded_kernels
    from benchmark.models.training import cpu_kernels

    check_recipe(entry)
    try:
        rebuilt = entry_weights(entry, progress=False)     # refuses a file that does not match
    except ZooError as mismatch:
        if recorded_kernels(entry) == cpu_kernels():
            raise
        pytest.skip(str(mismatch))
    assert file_sha256(rebuilt) == entry.sha256
    _publish_for_replays(rebuilt, entry)


@pytest.mark.slow
def test_a_committed_single_step_entry_is_rebuilt_from_its_recipe_to_its_pinned_sha256(tmp_path):
    """D, trained from its recipe on all 60,000 images (about a minute on 2 cores) and exported as the
    zoo stores it (fp16), is the committed file byte for byte."""
    from baselines.recipes import load_recipe
    from baselines.train import train_recipe
    from baselines.zoo import export_weights

    entry = ZOO.entry("D")
    check_recipe(entry)
    run = train_recipe(load_recipe(entry.recipe), tmp_path / "run", progress=False)
    exported = tmp_path / "D.safetensors"
    _skip_unless_same_kernels(entry, export_weights(run.weights_at(entry.epoch), exported, "float16"))
    assert file_sha256(exported) == entry.sha256
    assert exported.read_bytes() == entry.weights.read_bytes()


def _publish_for_replays(rebuilt: Path, entry) -> None:
    """Put the verified weights where the entry's regression replays look for them (where `threatbench
    run` would have trained them), so that on a fresh machine those replays run instead of skipping."""
    destination = REPLAY_CACHE / "models" / "zoo" / ZOO.dataset / f"{entry.name}-{entry.sha256[:12]}.safetensors"
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.tmp")
    shutil.copyfile(rebuilt, temporary)
    os.replace(temporary, destination)


def test_an_entry_that_is_not_committed_is_rebuilt_from_its_recipe(monkeypatch, tmp_path):
    import baselines.zoo as zoo_module

    rebuilt = tmp_path / "w.safetensors"
    rebuilt.write_bytes(b"weights")
    text = GOOD.replace('weights = "w.safetensors"', 'weights = "recipe"').replace("a" * 64, file_sha256(rebuilt), 1)
    entry = parse_zoo(text, Path("z.toml")).entries[0]
    assert not entry.committed and entry.weights_file == "rebuilt from fashion-mnist/D.toml"
    monkeypatch.setattr(zoo_module, "check_recipe", lambda e: None)
    trained = []
    monkeypatch.setattr(zoo_module, "train_recipe", lambda recipe, progress: trained.append(recipe.name)
                        or TrainingRun(recipe, tmp_path, TrainedWeights(rebuilt, entry.sha256, 1), {}))
    assert zoo_module.entry_weights(entry) == rebuilt
    assert trained == ["D"]


def test_a_rebuild_that_does_not_match_says_which_cpu_kernels_it_needs(monkeypatch, tmp_path):
    import dataclasses

    import baselines.zoo as zoo_module
    from baselines.zoo import recorded_kernels
    from benchmark.models.training import cpu_kernels

    rebuilt = tmp_path / "w.safetensors"
    rebuilt.write_bytes(b"other weights")
    entry = dataclasses.replace(parse_zoo(GOOD.replace('weights = "w.safetensors"', 'weights = "recipe"'),
                                          Path("z.toml")).entries[0],
                                training_device="cpu: x86_64 (AVX512 kernels), 2 threads")
    assert recorded_kernels(entry) == "AVX512" and recorded_kernels(ZOO.entry("A")) is None
    monkeypatch.setattr(zoo_module, "check_recipe", lambda e: None)
    monkeypatch.setattr(zoo_module, "train_recipe", lambda recipe, progress: TrainingRun(
        recipe, tmp_path, TrainedWeights(rebuilt, file_sha256(rebuilt), 1), {}))
    with pytest.raises(ZooError) as error:
        zoo_module.entry_weights(entry)
    message = str(error.value)
    assert "\n" not in message and "not the pinned aaaaaaaaaaaa..." in message
    assert f"(trained with: AVX512; this machine: {cpu_kernels()})" in message


def test_the_training_device_names_the_cpu_kernels():
    from benchmark.models.training import cpu_kernels, training_device

    assert f"({cpu_kernels()} kernels)" in training_device("cpu")


def _skip_unless_same_kernels(entry, rebuilt_sha256: str) -> None:
    """Weights are bit-reproducible only with the CPU kernels they were trained with: a mismatch on
    other kernels (or on unrecorded ones: entries trained before threatbench recorded them) is a skip
    that names the kernels needed; on the same kernels it is a failure."""
    from baselines.zoo import rebuild_mismatch, recorded_kernels
    from benchmark.models.training import cpu_kernels

    if rebuilt_sha256 != entry.sha256 and recorded_kernels(entry) != cpu_kernels():
        pytest.skip(rebuild_mismatch(entry, rebuilt_sha256))


def test_a_float16_entry_moved_out_of_the_repository_keeps_its_sha256(tmp_path, monkeypatch):
    """`export --rebuild --storage float16` pins the bytes a committed export has, and a rebuild casts
    the retrained run the same way: an entry can leave the repository and keep its sha256 (and so its
    records)."""
    import baselines.zoo as zoo_module
    from baselines.recipes import load_recipe
    from benchmark.models.architectures import build

    recipe = load_recipe("fashion-mnist/D.toml")
    torch.manual_seed(0)
    source = tmp_path / "run" / "weights.safetensors"
    source.parent.mkdir()
    from safetensors.torch import save_file
    save_file(build("mnist_d", 10).network.state_dict(), str(source))
    run = TrainingRun(recipe, source.parent, TrainedWeights(source, file_sha256(source), 6), {})
    zoo_file = tmp_path / "zoo" / "fashion-mnist.toml"
    zoo_file.parent.mkdir()
    committed = export_entry(run, name="D2", role="static", epoch=None, storage="float16", paper="",
                             zoo_file=zoo_file)
    rebuilt = export_entry(run, name="D3", role="static", epoch=None, storage="float16", paper="",
                           zoo_file=zoo_file, commit=False)
    assert rebuilt["weights"] == "recipe" and rebuilt["storage"] == "float16"
    assert rebuilt["sha256"] == committed["sha256"]
    entry = load_zoo("fashion-mnist", zoo_file).entry("D3")
    assert not entry.committed and entry.storage == "float16"
    for cast in source.parent.glob("float16-*.safetensors"):
        cast.unlink()                               # a fresh machine has only the retrained run
    monkeypatch.setattr(zoo_module, "check_recipe", lambda e: None)
    monkeypatch.setattr(zoo_module, "train_recipe", lambda recipe, progress: run)
    path = zoo_module.entry_weights(entry, progress=False)
    assert file_sha256(path) == entry.sha256
    assert entry_defense(entry, 10).predict(torch.rand(2, 1, 28, 28)).shape == (2,)


def test_the_zoo_table_shows_a_record_only_of_the_weights_the_zoo_holds(tmp_path):
    """A model retrained and re-exported has no ranked number until it is judged again: the record
    of the weights it replaced is not shown as its number."""
    import json

    from records import write_true_record

    from baselines.zoo_table import zoo_rows

    entry = load_zoo("fashion-mnist").entry("A")
    path = write_true_record(tmp_path, "A", clean=0.9, white_box=0.5, transfer=0.7, nattack=0.6)
    row = {r[0]: r for r in zoo_rows("fashion-mnist", tmp_path / "results")}["A"]
    assert row[-2:] == ["n/a", "not yet judged (its record judged other weights, `414141414141`)"]

    record = json.loads(path.read_text())
    record["entry"]["weights"]["sha256"] = entry.sha256
    path.write_text(json.dumps(record))
    row = {r[0]: r for r in zoo_rows("fashion-mnist", tmp_path / "results")}["A"]
    assert row[-2:] == ["90.0", "50.0 [46.9, 52.0] (standard)"]


@pytest.mark.parametrize("progress", [True, False])
def test_a_rebuilt_entry_trains_with_the_callers_progress_setting(monkeypatch, progress):
    """`threatbench run/sweep --no-progress` must not show the bars of C's rebuild from its recipe."""
    import baselines.zoo as zoo_module

    entry = next(e for e in ZOO.entries if e.name == "A")
    seen = []

    def fake_weights(entry, *, progress=True):
        seen.append(progress)
        return entry.weights

    monkeypatch.setattr(zoo_module, "entry_weights", fake_weights)
    entry_defense(entry, 10, progress=progress)
    assert seen == [progress]
