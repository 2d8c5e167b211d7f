"""NAttack (Li et al., ICML 2019): a query-based L-infinity attack that learns a Gaussian search
distribution over adversarial perturbations with natural evolution strategies (NES).

Kept from the paper: z ~ N(mu, sigma^2 I) with mu initialised to 0.001 * N(0, I), population b,
learning rate eta, rewards R = -f/2 z-scored per image, mu <- mu + eta / (b sigma) * sum_i A_i eps_i,
the success check on the mean every `check_every` iterations, and the bilinear upsampling of the
search space for large inputs. What spec v2 changes, and why (docs/threat-model.md, "NAttack"):

- parameterization "pixel": x' = clip(x + eps tanh(up(z)), 0, 1). In the paper's tanh space,
  x' = (tanh(arctanh(2x - 1) + up(z)) + 1) / 2, a pixel at 0 or 1 sits where tanh is flat and cannot
  move (half of a Fashion-MNIST image is exactly 0). "tanh" keeps the paper's variant for comparison.
- the margin f = max(0, log p_y - max_{c != y} log p_c) is computed from `defense.log_scores`
  (log-softmax of the logits), so scaling the logits cannot flatten it; the runner-up is taken per
  population member. Under "pixel" f is not clipped at 1000: rewards are z-scored, so the scale is
  irrelevant, and a clip would freeze the search of a model whose logits are scaled up.
- every decision the judge later re-scores (skip an image that is already wrong, stop on success)
  uses the judge's own criterion, `still_correct` (for a randomized entry: correct in at least one
  of the judge's prediction repeats), never one noisy score;
- a population member that the criterion finds misclassified is a success (its image is the
  adversarial example), and the mean is checked once more after the last update.

The defense is queried only through `log_scores` and the criterion (no gradients). Many images'
populations are searched together; on a GPU they go through the model as one batch. On a CPU a
deterministic defense scores them in forward passes of `CPU_SCORE_CHUNK` images: the activations of
a whole batch (model A: about 2.5 GB for 34 populations) fit no cache, and chunks of 60 ran 3.5
times faster on 2 cores, with the same scores to the bit (`threatbench perf`,
docs/long-evaluations.md). A randomized defense always gets the whole batch in one call, because
its weight noise is one draw per forward pass and the spec fixes that batch (a smoothed entry chunks
inside its own scoring, every chunk sharing the pass's draw: `SmoothedDefense`). Every image sent to the
defense counts as one query of its example. The search's own random draws come from per-example
generators, so a deterministic defense gives results that do not depend on which images share a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.attacks.gradient import check_perturbation
from benchmark.runtime.randomness import example_generator
from benchmark.spec import NAttackParams

TANH_LOSS_CLIP = 1000.0          # the paper's clip, kept only for the tanh variant
ARCTANH_SHRINK = 1 - 1e-6
REWARD_STD_EPSILON = 1e-7
CPU_SCORE_CHUNK = 60             # images per forward pass on a CPU (see above); divides the population of 300
PIXEL_SHARPNESS = 2.0            # see pixel_candidate_images

# (images [K, C, H, W], labels [K]) -> bool [K]: still correctly classified by the judge's criterion.
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class NAttackResult:
    """Per example: still correctly classified after the attack, queries used, the final image."""

    correct: torch.Tensor       # bool [N]
    queries: torch.Tensor       # int64 [N]
    iterations: torch.Tensor    # int64 [N], population iterations run
    x_adv: torch.Tensor         # [N, C, H, W]; the successful image, or the final mean's image


def to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    return torch.atanh((2 * x - 1) * ARCTANH_SHRINK)


def upsample(z: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The search space -> the input size (bilinear, as in the ImageNet scripts); identity if equal."""
    if tuple(z.shape[-3:]) == tuple(shape):
        return z
    return F.interpolate(z, size=tuple(shape[-2:]), mode="bilinear", align_corners=False)


