"""The threat-model spec: the packaged values (docs/threat-model.md), strict validation, v1 kept
readable beside the current v2, `threatbench spec`."""

from __future__ import annotations

import hashlib

import pytest

from benchmark.cli import main
from benchmark.spec import (
    DEFAULT_SPEC_PATH,
    MARGIN_ATTACKS,
    SPEC_DIR,
    WHITE_BOX_ATTACKS,
    AdaptivePolicy,
    SpecError,
    load_spec,
)

SPEC_TEXT = DEFAULT_SPEC_PATH.read_text(encoding="utf-8")

DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "imagenet")
EPS = {"mnist": 0.3, "fashion-mnist": 0.1, "cifar10": 8 / 255, "cifar100": 8 / 255,
       "imagenet": 16 / 256}
MNIST_LIKE = ("mnist", "fashion-mnist")


@pytest.fixture(scope="module")
def spec():
    return load_spec()


def _source_architectures(dataset) -> tuple[str, ...]:
    # A held-out source is a table with an `architecture` (older specs: the bare name).
    return tuple(getattr(source, "architecture", source) for source in dataset.held_out_sources)


# ---------------------------------------------------------------- the packaged values


def test_packaged_spec_loads_with_its_header(spec):
    assert spec.schema == "threatbench.spec/1"
    assert spec.version == "2.0.0"
    assert spec.norm == "linf"
    assert spec.seed == 0
    assert spec.confidence == 0.95
    assert spec.path == DEFAULT_SPEC_PATH
    assert set(spec.datasets) == set(DATASETS)


@pytest.mark.parametrize("name", DATASETS)
def test_eps_and_shape(spec, name):
    d = spec.dataset(name)
    assert d.name == name
    assert d.eps == pytest.approx(EPS[name], rel=1e-12)
    expected_shape = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32),
                      "cifar100": (3, 32, 32), "imagenet": (3, 299, 299)}[name]
    assert d.input_shape == expected_shape
    assert d.num_classes == {"cifar100": 100, "imagenet": 1000}.get(name, 10)
    assert tuple(d.attacks) == (*WHITE_BOX_ATTACKS, *MARGIN_ATTACKS)
    assert d.nattack.parameterization == "pixel"


def test_v1_stays_readable_with_the_papers_nattack():
    v1 = load_spec(SPEC_DIR / "v1.toml")
    assert v1.version == "1.0.0"
    for dataset in v1.datasets.values():
        assert tuple(dataset.attacks) == WHITE_BOX_ATTACKS
        assert dataset.nattack.parameterization == "tanh"


@pytest.mark.parametrize("name", DATASETS)
def test_margin_pgd_follows_pgd_schedule(spec, name):
    attacks = spec.dataset(name).attacks
    for margin, plain in (("pgd_margin", "pgd"), ("epgd_margin", "epgd")):
        assert (attacks[margin].steps, attacks[margin].step_size) == (attacks[plain].steps, attacks[plain].step_size)
        assert attacks[margin].draws == attacks[plain].draws


@pytest.mark.parametrize("name", DATASETS)
def test_white_box_attack_parameters(spec, name):
    d = spec.dataset(name)
    eps = EPS[name]
    attacks = d.attacks

    assert attacks["fgsm"].label == "true"
    assert attacks["step_ll"].label == "least_likely"

    rand = attacks["rand_fgsm"]
    assert rand.alpha == pytest.approx(0.05 if name == "mnist" else eps / 2, rel=1e-12)
    assert rand.alpha < eps
    assert rand.label == ("least_likely" if name == "imagenet" else "true")

    assert attacks["ifgsm"].steps == 10
    assert attacks["ifgsm"].label == "true"

    steps = 40 if name in MNIST_LIKE else 20
    for attack in ("pgd", "epgd"):
        params = attacks[attack]
        assert params.steps == steps, attack
        assert params.step_size == pytest.approx(2.5 * eps / steps, rel=1e-12), attack
        assert params.random_start is True, attack
        assert params.label == "true", attack
    assert attacks["epgd"].draws == 8
    assert attacks["pgd"].draws is None


