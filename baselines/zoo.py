"""The zoo: `baselines/zoo/<dataset>.toml`, the shipped baseline entries with their weights.

Each entry names committed weights (safetensors, fp16 storage allowed), their sha256, and the
recipe (with its sha256) that produced them, or, for a smoothed variant, the entry it smooths and
the smoothing parameters. `export_entry` turns a training run into a committed entry.

`weights = "recipe"` marks weights that are not committed (the zoo must stay under 50 MB): they are
rebuilt on first use by training the recipe, which is seeded and deterministic, cast to the entry's
`storage` (so an entry can move out of the repository and keep its sha256 and records), and the
rebuilt file must match the pinned sha256 before anything is judged.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from baselines.recipes import load_recipe
from baselines.train import TrainedWeights, train_recipe
from benchmark.errors import ThreatbenchError
from benchmark.models.defense import Defense, file_sha256, read_safetensors
from benchmark.models.entries import judged_defense
from benchmark.models.smoothing import SmoothingConfig
from benchmark.models.training import cpu_kernels

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ZOO_SCHEMA = "threatbench.zoo/1"
ZOO_DIR = Path(__file__).parent / "zoo"
ROLES = ("defense", "undefended", "static")
STORAGE = ("float32", "float16")
REBUILT = "recipe"      # the `weights` value of an entry whose weights are rebuilt, not committed
ENTRY_KEYS = {"name", "role", "architecture", "weights", "sha256", "storage", "recipe",
              "recipe_sha256", "epoch", "paper", "base", "smoothing", "notes", "train_images",
              "training_seconds", "training_device"}
TRAINING_KEYS = ("train_images", "training_seconds", "training_device")   # from the run's model.json


class ZooError(ThreatbenchError, ValueError):
    """The zoo file is invalid or its weights do not match; the message names the entry and key."""


@dataclass(frozen=True)
class ZooEntry:
    name: str
    role: str
    architecture: str
    weights: Path | None          # None: not committed, rebuilt from the recipe (see module doc)
    sha256: str
    recipe: str
    recipe_sha256: str
    epoch: int
    paper: str
    notes: str = ""
    base: str | None = None
    smoothing: SmoothingConfig | None = None
    train_images: int | None = None         # None: exported before model.json recorded it
    training_seconds: float | None = None   # the whole run's wall time (every resumed session)
    training_device: str | None = None
    storage: str = "float32"

    @property
    def committed(self) -> bool:
        return self.weights is not None

    @property
    def weights_file(self) -> str:
        """What a record names: the committed file, or the recipe the weights are rebuilt from."""
        return self.weights.name if self.committed else f"rebuilt from {self.recipe}"

    @property
    def randomized(self) -> bool:
        return self.smoothing is not None or self.architecture.split(":", 1)[0] in ("pni", "cni")


@dataclass(frozen=True)
class Zoo:
    dataset: str
    path: Path
    entries: tuple[ZooEntry, ...]

    def entry(self, name: str) -> ZooEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise ZooError(f"{self.path}: no entry {name!r}; entries: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]


def _required(table: dict, key: str, kind: type, where: str):
    if key not in table:
        raise ZooError(f"{where}.{key}: missing (required)")
    if not isinstance(table[key], kind) or isinstance(table[key], bool) and kind is not bool:
        raise ZooError(f"{where}.{key}: must be a {kind.__name__}, got {table[key]!r}")
    return table[key]


def _smoothing(table: dict, where: str) -> SmoothingConfig:
    unknown = sorted(set(table) - {"samples", "sigma", "vote"})
    if unknown:
        raise ZooError(f"{where}.smoothing.{unknown[0]}: unknown key; allowed: samples, sigma, vote")
    try:
        return SmoothingConfig(samples=_required(table, "samples", int, f"{where}.smoothing"),
                               sigma=float(_required(table, "sigma", int | float, f"{where}.smoothing")),
                               vote=_required(table, "vote", str, f"{where}.smoothing"))
    except ZooError:
        raise
    except (ThreatbenchError, ValueError) as error:
        raise ZooError(f"{where}.smoothing: {error}") from None


def _parse_entry(table: dict, where: str, by_name: dict[str, ZooEntry], root: Path) -> ZooEntry:
    unknown = sorted(set(table) - ENTRY_KEYS)
    if unknown:
        raise ZooError(f"{where}.{unknown[0]}: unknown key; allowed: {', '.join(sorted(ENTRY_KEYS))}")
    name = _required(table, "name", str, where)
    where = f"{where} ({name})"
    if name in by_name:
        raise ZooError(f"{where}.name: {name!r} appears twice")
    if "base" in table:   # a smoothed variant of another entry: same weights, plus smoothing
        base_name = _required(table, "base", str, where)
        if base_name not in by_name:
            raise ZooError(f"{where}.base: {base_name!r} is not an earlier entry")
        base = by_name[base_name]
        return ZooEntry(name=name, role=table.get("role", base.role), architecture=base.architecture,
                        weights=base.weights, sha256=base.sha256, recipe=base.recipe,
                        recipe_sha256=base.recipe_sha256, epoch=base.epoch,
                        paper=table.get("paper", base.paper), notes=table.get("notes", ""),
                        base=base_name, smoothing=_smoothing(
                            _required(table, "smoothing", dict, where), where), storage=base.storage,
                        **{key: getattr(base, key) for key in TRAINING_KEYS})
    role = _required(table, "role", str, where)
    if role not in ROLES:
        raise ZooError(f"{where}.role: {role!r} is not one of {', '.join(ROLES)}")
    storage = table.get("storage", "float32")
    if storage not in STORAGE:
        raise ZooError(f"{where}.storage: {storage!r} is not one of {', '.join(STORAGE)}")
    sha256 = _required(table, "sha256", str, where).lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ZooError(f"{where}.sha256: not a 64-hex sha256: {sha256!r}")
    weights = _required(table, "weights", str, where)
    return ZooEntry(name=name, role=role, architecture=_required(table, "architecture", str, where),
                    weights=None if weights == REBUILT else root / weights, sha256=sha256,
                    recipe=_required(table, "recipe", str, where),
                    recipe_sha256=_required(table, "recipe_sha256", str, where),
                    epoch=_required(table, "epoch", int, where), paper=table.get("paper", ""),
                    notes=table.get("notes", ""),
                    smoothing=_smoothing(table["smoothing"], where) if "smoothing" in table else None,
                    storage=storage, **_training(table, where))


def _training(table: dict, where: str) -> dict:
    """How the entry was trained (optional: entries exported before model.json recorded it)."""
    kinds = {"train_images": int, "training_seconds": int | float, "training_device": str}
    return {key: _required(table, key, kinds[key], where) if key in table else None for key in TRAINING_KEYS}


def parse_zoo(text: str, path: Path) -> Zoo:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ZooError(f"{path}: not valid TOML ({error})") from None
    if table.get("schema") != ZOO_SCHEMA:
        raise ZooError(f"{path}: schema is {table.get('schema')!r}; this threatbench reads {ZOO_SCHEMA!r}")
    dataset = _required(table, "dataset", str, str(path))
    by_name: dict[str, ZooEntry] = {}
    for index, entry_table in enumerate(table.get("entries", [])):
        entry = _parse_entry(entry_table, f"{path}: entries[{index}]", by_name, path.parent)
        by_name[entry.name] = entry
    return Zoo(dataset, path, tuple(by_name.values()))


def zoo_path(dataset: str) -> Path:
    return ZOO_DIR / f"{dataset}.toml"


def load_zoo(dataset: str, path: Path | None = None) -> Zoo:
    path = path or zoo_path(dataset)
    if not path.is_file():
        raise ZooError(f"no zoo for {dataset}: {path} does not exist")
    zoo = parse_zoo(path.read_text(), path)
    if zoo.dataset != dataset:
        raise ZooError(f"{path}: dataset is {zoo.dataset!r}, expected {dataset!r}")
    return zoo


def check_recipe(entry: ZooEntry) -> None:
    """The recipe the entry names is the one that trained it (same file bytes)."""
    recipe = load_recipe(entry.recipe)
    if recipe.sha256 != entry.recipe_sha256:
        raise ZooError(f"{entry.name}: recipe {entry.recipe} has sha256 {recipe.sha256}, but the "
                       f"weights were trained from {entry.recipe_sha256}; retrain and re-export")


def entry_weights(entry: ZooEntry, *, progress: bool = True) -> Path:
    """The committed weights file, or the recipe's rebuilt one (trained once, then cached)."""
    if entry.committed:
        return entry.weights
    check_recipe(entry)
    run = train_recipe(load_recipe(entry.recipe), progress=progress)
    trained = run.weights_at(entry.epoch)
    path = trained.path if entry.storage == "float32" else rebuilt_cast_path(run, trained, entry.storage)
    if not path.is_file():
        export_weights(trained, path, entry.storage)
    rebuilt_sha256 = file_sha256(path)
    if rebuilt_sha256 != entry.sha256:
        raise ZooError(rebuild_mismatch(entry, rebuilt_sha256))
    return path


