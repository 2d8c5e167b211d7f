"""Hub submissions end to end against a real local Hub (olah), and every bad input the harness refuses."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from benchmark.cli import main
from benchmark.evaluation.results import read_record
from benchmark.intake.hub import HubError, fetch, store_dir
from benchmark.intake.manifest import MANIFEST_SCHEMA, ManifestError, load_manifest, taken_names
from benchmark.models.defense import file_sha256
from tests.conftest import requires_fashion, write_small_spec
from tests.local_hub import OLAH_REASON, LocalHub, olah_installed

ZOO_A = Path(__file__).resolve().parents[2] / "baselines" / "zoo" / "weights" / "fashion-mnist" / "A.safetensors"
PICKLE_MARKER = "threatbench-test-pickle-was-loaded"

requires_olah = pytest.mark.skipif(not olah_installed(), reason=OLAH_REASON)


@pytest.fixture(scope="module")
def local_hub(tmp_path_factory):
    if not olah_installed():
        pytest.skip(OLAH_REASON)
    hub = LocalHub(tmp_path_factory.mktemp("hub")).start()
    yield hub
    hub.stop()


@pytest.fixture
def hub(local_hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", local_hub.endpoint)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return local_hub


def manifest_document(name: str = "robust-a", **model) -> dict:
    return {
        "schema": MANIFEST_SCHEMA, "name": name, "dataset": "fashion-mnist",
        "paper": "https://arxiv.org/abs/1705.07204", "authors": ["Ada Example"], "license": "MIT",
        "model": {"repo": "alice/robust-a", "revision": "0" * 40, "architecture": "mnist_a",
                  "weights": "model.safetensors", "sha256": "a" * 64, "randomized": False, **model},
    }


def write_manifest(directory: Path, document: dict) -> Path:
    path = directory / f"{document['name']}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def published(hub: LocalHub, directory: Path, repo: str, files: dict, name: str = "robust-a",
              weights: str = "model.safetensors", sha256: str | None = None, **model) -> Path:
    """Commit `files` to `repo` on the local Hub and write a manifest pinning that commit."""
    revision = hub.commit(repo, files)
    content = files.get(weights)
    if sha256 is None:
        sha256 = file_sha256(content) if isinstance(content, Path) else "b" * 64
    return write_manifest(directory, manifest_document(name, repo=repo, revision=revision, weights=weights,
                                                       sha256=sha256, **model))


def stored_files(manifest_path: Path) -> list[Path]:
    root = store_dir(load_manifest(manifest_path).model).parent
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ---------------------------------------------------------------- manifest validation (offline)


def test_a_valid_manifest_is_parsed_with_every_field(tmp_path):
    document = manifest_document(preprocessing={"mean": [0.5], "std": [0.25]},
                                 smoothing={"samples": 8, "sigma": 0.05}, randomized=True)
    document["claimed"] = {"source": "Table 2", "clean": 84.0, "pgd": 55.5, "eps": 0.1}
    manifest = load_manifest(write_manifest(tmp_path, document))
    assert manifest.model.preprocessing.std == (0.25,)
    assert manifest.model.smoothing.vote == "prediction"
    assert manifest.claimed == {"source": "Table 2", "clean": 84.0, "pgd": 55.5}
    assert manifest.model.files() == {"model.safetensors": "a" * 64}


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["model"].update(revision="main"), "model.revision: 'main' is not a full 40-hex commit sha"),
    (lambda d: d["model"].update(revision="21d45c5"), "model.revision: '21d45c5' is not a full 40-hex"),
    (lambda d: d["model"].update(architecture="resnet9000"), "model.architecture: unknown architecture"),
    (lambda d: d.update(dataset="svhn"), "dataset: "),
    (lambda d: d["model"].update(weights="pytorch_model.bin"), "not a .safetensors file (a pickle format"),
    (lambda d: d["model"].update(weights="../../etc/passwd.safetensors"), "a plain path inside the repository"),
    (lambda d: d["model"].update(sha256="abc"), "model.sha256: 'abc' is not valid"),
    (lambda d: d["model"].update(sha256=1234), "YAML read 1234 as a number; quote the value"),
    (lambda d: d["model"].update(colour="blue"), "model.colour: unknown key"),
    (lambda d: d.update(extra=1), "extra: unknown key"),
    (lambda d: d["model"].pop("randomized"), "model.randomized: missing"),
    (lambda d: d.update(schema="threatbench.submission/0"), "schema: 'threatbench.submission/0' is not supported"),
    (lambda d: d["model"].update(preprocessing={"mean": [0.5, 0.5, 0.5], "std": [1, 1, 1]}),
     "expected a list of 1 numbers (one per input channel)"),
    (lambda d: d["model"].update(smoothing={"samples": 8, "sigma": 0.1}), "smoothed inference draws noise"),
    (lambda d: d["model"].update(architecture="pni:mnist_a"), "declare randomized: true"),
    (lambda d: d["model"].update(architecture="config.json"), "model.config_sha256: missing"),
    (lambda d: d.update(claimed={"pgd": 140}), "claimed.pgd: 140 is outside [0, 100]"),
    (lambda d: d.update(claimed={"eps": 0.3, "pgd": 40}), "differs from the spec's eps 0.1"),
    (lambda d: d.update(authors=[]), "authors: expected a non-empty list"),
])
def test_invalid_manifests_are_refused_naming_the_key(tmp_path, capsys, change, message):
    document = manifest_document()
    change(document)
    path = write_manifest(tmp_path, document)
    with pytest.raises(ManifestError, match=re.escape(message)):
        load_manifest(path)
    code, output = run_cli(capsys, "submission", "validate", str(path))
    assert code == 2 and output.startswith("threatbench: error: robust-a.yaml: ")


def test_manifest_name_must_match_its_file_and_yaml_objects_are_never_constructed(tmp_path):
    document = manifest_document()
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ManifestError, match="must equal the file name 'other'"):
        load_manifest(path)
    path = tmp_path / "robust-a.yaml"
    path.write_text("!!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(path)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- what an attacker tries (offline)

TIMM_ONLY = ("timm:<name> takes a timm registry name only (letters, digits, '_', '.', '-'), no source such "
             "as hf-hub: or local-dir: and no path; the weights come only from the pinned safetensors file; "
             "or use architecture: config.json with a timm config.json in the repository")


def refusal(tmp_path: Path, document: dict | None = None, text: str | None = None,
            name: str = "robust-a") -> str:
    """The one-line message load_manifest refuses the manifest with (the CLI prints the same)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600, "one short line"
    return message


