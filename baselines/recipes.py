"""Training recipes: `baselines/recipes/<dataset>/<name>.toml`, validated into a frozen `Recipe`.

A recipe is data. Every key is checked, and an error names the dotted key and the file, so that a
typo never silently changes how a baseline is trained. The recipe's sha256 (of the file's bytes) is
recorded beside the weights it produces.

Layout of a recipe file::

    schema = "threatbench.recipe/1"
    name = "A_adv"
    dataset = "fashion-mnist"
    architecture = "mnist_a"            # any registry name, e.g. "pni:mnist_a"
    trainer = "fgsm_adversarial"        # see TRAINERS
    seed = 0
    epochs = 12
    save_epochs = [6, 12]               # also keep the weights after these epochs
    batch_size = 64
    train_limit = 10000                 # optional: first images of the train split only
    deviation = "one line: how this recipe differs from its paper"
    expected_time = "measured: 4.1 min per epoch on 2 CPU cores; 50 min in all"
    notes = "the paper's recipe as followed, and why each choice"

    [optimizer]                         # adam (default) or sgd
    name = "adam"
    learning_rate = 1e-3
    noise_learning_rate = 5e-5          # optional: PNI/CNI noise parameters' own step size

    [adversary]                         # the trainer's own parameters (TRAINER_KEYS)
    eps = 0.1
    label = "predicted"
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.data import DATASETS
from benchmark.errors import ArchitectureError, ThreatbenchError
from benchmark.models.architectures import build

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_SCHEMA = "threatbench.recipe/1"
RECIPES_DIR = Path(__file__).parent / "recipes"

# trainer -> {adversary key: (type, required, default)}
TRAINER_KEYS: dict[str, dict[str, tuple[type, bool, Any]]] = {
    "standard": {},
    # Goodfellow/Tramer MNIST: 1/2 clean CE + 1/2 FGSM CE; label "predicted" avoids label leaking.
    "fgsm_adversarial": {
        "eps": (float, True, None), "label": (str, False, "predicted"),
        "clean_weight": (float, False, 0.5),
    },
    # Kurakin et al.: k of each m examples replaced by step-LL ones, per-example eps ~ truncated normal.
    "kurakin": {
        "eps_max": (float, True, None), "eps_std": (float, True, None),
        "replaced_fraction": (float, False, 0.5), "adversarial_weight": (float, False, 0.3),
    },
    # Madry et al.: 100% PGD examples.
    "madry_pgd": {
        "eps": (float, True, None), "steps": (int, True, None), "step_size": (float, True, None),
        "random_start": (bool, False, True), "label": (str, False, "true"),
    },
    # PGD adversarial training with a clean term (PNI, SIAM): (1 - w) clean CE + w PGD CE.
    "pgd_adversarial": {
        "eps": (float, True, None), "steps": (int, True, None), "step_size": (float, True, None),
        "random_start": (bool, False, True), "label": (str, False, "predicted"),
        "adversarial_weight": (float, False, 0.5), "delay_epochs": (int, False, 0),
        "clip_grad_norm": (float, False, 0.0),
    },
    # Tramer et al.: each batch's FGSM source drawn among the model itself and the static models.
    "ensemble_adversarial": {
        "eps": (float, True, None), "clean_weight": (float, False, 0.5),
        "static_models": (list, True, None),
    },
    # Zhang et al.: CE(clean) + beta KL(p_clean || p_adv), inner KL maximization.
    "trades": {
        "eps": (float, True, None), "steps": (int, True, None), "step_size": (float, True, None),
        "beta": (float, True, None), "init_std": (float, False, 0.001),
    },
}
LABELS = ("predicted", "true")
# noise_learning_rate: the step size of the noise parameters (PNI alpha, CNI a_d and F), default the
# learning rate. Adam moves every parameter by about its learning rate whatever the parameter's size,
# so noise parameters initialized far smaller than the weights need their own (see make_optimizer).
OPTIMIZERS = {
    "adam": {"learning_rate": (float, True, None), "weight_decay": (float, False, 0.0),
             "noise_learning_rate": (float, False, None)},
    "sgd": {"learning_rate": (float, True, None), "weight_decay": (float, False, 0.0),
            "momentum": (float, False, 0.9), "nesterov": (bool, False, False),
            "noise_learning_rate": (float, False, None)},
}
TOP_LEVEL = {
    "schema": (str, True, None), "name": (str, True, None), "dataset": (str, True, None),
    "architecture": (str, True, None), "trainer": (str, True, None), "seed": (int, False, 0),
    "epochs": (int, True, None), "save_epochs": (list, False, []), "batch_size": (int, True, None),
    "train_limit": (int, False, None), "notes": (str, False, ""), "noise_init": (str, False, "paper"),
    "deviation": (str, False, ""), "expected_time": (str, False, ""),
}
ONE_LINE_KEYS = ("deviation", "expected_time")   # shown in tables: one line each
MAX_ONE_LINE = 240
NOISE_INITS = ("paper", "weight_relative")   # see benchmark.models.noise_injection.scale_noise_to_weights


class RecipeError(ThreatbenchError, ValueError):
    """A recipe file is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class StaticModel:
    """A frozen pre-trained source for ensemble adversarial training: another recipe's output."""

    recipe: str            # path relative to the recipes directory, e.g. "fashion-mnist/C.toml"
    # The static recipe's sha256, pinned so that this recipe's own sha256 names the sources it trained
    # with: a changed C.toml must not silently change what an unchanged A_adv-ens.toml trains.
    recipe_sha256: str | None = None


