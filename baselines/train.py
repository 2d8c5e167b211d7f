"""`threatbench train <recipe>`: train a baseline defense from its recipe, resumably.

Seeded (data order, dropout and model noise depend only on (seed, epoch)), with a checkpoint of the
model and optimizer after every epoch (safetensors), so an interrupted run resumes to the same
weights. Outputs in the run directory: `weights.safetensors` (final), `epoch-<N>.safetensors` for
each of the recipe's `save_epochs`, and `model.json` with every file's sha256 and the recipe's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from baselines.objectives import OBJECTIVES, BatchContext
from baselines.recipes import Recipe, RecipeError, load_recipe
from benchmark.data import load_training_tensors
from benchmark.evaluation.results import atomic_write_json
from benchmark.models.architectures import build
from benchmark.models.defense import Defense, file_sha256
from benchmark.models.defense import load as load_defense
from benchmark.models.noise_injection import scale_noise_to_weights
from benchmark.models.training import (
    StandardRecipe,
    checkpoint_seconds,
    fixed_cpu_threads,
    load_checkpoint,
    run_epoch,
    save_checkpoint,
    standard_model_dir,
    train_standard,
    training_device,
)
from benchmark.runtime.cache import cache_dir
from benchmark.runtime.randomness import derive_seed
from benchmark.spec import Spec, load_spec

WEIGHT_NAMES = ("weight", "bias")


@dataclass(frozen=True)
class TrainedWeights:
    path: Path
    sha256: str
    epoch: int
    seconds: float | None = None   # training wall time up to this epoch (None: not recorded)


@dataclass(frozen=True)
class TrainingRun:
    recipe: Recipe
    directory: Path
    final: TrainedWeights
    snapshots: dict[int, TrainedWeights]

    def weights_at(self, epoch: int | None) -> TrainedWeights:
        if epoch is None or epoch == self.final.epoch:
            return self.final
        if epoch not in self.snapshots:
            raise RecipeError(f"{self.recipe.path}: no weights saved after epoch {epoch}; "
                              f"add it to save_epochs (saved: {sorted(self.snapshots)})")
        return self.snapshots[epoch]


def default_run_dir(recipe: Recipe) -> Path:
    return cache_dir() / "training" / recipe.dataset / recipe.run_name()


def make_optimizer(recipe: Recipe, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Noise parameters (PNI alpha, CNI factors) get no weight decay, as in the PNI code, and the
    recipe's `noise_learning_rate` where it sets one (docs/training-attempts.md: under Adam, CNI
    factors initialized relative to std(W) take steps as large as themselves)."""
    decayed, undecayed = [], []
    for name, parameter in model.named_parameters():
        (decayed if name.rsplit(".", 1)[-1] in WEIGHT_NAMES else undecayed).append(parameter)
    settings = recipe.optimizer
    groups = [{"params": decayed, "weight_decay": settings.weight_decay}]
    if undecayed:
        noise_rate = settings.learning_rate if settings.noise_learning_rate is None else settings.noise_learning_rate
        groups.append({"params": undecayed, "weight_decay": 0.0, "lr": noise_rate})
    if settings.name == "sgd":
        return torch.optim.SGD(groups, lr=settings.learning_rate, momentum=settings.momentum,
                               nesterov=settings.nesterov)
    return torch.optim.Adam(groups, lr=settings.learning_rate)


def check_not_held_out(recipe: Recipe, static: Recipe, weights_sha256: str, spec: Spec) -> None:
    """A static source must never be one of the judge's held-out transfer sources."""
    dataset = spec.datasets[recipe.dataset]
    for source in dataset.held_out_sources:
        if static.architecture == source.architecture or static.name == source.name \
                or weights_sha256 == source.sha256:
            raise RecipeError(
                f"{recipe.path}: adversary.static_models: {static.path.name} is the held-out "
                f"source {source.name!r} ({source.architecture}) of spec {spec.version}; held-out "
                "sources are the judge's and must never be seen in training. Choose another model"
            )