@pytest.mark.parametrize(("architecture", "message"), [
    ("pni:timm:local-dir:/some/dir", f"model.architecture: architecture 'pni:timm:local-dir:/some/dir': {TIMM_ONLY}"),
    ("pni:timm:hf-hub:evil/model", f"model.architecture: architecture 'pni:timm:hf-hub:evil/model': {TIMM_ONLY}"),
    ("cni:timm:hf_hub:evil/model", f"model.architecture: architecture 'cni:timm:hf_hub:evil/model': {TIMM_ONLY}"),
    ("timm:local-dir:/some/dir", f"model.architecture: architecture 'timm:local-dir:/some/dir': {TIMM_ONLY}"),
    ("pni:timm:evil/model", f"model.architecture: architecture 'pni:timm:evil/model': {TIMM_ONLY}"),
    ("pni:cni:mnist_a", "model.architecture: architecture 'pni:cni:mnist_a': weight noise wraps an architecture "
                        "once (pni:<name> or cni:<name>), never another noise wrapper; or use architecture: "
                        "config.json with a timm config.json in the repository"),
    ("pni:" * 1500 + "mnist_a", "model.architecture: 'pni:pni:pni:pni:pni:pni:pni:pni:pni:pni:'... (6,007 "
                                "characters) is longer than 200 characters; shorten it"),
])
def test_registry_prefixes_never_reach_timm_sources_or_recurse(tmp_path, monkeypatch, architecture, message):
    import timm

    def no_timm(*args, **kwargs):
        raise AssertionError("timm was asked to build or look up a model")

    monkeypatch.setattr(timm, "create_model", no_timm)
    monkeypatch.setattr(timm, "is_model", no_timm)
    document = manifest_document(architecture=architecture, randomized=True)
    assert refusal(tmp_path, document) == f"robust-a.yaml: {message}"


