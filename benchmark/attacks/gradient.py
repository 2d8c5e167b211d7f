"""White-box L-infinity attacks: fgsm, step_ll, rand_fgsm, ifgsm, pgd, epgd and the margin-loss PGD.

The threat model and each attack's paper: docs/threat-model.md. Gradients are taken w.r.t. the input
only (`torch.autograd.grad`; the defense's parameters are frozen), batched, and, for a randomized
defense, averaged over `draws` independent forward passes (expectation over transformation).
Every function returns images inside the eps ball and [0, 1]; `check_perturbation` verifies it.

A defense whose output has no differentiable path to the input (a cut graph, a piecewise-constant
preprocessing) is attacked with a zero gradient instead of crashing the judge: the attack then
leaves the image where it started, the margin-loss attacks record how many examples never had a
gradient (the `no_gradient` flag), and the transfer and adaptive families decide the worst case.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmark.errors import AttackBoundsError, ThreatbenchError
from benchmark.runtime.randomness import per_example_sign, per_example_uniform
from benchmark.spec import AttackParams

# float32 rounding of x + eps can exceed eps by a few ulps; anything larger is a bug.
BOUNDS_TOLERANCE = 1e-6


@dataclass
class PassCounter:
    """Images sent through the model: forward passes and backward passes (input gradients)."""

    forward: int = 0
    backward: int = 0
    gradient_checked: int = 0    # correctly classified examples whose input gradient was watched
    gradient_missing: int = 0    # ... of which the gradient was exactly zero at every step

    def add(self, images: int, *, backward: bool) -> None:
        self.forward += images
        if backward:
            self.backward += images

    def add_gradient_check(self, had_gradient: torch.Tensor) -> None:
        self.gradient_checked += int(had_gradient.numel())
        self.gradient_missing += int((~had_gradient).sum())


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="sum")


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Carlini & Wagner's f6 on logits, max_{c != y} z_c - z_y, summed over the batch (unclipped).

    Unlike cross-entropy its gradient does not vanish when the logits are scaled up (softmax
    saturation), and PGD follows only its sign, so any scaling of the logits leaves the attack as is.
    """
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return (others - true).sum()


def input_gradient(defense, x: torch.Tensor, labels: torch.Tensor, *, draws: int = 1,
                   counter: PassCounter | None = None, loss: Loss = cross_entropy_loss) -> torch.Tensor:
    """d/dx of `loss` summed over the batch, averaged over `draws` forward passes.

    The loss per draw is averaged after the loss (the EPGD order of Nemcovsky et al.). An output
    without a differentiable path to x gives a zero gradient (see the module docstring).
    """
    gradient = torch.zeros_like(x)
    for _ in range(draws):
        x_var = x.detach().requires_grad_(True)
        value = loss(defense(x_var), labels)
        if value.requires_grad:
            (draw_gradient,) = torch.autograd.grad(value, x_var, allow_unused=True)
            if draw_gradient is not None:
                gradient = gradient + draw_gradient
        if counter is not None:
            counter.add(x.shape[0], backward=True)
    return gradient / draws if draws > 1 else gradient


def has_gradient(gradient: torch.Tensor) -> torch.Tensor:
    """bool [N]: the example's input gradient is not exactly zero everywhere."""
    return gradient.flatten(1).abs().amax(dim=1) > 0


