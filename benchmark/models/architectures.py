"""Registry of architectures: name -> a module mapping [0, 1] images to logits.

`build(name, num_classes)` returns an `ImageClassifier`: the network plus the input normalization it
expects, so that every defense receives un-normalized pixels. Weight files hold the state dict of
`classifier.network` (what a PyTorch or timm user saves), never the normalization constants.

The names are those registered with `@register_architecture` (`registry.py`; the built-in networks
are in `networks.py`). `timm:<name>` builds any timm model without downloading weights.
`pni:<name>` / `cni:<name>` add PNI-W / CNI-W weight noise to any of them (`noise_injection.py`).

Names compose in one way only, `[pni:|cni:]<registry name or timm:<timm registry name>>`: one
noise wrapper at most, and a timm name without a source prefix, so no chain of prefixes reaches
timm's `hf-hub:` or `local-dir:` sources (which would build a model from a config nobody pinned).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from benchmark.errors import ArchitectureError
from benchmark.models import networks  # noqa: F401  (registers the built-in networks)
from benchmark.models.noise_injection import inject_noise
from benchmark.models.registry import registered
from benchmark.untrusted import excerpt


class ImageClassifier(nn.Module):
    """`network(normalize(x))`, with x in [0, 1]."""

    def __init__(self, network: nn.Module, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        super().__init__()
        self.network = network
        self.normalized = mean is not None
        if self.normalized:
            shape = (1, len(mean), 1, 1)
            self.register_buffer("mean", torch.tensor(mean).view(shape), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalized:
            x = (x - self.mean) / self.std
        return self.network(x)


# ---------------------------------------------------------------- registry

TIMM_PREFIX = "timm:"
NOISE_PREFIXES = ("pni:", "cni:")   # weight-noise twins of any name above (benchmark.models.noise_injection)
MAX_NAME_CHARS = 200
# A timm registry name, optionally with its pretrained tag (resnet18.a1_in1k); no "source:" prefix
# and no "/", which timm would read as a Hub repository or a local folder.
TIMM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,150}")


def registry_names() -> list[str]:
    return [*registered(), f"{TIMM_PREFIX}<any timm model name>",
            *(f"{prefix}<any name above>" for prefix in NOISE_PREFIXES)]


def parse_architecture(name: object) -> tuple[str | None, str]:
    """(the weight-noise kind, "pni" or "cni", or None; the base name), or ArchitectureError."""
    if not isinstance(name, str) or not name:
        raise ArchitectureError(f"an architecture is a non-empty name, got {excerpt(name)}")
    if len(name) > MAX_NAME_CHARS:
        raise ArchitectureError(f"architecture {excerpt(name)} is longer than {MAX_NAME_CHARS} characters; "
                                f"choose one of: {', '.join(registry_names())}")
    noise, base = None, name
    if name.startswith(NOISE_PREFIXES):
        noise, base = name.split(":", 1)
    if base.startswith(NOISE_PREFIXES):
        raise ArchitectureError(f"architecture {excerpt(name)}: weight noise wraps an architecture once "
                                "(pni:<name> or cni:<name>), never another noise wrapper")
    if base.startswith(TIMM_PREFIX) and len(base) > len(TIMM_PREFIX):
        model_name = base[len(TIMM_PREFIX):]
        if not TIMM_NAME.fullmatch(model_name):
            raise ArchitectureError(
                f"architecture {excerpt(name)}: timm:<name> takes a timm registry name only (letters, "
                "digits, '_', '.', '-'), no source such as hf-hub: or local-dir: and no path; the "
                "weights come only from the pinned safetensors file")
    elif base not in registered():
        raise ArchitectureError(f"unknown architecture {excerpt(name)}; choose one of: "
                                f"{', '.join(registry_names())}")
    return noise, base


def check_architecture(name: object) -> str:
    """`name` if the judge can build it, without building it (a timm model can be large)."""
    _, base = parse_architecture(name)
    if base.startswith(TIMM_PREFIX):
        import timm

        if not timm.is_model(base[len(TIMM_PREFIX):]):
            raise ArchitectureError(f"timm has no model {excerpt(base[len(TIMM_PREFIX):])}; list them with "
                                    "python -c \"import timm; print(timm.list_models())\"")
    return name


def _build_timm(model_name: str, num_classes: int, in_channels: int) -> ImageClassifier:
    import timm

    try:
        network = timm.create_model(model_name, pretrained=False, num_classes=num_classes,
                                    in_chans=in_channels)
    except RuntimeError as error:   # timm raises RuntimeError("Unknown model ...")
        raise ArchitectureError(
            f"unknown timm model {model_name!r} ({error}); list them with "
            "python -c \"import timm; print(timm.list_models(pretrained=True))\""
        ) from None
    config = network.pretrained_cfg or {}
    mean = tuple(config.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(config.get("std", (0.229, 0.224, 0.225)))
    if len(mean) != in_channels:   # e.g. a 1-channel timm model: the channel average, per input channel
        mean, std = (sum(mean) / len(mean),) * in_channels, (sum(std) / len(std),) * in_channels
    return ImageClassifier(network, mean, std)


def build(name: str, num_classes: int, *, in_channels: int | None = None) -> ImageClassifier:
    """Build architecture `name` with `num_classes` outputs (random initial weights).

    `in_channels` defaults to the architecture's own: 1 for mnist_a..d, 3 for the others.
    """
    noise, base = parse_architecture(name)
    architecture = registered().get(base)
    if architecture is not None:
        network = architecture.builder(num_classes, in_channels or architecture.in_channels)
        classifier = ImageClassifier(network, architecture.mean, architecture.std)
    else:
        classifier = _build_timm(base[len(TIMM_PREFIX):], num_classes, in_channels or 3)
    if noise is not None:
        inject_noise(classifier.network, noise)
    return classifier