def test_a_timm_registry_name_still_validates(tmp_path):
    document = manifest_document(architecture="pni:timm:resnet18.a1_in1k", randomized=True)
    assert load_manifest(write_manifest(tmp_path, document)).model.architecture == "pni:timm:resnet18.a1_in1k"


@pytest.mark.parametrize(("name", "message"), [
    ("TRADES-WRN-34-10", "name: 'TRADES-WRN-34-10' is already the reference entry 'TRADES-WRN-34-10' (cifar10)"),
    ("trades_wrn.34_10", "name: 'trades_wrn.34_10' is already the reference entry 'TRADES-WRN-34-10' (cifar10)"),
    ("a-adv", "name: 'a-adv' is already the zoo entry 'A_adv' (fashion-mnist)"),
    ("INCEPTION_V3.tf_in1k", "name: 'INCEPTION_V3.tf_in1k' is already the reference entry 'inception_v3.tf_in1k' "
                             "(imagenet)"),
])
def test_a_submission_cannot_take_the_name_of_a_zoo_or_reference_entry(tmp_path, name, message):
    assert refusal(tmp_path, manifest_document(name), name=name) == (
        f"{name}.yaml: {message}; names are compared ignoring case and punctuation, so that no submission "
        "can be read as another entry. Choose another name (and rename the file)")


def test_a_submission_cannot_take_the_name_of_another_submission(tmp_path):
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    write_manifest(submissions, manifest_document("robust-a"))
    load_manifest(submissions / "robust-a.yaml")   # its own name is not a collision (an update)
    path = write_manifest(tmp_path, manifest_document("Robust_A"))
    with pytest.raises(ManifestError) as info:
        load_manifest(path, taken=taken_names(path, submissions))
    assert str(info.value) == (
        "Robust_A.yaml: name: 'Robust_A' is already the submission 'robust-a' (robust-a.yaml); names are "
        "compared ignoring case and punctuation, so that no submission can be read as another entry. Choose "
        "another name (and rename the file)")
    write_manifest(submissions, manifest_document("ROBUST.a"))   # beside it, in the same pull request
    assert "is already the submission 'robust-a'" in refusal(submissions, manifest_document("ROBUST.a"),
                                                              name="ROBUST.a")