def recorded_kernels(entry: ZooEntry) -> str | None:
    """The CPU kernels the entry was trained with, from its training_device ("cpu: x86_64 (AVX2
    kernels), 2 threads"); None when not recorded (entries trained before threatbench recorded it)."""
    match = re.search(r"\((\w+) kernels\)", entry.training_device or "")
    return match.group(1) if match else None


def rebuild_mismatch(entry: ZooEntry, rebuilt_sha256: str) -> str:
    """One line: the rebuilt weights differ from the pinned ones, and the likely reason."""
    trained_with = recorded_kernels(entry) or "not recorded"
    return (f"{entry.name}: the weights rebuilt from {entry.recipe} hash to {rebuilt_sha256[:12]}..., not the "
            f"pinned {entry.sha256[:12]}...; training is bit-reproducible only with the CPU kernels it ran "
            f"on (trained with: {trained_with}; this machine: {cpu_kernels()}), so judge {entry.name} on "
            f"such a machine or commit its weights")


def rebuilt_cast_path(run, trained: TrainedWeights, storage: str) -> Path:
    """Where a rebuilt run keeps its weights cast to `storage`: beside the run, named by the run's
    own sha256, so a retrained run never reuses a stale cast."""
    return run.directory / f"{storage}-epoch{trained.epoch}-{trained.sha256[:12]}.safetensors"


