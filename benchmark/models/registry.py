"""The architecture registry: a decorator that names a network builder, and the table it fills.

Modelled on timm's registry: `@register_architecture("mnist_a", ...)` above a function
`(num_classes, in_channels) -> nn.Module` makes the name buildable by `architectures.build` and
listable by `threatbench list architectures`. The built-in networks register in `networks.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

Builder = Callable[[int, int], nn.Module]


@dataclass(frozen=True)
class Architecture:
    name: str
    builder: Builder
    in_channels: int                     # the default number of input channels
    mean: tuple[float, ...] | None       # input normalization the network expects (None: raw [0, 1])
    std: tuple[float, ...] | None
    paper: str
    description: str


_REGISTRY: dict[str, Architecture] = {}


def register_architecture(name: str, *, in_channels: int, paper: str, description: str,
                          mean: Sequence[float] | None = None, std: Sequence[float] | None = None
                          ) -> Callable[[Builder], Builder]:
    """Register the decorated builder under `name`; a name registers once."""
    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = Architecture(name, builder, in_channels, None if mean is None else tuple(mean),
                                       None if std is None else tuple(std), paper, description)
        return builder
    return decorate


def registered() -> dict[str, Architecture]:
    """Every registered architecture by name, in registration order."""
    return dict(_REGISTRY)