def _bomb(levels: int) -> str:
    """A billion-laughs document: `levels` lists of nine aliases of the one before, in authors."""
    lines = ['- &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"- &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    text = yaml.safe_dump(manifest_document(), sort_keys=False)
    return text.replace("authors:\n- Ada Example\n", "authors:\n" + "\n".join(lines) + "\n")


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    text = _bomb(7)
    assert len(text.encode()) < 1200   # 9**7 = 4.8 million strings once expanded
    line = text.splitlines().index(text.split("authors:\n")[1].splitlines()[0]) + 1
    assert refusal(tmp_path, text=text) == (f"robust-a.yaml: line {line}: YAML anchors and aliases (&name, *name) "
                                            "are not allowed in a manifest; write each value out")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace("license: MIT", "license: &l MIT"),
     "line 7: YAML anchors and aliases (&name, *name) are not allowed in a manifest; write each value out"),
    (lambda t: t.replace("  randomized: false\n", f"  randomized: false\n  sha256: '{'b' * 64}'\n"),
     "model.sha256: duplicate key (line 13 and line 15); give each key once"),
    (lambda t: t + "license: Apache-2.0\n", "license: duplicate key (line 7 and line 15); give each key once"),
    (lambda t: t.replace("  randomized: false\n", "  randomized: false\n  <<: {sha256: x}\n"),
     "model.<<: merge keys (<<) are not allowed in a manifest; write the keys out"),
    (lambda t: t.replace("license: MIT", "license: " + "[" * 10 + "]" * 10),
     "line 7: nested deeper than 6 levels; a manifest is a few flat mappings (see submissions/README.md)"),
    (lambda t: t.replace("license: MIT", "license: MIT\n---\nlicense: MIT"),
     "not valid YAML: line 8, column 1: expected a single document in the stream; but found another document"),
])
def test_yaml_anchors_duplicate_and_merge_keys_and_deep_nesting_are_refused(tmp_path, edit, message):
    text = edit(yaml.safe_dump(manifest_document(), sort_keys=False))
    assert refusal(tmp_path, text=text) == f"robust-a.yaml: {message}"


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(license="x" * 20_000_000), "20,000,"),
    (lambda d: d.update(license="x" * 101), "license: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (101 characters) "
                                            "is longer than 100 characters; shorten it"),
    (lambda d: d.update(authors=["A"] * 101), "authors: 101 names; at most 100 (add \"et al.\")"),
    (lambda d: d.update(authors=["x" * 201]), "authors[0]: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (201 "
                                              "characters) is longer than 200 characters; shorten it"),
    (lambda d: d["model"].update(weights="model\x00.safetensors"),
     "model.weights: 'model\\x00.safetensors' contains the control character \\x00 (a line break, NUL or "
     "text-direction override); write one line of plain text"),
    (lambda d: d["model"].update(weights="model\n.safetensors"),
     "model.weights: 'model\\n.safetensors' contains the control character \\n (a line break, NUL or "
     "text-direction override); write one line of plain text"),
    (lambda d: d.update(claimed={"source": "Table 2 \u202e9.99", "pgd": 40}),
     "claimed.source: 'Table 2 \\u202e9.99' contains the control character \\u202e (a line break, NUL or "
     "text-direction override); write one line of plain text"),
    (lambda d: d["model"].update(revision="x" * 10_000),
     "model.revision: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (10,000 characters) is not a full 40-hex"),
    (lambda d: d.update(authors=[["x" * 500] * 50]), "authors[0]: expected a non-empty string, got ['xxx"),
])
def test_field_lengths_are_capped_and_errors_quote_a_short_excerpt(tmp_path, change, message):
    document = manifest_document()
    change(document)
    if message == "20,000,":
        path = write_manifest(tmp_path, document)
        size = path.stat().st_size
        assert refusal(tmp_path, text=path.read_text()) == (
            f"robust-a.yaml: {size:,} bytes; a manifest is at most 65,536 bytes")
    else:
        assert refusal(tmp_path, document).startswith(f"robust-a.yaml: {message}")


@pytest.mark.parametrize("paper", [
    "javascript:alert(1)", "http://arxiv.org/abs/1705.07204", "https://evil.example/abs/1705.07204",
    "https://arxiv.org.evil.example/abs/1", "https://user@arxiv.org/abs/1", "https://arxiv.org/abs/1|99.9",
    "https://arxiv.org/abs/1)<script>",
])
def test_the_paper_is_an_https_link_to_an_allowed_host(tmp_path, paper):
    assert refusal(tmp_path, manifest_document() | {"paper": paper}) == (
        f"robust-a.yaml: paper: {paper!r} is not an https:// link to arxiv.org, doi.org, openreview.net, "
        "huggingface.co, github.com; link the paper's page there (e.g. https://arxiv.org/abs/...)")


def test_markup_in_text_fields_is_accepted_as_text_and_escaped_on_pages(tmp_path):
    document = manifest_document() | {"authors": ["<img src=x onerror=alert(1)>"], "license": "MIT | 99.9"}
    document["claimed"] = {"source": "Table 2 | 99.9 | ranked #1 <script>alert(1)</script>", "pgd": 40}
    manifest = load_manifest(write_manifest(tmp_path, document))
    assert manifest.claimed["source"].startswith("Table 2 | 99.9")   # the page escapes it (test_page_safety)


# ---------------------------------------------------------------- config.json (offline)

CONFIG_WHERE = "robust-a.yaml (alice/timm-config)"


