"""Smoothed inference (Nemcovsky et al.): a vote over Monte-Carlo samples of a noisy model, as a Defense.

g(x) = argmax_c sum_i v_c(f(x + delta_i)), delta_i ~ N(0, sigma^2 I) (Nemcovsky et al. 2019, arXiv:1911.07198).
When f has weight noise (`benchmark.models.noise_injection`), every sample also carries its own weight-noise
draw, so the randomness is input noise + model noise, as in the SIAM code.

Choices, stated because the paper and its code disagree:
- sigma is in [0, 1] pixel units and the noisy input is NOT clipped (Cohen et al. do not clip either).
  SIAM adds sigma to the *normalized* input (std about 0.25 per channel), so its sigma is about 4x ours.
- "soft" averages softmax probabilities (the paper, Eq. 13); SIAM's `mcepredict` averages raw logits.
- "weighted" is SIAM's `mclogits` code: each sample adds 2^-rank to every class (rank 0 = top class, all
  ranks counted); the paper's equations are lost.
- Ties go to the lowest class index (torch.argmax), as in the SIAM code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from benchmark.errors import ThreatbenchError
from benchmark.models.defense import Defense, require_finite
from benchmark.models.noise_injection import held_noise_draws, largest_noisy_weight, noise_groups

VOTES = ("prediction", "soft", "weighted")
DEFAULT_MAX_BATCH = 4096
DEFAULT_MAX_NOISE_ELEMENTS = 1 << 26   # 256 MiB of float32 noisy-weight copies per batched pass
CPU_CHUNK_IMAGES = 60                   # images per forward pass on a CPU (docs/long-evaluations.md)


class SmoothingConfigError(ThreatbenchError, ValueError):
    """An invalid smoothing setting; the message names the field."""


@dataclass(frozen=True)
class SmoothingConfig:
    """m = `samples` Monte-Carlo draws, input noise std `sigma` (pixel units), voting rule `vote`."""

    samples: int
    sigma: float
    vote: str = "prediction"

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise SmoothingConfigError(
                f"smoothing samples must be an integer >= 1, got {self.samples!r}"
            )
        if (isinstance(self.sigma, bool) or not isinstance(self.sigma, int | float)
                or not math.isfinite(self.sigma) or self.sigma < 0):
            raise SmoothingConfigError(
                f"smoothing sigma must be a finite number >= 0 (pixel units), got {self.sigma!r}"
            )
        if self.vote not in VOTES:
            raise SmoothingConfigError(
                f"smoothing vote must be one of {', '.join(VOTES)}, got {self.vote!r}"
            )


class SmoothedDefense(Defense):
    """A vote over `config.samples` noisy draws of `model`; always declared randomized.

    `forward` is ONE draw (differentiable, what a white-box attacker can follow); `predict` and
    `scores` are the vote. Draws are batched: the model sees k contiguous copies of the batch (copy j =
    draw j) inside `noise_groups(model, k)`, so each draw has its own weight-noise sample. k is bounded
    so that a pass has at most `max_batch` rows and at most `max_noise_elements` elements in the noisy
    copies of the largest noisy weight; a batch larger than `max_batch` is split into blocks.

    On a CPU each pass is one draw, and it goes through the model in chunks of `cpu_chunk` rows
    that share the draw's weight noise (`held_noise_draws`): a chunk of few rows then reuses one noisy
    copy of each weight from cache instead of streaming k copies, and the draws are still one per
    pass (docs/long-evaluations.md). The chunking relies on the model's randomness being its noisy
    layers, so a Defense subclass (its own forward may draw more) is never chunked; cpu_chunk=None
    turns chunking off.
    """

    def __init__(self, model: nn.Module, num_classes: int, config: SmoothingConfig, *,
                 name: str = "smoothed", max_batch: int = DEFAULT_MAX_BATCH,
                 max_noise_elements: int = DEFAULT_MAX_NOISE_ELEMENTS,
                 cpu_chunk: int | None = CPU_CHUNK_IMAGES):
        super().__init__(model, num_classes, randomized=True, name=name)
        if max_batch < 1 or max_noise_elements < 1 or (cpu_chunk is not None and cpu_chunk < 1):
            raise SmoothingConfigError(
                "max_batch, max_noise_elements and cpu_chunk must be >= 1, got "
                f"{max_batch}, {max_noise_elements}, {cpu_chunk}"
            )
        self.config = config
        self.max_batch = max_batch
        self.max_noise_elements = max_noise_elements
        self.cpu_chunk = cpu_chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of one draw: model(x + sigma * N(0, I)), with the model's own weight noise if any."""
        return super().forward(self._add_input_noise(x))

    def _add_input_noise(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.sigma == 0:
            return x
        return x + self.config.sigma * torch.randn_like(x)   # not clipped to [0, 1], on purpose

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The smoothed decision: argmax of the vote, ties to the lowest class index."""
        return self._vote_fractions(x).argmax(dim=1)

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Vote distribution, shape (B, num_classes), each row summing to 1."""
        return self._vote_fractions(x).to(x.dtype if x.is_floating_point() else torch.float32)

    @torch.no_grad()
    def log_scores(self, x: torch.Tensor, draws: int = 1) -> torch.Tensor:
        """What a score-based attacker observes: log of the mean softmax over the m draws.

        Vote fractions are piecewise constant (all m draws agree on most inputs near x), so an
        attacker shown them sees no reward spread and never moves (docs/threat-model.md). `draws` is
        ignored: a smoothed entry always takes its own m draws.
        """
        if x.shape[0] == 0:
            return torch.zeros((0, self.num_classes), dtype=torch.float64, device=x.device)
        return torch.cat([self._block_log_mean(block) for block in x.split(self.max_batch)])

    def _block_log_mean(self, block: torch.Tensor) -> torch.Tensor:
        per_pass = self._draws_per_pass(block)
        parts = []
        for start in range(0, self.config.samples, per_pass):
            draws = min(per_pass, self.config.samples - start)
            logits = self._draw_logits(block, draws).double()        # (draws, b, C)
            parts.append(torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0))
        return torch.logsumexp(torch.stack(parts), dim=0) - math.log(self.config.samples)

    def _vote_fractions(self, x: torch.Tensor) -> torch.Tensor:
        """Float64 votes normalized per row (argmax is taken before any rounding to float32)."""
        if x.shape[0] == 0:
            return torch.zeros((0, self.num_classes), dtype=torch.float64, device=x.device)
        totals = torch.cat([self._block_totals(block) for block in x.split(self.max_batch)])
        return totals / totals.sum(dim=1, keepdim=True)

    def _block_totals(self, block: torch.Tensor) -> torch.Tensor:
        totals = torch.zeros(block.shape[0], self.num_classes, dtype=torch.float64,
                             device=block.device)
        per_pass = self._draws_per_pass(block)
        for start in range(0, self.config.samples, per_pass):
            draws = min(per_pass, self.config.samples - start)
            logits = self._draw_logits(block, draws)               # (draws, b, C)
            totals += vote_weights(logits.double(), self.config.vote).sum(dim=0)
        return totals

    def _draws_per_pass(self, block: torch.Tensor) -> int:
        if self._chunked(block):
            return 1
        by_rows = self.max_batch // block.shape[0]
        largest = largest_noisy_weight(self.model)
        by_noise = self.max_noise_elements // largest if largest else by_rows
        return max(1, min(by_rows, by_noise, self.config.samples))

    def _draw_logits(self, block: torch.Tensor, draws: int) -> torch.Tensor:
        """Logits of `draws` independent draws, shape (draws, b, C): rows j*b..(j+1)*b-1 are draw j."""
        if self._chunked(block):                                  # one draw per pass, see class doc
            return self._one_draw_in_chunks(block).unsqueeze(0)
        batch = self._add_input_noise(block.repeat(draws, *([1] * (block.ndim - 1))))
        with noise_groups(self.model, draws):
            return self._model_logits(batch).view(draws, block.shape[0], self.num_classes)

    def _one_draw_in_chunks(self, block: torch.Tensor) -> torch.Tensor:
        """One draw's logits, shape (b, C), the model run on `cpu_chunk` rows at a time."""
        noisy = self._add_input_noise(block)
        with noise_groups(self.model, 1), held_noise_draws(self.model):
            return torch.cat([self._model_logits(chunk) for chunk in noisy.split(self.cpu_chunk)])

    def _model_logits(self, noisy_inputs: torch.Tensor) -> torch.Tensor:
        return require_finite(super().forward(noisy_inputs), self.name)

    def _chunked(self, block: torch.Tensor) -> bool:
        """Score in chunks that share one draw: on a CPU, unless the model is a Defense (see class doc)."""
        return (self.cpu_chunk is not None and block.device.type == "cpu"
                and not isinstance(self.model, Defense))


