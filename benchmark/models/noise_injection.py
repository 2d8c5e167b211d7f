"""Weight-noise layers: PNI-W (He et al. 2019) and CNI-W (Zheltonozhskii et al. 2020).

`inject_noise(network, kind)` swaps every `nn.Conv2d` / `nn.Linear` of a network, in place, for a noisy
twin that reuses the *same* `weight` and `bias` parameters. A state dict therefore keeps every original
key and only gains the noise parameters, so a weights file of a noisy model is the file of its base
model plus a few tensors (He et al. 2019, arXiv:1811.09310; Zheltonozhskii et al. 2020, arXiv:2003.02188).

- PNI-W ("pni"): w~ = w + alpha * eta, eta ~ N(0, std(w)^2), one learnable scalar `noise_alpha` per layer
  (layer-wise, init 0.25: the PNI paper's variant; §6 item 8 lists the others).
- CNI-W ("cni"): with W flattened to d entries, n = sqrt(|std(W) * a_d| + 1e-8) * z_d + F z_f,
  z_d ~ N(0, I_d), z_f ~ N(0, I_r); learnable `noise_diag` = a_d (d entries, init 0.0625) and
  `noise_factor` = F (d x r, init 0.01). Covariance: diag(|std(W) a_d|) + F F^T.

Deviation from the CNI paper/code, on purpose: CNI on every layer with <= `max_colored_weights` (1M)
weights, PNI-W layer-wise on larger ones. A rank-r factor costs r*d parameters; for model A's 25600x128
dense layer that is 16.4M extra parameters, more than the weights it perturbs.

std(w) is taken without gradient (a constant for autograd), as in both reference codes, and the noise is
drawn on *every* forward pass, training and eval, from torch's global generator, so that
`benchmark.runtime.randomness.seed_model_noise` makes an evaluation reproducible.

By default one draw is shared by the whole batch (PNI / SIAM). Inside `noise_groups(module, g)` a batch
of g*B rows is read as g contiguous chunks, each with its own independent draw, so that smoothed inference
can run many Monte-Carlo samples of a noisy model in one batched pass. Inside `held_noise_draws(module)`
the layers keep their first draw, so one batch can be scored in several chunks of rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional

from benchmark.errors import ArchitectureError

NOISE_KINDS = ("pni", "cni")
PNI_ALPHA_INIT = 0.25           # PNI `noise_layer.py`
CNI_DIAG_INIT = 0.25 ** 2       # CNI-layers `noised_strength` 0.25, squared at init
CNI_FACTOR_INIT = 0.1 ** 2      # CNI-layers `noisef_strength` 0.1, squared at init
CNI_EPSILON = 1e-8              # inside the sqrt, as in CNI-layers
DEFAULT_RANK = 5                # SIAM `--noise-rank`
DEFAULT_MAX_COLORED_WEIGHTS = 1_000_000


class NoisyLayer:
    """Mixin for a conv / linear layer whose weight gets fresh noise on every forward pass.

    `noise_kind` is the noise the layer actually uses ("pni" or "cni"): a layer asked for CNI but above
    the size limit says "pni". `noise_groups` is the number of independent draws per batch (see the
    `noise_groups` context manager); 1 means one draw shared by the whole batch.
    """

    weight: nn.Parameter
    noise_kind: str
    noise_groups: int

    def _init_noise(self, kind: str, rank: int, max_colored_weights: int) -> None:
        size = self.weight.numel()
        self.noise_kind = "cni" if kind == "cni" and size <= max_colored_weights else "pni"
        self.noise_groups = 1
        self.holding_noise = False
        self.held_weights: torch.Tensor | None = None
        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        if self.noise_kind == "pni":
            self.noise_alpha = nn.Parameter(torch.tensor(PNI_ALPHA_INIT, **factory))
        else:
            self.noise_diag = nn.Parameter(torch.full((size,), CNI_DIAG_INIT, **factory))
            self.noise_factor = nn.Parameter(torch.full((size, rank), CNI_FACTOR_INIT, **factory))

    def sample_weight_noise(self, draws: int) -> torch.Tensor:
        """`draws` independent noise tensors, shape (draws, *weight.shape); differentiable in the
        noise parameters, constant in the weight."""
        weight = self.weight
        scale = _weight_std(weight)
        if self.noise_kind == "pni":
            eta = torch.randn((draws, *weight.shape), device=weight.device, dtype=weight.dtype)
            return self.noise_alpha * (scale * eta)
        size, rank = self.noise_factor.shape
        z_diag = torch.randn((draws, size), device=weight.device, dtype=weight.dtype)
        z_factor = torch.randn((draws, rank), device=weight.device, dtype=weight.dtype)
        diag_std = torch.sqrt((scale * self.noise_diag).abs() + CNI_EPSILON)
        noise = diag_std * z_diag + z_factor @ self.noise_factor.T
        return noise.view(draws, *weight.shape)

    def noisy_weights(self, draws: int) -> torch.Tensor:
        """W + noise for `draws` independent draws, shape (draws, *weight.shape); inside
        `held_noise_draws` the first call's draws are kept and returned again."""
        if self.held_weights is not None:
            if self.held_weights.shape[0] != draws:
                raise ValueError(
                    f"{type(self).__name__}: {draws} noise draws asked while {self.held_weights.shape[0]} "
                    "are held; keep noise_groups fixed inside held_noise_draws"
                )
            return self.held_weights
        weights = self.weight + self.sample_weight_noise(draws)
        if self.holding_noise:
            self.held_weights = weights
        return weights

    def _groups_for(self, batch: int) -> int:
        groups = self.noise_groups
        if batch % groups:
            raise ValueError(
                f"{type(self).__name__}: a batch of {batch} rows cannot be split into "
                f"{groups} noise groups of equal size"
            )
        return groups

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, noise={self.noise_kind}"   # type: ignore[misc]


