"""Registry of architectures: name -> a module mapping [0, 1] images to logits.

`build(name, num_classes)` returns an `ImageClassifier`: the network plus the input normalization it
expects, so that every defense receives un-normalized pixels. Weight files hold the state dict of
`classifier.network` (what a PyTorch or timm user saves), never the normalization constants.

MNIST A-D follow Tramer et al. 2017, Table 6, with the exact layers of their code (Keras defaults:
'valid' padding, stride 1). `timm:<name>` builds any timm model without downloading weights.
`pni:<name>` / `cni:<name>` add PNI-W / CNI-W weight noise to any of them (`noise_injection.py`).

Names compose in one way only, `[pni:|cni:]<registry name or timm:<timm registry name>>`: one
noise wrapper at most, and a timm name without a source prefix, so no chain of prefixes reaches
timm's `hf-hub:` or `local-dir:` sources (which would build a model from a config nobody pinned).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from torch import nn

from benchmark.errors import ArchitectureError
from benchmark.noise_injection import inject_noise
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


# ---------------------------------------------------------------- MNIST A-D (Tramer et al., Table 6)


def mnist_a(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, 5), nn.ReLU(),            # 28 -> 24
        nn.Conv2d(64, 64, 5), nn.ReLU(),                     # 24 -> 20
        nn.Dropout(0.25), nn.Flatten(),
        nn.Linear(64 * 20 * 20, 128), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(128, num_classes),
    )


def mnist_b(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Dropout(0.2),
        nn.Conv2d(in_channels, 64, 8, stride=2, padding=3), nn.ReLU(),   # Keras 'same': 28 -> 14
        nn.Conv2d(64, 128, 6, stride=2), nn.ReLU(),                      # 14 -> 5
        nn.Conv2d(128, 128, 5), nn.ReLU(),                               # 5 -> 1
        nn.Dropout(0.5), nn.Flatten(),
        nn.Linear(128, num_classes),
    )


def mnist_c(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 128, 3), nn.ReLU(),           # 28 -> 26
        nn.Conv2d(128, 64, 3), nn.ReLU(),                    # 26 -> 24
        nn.Dropout(0.25), nn.Flatten(),
        nn.Linear(64 * 24 * 24, 128), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(128, num_classes),
    )


def mnist_d(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * 28 * 28
    for _ in range(4):
        linear = nn.Linear(width, 300)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")   # he_normal in the original
        layers += [linear, nn.ReLU(), nn.Dropout(0.5)]
        width = 300
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- CIFAR: ResNet-20 and WRN-34-10

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:   # option B: 1x1 conv + BN (SIAM / CNI)
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(3):
                blocks.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x):
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


class _WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        pre = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-widen as in TRADES' `wideresnet.py` (pre-activation blocks, no dropout)."""

    def __init__(self, depth: int = 34, widen: int = 10, num_classes: int = 10):
        super().__init__()
        per_stage = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        stages, in_planes = [], widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2), strict=True):
            blocks = []
            for i in range(per_stage):
                blocks.append(_WideBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = torch.relu(self.bn(self.layers(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


# ---------------------------------------------------------------- registry

_MNIST_FAMILY: dict[str, Callable[..., nn.Module]] = {
    "mnist_a": mnist_a, "mnist_b": mnist_b, "mnist_c": mnist_c, "mnist_d": mnist_d,
}
_CIFAR_FAMILY: dict[str, Callable[[int], nn.Module]] = {
    "resnet20": lambda n: ResNet20(n),
    "wrn34_10": lambda n: WideResNet(34, 10, n),
}
TIMM_PREFIX = "timm:"
NOISE_PREFIXES = ("pni:", "cni:")   # weight-noise twins of any name above (benchmark.noise_injection)
MAX_NAME_CHARS = 200
# A timm registry name, optionally with its pretrained tag (resnet18.a1_in1k); no "source:" prefix
# and no "/", which timm would read as a Hub repository or a local folder.
TIMM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,150}")


def registry_names() -> list[str]:
    return [*_MNIST_FAMILY, *_CIFAR_FAMILY, f"{TIMM_PREFIX}<any timm model name>",
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
    elif base not in _MNIST_FAMILY and base not in _CIFAR_FAMILY:
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
    if base in _MNIST_FAMILY:
        classifier = ImageClassifier(_MNIST_FAMILY[base](num_classes, in_channels or 1))
    elif base in _CIFAR_FAMILY:
        classifier = ImageClassifier(_CIFAR_FAMILY[base](num_classes), CIFAR10_MEAN, CIFAR10_STD)
    else:
        classifier = _build_timm(base[len(TIMM_PREFIX):], num_classes, in_channels or 3)
    if noise is not None:
        inject_noise(classifier.network, noise)
    return classifier
