"""Independent PyTorch ResNeSt, written from the facts in the reference manifests README.

Used only by the tests, as the ground truth for ``lmr_jax.models.resnest``; it imports nothing
from lmr_jax. NCHW, the reference code's state_dict keys (unused ImageNet ``fc`` included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# blocks per stage, stem width (the stem outputs 2 * stem_width channels)
CONFIGS = {
    "resnest50": ((3, 4, 6, 3), 32),
    "resnest101": ((3, 4, 23, 3), 64),
    "resnest200": ((3, 24, 36, 3), 64),
    "resnest269": ((3, 30, 48, 8), 64),
}


class SplitAttentionConv(nn.Module):
    """3x3 conv with 2*width outputs in 2 groups, split into 2 radix halves, attention-summed."""

    def __init__(self, width: int, stride: int, dilation: int, radix: int = 2):
        super().__init__()
        self.radix = radix
        self.width = width
        inter = max(width * radix // 4, 32)
        self.conv = nn.Conv2d(width, width * radix, 3, stride=stride, padding=dilation,
                              dilation=dilation, groups=radix, bias=False)
        self.bn0 = nn.BatchNorm2d(width * radix)
        self.fc1 = nn.Conv2d(width, inter, 1)
        self.bn1 = nn.BatchNorm2d(inter)
        self.fc2 = nn.Conv2d(inter, width * radix, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.conv(x)))
        halves = torch.split(x, self.width, dim=1)          # radix-major channel halves
        gap = F.adaptive_avg_pool2d(sum(halves), 1)
        att = self.fc2(F.relu(self.bn1(self.fc1(gap))))     # (B, radix*width, 1, 1)
        b = att.shape[0]
        # rSoftMax with cardinality 1: view (B, 1, radix, width), swap, softmax over radix.
        att = att.view(b, 1, self.radix, -1).transpose(1, 2)
        att = F.softmax(att, dim=1).reshape(b, -1, 1, 1)
        weights = torch.split(att, self.width, dim=1)
        return sum(w * h for w, h in zip(weights, halves, strict=True))


class Block(nn.Module):
    """Bottleneck: 1x1 -> bn1 -> ReLU -> split conv -> [avd AvgPool] -> 1x1 -> bn3 (+ shortcut)."""

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, avd: bool,
                 downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.avd_layer = nn.AvgPool2d(3, stride, padding=1) if avd else None
        self.conv2 = SplitAttentionConv(planes, 1 if avd else stride, dilation)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.bn1(self.conv1(x))))
        if self.avd_layer is not None:
            out = self.avd_layer(out)
        out = self.bn3(self.conv3(out))
        short = x if self.downsample is None else self.downsample(x)
        return F.relu(out + short)


class TorchResNeSt(nn.Module):
    """ResNeSt with the reference's layouts: last_stride 1 -> dilation-2 layer4, 2 -> standard."""

    def __init__(self, arch: str, last_stride: int = 1):
        super().__init__()
        blocks, w = CONFIGS[arch]
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, 1, 1, bias=False))
        self.bn1 = nn.BatchNorm2d(2 * w)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 2 * w
        # (planes, stride, dilation of the later blocks, avd in the first block)
        stages = [(64, 1, 1, False), (128, 2, 1, True), (256, 2, 1, True),
                  (512, 1, 2, True) if last_stride == 1 else (512, 2, 1, True)]
        for i, (n, (planes, stride, dilation, first_avd)) in enumerate(
                zip(blocks, stages, strict=True)):
            down = None
            if stride != 1 or inplanes != planes * 4:
                down = nn.Sequential(
                    nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                    nn.Conv2d(inplanes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4))
            layer = [Block(inplanes, planes, stride, 1, first_avd, down)]
            inplanes = planes * 4
            layer += [Block(inplanes, planes, 1, dilation, False, None) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(2048, 1000)  # present in the reference's state_dict, never called

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the stem and of layer1..layer4 (five NCHW maps)."""
        outs = [self.maxpool(F.relu(self.bn1(self.conv1(x))))]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            outs.append(layer(outs[-1]))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)[-1]