@pytest.mark.parametrize("name", DATASETS)
def test_nattack_and_budgets(spec, name):
    d = spec.dataset(name)
    n = d.nattack
    assert (n.population, n.sigma, n.learning_rate, n.max_iterations, n.check_every) == (
        300, 0.1, 0.02, 500, 10)
    assert n.search_shape == ((3, 32, 32) if name == "imagenet" else d.input_shape)

    full, quick = d.budget("full"), d.budget("quick")
    assert (full.n, full.nattack_n) == (10000, 500 if name == "imagenet" else 1000)
    assert (quick.n, quick.nattack_n, quick.nattack_max_iterations) == (500, 50, 50)
    assert full.ranked and not quick.ranked
    # standard is sized for a 2-core CPU; only Fashion-MNIST, the dataset we can measure, has it so far
    assert set(d.budgets) == ({"full", "standard", "quick"} if name == "fashion-mnist" else {"full", "quick"})


def test_spec_v2_schedules_nattack_last_on_a_uniform_subsample(spec):
    assert spec.adaptive.cascade is True and spec.adaptive.subsample == "uniform"
    assert load_spec(SPEC_DIR / "v1.toml").adaptive == AdaptivePolicy(cascade=False, subsample="first")


def test_budget_keys_are_validated(tmp_path):
    text = DEFAULT_SPEC_PATH.read_text()
    for old, new, message in [
        ("[datasets.fashion-mnist.budgets.quick]\n", "[datasets.fashion-mnist.budgets.quick]\nranked = true\n",
         "quick budget is a smoke test and is never ranked"),
        ("smoothed_n = ", "ranked_n = ", "unknown key"),
        ("[adaptive]                # the attack cascade", "[adaptive]\nextra = 1\n#", "adaptive.extra: unknown key"),
    ]:
        assert text.count(old) == 1, old
        path = tmp_path / "v.toml"
        path.write_text(text.replace(old, new))
        with pytest.raises(SpecError, match=message):
            load_spec(path)


def test_models_per_dataset(spec):
    for name in MNIST_LIKE:
        d = spec.dataset(name)
        assert d.architectures == ("mnist_a", "mnist_b", "mnist_c", "mnist_d")
        assert d.trained_architecture == "mnist_a"
        assert d.static_models == ("mnist_a", "mnist_c", "mnist_d")
        assert _source_architectures(d) == ("mnist_b",)
        assert "mnist_b" not in d.static_models   # held out: never seen by a defense
        assert d.preprocessing is None
    for name in ("cifar10", "cifar100"):
        d = spec.dataset(name)
        assert d.architectures == ("resnet20", "wrn34_10")
        assert d.trained_architecture == "resnet20"
    imagenet = spec.dataset("imagenet")
    assert _source_architectures(imagenet) == ("timm:inception_v4.tf_in1k",)
    assert imagenet.trained_architecture == "timm:inception_v3.tf_in1k"
    assert all(a.startswith("timm:") for a in imagenet.architectures)
    assert imagenet.preprocessing.as_dict() == {"resize": 341, "crop": 299,
                                                "interpolation": "bicubic"}


def test_sha256_is_that_of_the_file_bytes_and_follows_one_byte(spec, tmp_path):
    raw = DEFAULT_SPEC_PATH.read_bytes()
    assert spec.sha256 == hashlib.sha256(raw).hexdigest()

    copy = tmp_path / "v1.toml"
    copy.write_bytes(raw)
    assert load_spec(copy).sha256 == spec.sha256

    # One byte of a comment: the same threat model, another file, another hash.
    index = raw.index(b"# threatbench")
    changed = raw[:index] + b"#" + raw[index + 1:].replace(b"t", b"T", 1)
    assert len(changed) == len(raw) and sum(a != b for a, b in zip(raw, changed, strict=True)) == 1
    copy.write_bytes(changed)
    other = load_spec(copy)
    assert other.sha256 == hashlib.sha256(changed).hexdigest()
    assert other.sha256 != spec.sha256
    assert other.datasets == spec.datasets


# ---------------------------------------------------------------- validation


def _write_variant(tmp_path, old: str, new: str, *, text: str = SPEC_TEXT):
    assert text.count(old) == 1, f"test setup: {old!r} must occur exactly once in the spec"
    path = tmp_path / "variant.toml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def _spec_error(path) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(info.value)


MNIST_PGD = 'pgd = { steps = 40, step_size = 0.01875, random_start = true, label = "true" }'
MNIST_EPS = "eps = 0.3                                    # (T)"