def entry_defense(entry: ZooEntry, num_classes: int, *, in_channels: int = 1,
                  device: str | torch.device = "cpu", progress: bool = True) -> Defense:
    """The entry as the judge sees it: weights sha256-checked, smoothing applied when declared.
    `progress` shows the training bars when uncommitted weights are rebuilt from the recipe."""
    smoothing = None if entry.smoothing is None else dataclasses.asdict(entry.smoothing)
    return judged_defense(entry.architecture, entry_weights(entry, progress=progress), sha256=entry.sha256,
                          num_classes=num_classes, in_channels=in_channels, name=entry.name,
                          randomized=entry.randomized, smoothing=smoothing, device=device)


def load(dataset: str, name: str, *, device: str | torch.device = "cpu") -> Defense:
    """A zoo entry as the judge sees it, in one call: `baselines.zoo.load("fashion-mnist", "A_adv")`.

    Weights sha256-checked (rebuilt once from the recipe when not committed), smoothing applied for a
    smoothed entry; the result is a `benchmark.models.defense.Defense` (an nn.Module: `predict`, `forward`)."""
    from benchmark.spec import load_spec

    entry = load_zoo(dataset).entry(name)
    spec_dataset = load_spec().dataset(dataset)
    return entry_defense(entry, spec_dataset.num_classes, in_channels=spec_dataset.input_shape[0],
                         device=device)


def export_weights(trained: TrainedWeights, destination: Path, storage: str) -> str:
    """Copy trained weights to the zoo, cast to `storage`; returns the new file's sha256."""
    state = read_safetensors(trained.path, sha256=trained.sha256)
    dtype = torch.float16 if storage == "float16" else torch.float32
    cast = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_suffix(".tmp")
    provenance = json.dumps({"source_sha256": trained.sha256, "storage": storage}, sort_keys=True)
    save_file(cast, str(temporary), metadata={"threatbench": provenance})   # one key: stable bytes
    temporary.replace(destination)
    return file_sha256(destination)


