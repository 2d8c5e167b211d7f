"""The non-adaptive black-box family: adversarial examples crafted on held-out source models (and on
their ensemble, the mean of their logits) and evaluated with the target's `predict`.

Crafted examples are cached per (spec sha256, source weights sha256, attack, subset sha256, seed),
so each source's examples are made once and reused for every target; any change of the spec, the
weights, the subset or the seed changes the key. Files are safetensors, written atomically, in
chunks of a fixed number of examples (independent of the batch size).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from benchmark.attacks.batches import iterate_batches
from benchmark.attacks.gradient import AttackBatch, check_perturbation, run_white_box
from benchmark.models.defense import Defense
from benchmark.spec import TRANSFER_ATTACKS, DatasetSpec  # noqa: F401  (TRANSFER_ATTACKS: the names it crafts)

CHUNK = 500


class LogitEnsemble(nn.Module):
    """The mean of the members' logits (Tramer et al.'s ensemble source)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        return torch.stack([member(x) for member in self.members]).mean(dim=0)


@dataclass(frozen=True)
class TransferSource:
    name: str
    defense: Defense
    sha256: str          # the weights' sha256; for an ensemble, a hash of its members' hashes


def ensemble_source(sources: list[TransferSource]) -> TransferSource:
    members = sorted(sources, key=lambda s: s.name)
    digest = hashlib.sha256("+".join(s.sha256 for s in members).encode()).hexdigest()
    num_classes = members[0].defense.num_classes
    model = LogitEnsemble([s.defense for s in members])
    name = "ensemble(" + ",".join(s.name for s in members) + ")"
    return TransferSource(name, Defense(model, num_classes, name=name), digest)


def sources_with_ensemble(sources: list[TransferSource]) -> list[TransferSource]:
    """The sources, plus their ensemble when there are at least two."""
    return [*sources, ensemble_source(sources)] if len(sources) >= 2 else list(sources)


@dataclass
class TransferCache:
    """Crafted examples on disk, keyed by content; counts hits and misses (per chunk)."""

    root: Path
    hits: int = 0
    misses: int = 0
    crafted_seconds: float = 0.0

    @staticmethod
    def key(spec_sha256: str, source_sha256: str, attack: str, subset_sha256: str, seed: int) -> str:
        text = f"{spec_sha256}/{source_sha256}/{attack}/{subset_sha256}/{seed}"
        return hashlib.sha256(text.encode()).hexdigest()

    def chunk_path(self, key: str, start: int, stop: int) -> Path:
        return self.root / key[:2] / key / f"{start:07d}-{stop:07d}.safetensors"

    def load(self, key: str, start: int, stop: int) -> torch.Tensor | None:
        path = self.chunk_path(key, start, stop)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))["x_adv"]
        except (SafetensorError, OSError, KeyError):
            path.unlink(missing_ok=True)   # a damaged cache file is recrafted, never trusted
            return None

    def store(self, key: str, start: int, stop: int, x_adv: torch.Tensor) -> None:
        path = self.chunk_path(key, start, stop)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        save_file({"x_adv": x_adv.detach().cpu().contiguous()}, str(temporary))
        os.replace(temporary, path)