def vote_weights(logits: torch.Tensor, vote: str) -> torch.Tensor:
    """What each draw contributes to each class, same shape as `logits` (classes on the last dim)."""
    if vote == "prediction":
        top = logits.argmax(dim=-1)
        return nn.functional.one_hot(top, logits.shape[-1]).to(logits.dtype)
    if vote == "soft":
        return torch.softmax(logits, dim=-1)
    if vote == "weighted":
        return torch.exp2(-class_ranks(logits).to(logits.dtype))
    raise SmoothingConfigError(f"smoothing vote must be one of {', '.join(VOTES)}, got {vote!r}")


def class_ranks(logits: torch.Tensor) -> torch.Tensor:
    """Rank of every class on the last dim (0 = largest logit); equal logits: lower index ranks first."""
    order = torch.sort(logits, dim=-1, descending=True, stable=True).indices
    positions = torch.arange(logits.shape[-1], device=logits.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def smooth(defense_or_model: Defense | nn.Module, config: SmoothingConfig, *,
           num_classes: int | None = None, name: str | None = None,
           max_batch: int = DEFAULT_MAX_BATCH) -> SmoothedDefense:
    """Smooth a Defense (its model, classes and name are reused) or a bare model (give num_classes)."""
    if isinstance(defense_or_model, Defense):
        defense = defense_or_model
        # A plain Defense adds nothing to its model; a subclass's own forward must be kept.
        model = defense.model if type(defense).forward is Defense.forward else defense
        classes, base_name = defense.num_classes, defense.name
    else:
        model, classes, base_name = defense_or_model, num_classes, "model"
    if classes is None:
        raise SmoothingConfigError("smooth() needs num_classes when given a bare model")
    label = name or f"{base_name}+smooth({config.vote}, m={config.samples}, sigma={config.sigma})"
    return SmoothedDefense(model, classes, config, name=label, max_batch=max_batch)