WEIGHT_RELATIVE_DIAG = 0.25     # diagonal noise std / std(W) at init with noise_init = "weight_relative"
WEIGHT_RELATIVE_FACTOR = 0.1    # low-rank noise std / std(W) at init (the code's noisef_strength)


@torch.no_grad()
def scale_noise_to_weights(network: nn.Module) -> None:
    """A documented deviation for CNI-W: initial noise relative to each layer's weight std.

    The paper's init gives every weight a diagonal noise std of sqrt(std(W) * 0.0625), which is
    larger than the weights themselves for small-std layers without batch norm (model A's conv2:
    2.3x). Here a_d = 0.0625 std(W) makes the diagonal std 0.25 std(W), PNI-W's layer-wise scale, and
    F = 0.1 std(W) / sqrt(rank) makes the low-rank part's std 0.1 std(W). PNI-W layers are unchanged
    (their alpha is already relative). Training then learns a_d and F as in the paper.
    """
    for module in network.modules():
        if isinstance(module, NoisyLayer) and module.noise_kind == "cni":
            scale = _weight_std(module.weight)
            rank = module.noise_factor.shape[1]
            module.noise_diag.fill_(float(WEIGHT_RELATIVE_DIAG ** 2 * scale))
            module.noise_factor.fill_(float(WEIGHT_RELATIVE_FACTOR * scale / rank ** 0.5))


def _weight_std(weight: torch.Tensor) -> torch.Tensor:
    """std of the whole tensor, without gradient; 0 for a single weight (std is undefined there)."""
    with torch.no_grad():
        if weight.numel() < 2:
            return torch.zeros((), device=weight.device, dtype=weight.dtype)
        return weight.std()


class NoisyLinear(NoisyLayer, nn.Linear):
    """`nn.Linear` with PNI-W or CNI-W weight noise (bias is never noised, as in PNI and SIAM)."""

    @classmethod
    def from_layer(cls, layer: nn.Linear, kind: str, *, rank: int = DEFAULT_RANK,
                   max_colored_weights: int = DEFAULT_MAX_COLORED_WEIGHTS) -> NoisyLinear:
        noisy = cls(layer.in_features, layer.out_features, bias=layer.bias is not None,
                    device="meta")
        _adopt_parameters(noisy, layer)
        noisy._init_noise(kind, rank, max_colored_weights)
        return noisy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = self._groups_for(x.shape[0])
        weights = self.noisy_weights(groups)                       # (g, out, in)
        if groups == 1:
            return functional.linear(x, weights[0], self.bias)
        chunks = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
        out = torch.einsum("gbi,goi->gbo", chunks.flatten(1, -2), weights)
        out = out.reshape(x.shape[0], *x.shape[1:-1], self.out_features)
        return out if self.bias is None else out + self.bias


class NoisyConv2d(NoisyLayer, nn.Conv2d):
    """`nn.Conv2d` with PNI-W or CNI-W weight noise.

    Several noise groups run as one grouped convolution: the g chunks of the batch are stacked along
    channels, and the g noisy kernels side by side, so each chunk only sees its own kernel.
    """

    @classmethod
    def from_layer(cls, layer: nn.Conv2d, kind: str, *, rank: int = DEFAULT_RANK,
                   max_colored_weights: int = DEFAULT_MAX_COLORED_WEIGHTS) -> NoisyConv2d:
        noisy = cls(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                    padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                    bias=layer.bias is not None, padding_mode=layer.padding_mode, device="meta")
        _adopt_parameters(noisy, layer)
        noisy._init_noise(kind, rank, max_colored_weights)
        return noisy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = self._groups_for(x.shape[0])
        weights = self.noisy_weights(groups)                       # (g, out, in/groups, kh, kw)
        if groups == 1:
            return self._conv(x, weights[0], self.bias, self.groups)
        batch, channels = x.shape[0] // groups, x.shape[1]
        stacked = x.reshape(groups, batch, *x.shape[1:]).transpose(0, 1)
        stacked = stacked.reshape(batch, groups * channels, *x.shape[2:])
        bias = None if self.bias is None else self.bias.repeat(groups)
        out = self._conv(stacked, weights.flatten(0, 1), bias, groups * self.groups)
        out = out.reshape(batch, groups, self.out_channels, *out.shape[2:]).transpose(0, 1)
        return out.reshape(groups * batch, self.out_channels, *out.shape[3:])

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              groups: int) -> torch.Tensor:
        if self.padding_mode != "zeros":
            x = functional.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return functional.conv2d(x, weight, bias, self.stride, 0, self.dilation, groups)
        return functional.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


