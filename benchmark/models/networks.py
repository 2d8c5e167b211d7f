"""The built-in networks, each registered by name (`register_architecture`).

MNIST A-D follow Tramer et al. 2018, Table 6, with the exact layers of their code (Keras defaults:
'valid' padding, stride 1). ResNet-20 and WRN-34-10 are the CIFAR-10 networks of the noise-injection
and TRADES papers. Each builder takes (num_classes, in_channels) and returns the bare network; the
registry adds the input normalization.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmark.models.registry import register_architecture

# ---------------------------------------------------------------- MNIST A-D (Tramer et al., Table 6)


@register_architecture("mnist_a", in_channels=1, paper="Tramer et al. 2018, Table 6 (A)",
                       description="2 conv 64x5x5 + dense 128, dropout")
def mnist_a(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, 5), nn.ReLU(),            # 28 -> 24
        nn.Conv2d(64, 64, 5), nn.ReLU(),                     # 24 -> 20
        nn.Dropout(0.25), nn.Flatten(),
        nn.Linear(64 * 20 * 20, 128), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(128, num_classes),
    )


@register_architecture("mnist_b", in_channels=1, paper="Tramer et al. 2018, Table 6 (B)",
                       description="dropout + 3 conv (8x8/2, 6x6/2, 5x5), no dense hidden layer")
def mnist_b(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Dropout(0.2),
        nn.Conv2d(in_channels, 64, 8, stride=2, padding=3), nn.ReLU(),   # Keras 'same': 28 -> 14
        nn.Conv2d(64, 128, 6, stride=2), nn.ReLU(),                      # 14 -> 5
        nn.Conv2d(128, 128, 5), nn.ReLU(),                               # 5 -> 1
        nn.Dropout(0.5), nn.Flatten(),
        nn.Linear(128, num_classes),
    )


@register_architecture("mnist_c", in_channels=1, paper="Tramer et al. 2018, Table 6 (C)",
                       description="2 conv (128x3x3, 64x3x3) + dense 128, dropout")
def mnist_c(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 128, 3), nn.ReLU(),           # 28 -> 26
        nn.Conv2d(128, 64, 3), nn.ReLU(),                    # 26 -> 24
        nn.Dropout(0.25), nn.Flatten(),
        nn.Linear(64 * 24 * 24, 128), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(128, num_classes),
    )


@register_architecture("mnist_d", in_channels=1, paper="Tramer et al. 2018, Table 6 (D)",
                       description="4 dense layers of 300 units, dropout 0.5")
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




@register_architecture("resnet20", in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                       paper="He et al. 2016 (CIFAR ResNet-20), as in Nemcovsky et al. 2019",
                       description="ResNet-20 for 32x32 images, option-B shortcuts")
def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet20(num_classes)


@register_architecture("wrn34_10", in_channels=3, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                       paper="Zagoruyko & Komodakis 2016, as in Zhang et al. 2019 (TRADES)",
                       description="WideResNet-34-10, pre-activation blocks")
def wrn34_10(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return WideResNet(34, 10, num_classes)