INVALID = {
    "unknown top-level key": (
        "seed = 0 ", "seed = 0\nsede = 1 ", ["sede", "unknown key"]),
    "unknown key in datasets.mnist.attacks.pgd": (
        MNIST_PGD, MNIST_PGD.replace("label", "stpes = 3, label"),
        ["datasets.mnist.attacks.pgd.stpes", "unknown key"]),
    "eps 0": (MNIST_EPS, "eps = 0", ["datasets.mnist.eps", "(0.0, 1.0]"]),
    "eps 1.5": (MNIST_EPS, "eps = 1.5", ["datasets.mnist.eps", "1.5"]),
    "eps nan": (MNIST_EPS, "eps = nan", ["datasets.mnist.eps", "nan"]),
    "eps as a string": (MNIST_EPS, 'eps = "0.3"', ["datasets.mnist.eps", "expected a number"]),
    "alpha equal to eps": (
        "rand_fgsm = { alpha = 0.05, label = \"true\" }                    # (T §4)",
        'rand_fgsm = { alpha = 0.3, label = "true" }',
        ["datasets.mnist.attacks.rand_fgsm.alpha", "smaller than eps"]),
    "alpha above eps": (
        'rand_fgsm = { alpha = 0.03125, label = "least_likely" }',
        'rand_fgsm = { alpha = 0.07, label = "least_likely" }',
        ["datasets.imagenet.attacks.rand_fgsm.alpha", "smaller than eps"]),
    "missing required key": (
        MNIST_EPS, "", ["datasets.mnist.eps", "required key is missing"]),
    "missing attack": (
        'fgsm = { label = "true" }\nstep_ll = { label = "least_likely" }\n'
        'rand_fgsm = { alpha = 0.05, label = "true" }                    # eps/2',
        'fgsm = { label = "true" }\n'
        'rand_fgsm = { alpha = 0.05, label = "true" }                    # eps/2',
        ["datasets.fashion-mnist.attacks.step_ll", "required key is missing"]),
    "steps 0": (
        'ifgsm = { steps = 10, label = "true" }                          # step eps/steps (T)',
        'ifgsm = { steps = 0, label = "true" }',
        ["datasets.mnist.attacks.ifgsm.steps", ">= 1"]),
    "bool for an int": (
        'ifgsm = { steps = 10, label = "true" }                          # step eps/steps (T)',
        'ifgsm = { steps = true, label = "true" }',
        ["datasets.mnist.attacks.ifgsm.steps", "expected an integer"]),
    "bool for the seed": ("seed = 0 ", "seed = false ", ["seed", "expected an integer"]),
    "bad label mode": (
        'step_ll = { label = "least_likely" }\nrand_fgsm = { alpha = 0.03125',
        'step_ll = { label = "most_likely" }\nrand_fgsm = { alpha = 0.03125',
        ["datasets.imagenet.attacks.step_ll.label", "least_likely"]),
    "unknown dataset": (
        "[datasets.mnist]\n", "[datasets.svhn]\nnum_classes = 10\n\n[datasets.mnist]\n",
        ["datasets.svhn", "unknown dataset", "fashion-mnist", "imagenet"]),
    "wrong schema": (
        'schema = "threatbench.spec/1"', 'schema = "threatbench.spec/2"',
        ["schema", "threatbench.spec/1", "threatbench.spec/2"]),
    "nattack_n above n": (
        "[datasets.cifar10.budgets.quick]\nn = 500\nnattack_n = 50",
        "[datasets.cifar10.budgets.quick]\nn = 500\nnattack_n = 501",
        ["datasets.cifar10.budgets.quick.nattack_n", "must not exceed n (500)", "501"]),
    "unknown budget": (
        "[datasets.cifar10.budgets.quick]",
        "[datasets.cifar10.budgets.quik]",
        ["datasets.cifar10.budgets.quik", "unknown key"]),
    "wrong norm": ('norm = "linf"', 'norm = "l2"', ["norm", "linf", "'l2'"]),
}


@pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
def test_invalid_spec_names_the_dotted_key(tmp_path, case):
    old, new, fragments = INVALID[case]
    message = _spec_error(_write_variant(tmp_path, old, new))
    assert message.startswith("variant.toml: ")
    for fragment in fragments:
        assert fragment in message, (case, message)