# ---------------------------------------------------------------- writing the zoo file

HEADER = """# A threatbench zoo: the baseline entries, each with its sha256-checked weights and recipe.
# weights = "recipe": not committed (the zoo stays under 50 MB); rebuilt by training the recipe.
# Written by `threatbench zoo export`; smoothed variants (base + [smoothing]) may be added by hand.
"""


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise ZooError(f"cannot write {value!r} to the zoo file")


def render_zoo(dataset: str, entries: list[dict]) -> str:
    """Deterministic TOML for a zoo: entries in the given order, keys in a fixed order."""
    order = ["name", "role", "base", "architecture", "weights", "sha256", "storage", "recipe",
             "recipe_sha256", "epoch", *TRAINING_KEYS, "paper", "notes"]
    lines = [HEADER, f'schema = "{ZOO_SCHEMA}"', f'dataset = "{dataset}"']
    for entry in entries:
        lines += ["", "[[entries]]"]
        lines += [f"{key} = {_toml_value(entry[key])}" for key in order if key in entry]
        if "smoothing" in entry:
            lines.append("[entries.smoothing]")
            lines += [f"{key} = {_toml_value(entry['smoothing'][key])}" for key in ("samples", "sigma", "vote")]
    return "\n".join(lines) + "\n"


def upsert_entry(path: Path, dataset: str, new_entry: dict) -> None:
    """Add `new_entry` to the zoo file, or replace the entry of the same name, keeping the order."""
    entries = tomllib.loads(path.read_text()).get("entries", []) if path.is_file() else []
    names = [entry["name"] for entry in entries]
    if new_entry["name"] in names:
        entries[names.index(new_entry["name"])] = new_entry
    else:
        entries.append(new_entry)
    text = render_zoo(dataset, entries)
    parse_zoo(text, path)    # never write a zoo file that does not load
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def run_training(run, trained: TrainedWeights) -> dict:
    """train_images, training_seconds (up to the exported epoch) and training_device, from the run's
    model.json; empty for a run trained before model.json recorded them."""
    card_path = run.directory / "model.json"
    training = json.loads(card_path.read_text()).get("training") if card_path.is_file() else None
    if not training:
        return {}
    seconds = training["seconds"] if trained.epoch == run.final.epoch else trained.seconds
    return {"train_images": int(training["train_images"]),
            **({} if seconds is None else {"training_seconds": float(seconds)}),
            "training_device": str(training["device"])}


def export_entry(run, *, name: str, role: str, epoch: int | None, storage: str, paper: str,
                 zoo_file: Path | None = None, commit: bool = True) -> dict:
    """Commit-ready zoo entry from a training run: weights copied (fp16 if asked), file updated."""
    recipe = run.recipe
    trained = run.weights_at(epoch)
    zoo_file = zoo_file or zoo_path(recipe.dataset)
    if commit:
        relative = (Path("weights") / recipe.dataset / f"{name}.safetensors").as_posix()
        sha256 = export_weights(trained, zoo_file.parent / relative, storage)
    elif storage == "float32":   # pin the training run's own file; rebuilt from the recipe on first use
        relative, sha256 = REBUILT, trained.sha256
    else:   # pin the cast a rebuild produces (entry_weights): the bytes a committed export would have
        relative, sha256 = REBUILT, export_weights(trained, rebuilt_cast_path(run, trained, storage), storage)
    entry = {"name": name, "role": role, "architecture": recipe.architecture,
             "weights": relative, "sha256": sha256, "storage": storage,
             "recipe": f"{recipe.dataset}/{recipe.path.name}", "recipe_sha256": recipe.sha256,
             "epoch": trained.epoch, **run_training(run, trained), "paper": paper}
    upsert_entry(zoo_file, recipe.dataset, entry)
    return entry