@pytest.mark.parametrize(("config", "message"), [
    ('{"architecture": "resnet18", "pretrained_cfg": "abc"}',
     "config.json pretrained_cfg must be an object (as timm's save_for_hf writes it), got 'abc'"),
    ('{"architecture": "resnet18", "pretrained_cfg": {"input_size": 5}}',
     "config.json pretrained_cfg.input_size must be a list [channels, height, width], got 5"),
    ('{"architecture": "resnet18", "num_classes": "10"}', "config.json num_classes must be an integer, got '10'"),
    ('{"architecture": "resnet18", "pretrained_cfg": {"mean": [NaN], "std": [0.5]}}',
     "config.json: NaN is not a JSON number; give finite numbers"),
    ('{"architecture": "resnet18", "pretrained_cfg": {"mean": [0.5], "std": [1e999]}}',
     "config.json pretrained_cfg.std must be 1 number(s), one per input channel, finite and in [1e-06, 10]; "
     "got [inf]"),
    ('{"architecture": "resnet18", "architecture": "hf-hub:evil/model"}',
     "config.json: the key 'architecture' appears twice in one object; give each key once"),
    ('{"architecture": "local-dir:/some/dir"}',
     "config.json names architecture 'local-dir:/some/dir', which timm does not have; only timm architectures "
     "(by registry name) can come from a config.json"),
    ("[" * 100_000 + "]" * 100_000, "config.json is not valid JSON: maximum recursion depth exceeded"),
])
def test_a_malformed_config_json_is_a_one_line_error(tmp_path, config, message):
    from benchmark.intake.submission import resolve_config
    from benchmark.spec import load_spec

    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ManifestError) as info:
        resolve_config(tmp_path / "config.json", load_spec().dataset("fashion-mnist"), CONFIG_WHERE)
    assert str(info.value).startswith(f"{CONFIG_WHERE}: {message}")
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


# ---------------------------------------------------------------- the local Hub flow


@requires_olah
@requires_fashion
@pytest.mark.slow
def test_submission_goes_from_manifest_to_leaderboard_row(hub, tmp_path, capsys, monkeypatch):
    manifest = published(hub, tmp_path, "alice/robust-a", {"model.safetensors": ZOO_A, "README.md": b"# A\n"})
    document = yaml.safe_load(manifest.read_text())
    document["claimed"] = {"source": "our run", "clean": 91.0}
    manifest.write_text(yaml.safe_dump(document))

    code, output = run_cli(capsys, "submission", "validate", str(manifest))
    assert code == 0 and "valid (fashion-mnist, alice/robust-a@" in output

    code, output = run_cli(capsys, "submission", "fetch", str(manifest))
    assert code == 0 and "downloaded model.safetensors; sha256 checked" in output
    assert [p.name for p in stored_files(manifest)] == ["model.safetensors"], "README.md is never fetched"

    code, output = run_cli(capsys, "submission", "check", str(manifest), "--n", "100", "--no-progress")
    assert code == 0 and "clean accuracy on the first 100 fashion-mnist test images" in output
    accuracy = float(re.search(r"test images: ([\d.]+)%", output).group(1))
    assert accuracy > 80, "model A of the zoo is about 92% accurate"

    spec = write_small_spec(tmp_path / "small-spec.toml", n=100, nattack_n=4, nattack_max_iterations=5)
    board = tmp_path / "leaderboard"
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")   # re-runs need no network
    code, output = run_cli(capsys, "submission", "evaluate", str(manifest), "--budget", "quick", "--spec",
                           str(spec), "--out-dir", str(board / "results"), "--no-progress")
    assert code == 0, output
    assert "downloaded nothing (all files already in the store)" in output
    record = read_record(board / "results" / "fashion-mnist" / "robust-a-quick.json")
    assert record["entry"]["kind"] == "submission"
    assert record["entry"]["weights"]["revision"] == document["model"]["revision"]
    assert record["entry"]["weights"]["sha256"] == file_sha256(ZOO_A)
    assert record["entry"]["submission"]["claimed"] == {"source": "our run", "clean": 91.0}
    assert record["entry"]["submission"]["sha256"] == file_sha256(manifest)
    assert all(status["status"] == "run" for status in record["families"].values())
    assert record["attacks"]["pgd"]["accuracy"] < record["clean"]["accuracy"]

    from benchmark.spec import load_spec
    from benchmark.tools.regression import defense_from_record

    rebuilt = defense_from_record(record, load_spec(spec), torch.device("cpu"))   # how regressions replay it
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    from benchmark.models.defense import load
    assert torch.equal(rebuilt(x), load("mnist_a", ZOO_A, num_classes=10)(x))

    # Judged under a shrunken spec, the record is not one the leaderboard accepts: pages hold only
    # records of a packaged spec with its budgets' sizes (benchmark.evaluation.record_verify).
    code, output = run_cli(capsys, "leaderboard", "--dir", str(board))
    assert code != 0 and "is not that of spec 2.0.0" in output and len(output.strip().splitlines()) == 1

    # The same entry with a true record of the packaged quick budget reaches the page as a submission.
    from records import write_true_record

    path = write_true_record(board, "robust-a", clean=0.9, white_box=0.1, transfer=0.5, nattack=0.1,
                             budget="quick", kind="submission")
    true_record = json.loads(path.read_text())
    true_record["entry"].update({key: record["entry"][key] for key in ("weights", "submission", "architecture")})
    path.write_text(json.dumps(true_record))
    (board / "results" / "fashion-mnist" / "robust-a-quick.json").unlink()
    (board / "results" / "fashion-mnist" / "robust-a-quick.examples.json").unlink()
    code, output = run_cli(capsys, "leaderboard", "--dir", str(board))
    assert code == 0, output
    page = (board / "fashion-mnist.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| robust-a |"))
    assert "| submission |" in row and "quick budget (n = 500)" in row
    assert f"alice/robust-a@{document['model']['revision'][:7]}" in row
    assert "claimed" in page and "| robust-a | `clean` | 91 | 90.0 [87.1, 92.3] (quick) | our run |" in page