def load_static_sources(recipe: Recipe, *, data_dir=None, progress: bool,
                        device) -> tuple[list[Defense], list[dict[str, str]]]:
    """Frozen static models, each trained from its own recipe (once; cached like any run), and the
    provenance the run's model.json keeps of each: a rebuild on other CPU kernels trains other
    static weights, so the card must say which ones the model saw."""
    spec, sources, provenance = load_spec(), [], []
    for static in recipe.static_models:
        static_recipe = load_recipe(static.recipe)
        if static_recipe.dataset != recipe.dataset:
            raise RecipeError(f"{recipe.path}: adversary.static_models: {static.recipe} trains on "
                              f"{static_recipe.dataset}, not {recipe.dataset}")
        if static.recipe_sha256 is not None and static.recipe_sha256 != static_recipe.sha256:
            raise RecipeError(f"{recipe.path}: adversary.static_models: {static.recipe} has changed since "
                              f"this recipe pinned it (sha256 {static.recipe_sha256[:12]}..., now "
                              f"{static_recipe.sha256[:12]}...); pin the new sha256, which makes this a new recipe")
        check_not_held_out(recipe, static_recipe, "", spec)    # before spending time training it
        run = train_recipe(static_recipe, data_dir=data_dir, progress=progress, device=device)
        check_not_held_out(recipe, static_recipe, run.final.sha256, spec)
        sources.append(load_defense(static_recipe.architecture, run.final.path,
                                    num_classes=spec.datasets[recipe.dataset].num_classes,
                                    sha256=run.final.sha256, device=device,
                                    name=static_recipe.name))
        provenance.append({"name": static_recipe.name, "recipe_sha256": static_recipe.sha256,
                           "weights_sha256": run.final.sha256})
    return sources, provenance


def _save_weights(model: torch.nn.Module, path: Path, recipe: Recipe, epoch: int,
                  seconds: float | None = None) -> TrainedWeights:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    temporary = path.with_suffix(".tmp")
    # One metadata key: safetensors writes several in no fixed order, which would change the sha256.
    provenance = json.dumps({"recipe": recipe.name, "recipe_sha256": recipe.sha256, "epoch": epoch},
                            sort_keys=True)
    save_file(state, str(temporary), metadata={"threatbench": provenance})
    temporary.replace(path)
    return TrainedWeights(path, file_sha256(path), epoch, None if seconds is None else round(seconds, 1))


