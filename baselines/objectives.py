"""The training loss of each trainer, for one batch (each function names its paper).

Adversarial examples are crafted with the model in eval mode (no dropout, frozen batch statistics;
weight noise stays on) and w.r.t. the input only, with the judge's own attack functions; the loss is
then taken in train mode. Each function returns the scalar loss to minimise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.attacks.gradient import fgsm, input_gradient, pgd, project


@dataclass
class BatchContext:
    """What a loss needs besides the batch: the model, its parameters and where training stands."""

    network: nn.Module
    adversary: dict
    epoch: int
    generator: torch.Generator            # CPU generator for per-batch choices (e.g. ensemble sources)
    static_sources: Sequence[nn.Module] = ()
    source_counts: dict[str, int] = field(default_factory=dict)


def in_eval_mode(network: nn.Module, craft: Callable[[], torch.Tensor]) -> torch.Tensor:
    was_training = network.training
    network.eval()
    try:
        return craft().detach()
    finally:
        network.train(was_training)


@torch.no_grad()
def predicted_labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's own most likely class: the label that avoids label leaking (Kurakin §4.3)."""
    return model(x).argmax(dim=1)


def attack_labels(context: BatchContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if context.adversary.get("label", "true") == "predicted":
        return in_eval_mode(context.network, lambda: predicted_labels(context.network, x))
    return y


def mixed_loss(network: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
               clean_weight: float) -> torch.Tensor:
    return (clean_weight * F.cross_entropy(network(x), y)
            + (1.0 - clean_weight) * F.cross_entropy(network(x_adv), y))


def standard_loss(context: BatchContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(context.network(x), y)


def fgsm_adversarial_loss(context: BatchContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Goodfellow et al. / Tramer et al. MNIST: 1/2 clean CE + 1/2 CE on FGSM of the current model."""
    adversary, network = context.adversary, context.network
    labels = attack_labels(context, x, y)
    x_adv = in_eval_mode(network, lambda: fgsm(network, x, labels, eps=adversary["eps"]))
    return mixed_loss(network, x, x_adv, y, adversary["clean_weight"])


def truncated_normal_eps(count: int, std: float, maximum: float) -> torch.Tensor:
    """Kurakin et al.: per-example eps from N(0, std) truncated to [0, maximum]."""
    eps = torch.empty(count)
    nn.init.trunc_normal_(eps, mean=0.0, std=std, a=0.0, b=maximum)
    return eps


def kurakin_loss(context: BatchContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Kurakin et al. Algorithm 1: k of m examples replaced by step-LL examples of per-example eps.

    L = (sum_clean CE + lambda sum_adv CE) / ((m - k) + lambda k).
    """
    adversary, network = context.adversary, context.network
    m = x.shape[0]
    k = int(round(adversary["replaced_fraction"] * m))
    weight = adversary["adversarial_weight"]
    x_replaced = x[:k]

    def step_ll_per_example() -> torch.Tensor:
        target = predicted_least_likely(network, x_replaced)
        gradient = input_gradient(network, x_replaced, target)
        eps = truncated_normal_eps(k, adversary["eps_std"], adversary["eps_max"]).to(x.device)
        return torch.clamp(x_replaced - eps.view(-1, 1, 1, 1) * gradient.sign(), 0.0, 1.0)

    x_adv = in_eval_mode(network, step_ll_per_example)
    clean_sum = F.cross_entropy(network(x[k:]), y[k:], reduction="sum") if k < m else 0.0
    adversarial_sum = F.cross_entropy(network(x_adv), y[:k], reduction="sum") if k else 0.0
    return (clean_sum + weight * adversarial_sum) / ((m - k) + weight * k)


@torch.no_grad()
def predicted_least_likely(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmin(dim=1)


def _pgd_examples(context: BatchContext, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    adversary, network = context.adversary, context.network
    return in_eval_mode(network, lambda: pgd(
        network, x, labels, eps=adversary["eps"], steps=adversary["steps"],
        step_size=adversary["step_size"], random_start=adversary["random_start"]))


def madry_pgd_loss(context: BatchContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Madry et al.: CE on PGD examples only, no clean term."""
    x_adv = _pgd_examples(context, x, attack_labels(context, x, y))
    return F.cross_entropy(context.network(x_adv), y)


def pgd_adversarial_loss(context: BatchContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PNI / SIAM: (1 - w) CE(clean) + w CE(PGD); clean only for the first `delay_epochs` epochs."""
    adversary = context.adversary
    if context.epoch < adversary["delay_epochs"]:
        return standard_loss(context, x, y)
    x_adv = _pgd_examples(context, x, attack_labels(context, x, y))
    return mixed_loss(context.network, x, x_adv, y, 1.0 - adversary["adversarial_weight"])


def ensemble_adversarial_loss(context: BatchContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Tramer et al. §5: the FGSM source is drawn uniformly per batch among the model being trained
    and the frozen static models; the FGSM label is that source's own prediction (EAT code)."""
    adversary, network = context.adversary, context.network
    sources = [network, *context.static_sources]
    choice = int(torch.randint(len(sources), (1,), generator=context.generator))
    source = sources[choice]
    key = "self" if choice == 0 else getattr(source, "name", f"static{choice}")
    context.source_counts[key] = context.source_counts.get(key, 0) + 1

    def craft() -> torch.Tensor:
        labels = predicted_labels(source, x)
        return fgsm(source, x, labels, eps=adversary["eps"])

    x_adv = in_eval_mode(network, craft)
    return mixed_loss(network, x, x_adv, y, adversary["clean_weight"])


def trades_examples(network: nn.Module, x: torch.Tensor, eps: float, steps: int, step_size: float,
                    init_std: float) -> torch.Tensor:
    """TRADES inner maximization: sign steps on KL(p_clean || p(x')) from x + init_std N(0, I)."""
    with torch.no_grad():
        p_clean = torch.softmax(network(x), dim=1)
    x_adv = torch.clamp(x + init_std * torch.randn_like(x), 0.0, 1.0)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        divergence = F.kl_div(F.log_softmax(network(x_adv), dim=1), p_clean, reduction="sum")
        (gradient,) = torch.autograd.grad(divergence, x_adv)
        x_adv = project(x_adv.detach() + step_size * gradient.sign(), x, eps)
    return x_adv


def trades_loss(context: BatchContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Zhang et al.: CE(f(x), y) + beta / B * sum KL(p_clean || p_adv), gradients through both."""
    adversary, network = context.adversary, context.network
    x_adv = in_eval_mode(network, lambda: trades_examples(
        network, x, adversary["eps"], adversary["steps"], adversary["step_size"], adversary["init_std"]))
    logits = network(x)
    robust = F.kl_div(F.log_softmax(network(x_adv), dim=1), torch.softmax(logits, dim=1),
                      reduction="batchmean")
    return F.cross_entropy(logits, y) + adversary["beta"] * robust


OBJECTIVES: dict[str, Callable[[BatchContext, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "standard": standard_loss,
    "fgsm_adversarial": fgsm_adversarial_loss,
    "kurakin": kurakin_loss,
    "madry_pgd": madry_pgd_loss,
    "pgd_adversarial": pgd_adversarial_loss,
    "ensemble_adversarial": ensemble_adversarial_loss,
    "trades": trades_loss,
}