@torch.no_grad()
def least_likely_labels(defense, x: torch.Tensor, counter: PassCounter | None = None,
                        draws: int = 1) -> torch.Tensor:
    """The least-likely class of each clean input: the argmin of the defense's mean probabilities
    (`log_scores`; a smoothed entry's mean softmax over its draws, never its tied vote fractions)."""
    if counter is not None:
        counter.add(x.shape[0] * draws, backward=False)
    return defense.log_scores(x, draws=draws).argmin(dim=1)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Onto the eps ball around x, then onto [0, 1]."""
    return torch.clamp(torch.minimum(torch.maximum(x_adv, x - eps), x + eps), 0.0, 1.0)


def check_perturbation(x: torch.Tensor, x_adv: torch.Tensor, eps: float, attack: str = "attack") -> None:
    """Raise AttackBoundsError when x_adv leaves the eps ball or [0, 1] (or is not finite)."""
    if x_adv.shape != x.shape:
        raise AttackBoundsError(f"{attack}: returned shape {tuple(x_adv.shape)} for input {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AttackBoundsError(f"{attack}: produced NaN or inf pixels")
    distance = float((x_adv - x).abs().max()) if x.numel() else 0.0
    if distance > eps + BOUNDS_TOLERANCE:
        raise AttackBoundsError(f"{attack}: L-inf distance {distance:.8f} exceeds eps {eps:.8f}")
    low, high = float(x_adv.min()), float(x_adv.max())
    if low < 0.0 or high > 1.0:
        raise AttackBoundsError(f"{attack}: pixels outside [0, 1] (min {low}, max {high})")


def check_eps(eps: float, name: str = "eps") -> float:
    """eps must be a number in [0, 1] (0 is allowed: the attack is then the identity)."""
    if not isinstance(eps, int | float) or not 0.0 <= float(eps) <= 1.0:
        raise ThreatbenchError(f"{name} must lie in [0, 1] (pixels are in [0, 1]), got {eps!r}")
    return float(eps)


# ---------------------------------------------------------------- single-step attacks


def fgsm(defense, x, y, *, eps: float, draws: int = 1, counter: PassCounter | None = None):
    """x + eps * sign(grad J(x, y)), clipped to [0, 1]."""
    eps = check_eps(eps)
    gradient = input_gradient(defense, x, y, draws=draws, counter=counter)
    return torch.clamp(x + eps * gradient.sign(), 0.0, 1.0).detach()


def step_ll(defense, x, *, eps: float, target: torch.Tensor | None = None, draws: int = 1,
            counter: PassCounter | None = None):
    """One step of eps towards the least-likely class: x - eps * sign(grad J(x, y_ll))."""
    eps = check_eps(eps)
    if target is None:
        target = least_likely_labels(defense, x, counter, draws=draws)
    gradient = input_gradient(defense, x, target, draws=draws, counter=counter)
    return torch.clamp(x - eps * gradient.sign(), 0.0, 1.0).detach()


def rand_fgsm(defense, x, y, *, eps: float, alpha: float, sign_noise: torch.Tensor | None = None,
              generator: torch.Generator | None = None, least_likely: bool = False, draws: int = 1,
              counter: PassCounter | None = None):
    """Tramer et al. §4: a random sign step of alpha, then a gradient step of eps - alpha.

    `y` is the true label, or the least-likely target when `least_likely` (then the step descends).
    The noisy point is clipped to [0, 1] before the gradient, as in the authors' MNIST code.
    """
    eps, alpha = check_eps(eps), check_eps(alpha, "alpha")
    if alpha > eps:
        raise ThreatbenchError(f"rand_fgsm needs alpha <= eps, got alpha {alpha} and eps {eps}")
    if sign_noise is None:
        sign_noise = torch.randn(x.shape, generator=generator).sign().to(x.device)
    x_noisy = torch.clamp(x + alpha * sign_noise, 0.0, 1.0)
    gradient = input_gradient(defense, x_noisy, y, draws=draws, counter=counter)
    direction = -gradient.sign() if least_likely else gradient.sign()
    return project(x_noisy + (eps - alpha) * direction, x, eps).detach()


# ---------------------------------------------------------------- iterative attacks


def _iterate(defense, x, y, x_start, *, eps, steps, step_size, draws, counter, loss=cross_entropy_loss,
             watch_gradient=False):
    x_adv = x_start
    had_gradient = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(steps):
        gradient = input_gradient(defense, x_adv, y, draws=draws, counter=counter, loss=loss)
        had_gradient |= has_gradient(gradient)
        x_adv = project(x_adv + step_size * gradient.sign(), x, eps)
    if watch_gradient and counter is not None:
        # Only examples the defense gets right matter: a missing gradient elsewhere hides nothing.
        counter.add(x.shape[0], backward=False)
        correct = defense.predict(x) == y
        counter.add_gradient_check(had_gradient[correct])
    return x_adv.detach()


def ifgsm(defense, x, y, *, eps: float, steps: int, draws: int = 1, counter: PassCounter | None = None):
    """Basic iterative method: `steps` FGSM steps of eps/steps from x, true label."""
    eps = check_eps(eps)
    return _iterate(defense, x, y, x, eps=eps, steps=steps, step_size=eps / steps, draws=draws,
                    counter=counter)


def pgd(defense, x, y, *, eps: float, steps: int, step_size: float, random_start: bool = True,
        start_noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
        draws: int = 1, counter: PassCounter | None = None, loss: Loss = cross_entropy_loss,
        watch_gradient: bool = False):
    """Madry et al.: uniform random start in the ball, then `steps` projected sign-gradient steps.

    With `draws` > 1 this is EPGD (Nemcovsky et al. §4.2): each step's gradient is the mean over
    `draws` stochastic forward passes. `loss` is cross-entropy, or `margin_loss` for the
    margin-loss PGD; `watch_gradient` counts the examples that never had an input gradient.
    """
    eps = check_eps(eps)
    x_start = x
    if random_start:
        if start_noise is None:
            start_noise = (2 * torch.rand(x.shape, generator=generator) - 1).to(x.device) * eps
        x_start = torch.clamp(x + start_noise, 0.0, 1.0)
    return _iterate(defense, x, y, x_start, eps=eps, steps=steps, step_size=step_size, draws=draws,
                    counter=counter, loss=loss, watch_gradient=watch_gradient)


# ---------------------------------------------------------------- the white-box family registry


@dataclass(frozen=True)
class AttackBatch:
    """One batch to attack: images, true labels and their example indices (for per-example noise)."""

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor


def _noise_shape(batch: AttackBatch) -> tuple[int, ...]:
    return tuple(batch.x.shape[1:])


def _draws(params: AttackParams) -> int:
    return params.draws or 1


def _run_fgsm(defense, batch, params, eps, seed, counter):
    return fgsm(defense, batch.x, batch.y, eps=eps, draws=_draws(params), counter=counter)


def _run_step_ll(defense, batch, params, eps, seed, counter):
    return step_ll(defense, batch.x, eps=eps, draws=_draws(params), counter=counter)


def _run_rand_fgsm(defense, batch, params, eps, seed, counter):
    noise = per_example_sign(_noise_shape(batch), batch.indices, seed, "rand_fgsm").to(batch.x.device)
    least_likely = params.label == "least_likely"
    labels = least_likely_labels(defense, batch.x, counter, _draws(params)) if least_likely else batch.y
    return rand_fgsm(defense, batch.x, labels, eps=eps, alpha=params.alpha, sign_noise=noise,
                     least_likely=least_likely, draws=_draws(params), counter=counter)


def _run_ifgsm(defense, batch, params, eps, seed, counter):
    return ifgsm(defense, batch.x, batch.y, eps=eps, steps=params.steps, draws=_draws(params),
                 counter=counter)


def _pgd_runner(stream: str, loss: Loss = cross_entropy_loss) -> Callable:
    watch = loss is margin_loss

    def run(defense, batch, params, eps, seed, counter):
        noise = None
        if params.random_start:
            noise = per_example_uniform(_noise_shape(batch), batch.indices, seed, stream, -eps, eps)
            noise = noise.to(batch.x.device)
        return pgd(defense, batch.x, batch.y, eps=eps, steps=params.steps, step_size=params.step_size,
                   random_start=params.random_start, start_noise=noise, draws=_draws(params),
                   counter=counter, loss=loss, watch_gradient=watch)

    return run


WHITE_BOX: dict[str, Callable] = {
    "fgsm": _run_fgsm,
    "step_ll": _run_step_ll,
    "rand_fgsm": _run_rand_fgsm,
    "ifgsm": _run_ifgsm,
    "pgd": _pgd_runner("pgd"),
    "epgd": _pgd_runner("epgd"),
    "pgd_margin": _pgd_runner("pgd_margin", margin_loss),
    "epgd_margin": _pgd_runner("epgd_margin", margin_loss),
}


def run_white_box(name: str, defense, batch: AttackBatch, params: AttackParams, eps: float, seed: int,
                  counter: PassCounter | None = None, *, draws: int | None = None) -> torch.Tensor:
    """Run registry attack `name` on a batch with the spec's parameters; verify the bounds.

    `draws` overrides the number of forward passes each gradient averages (EOT for randomized
    defenses).
    """
    if name not in WHITE_BOX:
        raise ThreatbenchError(f"unknown attack {name!r}; white-box attacks: {', '.join(WHITE_BOX)}")
    if draws is not None:
        params = dataclasses.replace(params, draws=draws)
    x_adv = WHITE_BOX[name](defense, batch, params, eps, seed, counter)
    check_perturbation(batch.x, x_adv, eps, name)
    return x_adv
