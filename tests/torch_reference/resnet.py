"""PyTorch references of the ResNet family (NCHW), from the facts in the manifests README.

Builders: ``resnet50`` (reference layout: AvgPool2d(2, 2) -> conv 1x1 -> BN shortcut where the
stride is 2), ``resnet50_torchvision`` (strided 1x1 shortcut conv), ``resnet101_ibn_a``,
``resnext101_ibn_a`` (32x4d), ``se_resnet101_ibn_a``. State_dict keys equal the manifests'
(``fc`` is built, unused, where the reference class has one).
"""

from __future__ import annotations

import torch
from torch import nn


class IBN(nn.Module):
    """IBN-a: InstanceNorm2d(affine) on channels [0, int(C/2)), BatchNorm2d on the rest."""

    def __init__(self, planes: int):
        super().__init__()
        self.half = int(planes / 2)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], dim=1)


class SELayer(nn.Module):
    """Squeeze-and-excitation with bias-free Linears, reduction r."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        w = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)
        return x * w


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None,
                 ibn: bool, groups: int, width_per_group: int, se: bool):
        super().__init__()
        d = (planes * width_per_group) // 64 * groups
        self.conv1 = nn.Conv2d(inplanes, d, kernel_size=1, bias=False)
        self.bn1 = IBN(d) if ibn else nn.BatchNorm2d(d)
        self.conv2 = nn.Conv2d(d, d, kernel_size=3, stride=stride, padding=1, groups=groups,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(d)
        self.conv3 = nn.Conv2d(d, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        if se:
            self.se = SELayer(planes * 4, 16)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if hasattr(self, "se"):
            out = self.se(out)
        return self.relu(out + residual)


class ResNetReference(nn.Module):
    """A configurable bottleneck ResNet backbone (no pooling/classifier in forward).

    Args:
      layers: blocks per stage.
      last_stride: layer4 stride.
      avgpool_shortcut: reference resnet50 shortcut (AvgPool2d(s, s) -> 1x1 conv -> BN when the
        stride s != 1) instead of a strided 1x1 conv -> BN.
      ibn: IBN-a in bn1 of layer1..layer3.
      groups, width_per_group: ResNeXt cardinality and width (1, 64 for ResNet).
      se: squeeze-and-excitation (reduction 16) in every block.
      with_fc: build the unused ImageNet ``fc`` (2048 -> 1000) as some reference classes do.
      base: planes of layer1 (64).
    """

    def __init__(self, layers: tuple[int, ...], *, last_stride: int = 1,
                 avgpool_shortcut: bool = False, ibn: bool = False, groups: int = 1,
                 width_per_group: int = 64, se: bool = False, with_fc: bool = False,
                 base: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.inplanes = base
        strides = (1, 2, 2, last_stride)
        for i, n in enumerate(layers):
            planes = base * 2 ** i
            blocks = []
            for j in range(n):
                stride = strides[i] if j == 0 else 1
                downsample = None
                if j == 0 and (stride != 1 or self.inplanes != planes * 4):
                    if avgpool_shortcut and stride != 1:
                        downsample = nn.Sequential(
                            nn.AvgPool2d(kernel_size=stride, stride=stride),
                            nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, bias=False),
                            nn.BatchNorm2d(planes * 4))
                    else:
                        downsample = nn.Sequential(
                            nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride,
                                      bias=False),
                            nn.BatchNorm2d(planes * 4))
                blocks.append(Bottleneck(self.inplanes, planes, stride, downsample,
                                         ibn and i < 3, groups, width_per_group, se))
                self.inplanes = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        if with_fc:
            self.fc = nn.Linear(base * 32, 1000)
        self.num_features = base * 32

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[stem, layer1, layer2, layer3, layer4] outputs (NCHW)."""
        outs = [self.maxpool(self.relu(self.bn1(self.conv1(x))))]
        for i in range(1, 5):
            outs.append(getattr(self, f"layer{i}")(outs[-1]))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)[-1]


def resnet50(last_stride: int = 1) -> ResNetReference:
    return ResNetReference((3, 4, 6, 3), last_stride=last_stride, avgpool_shortcut=True)


def resnet50_torchvision(last_stride: int = 1) -> ResNetReference:
    return ResNetReference((3, 4, 6, 3), last_stride=last_stride)


def resnet101_ibn_a(last_stride: int = 1) -> ResNetReference:
    return ResNetReference((3, 4, 23, 3), last_stride=last_stride, ibn=True)


def resnext101_ibn_a(last_stride: int = 1) -> ResNetReference:
    return ResNetReference((3, 4, 23, 3), last_stride=last_stride, ibn=True, groups=32,
                           width_per_group=4, with_fc=True)


def se_resnet101_ibn_a(last_stride: int = 1) -> ResNetReference:
    return ResNetReference((3, 4, 23, 3), last_stride=last_stride, ibn=True, se=True,
                           with_fc=True)


BUILDERS = {
    "resnet50": resnet50,
    "resnet50_torchvision": resnet50_torchvision,
    "resnet101_ibn_a": resnet101_ibn_a,
    "resnext101_ibn_a": resnext101_ibn_a,
    "se_resnet101_ibn_a": se_resnet101_ibn_a,
}