@requires_olah
@requires_fashion
def test_config_json_architectures_are_built_from_timm_names_only(hub, tmp_path):
    from benchmark.intake.submission import submission_defense
    from benchmark.spec import load_spec

    config = json.dumps({"architecture": "resnet18", "num_classes": 10,
                         "pretrained_cfg": {"mean": [0.5], "std": [0.5], "input_size": [1, 28, 28]}}).encode()
    (tmp_path / "config.json").write_bytes(config)
    import timm

    network = timm.create_model("resnet18", num_classes=10, in_chans=1)
    save_file(network.state_dict(), str(tmp_path / "model.safetensors"))
    manifest_path = published(hub, tmp_path, "alice/timm-config", {
        "config.json": tmp_path / "config.json", "model.safetensors": tmp_path / "model.safetensors"},
        architecture="config.json", config_sha256=file_sha256(tmp_path / "config.json"))
    manifest = load_manifest(manifest_path)
    files = fetch(manifest)
    assert sorted(files.downloaded) == ["config.json", "model.safetensors"]
    dataset = load_spec().dataset("fashion-mnist")
    defense, entry = submission_defense(manifest, files, dataset)
    assert entry.architecture == "timm:resnet18" and entry.normalization == {"mean": [0.5], "std": [0.5]}
    assert defense.predict(torch.rand(2, 1, 28, 28)).shape == (2,)
    from benchmark.tools.regression import defense_from_record

    record = {"dataset": "fashion-mnist", "entry": {**entry.__dict__, "randomized": False}}
    rebuilt = defense_from_record(record, load_spec(), torch.device("cpu"))   # normalization included
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    assert torch.equal(rebuilt(x), defense(x))

    for bad, message in (({"architecture": "hf-hub:evil/model"}, "which timm does not have"),
                         ({"architecture": "resnet18", "pretrained_cfg": {"mean": ["x"], "std": [1]}},
                          "pretrained_cfg.mean must be 1 number"),
                         ({"model": "resnet18"}, "has no \"architecture\"")):
        (tmp_path / "config.json").write_text(json.dumps(bad))
        manifest = load_manifest(published(hub, tmp_path, "alice/timm-config", {"config.json": tmp_path / "config.json"},
                                           architecture="config.json", sha256=file_sha256(tmp_path / "model.safetensors"),
                                           config_sha256=file_sha256(tmp_path / "config.json")))
        with pytest.raises(ManifestError, match=re.escape(message)):
            submission_defense(manifest, fetch(manifest), dataset)

    config = json.dumps({"architecture": "resnet18", "num_classes": 1000}).encode()
    (tmp_path / "config.json").write_bytes(config)
    manifest_path = published(hub, tmp_path, "alice/timm-config", {"config.json": tmp_path / "config.json"},
                              architecture="config.json", sha256=file_sha256(tmp_path / "model.safetensors"),
                              config_sha256=file_sha256(tmp_path / "config.json"))
    manifest = load_manifest(manifest_path)
    with pytest.raises(ManifestError, match="config.json says num_classes 1000, fashion-mnist has 10"):
        submission_defense(manifest, fetch(manifest), dataset)