@dataclass(frozen=True)
class Optimizer:
    name: str
    learning_rate: float
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    noise_learning_rate: float | None = None   # None: learning_rate


@dataclass(frozen=True)
class Recipe:
    path: Path
    sha256: str
    name: str
    dataset: str
    architecture: str
    trainer: str
    seed: int
    epochs: int
    save_epochs: tuple[int, ...]
    batch_size: int
    train_limit: int | None
    optimizer: Optimizer
    adversary: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    noise_init: str = "paper"
    deviation: str = ""
    expected_time: str = ""

    @property
    def static_models(self) -> tuple[StaticModel, ...]:
        return tuple(StaticModel(m) if isinstance(m, str) else StaticModel(m["recipe"], m["recipe_sha256"])
                     for m in self.adversary.get("static_models", ()))

    def run_name(self) -> str:
        """Directory name of this recipe's training run: changes whenever the file changes."""
        return f"{self.name}-{self.sha256[:12]}"


def _typed(value: Any, kind: type, key: str, where: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise RecipeError(f"{where}: {key} must be a {kind.__name__}, got {value!r}")
    return value


def _read_table(table: dict[str, Any], keys: dict[str, tuple[type, bool, Any]], prefix: str,
                where: str) -> dict[str, Any]:
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise RecipeError(f"{where}: {prefix}{unknown[0]}: unknown key; allowed: {', '.join(keys)}")
    values = {}
    for key, (kind, required, default) in keys.items():
        if key not in table:
            if required:
                raise RecipeError(f"{where}: {prefix}{key}: missing (required)")
            values[key] = default
        else:
            values[key] = _typed(table[key], kind, prefix + key, where)
    return values


def _check_learning_rates(optimizer: Optimizer, where: str) -> None:
    for key in ("learning_rate", "noise_learning_rate"):
        value = getattr(optimizer, key)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise RecipeError(f"{where}: optimizer.{key} must be a finite number > 0, got {value!r}")


def _check_ranges(top: dict[str, Any], adversary: dict[str, Any], where: str) -> None:
    for key in ONE_LINE_KEYS:
        if "\n" in top[key] or len(top[key]) > MAX_ONE_LINE:
            raise RecipeError(f"{where}: {key} must be one line of at most {MAX_ONE_LINE} characters")
    for key in ("epochs", "batch_size"):
        if top[key] < 1:
            raise RecipeError(f"{where}: {key} must be >= 1, got {top[key]}")
    if top["train_limit"] is not None and top["train_limit"] < top["batch_size"]:
        raise RecipeError(f"{where}: train_limit must be at least batch_size, got {top['train_limit']}")
    for epoch in top["save_epochs"]:
        if not isinstance(epoch, int) or not 1 <= epoch <= top["epochs"]:
            raise RecipeError(f"{where}: save_epochs: {epoch!r} is not an epoch in 1..{top['epochs']}")
    for key in ("eps", "eps_max", "step_size"):
        if key in adversary and not 0.0 < adversary[key] <= 1.0:
            raise RecipeError(f"{where}: adversary.{key} must lie in (0, 1], got {adversary[key]}")
    for key in ("clean_weight", "adversarial_weight", "replaced_fraction"):
        if key in adversary and not 0.0 <= adversary[key] <= 1.0:
            raise RecipeError(f"{where}: adversary.{key} must lie in [0, 1], got {adversary[key]}")
    if "steps" in adversary and adversary["steps"] < 1:
        raise RecipeError(f"{where}: adversary.steps must be >= 1, got {adversary['steps']}")
    if "label" in adversary and adversary["label"] not in LABELS:
        raise RecipeError(f"{where}: adversary.label must be one of {LABELS}, got {adversary['label']!r}")
    if adversary.get("static_models") == []:
        raise RecipeError(f"{where}: adversary.static_models is empty; name at least one recipe")
    for model in adversary.get("static_models", ()):
        _check_static_model(model, where)


def _check_static_model(model: Any, where: str) -> None:
    """A static model is a recipe path, or {recipe = path, recipe_sha256 = its sha256} (pinned)."""
    pinned = isinstance(model, dict) and set(model) == {"recipe", "recipe_sha256"} \
        and isinstance(model["recipe"], str) and isinstance(model["recipe_sha256"], str) \
        and re.fullmatch(r"[0-9a-f]{64}", model["recipe_sha256"]) is not None
    if not (isinstance(model, str) or pinned):
        raise RecipeError(f"{where}: adversary.static_models: each is a recipe path or "
                          '{recipe = "fashion-mnist/C.toml", recipe_sha256 = "<64 hex>"}, got ' f"{model!r}")


def parse_recipe(text: str, path: Path) -> Recipe:
    where = str(path)
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"{where}: not valid TOML ({error})") from None
    top_table = {k: v for k, v in table.items() if k not in ("optimizer", "adversary")}
    top = _read_table(top_table, TOP_LEVEL, "", where)
    if top["schema"] != RECIPE_SCHEMA:
        raise RecipeError(f"{where}: schema is {top['schema']!r}; this threatbench reads {RECIPE_SCHEMA!r}")
    if top["dataset"] not in DATASETS:
        raise RecipeError(f"{where}: dataset {top['dataset']!r} is not one of {', '.join(DATASETS)}")
    if top["trainer"] not in TRAINER_KEYS:
        raise RecipeError(f"{where}: trainer {top['trainer']!r} is not one of {', '.join(TRAINER_KEYS)}")
    try:
        build(top["architecture"], 10)
    except ArchitectureError as error:
        raise RecipeError(f"{where}: architecture: {error}") from None

    if top["noise_init"] not in NOISE_INITS:
        raise RecipeError(f"{where}: noise_init {top['noise_init']!r} is not one of {', '.join(NOISE_INITS)}")
    if top["noise_init"] != "paper" and not top["architecture"].startswith("cni:"):
        raise RecipeError(f"{where}: noise_init {top['noise_init']!r} only applies to cni: architectures")

    optimizer_table = dict(table.get("optimizer", {"name": "adam", "learning_rate": 1e-3}))
    optimizer_name = optimizer_table.pop("name", "adam")
    if optimizer_name not in OPTIMIZERS:
        raise RecipeError(f"{where}: optimizer.name {optimizer_name!r} is not one of {', '.join(OPTIMIZERS)}")
    optimizer = Optimizer(optimizer_name, **_read_table(optimizer_table, OPTIMIZERS[optimizer_name],
                                                        "optimizer.", where))
    _check_learning_rates(optimizer, where)
    adversary = _read_table(table.get("adversary", {}), TRAINER_KEYS[top["trainer"]], "adversary.", where)
    _check_ranges(top, adversary, where)
    return Recipe(
        path=path, sha256=hashlib.sha256(text.encode()).hexdigest(), name=top["name"],
        dataset=top["dataset"], architecture=top["architecture"], trainer=top["trainer"],
        seed=top["seed"], epochs=top["epochs"], save_epochs=tuple(sorted(set(top["save_epochs"]))),
        batch_size=top["batch_size"], train_limit=top["train_limit"], optimizer=optimizer,
        adversary=adversary, notes=top["notes"], noise_init=top["noise_init"],
        deviation=top["deviation"], expected_time=top["expected_time"],
    )


def resolve_recipe_path(path: str | Path) -> Path:
    """A path as given, or relative to baselines/recipes/ (so "fashion-mnist/A_adv.toml" works)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    if (RECIPES_DIR / candidate).is_file():
        return RECIPES_DIR / candidate
    raise RecipeError(f"recipe not found: {path} (looked in . and {RECIPES_DIR})")


def load_recipe(path: str | Path) -> Recipe:
    resolved = resolve_recipe_path(path)
    return parse_recipe(resolved.read_text(), resolved)
