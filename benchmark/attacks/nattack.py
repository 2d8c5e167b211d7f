"""NAttack (Li et al., ICML 2019): a query-based L-infinity attack that learns a Gaussian search
distribution over adversarial perturbations with natural evolution strategies.

Faithful to the paper as summarised in shared/reference/algorithms.md §1.8:
- search in tanh space: x(z) = (tanh(arctanh(2x - 1) + up(z)) + 1) / 2, projected onto the eps ball;
- z ~ N(mu, sigma^2 I), mu initialised to 0.001 * N(0, I), population b, learning rate eta;
- loss f = max(0, log p_y - log max_{c != y} p_c), clipped at 1000, with the runner-up taken per
  population member (the reference code takes population member 0's for all: a bug we do not copy);
- rewards R = -f/2, z-scored; mu <- mu + eta / (b sigma) * sum_i A_i eps_i;
- success is checked on the projected mean every `check_every` iterations (starting at 0);
- images the defense already misclassifies are skipped (one query: the clean check).

The defense is queried only through `scores`. Many images' populations go through the model as one
batch. Every query is counted per example. Random draws come from per-example generators, so
results do not depend on which images share a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.attacks.gradient import check_perturbation
from benchmark.randomness import example_generator
from benchmark.spec import NAttackParams

LOSS_CLIP = 1000.0
ARCTANH_SHRINK = 1 - 1e-6
REWARD_STD_EPSILON = 1e-7
LOG_FLOOR = 1e-30


@dataclass(frozen=True)
class NAttackResult:
    """Per example: still correctly classified after the attack, queries used, the final image."""

    correct: torch.Tensor       # bool [N]
    queries: torch.Tensor       # int64 [N]
    iterations: torch.Tensor    # int64 [N], population iterations run
    x_adv: torch.Tensor         # [N, C, H, W]; the successful image, or x where the attack failed


def to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    return torch.atanh((2 * x - 1) * ARCTANH_SHRINK)


def upsample(z: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The search space -> the input size (bilinear, as in the ImageNet scripts); identity if equal."""
    if tuple(z.shape[-3:]) == tuple(shape):
        return z
    return F.interpolate(z, size=tuple(shape[-2:]), mode="bilinear", align_corners=False)


def candidate_images(w: torch.Tensor, x: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """Project (tanh(w + up(z)) + 1) / 2 onto the eps ball around x and [0, 1].

    w, x: [K, C, H, W]; z: [K, P, *search] -> images [K, P, C, H, W].
    """
    k, p = z.shape[:2]
    delta = upsample(z.reshape(k * p, *z.shape[2:]), x.shape[1:]).reshape(k, p, *x.shape[1:])
    image = (torch.tanh(w[:, None] + delta) + 1) / 2
    original = x[:, None]
    return torch.clamp(original + torch.clamp(image - original, -eps, eps), 0.0, 1.0)


def margin_loss(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max(0, log p_y - log max_{c != y} p_c), per row; the runner-up is taken per row."""
    log_p = torch.log(probabilities.clamp_min(LOG_FLOOR))
    true = log_p.gather(1, labels[:, None]).squeeze(1)
    others = log_p.scatter(1, labels[:, None], float("-inf"))
    return torch.clamp(true - others.max(dim=1).values, 0.0, LOSS_CLIP)


def _query(defense, images: torch.Tensor) -> torch.Tensor:
    flat = images.reshape(-1, *images.shape[2:])
    return defense.scores(flat).reshape(*images.shape[:2], -1)


def _noise(generators: list[torch.Generator], population: int, search_shape, device) -> torch.Tensor:
    draws = [torch.randn((population, *search_shape), generator=g) for g in generators]
    return torch.stack(draws).to(device)


class _Search:
    """The state of a batch of per-image searches."""

    def __init__(self, x, y, indices, params: NAttackParams, eps: float, seed: int):
        self.x, self.y, self.eps, self.params = x, y, eps, params
        self.w = to_tanh_space(x)
        self.generators = [example_generator(seed, "nattack", int(i)) for i in indices]
        initial = [0.001 * torch.randn(params.search_shape, generator=g) for g in self.generators]
        self.mu = torch.stack(initial).to(x.device)
        n = x.shape[0]
        self.active = torch.ones(n, dtype=torch.bool, device=x.device)
        self.correct = torch.ones(n, dtype=torch.bool, device=x.device)
        self.queries = torch.zeros(n, dtype=torch.long, device=x.device)
        self.iterations = torch.zeros(n, dtype=torch.long, device=x.device)
        self.x_adv = x.clone()

    def check_means(self, defense) -> None:
        """Query the projected mean of every active search; stop the ones that fool the defense."""
        rows = self.active.nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        images = candidate_images(self.w[rows], self.x[rows], self.mu[rows][:, None], self.eps)
        predictions = _query(defense, images).squeeze(1).argmax(dim=1)
        self.queries[rows] += 1
        fooled = predictions != self.y[rows]
        done = rows[fooled]
        self.x_adv[done] = images[fooled].squeeze(1)
        self.correct[done] = False
        self.active[done] = False

    def step(self, defense) -> None:
        """One NES update of every active search's mean."""
        rows = self.active.nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        p = self.params
        generators = [self.generators[int(r)] for r in rows]
        noise = _noise(generators, p.population, p.search_shape, self.x.device)
        z = self.mu[rows][:, None] + p.sigma * noise
        probabilities = _query(defense, candidate_images(self.w[rows], self.x[rows], z, self.eps))
        labels = self.y[rows].repeat_interleave(p.population)
        loss = margin_loss(probabilities.reshape(-1, probabilities.shape[-1]), labels)
        rewards = -0.5 * loss.reshape(rows.numel(), p.population)
        advantages = (rewards - rewards.mean(1, keepdim=True)) / (
            rewards.std(1, unbiased=False, keepdim=True) + REWARD_STD_EPSILON)
        update = torch.einsum("kp,kp...->k...", advantages, noise)
        self.mu[rows] += p.learning_rate / (p.population * p.sigma) * update
        self.queries[rows] += p.population
        self.iterations[rows] += 1


def nattack(defense, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, *, eps: float,
            params: NAttackParams, seed: int, max_iterations: int | None = None) -> NAttackResult:
    """Attack a batch of images; `max_iterations` overrides the spec's (the quick budget)."""
    iterations = params.max_iterations if max_iterations is None else max_iterations
    search = _Search(x, y, indices, params, eps, seed)
    clean = defense.scores(x).argmax(dim=1)
    search.queries += 1
    already_wrong = clean != y
    search.correct[already_wrong] = False
    search.active[already_wrong] = False
    for iteration in range(iterations):
        if not search.active.any():
            break
        if iteration % params.check_every == 0:
            search.check_means(defense)
        search.step(defense)
    check_perturbation(x, search.x_adv, eps, "nattack")
    return NAttackResult(search.correct, search.queries, search.iterations, search.x_adv)