# ---------------------------------------------------------------- bad input against the Hub


@requires_olah
def test_a_repository_or_file_that_does_not_exist_is_a_clear_error(hub, tmp_path, capsys):
    manifest = published(hub, tmp_path, "alice/exists", {"model.safetensors": ZOO_A})
    document = yaml.safe_load(manifest.read_text())
    document["model"]["repo"] = "alice/does-not-exist"
    write_manifest(tmp_path, document)
    code, output = run_cli(capsys, "submission", "fetch", str(manifest))
    assert code == 2 and "repository or revision not found" in output

    document["model"].update(repo="alice/exists", weights="weights/other.safetensors")
    write_manifest(tmp_path, document)
    code, output = run_cli(capsys, "submission", "fetch", str(manifest))
    assert code == 2 and "has no file 'weights/other.safetensors'" in output and "model.safetensors" in output

    document["model"].update(weights="model.safetensors", revision="1" * 40)
    write_manifest(tmp_path, document)
    code, output = run_cli(capsys, "submission", "fetch", str(manifest))
    # The real Hub answers an unknown revision with RevisionNotFound, olah with a 500: both are named.
    assert code == 2 and f"alice/exists@{'1' * 40}: " in output
    assert "revision does not exist" in output or "answered with an error" in output
    assert stored_files(manifest) == []


@requires_olah
def test_a_sha256_mismatch_is_refused_and_nothing_is_left_behind(hub, tmp_path, capsys):
    manifest = published(hub, tmp_path, "alice/mismatch", {"model.safetensors": ZOO_A}, sha256="c" * 64)
    code, output = run_cli(capsys, "submission", "fetch", str(manifest))
    assert code == 2 and f"has sha256 {file_sha256(ZOO_A)}, the manifest pins {'c' * 64}" in output
    assert stored_files(manifest) == [], "the rejected download and the temporary folder are deleted"


@requires_olah
def test_a_file_over_the_size_limit_is_never_downloaded(hub, tmp_path, capsys):
    manifest = published(hub, tmp_path, "alice/large", {"model.safetensors": ZOO_A})
    code, output = run_cli(capsys, "submission", "fetch", str(manifest), "--max-mb", "1")
    assert code == 2 and "model.safetensors is 6.8 MB, over the 1 MB limit" in output
    assert stored_files(manifest) == []


@requires_olah
def test_a_repository_with_only_pickle_weights_is_refused(hub, tmp_path, capsys):
    checkpoint = tmp_path / "pytorch_model.bin"
    torch.save(load_file(str(ZOO_A)), checkpoint)
    manifest = published(hub, tmp_path, "alice/pickles", {"pytorch_model.bin": checkpoint})
    code, output = run_cli(capsys, "submission", "fetch", str(manifest))
    assert code == 2 and "only pickle weights (pytorch_model.bin)" in output
    assert "never downloads or loads pickles" in output
    assert stored_files(manifest) == []