class CraftedExamples:
    """Examples crafted on one source with one attack, served by example range.

    Chunks are crafted on first use and cached; the chunk last read is kept in memory.
    """

    def __init__(self, source: TransferSource, attack: str, eval_set, dataset: DatasetSpec, *,
                 seed: int, spec_sha256: str, cache: TransferCache, batch_size: int,
                 device: torch.device):
        self.source, self.attack, self.eval_set, self.dataset = source, attack, eval_set, dataset
        self.seed, self.cache, self.batch_size, self.device = seed, cache, batch_size, device
        self.key = TransferCache.key(spec_sha256, source.sha256, attack, eval_set.sha256, seed)
        self._chunk: tuple[int, torch.Tensor] | None = None

    def get(self, start: int, stop: int) -> torch.Tensor:
        """Crafted images for examples [start, stop), on the CPU."""
        pieces, position = [], start
        while position < stop:
            chunk_start = position - position % CHUNK
            chunk = self._load_chunk(chunk_start)
            piece_stop = min(stop, chunk_start + CHUNK)
            pieces.append(chunk[position - chunk_start:piece_stop - chunk_start])
            position = piece_stop
        return torch.cat(pieces)

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """Crafted images for the listed examples, on the CPU: a contiguous range by chunks (cached);
        scattered examples (the regression replay's random sample) from a cached chunk when there is
        one, else crafted for themselves alone (every random draw is keyed by example)."""
        first, count = int(indices[0]), len(indices)
        if torch.equal(indices, torch.arange(first, first + count)):
            return self.get(first, first + count)
        rows: list[torch.Tensor | None] = []
        for index in indices.tolist():
            chunk_start = index - index % CHUNK
            chunk = self._cached_chunk(chunk_start)
            rows.append(None if chunk is None else chunk[index - chunk_start])
        missing = [k for k, row in enumerate(rows) if row is None]
        if missing:
            crafted = self._craft_examples(indices[missing])
            for k, row in zip(missing, crafted, strict=True):
                rows[k] = row
        return torch.stack(rows)

    def _cached_chunk(self, chunk_start: int) -> torch.Tensor | None:
        if self._chunk is not None and self._chunk[0] == chunk_start:
            return self._chunk[1]
        x_adv = self.cache.load(self.key, chunk_start, min(chunk_start + CHUNK, len(self.eval_set)))
        if x_adv is not None:
            self._chunk = (chunk_start, x_adv)
        return x_adv

    def _craft_examples(self, indices: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        items = [self.eval_set[int(i)] for i in indices]
        batch = AttackBatch(torch.stack([item[0] for item in items]).to(self.device),
                            torch.as_tensor([int(item[1]) for item in items], device=self.device), indices)
        x_adv = run_white_box(self.attack, self.source.defense.to(self.device), batch,
                              self.dataset.attacks[self.attack], self.dataset.eps, self.seed).cpu()
        self.cache.crafted_seconds += time.perf_counter() - started
        return x_adv

    def _load_chunk(self, chunk_start: int) -> torch.Tensor:
        if self._chunk is not None and self._chunk[0] == chunk_start:
            return self._chunk[1]
        chunk_stop = min(chunk_start + CHUNK, len(self.eval_set))
        x_adv = self.cache.load(self.key, chunk_start, chunk_stop)
        if x_adv is None:
            self.cache.misses += 1
            x_adv = self._craft(chunk_start, chunk_stop)
            self.cache.store(self.key, chunk_start, chunk_stop, x_adv)
        else:
            self.cache.hits += 1
        self._chunk = (chunk_start, x_adv)
        return x_adv

    def _craft(self, chunk_start: int, chunk_stop: int) -> torch.Tensor:
        started = time.perf_counter()
        defense = self.source.defense.to(self.device)
        params = self.dataset.attacks[self.attack]
        pieces = []
        for batch in iterate_batches(_Window(self.eval_set, chunk_start, chunk_stop), 0,
                                     self.batch_size, self.device):
            shifted = AttackBatch(batch.x, batch.y, batch.indices + chunk_start)
            pieces.append(run_white_box(self.attack, defense, shifted, params, self.dataset.eps,
                                        self.seed).cpu())
        self.cache.crafted_seconds += time.perf_counter() - started
        return torch.cat(pieces)


class _Window:
    """Examples [start, stop) of an evaluation set, re-indexed from 0."""

    def __init__(self, eval_set, start: int, stop: int):
        self.eval_set, self.start, self.stop = eval_set, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int):
        return self.eval_set[self.start + index]


def check_cached_examples(x: torch.Tensor, x_adv: torch.Tensor, eps: float, name: str) -> None:
    """Cached files are re-checked against the clean images: a stale or foreign file must not pass."""
    check_perturbation(x, x_adv.to(x.device), eps, f"transfer {name}")


def transfer_matrix(models: list[TransferSource], attack: str, eval_set, dataset: DatasetSpec, *,
                    seed: int, spec_sha256: str, cache: TransferCache, batch_size: int,
                    device: torch.device) -> list[list[float]]:
    """Error rates: row = the model the attack is crafted on, column = the model evaluated.

    The diagonal is white-box (crafted on the model itself), as in Tramer et al., Table 1.
    """
    errors = [[0.0] * len(models) for _ in models]
    for row, source in enumerate(models):
        crafted = CraftedExamples(source, attack, eval_set, dataset, seed=seed, spec_sha256=spec_sha256,
                                  cache=cache, batch_size=batch_size, device=device)
        wrong = [0] * len(models)
        for batch in iterate_batches(eval_set, 0, batch_size, device):
            start, stop = int(batch.indices[0]), int(batch.indices[-1]) + 1
            x_adv = crafted.get(start, stop).to(device)
            check_perturbation(batch.x, x_adv, dataset.eps, f"transfer from {source.name}")
            for column, target in enumerate(models):
                target.defense.to(device)
                wrong[column] += int((target.defense.predict(x_adv) != batch.y).sum())
        errors[row] = [w / len(eval_set) for w in wrong]
    return errors