def _adopt_parameters(noisy: nn.Module, layer: nn.Module) -> None:
    """Reuse the layer's own Parameter objects: same names, values, device, optimizer identity."""
    noisy.weight = layer.weight
    noisy.bias = layer.bias
    noisy.train(layer.training)


_NOISY_TWIN: dict[type, type] = {nn.Conv2d: NoisyConv2d, nn.Linear: NoisyLinear}


def inject_noise(network: nn.Module, kind: str, *, rank: int = DEFAULT_RANK,
                 max_colored_weights: int = DEFAULT_MAX_COLORED_WEIGHTS) -> nn.Module:
    """Replace every `nn.Conv2d` and `nn.Linear` of `network` (recursively, in place) by its noisy twin.

    kind "pni": PNI-W layer-wise on every layer. kind "cni": CNI-W of rank `rank` on every layer with
    at most `max_colored_weights` weights and PNI-W layer-wise on larger ones (a documented deviation,
    see the module docstring). Returns `network`.

    Only exact `nn.Conv2d` / `nn.Linear` are replaced: a subclass (e.g. timm's `Conv2dSame`) has its
    own forward that the twin would lose, so it is left clean with a warning. Modules that read a
    child's `.weight` without calling it (e.g. `nn.MultiheadAttention`) get no noise there either.
    """
    if kind not in NOISE_KINDS:
        raise ArchitectureError(f"unknown weight-noise kind {kind!r}; choose one of {NOISE_KINDS}")
    if rank < 1:
        raise ArchitectureError(f"the CNI noise rank must be >= 1, got {rank}")
    if is_noisy(network):
        raise ArchitectureError("the network already has weight noise; inject it only once")
    skipped = _replace_layers(network, kind, rank, max_colored_weights)
    if skipped:
        warnings.warn(
            f"weight noise not injected into {len(skipped)} subclassed conv/linear layers "
            f"(e.g. {skipped[0]}); their custom forward would be lost", stacklevel=2,
        )
    return network


def _replace_layers(module: nn.Module, kind: str, rank: int, max_colored_weights: int,
                    prefix: str = "") -> list[str]:
    skipped = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        twin = _NOISY_TWIN.get(type(child))
        if twin is not None:
            setattr(module, name, twin.from_layer(child, kind, rank=rank,
                                                  max_colored_weights=max_colored_weights))
        elif isinstance(child, nn.Conv2d | nn.Linear):
            skipped.append(f"{path} ({type(child).__name__})")
        else:
            skipped += _replace_layers(child, kind, rank, max_colored_weights, f"{path}.")
    return skipped


def noisy_layers(module: nn.Module) -> list[NoisyLayer]:
    return [m for m in module.modules() if isinstance(m, NoisyLayer)]


def is_noisy(module: nn.Module) -> bool:
    """True when `module` contains at least one weight-noise layer."""
    return bool(noisy_layers(module))


@contextmanager
def noise_groups(module: nn.Module, groups: int) -> Iterator[nn.Module]:
    """While active, every noisy layer of `module` reads a batch of groups*B rows as `groups` contiguous
    chunks (rows 0..B-1, B..2B-1, ...) and gives each chunk an independent weight-noise draw.

    This is what lets one batched pass evaluate `groups` Monte-Carlo samples of a noisy model without
    making them share weight noise. A module without noisy layers is unaffected. The previous setting
    is restored on exit, also after an exception.
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"noise groups must be a positive integer, got {groups!r}")
    layers = noisy_layers(module)
    previous = [layer.noise_groups for layer in layers]
    try:
        for layer in layers:
            layer.noise_groups = groups
        yield module
    finally:
        for layer, value in zip(layers, previous, strict=True):
            layer.noise_groups = value


@contextmanager
def held_noise_draws(module: nn.Module) -> Iterator[nn.Module]:
    """While active, every noisy layer of `module` draws its weight noise on its first forward pass and
    reuses that draw on every later pass; the draws are dropped on exit, also after an exception.

    A batch can then go through the model in chunks of rows that all see the same draw, as they would
    in one pass: the layers draw in the order the first chunk calls them, which is the order one pass
    would, so the random stream is consumed exactly as by one pass (smoothed scoring on a CPU,
    docs/long-evaluations.md). A module without noisy layers is unaffected.
    """
    layers = noisy_layers(module)
    if any(layer.holding_noise for layer in layers):
        raise ValueError("held_noise_draws is already active on this module; it does not nest")
    try:
        for layer in layers:
            layer.holding_noise = True
        yield module
    finally:
        for layer in layers:
            layer.holding_noise = False
            layer.held_weights = None


def largest_noisy_weight(module: nn.Module) -> int:
    """Element count of the largest noisy weight (0 without noise): each independent draw in a batched
    pass materializes one noisy copy of it, so callers bound draws per pass with it."""
    return max((layer.weight.numel() for layer in noisy_layers(module)), default=0)