def test_unchanged_copy_is_valid(tmp_path):
    # The variants above are invalid because of their edit, not because of the copy.
    assert load_spec(_write_variant(tmp_path, "seed = 0 ", "seed = 0 ")).seed == 0


def test_invalid_toml(tmp_path):
    message = _spec_error(_write_variant(tmp_path, MNIST_EPS, "eps = = 0.3"))
    assert "not valid TOML" in message
    assert "variant.toml" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(SPEC_TEXT.replace("Tramer", "Tram\u00e8r").encode("latin-1"))
    assert "not valid TOML" in _spec_error(path)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    message = _spec_error(path)
    assert "not found" in message and str(path) in message


def test_unknown_dataset_lists_choices(spec):
    with pytest.raises(SpecError) as info:
        spec.dataset("nope")
    message = str(info.value)
    assert "'nope'" in message
    for name in DATASETS:
        assert name in message


def test_unknown_budget_lists_choices(spec):
    with pytest.raises(SpecError) as info:
        spec.dataset("mnist").budget("nope")
    message = str(info.value)
    assert "'nope'" in message and "full" in message and "quick" in message


# ---------------------------------------------------------------- `threatbench spec`


def test_cli_spec_prints_every_dataset(capsys, spec):
    assert main(["spec"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert captured.err == ""
    assert spec.sha256 in out
    assert "spec v2.0.0" in out
    for name in DATASETS:
        assert f"## {name}: eps " in out
    assert "## mnist: eps 0.3, 10 classes" in out
    assert "## fashion-mnist: eps 0.1, 10 classes" in out
    assert "## cifar100: eps 0.0313725, 100 classes" in out
    assert "## imagenet: eps 0.0625, 1000 classes" in out
    assert "timm:inception_v4.tf_in1k" in out
    assert "mnist_b" in out
    assert "least_likely" in out
    assert "10000" in out and "500" in out


def test_cli_spec_one_dataset(capsys):
    assert main(["spec", "--dataset", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "## cifar10: eps" in out
    assert "## mnist:" not in out and "## imagenet:" not in out


def test_cli_spec_unknown_dataset_is_one_line(capsys):
    assert main(["spec", "--dataset", "nope"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("threatbench: error: ")
    assert "'nope'" in lines[0] and "fashion-mnist" in lines[0]
    assert "Traceback" not in captured.err


def test_cli_spec_invalid_file_is_one_line(capsys, tmp_path):
    path = _write_variant(tmp_path, MNIST_EPS, "eps = 0")
    assert main(["spec", "--spec", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "datasets.mnist.eps" in captured.err


# Frozen specs: records pin these sha256s, so a frozen file never changes; a new threat model is a new
# file with a new version (docs/threat-model.md).
FROZEN = {
    "v1.toml": "bb3093ff4bae87d57d4354bd8d93a6e3262b6f03800bbc9c8c0edabf2a292d02",
    "v2.toml": "da33b427fdefdfd778c0836ee4485ff055607612ff2f984b918de598b7b71478",
}


V1_RECORDS_SHA256 = "6d9fd7b89bfab4fd43e89a1355165bd34396ca1544d2ad9b6c1d81b78c7400cc"


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_a_frozen_spec_never_changes(name):
    raw = (SPEC_DIR / name).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == FROZEN[name], (
        f"{name} is frozen: records measured under it pin its sha256. Put a changed threat model in a "
        "new file with a new version instead")


def test_v1_differs_from_the_file_its_records_pin_only_in_one_comment(tmp_path):
    """v1's comment once cited a file outside the repository; it now cites docs/threat-model.md. The v1
    records pin the original bytes, which this restores exactly: no value of the threat model changed."""
    text = (SPEC_DIR / "v1.toml").read_text(encoding="utf-8")
    original = text.replace("Li et al. 2019; see docs/threat-model.md.",
                            "Li et al. 2019; see shared/reference/algorithms.md.")
    assert hashlib.sha256(original.encode()).hexdigest() == V1_RECORDS_SHA256
    (tmp_path / "v1.toml").write_text(original, encoding="utf-8")
    pinned, current = load_spec(tmp_path / "v1.toml"), load_spec(SPEC_DIR / "v1.toml")
    assert pinned.sha256 == V1_RECORDS_SHA256
    assert pinned.datasets == current.datasets and pinned.version == current.version