def _upsampled(z: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    k, p = z.shape[:2]
    return upsample(z.reshape(k * p, *z.shape[2:]), shape).reshape(k, p, *shape)


def candidate_images(w: torch.Tensor, x: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """The paper's tanh space: (tanh(w + up(z)) + 1) / 2 projected onto the eps ball and [0, 1].

    w, x: [K, C, H, W]; z: [K, P, *search] -> images [K, P, C, H, W].
    """
    image = (torch.tanh(w[:, None] + _upsampled(z, x.shape[1:])) + 1) / 2
    original = x[:, None]
    return torch.clamp(original + torch.clamp(image - original, -eps, eps), 0.0, 1.0)


def pixel_candidate_images(x: torch.Tensor, z: torch.Tensor, eps: float, sigma: float) -> torch.Tensor:
    """Pixel space: clip(x + eps tanh(PIXEL_SHARPNESS up(z) / sigma), 0, 1).

    Every pixel can reach x +- eps. The sharpness makes a one-sigma draw move a pixel by
    tanh(2) = 0.96 eps whatever eps is, so the population explores near the vertices of the eps
    ball, where L-infinity adversarial examples lie (docs/threat-model.md has the measured choice).
    """
    return torch.clamp(x[:, None] + eps * torch.tanh(PIXEL_SHARPNESS / sigma * _upsampled(z, x.shape[1:])),
                       0.0, 1.0)


def log_margin(log_probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p_y - max_{c != y} log p_c per row (runner-up per row); negative: misclassified."""
    true = log_probabilities.gather(1, labels[:, None]).squeeze(1)
    others = log_probabilities.scatter(1, labels[:, None], float("-inf"))
    return true - others.max(dim=1).values


def margin_loss(log_probabilities: torch.Tensor, labels: torch.Tensor, clip: float | None = None) -> torch.Tensor:
    """The paper's f = max(0, log margin), optionally clipped from above."""
    return loss_from_margin(log_margin(log_probabilities, labels), clip)


def loss_from_margin(margin: torch.Tensor, clip: float | None) -> torch.Tensor:
    loss = torch.clamp_min(margin, 0.0)
    return loss if clip is None else torch.clamp_max(loss, clip)


def predicted_correctly(defense) -> Criterion:
    """The criterion of a deterministic defense: one `predict`."""
    return lambda images, labels: defense.predict(images) == labels


def _noise(generators: list[torch.Generator], population: int, search_shape, device) -> torch.Tensor:
    draws = [torch.randn((population, *search_shape), generator=g) for g in generators]
    return torch.stack(draws).to(device)


class _Search:
    """The state of a batch of per-image searches."""

    def __init__(self, defense, x, y, indices, params: NAttackParams, eps: float, seed: int,
                 still_correct: Criterion, criterion_queries: int, score_draws: int):
        self.defense, self.x, self.y, self.eps, self.params = defense, x, y, eps, params
        self.still_correct, self.criterion_queries = still_correct, criterion_queries
        self.score_draws = score_draws
        self.pixel = params.parameterization == "pixel"
        self.w = None if self.pixel else to_tanh_space(x)
        self.generators = [example_generator(seed, "nattack", int(i)) for i in indices]
        initial = [0.001 * torch.randn(params.search_shape, generator=g) for g in self.generators]
        self.mu = torch.stack(initial).to(x.device)
        n = x.shape[0]
        self.active = torch.ones(n, dtype=torch.bool, device=x.device)
        self.correct = torch.ones(n, dtype=torch.bool, device=x.device)
        self.queries = torch.zeros(n, dtype=torch.long, device=x.device)
        self.iterations = torch.zeros(n, dtype=torch.long, device=x.device)
        self.x_adv = x.clone()

    def candidates(self, rows: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.pixel:
            return pixel_candidate_images(self.x[rows], z, self.eps, self.params.sigma)
        return candidate_images(self.w[rows], self.x[rows], z, self.eps)

    def judge(self, rows: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The criterion on one image per row; counts its queries; bool [len(rows)] still correct."""
        self.queries[rows] += self.criterion_queries
        return self.still_correct(images, self.y[rows])

    def succeed(self, rows: torch.Tensor, images: torch.Tensor) -> None:
        self.x_adv[rows] = images
        self.correct[rows] = False
        self.active[rows] = False

    def skip_already_wrong(self) -> None:
        rows = torch.arange(self.x.shape[0], device=self.x.device)
        wrong = ~self.judge(rows, self.x)
        self.correct[wrong] = False
        self.active[wrong] = False

    def check_means(self) -> None:
        """Judge the mean of every active search; stop the ones that fool the defense."""
        rows = self.active.nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        images = self.candidates(rows, self.mu[rows][:, None]).squeeze(1)
        fooled = ~self.judge(rows, images)
        self.succeed(rows[fooled], images[fooled])
        still = rows[~fooled]
        self.x_adv[still] = images[~fooled]   # the best guess so far, re-scored by the judge

    def step(self) -> None:
        """Query one population per active search; keep misclassified members; one NES update."""
        rows = self.active.nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        p = self.params
        generators = [self.generators[int(r)] for r in rows]
        noise = _noise(generators, p.population, p.search_shape, self.x.device)
        images = self.candidates(rows, self.mu[rows][:, None] + p.sigma * noise)
        log_p = population_log_scores(self.defense, images, self.score_draws)
        self.queries[rows] += p.population
        labels = self.y[rows].repeat_interleave(p.population)
        margins = log_margin(log_p, labels).reshape(rows.numel(), p.population)
        self._keep_misclassified_members(rows, images, margins)
        advantages = _z_scored(-0.5 * loss_from_margin(margins, None if self.pixel else TANH_LOSS_CLIP))
        update = torch.einsum("kp,kp...->k...", advantages.to(noise.dtype), noise)
        stepping = self.active[rows]
        self.mu[rows[stepping]] += p.learning_rate / (p.population * p.sigma) * update[stepping]
        self.iterations[rows] += 1

    def _keep_misclassified_members(self, rows, images, margins) -> None:
        """A member the scores call misclassified (margin < 0) is judged; if the criterion agrees, it
        is a success. margins: [K, P]."""
        best = margins.argmin(dim=1)
        candidate_rows = (margins.gather(1, best[:, None]).squeeze(1) < 0).nonzero().squeeze(1)
        if candidate_rows.numel() == 0:
            return
        chosen = images[candidate_rows, best[candidate_rows]]
        fooled = ~self.judge(rows[candidate_rows], chosen)
        self.succeed(rows[candidate_rows[fooled]], chosen[fooled])


def population_log_scores(defense, images: torch.Tensor, draws: int) -> torch.Tensor:
    """`log_scores` of populations [K, P, C, H, W] as [K * P, classes]: in chunks of `CPU_SCORE_CHUNK`
    images for a deterministic defense on a CPU, the whole batch otherwise (see the module docstring)."""
    flat = images.reshape(-1, *images.shape[2:])
    if getattr(defense, "randomized", False) or images.device.type != "cpu":
        return defense.log_scores(flat, draws=draws)
    return torch.cat([defense.log_scores(part, draws=draws) for part in flat.split(CPU_SCORE_CHUNK)])


def _z_scored(rewards: torch.Tensor) -> torch.Tensor:
    centred = rewards - rewards.mean(1, keepdim=True)
    return centred / (rewards.std(1, unbiased=False, keepdim=True) + REWARD_STD_EPSILON)


def nattack(defense, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, *, eps: float,
            params: NAttackParams, seed: int, max_iterations: int | None = None,
            still_correct: Criterion | None = None, criterion_queries: int = 1,
            score_draws: int = 1) -> NAttackResult:
    """Attack a batch of images; `max_iterations` overrides the spec's (the quick budget).

    `still_correct` is the judge's criterion (default: one `predict`), costing `criterion_queries`
    queries per image; `score_draws` is passed to `log_scores` (a randomized entry's mean over draws).
    """
    iterations = params.max_iterations if max_iterations is None else max_iterations
    search = _Search(defense, x, y, indices, params, eps, seed, still_correct or predicted_correctly(defense),
                     criterion_queries, score_draws)
    search.skip_already_wrong()
    for iteration in range(iterations):
        if not search.active.any():
            break
        if iteration % params.check_every == 0:
            search.check_means()
        search.step()
    search.check_means()   # after the last update
    check_perturbation(x, search.x_adv, eps, "nattack")
    return NAttackResult(search.correct, search.queries, search.iterations, search.x_adv)