def _card(recipe: Recipe, final: TrainedWeights, snapshots: dict[int, TrainedWeights], steps: int,
          training: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`training`: wall seconds summed over every resumed session, the device, the image count."""
    return {
        "recipe": recipe.name, "recipe_file": recipe.path.name, "recipe_sha256": recipe.sha256,
        "dataset": recipe.dataset, "architecture": recipe.architecture, "trainer": recipe.trainer,
        "weights": {"file": final.path.name, "sha256": final.sha256, "epoch": final.epoch},
        "snapshots": {str(e): {"file": w.path.name, "sha256": w.sha256, "seconds": w.seconds}
                      for e, w in snapshots.items()},
        "steps": steps, "training": training, **extra,
    }


def _read_run(recipe: Recipe, directory: Path) -> TrainingRun | None:
    card_path = directory / "model.json"
    if not card_path.is_file():
        return None
    card = json.loads(card_path.read_text())
    if card.get("recipe_sha256") != recipe.sha256:
        return None
    final = TrainedWeights(directory / card["weights"]["file"], card["weights"]["sha256"],
                           card["weights"]["epoch"], card.get("training", {}).get("seconds"))
    snapshots = {int(e): TrainedWeights(directory / w["file"], w["sha256"], int(e), w.get("seconds"))
                 for e, w in card["snapshots"].items()}
    return TrainingRun(recipe, directory, final, snapshots)


def train_recipe(recipe: Recipe, out_dir: Path | None = None, *, data_dir=None, progress: bool = True,
                 max_steps: int | None = None, device: str | torch.device = "cpu") -> TrainingRun:
    """Train `recipe` into `out_dir` (default: the cache), resuming from its last epoch checkpoint.

    `max_steps` stops early (tests); the run is then not complete and is not cached as final.
    """
    if recipe.trainer == "standard":
        return _train_standard(recipe, out_dir, data_dir=data_dir, progress=progress,
                               max_steps=max_steps)
    directory = out_dir or default_run_dir(recipe)
    directory.mkdir(parents=True, exist_ok=True)
    finished = _read_run(recipe, directory) if max_steps is None else None
    if finished is not None:
        return finished

    x, y = load_training_tensors(recipe.dataset, data_dir, limit=recipe.train_limit)
    torch.manual_seed(recipe.seed)
    model = build(recipe.architecture, int(y.max()) + 1, in_channels=x.shape[1]).to(device)
    if recipe.noise_init == "weight_relative":
        scale_noise_to_weights(model.network)
    optimizer = make_optimizer(recipe, model.network)
    statics, static_provenance = load_static_sources(recipe, data_dir=data_dir, progress=progress, device=device) \
        if recipe.trainer == "ensemble_adversarial" else ([], [])
    checkpoint = directory / "checkpoint.safetensors"
    first_epoch = load_checkpoint(checkpoint, model.network, optimizer) if checkpoint.is_file() else 0
    steps = first_epoch * -(-len(x) // recipe.batch_size)
    snapshots = _existing_snapshots(recipe, directory, first_epoch)
    objective, started = OBJECTIVES[recipe.trainer], time.perf_counter()
    spent = checkpoint_seconds(checkpoint)
    source_counts: dict[str, int] = {}
    with fixed_cpu_threads(device):
        trained_on = training_device(device)
        for epoch in range(first_epoch, recipe.epochs):
            context = BatchContext(model, recipe.adversary, epoch, torch.Generator().manual_seed(
                derive_seed(recipe.seed, "sources", epoch)), statics, source_counts)
            steps = run_epoch(model, optimizer, x, y, lambda xb, yb, c=context: objective(c, xb, yb),
                              seed=recipe.seed, epoch=epoch, epochs=recipe.epochs,
                              batch_size=recipe.batch_size, steps_done=steps, max_steps=max_steps,
                              clip_grad_norm=recipe.adversary.get("clip_grad_norm", 0.0),
                              progress=progress, device=device)
            if max_steps is not None and steps >= max_steps:
                break
            if epoch + 1 in recipe.save_epochs and epoch + 1 < recipe.epochs:
                snapshots[epoch + 1] = _save_snapshot(model.network, directory, recipe, epoch + 1,
                                                      spent + time.perf_counter() - started)
            save_checkpoint(checkpoint, model.network, optimizer, epoch + 1,
                            spent + time.perf_counter() - started)

    final_epoch = recipe.epochs if max_steps is None else epoch + 1
    final = _save_weights(model.network, directory / "weights.safetensors", recipe, final_epoch)
    run = TrainingRun(recipe, directory, final, snapshots)
    if max_steps is None:
        extra = {"ensemble_source_batches": source_counts, "static_models": static_provenance} \
            if source_counts else {}
        training = {"seconds": round(spent + time.perf_counter() - started, 1), "device": trained_on,
                    "train_images": len(x)}
        atomic_write_json(directory / "model.json",
                          _card(recipe, final, snapshots, steps, training, extra))
        checkpoint.unlink(missing_ok=True)
    return run


def _save_snapshot(network, directory: Path, recipe: Recipe, epoch: int, seconds: float) -> TrainedWeights:
    """The weights after `epoch` (a save_epochs entry), and their training time beside them, not inside:
    the weights' bytes (and sha256) must not depend on time."""
    snapshot = _save_weights(network, directory / f"epoch-{epoch}.safetensors", recipe, epoch, seconds)
    atomic_write_json(directory / f"epoch-{epoch}.json", {"seconds": snapshot.seconds})
    return snapshot


def _existing_snapshots(recipe: Recipe, directory: Path, first_epoch: int) -> dict[int, TrainedWeights]:
    """Snapshots written before an interruption (only those of epochs already completed)."""
    snapshots = {}
    for epoch in recipe.save_epochs:
        path = directory / f"epoch-{epoch}.safetensors"
        if epoch <= first_epoch and epoch < recipe.epochs and path.is_file():
            timing = path.with_suffix(".json")
            seconds = json.loads(timing.read_text()).get("seconds") if timing.is_file() else None
            snapshots[epoch] = TrainedWeights(path, file_sha256(path), epoch, seconds)
    return snapshots


def as_standard_recipe(recipe: Recipe, max_steps: int | None = None) -> StandardRecipe:
    """The judge's own standard training (`benchmark.models.training`): plain Adam, no weight decay."""
    optimizer = recipe.optimizer
    if optimizer.name != "adam" or optimizer.weight_decay or recipe.save_epochs:
        raise RecipeError(f"{recipe.path}: the standard trainer is Tramer et al.'s plain Adam without "
                          "weight decay or save_epochs; use optimizer.name = \"adam\", no "
                          "optimizer.weight_decay and no save_epochs")
    return StandardRecipe(dataset=recipe.dataset, architecture=recipe.architecture,
                          epochs=recipe.epochs, batch_size=recipe.batch_size,
                          learning_rate=optimizer.learning_rate, seed=recipe.seed,
                          max_steps=max_steps, train_limit=recipe.train_limit)


def _train_standard(recipe: Recipe, out_dir: Path | None, *, data_dir, progress: bool,
                    max_steps: int | None) -> TrainingRun:
    """Standard recipes share the judge's model cache, so the zoo's A is the quick-start model."""
    standard = as_standard_recipe(recipe, max_steps)
    directory = out_dir or standard_model_dir(standard)
    trained = train_standard(standard, directory, data_dir=data_dir, progress=progress)
    final = TrainedWeights(trained.weights, trained.sha256, recipe.epochs)
    return TrainingRun(recipe, directory, final, {})