class _Payload:
    """Unpickling this runs `open(marker, 'w')`: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@requires_olah
@requires_fashion
def test_a_malicious_pickle_beside_valid_weights_is_never_downloaded_or_loaded(hub, tmp_path, capsys):
    marker = tmp_path / PICKLE_MARKER
    malicious = tmp_path / "pytorch_model.bin"
    malicious.write_bytes(pickle.dumps({"state": bytes(4096), "payload": _Payload(marker)}))
    manifest = published(hub, tmp_path, "mallory/trojan", {"model.safetensors": ZOO_A,
                                                           "pytorch_model.bin": malicious,
                                                           "optimizer.pt": malicious})
    code, output = run_cli(capsys, "submission", "check", str(manifest), "--n", "50", "--no-progress")
    assert code == 0, output
    assert not marker.exists(), "the pickle payload ran"
    everything = [p.name for p in Path(store_dir(load_manifest(manifest).model)).parents[1].rglob("*")]
    assert "pytorch_model.bin" not in everything and "optimizer.pt" not in everything
    assert [p.name for p in stored_files(manifest)] == ["model.safetensors"]


@requires_olah
@requires_fashion
def test_nan_outputs_and_weights_of_another_shape_are_refused(hub, tmp_path, capsys):
    state = load_file(str(ZOO_A))
    bias = next(k for k in state if k.endswith("bias"))
    state[bias] = torch.full_like(state[bias], float("nan"))
    save_file(state, str(tmp_path / "model.safetensors"))
    manifest = published(hub, tmp_path, "alice/nan", {"model.safetensors": tmp_path / "model.safetensors"})
    code, output = run_cli(capsys, "submission", "check", str(manifest), "--n", "50", "--no-progress")
    assert code == 2 and "contains NaN or inf" in output

    manifest = published(hub, tmp_path, "alice/nan", {"model.safetensors": ZOO_A}, architecture="mnist_d")
    code, output = run_cli(capsys, "submission", "check", str(manifest), "--n", "50", "--no-progress")
    assert code == 2 and "the weights do not fit this architecture" in output


@requires_olah
def test_an_unreachable_hub_is_a_clear_error_and_fetched_files_work_offline(hub, tmp_path, capsys, monkeypatch):
    manifest = published(hub, tmp_path, "alice/offline", {"model.safetensors": ZOO_A})
    assert run_cli(capsys, "submission", "fetch", str(manifest))[0] == 0

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    code, output = run_cli(capsys, "submission", "fetch", str(manifest))
    assert code == 0 and "downloaded nothing" in output

    stored = store_dir(load_manifest(manifest).model) / "model.safetensors"
    stored.write_bytes(b"tampered")   # a damaged store file is fetched again, which needs the Hub
    code, output = run_cli(capsys, "submission", "fetch", str(manifest))
    assert code == 2 and "cannot reach the Hub at http://127.0.0.1:9" in output

    code, output = run_cli(capsys, "submission", "fetch", str(manifest), "--offline")
    assert code == 2 and "not in the store" in output


def test_fetch_refuses_when_nothing_is_stored_and_offline_is_requested(tmp_path):
    manifest = load_manifest(write_manifest(tmp_path, manifest_document()))
    with pytest.raises(HubError, match="model.safetensors not in the store"):
        fetch(manifest, offline=True)


@requires_olah
def test_a_download_cut_off_midway_leaves_no_partial_file(hub, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    manifest = published(hub, tmp_path, "alice/cut-off", {"model.safetensors": ZOO_A})

    def cut_off(repo_id, filename, *, local_dir, **_):
        (Path(local_dir) / filename).write_bytes(ZOO_A.read_bytes()[:1000])   # half-written file
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cut_off)
    code, output = run_cli(capsys, "submission", "fetch", str(manifest))
    assert code == 2 and "cannot reach the Hub" in output and "connection reset by peer" in output
    assert stored_files(manifest) == [], "neither the partial file nor the temporary folder is left"


def test_the_example_manifest_validates_and_the_readme_is_true(capsys):
    """submissions/example.yaml is a manifest to copy that `submission validate` accepts; the
    submissions README names every dataset of the spec and only paths that exist."""
    from benchmark.spec import load_spec

    repository = Path(__file__).resolve().parents[2]
    code, output = run_cli(capsys, "submission", "validate", str(repository / "submissions" / "example.yaml"))
    assert code == 0 and "valid (fashion-mnist, your-org/your-defense@" in output
    readme = (repository / "submissions" / "README.md").read_text()
    assert "# a dataset of the spec: " + ", ".join(load_spec().datasets) in readme
    for path in re.findall(r"`((?:benchmark|baselines|submissions|docs|leaderboard)/[\w./-]+\.\w+)`", readme):
        if "<" not in path:
            assert (repository / path).exists(), f"submissions/README.md names {path}, which does not exist"
