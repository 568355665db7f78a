"""PyTorch references (NCHW) of Baidu's GLR2019 models, written from the architecture facts.

Facts used (docs/baidu.md): every conv is bias-free and followed by BatchNorm (eps 1e-5);
ResNet-vd / SE-ResNeXt-vd: three 3x3 stem convs (stride 2 on the first), max-pool 3/2/1,
stride on the bottleneck 3x3, shortcut = identity, or [2x2/2 average pool, exclusive] + 1x1
conv + BN on the first block of strided stages, plain 1x1 conv + BN on stage 1 block 1; SE with
biased fcs; Inception-v4 with unpadded square kernels unless stated, same-size asymmetric
kernels, exclusive 3x3/1/1 average pools, Paddle's branch order. Heads: GAP -> fc (bias).

Module names equal the lmr_jax models' (so state_dicts load by name), the code is separate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin: int, cout: int, k, stride: int = 1, padding=0, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups, bias=False)


class TorchSE(nn.Module):
    def __init__(self, c: int, reduction: int):
        super().__init__()
        self.fc1 = nn.Linear(c, c // reduction)
        self.fc2 = nn.Linear(c // reduction, c)

    def forward(self, x):
        s = x.mean(dim=(2, 3))
        g = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * g[:, :, None, None]


class VdShortcut(nn.Module):
    """Index 1: conv, 2: BN (index 0 is the pool, parameterless)."""

    def __init__(self, cin: int, cout: int, pool: bool):
        super().__init__()
        self.pool = pool
        self.add_module("1", _conv(cin, cout, 1))
        self.add_module("2", nn.BatchNorm2d(cout))

    def forward(self, x):
        if self.pool:
            # Paddle: pool2d(2, stride 2, pad 0, avg, exclusive); ceil mode for odd sizes.
            x = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
        return getattr(self, "2")(getattr(self, "1")(x))


class TorchBlockVd(nn.Module):
    def __init__(self, cin, width, cout, stride, groups, se_reduction, shortcut):
        super().__init__()
        self.stride = stride
        self.conv1, self.bn1 = _conv(cin, width, 1), nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3, stride, 1, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = _conv(width, cout, 1), nn.BatchNorm2d(cout)
        if se_reduction:
            self.se = TorchSE(cout, se_reduction)
        if shortcut is not None:
            self.downsample = shortcut

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if hasattr(self, "se"):
            y = self.se(y)
        return torch.relu(y + (self.downsample(x) if hasattr(self, "downsample") else x))


class TorchResNetVd(nn.Module):
    """ResNet-vd (expansion 4) or SE-ResNeXt-vd (expansion 1, groups, SE)."""

    def __init__(self, blocks, stem=(32, 32, 64), widths=(64, 128, 256, 512), expansion=4,
                 groups=1, se_reduction=None):
        super().__init__()
        s1, s2, s3 = stem
        # Stem as a Sequential with the lmr_jax indices (0, 1, 3, 4, 6): conv-BN-ReLU x2, conv.
        self.conv1 = nn.Sequential(
            _conv(3, s1, 3, 2, 1), nn.BatchNorm2d(s1), nn.ReLU(),
            _conv(s1, s2, 3, 1, 1), nn.BatchNorm2d(s2), nn.ReLU(),
            _conv(s2, s3, 3, 1, 1))
        self.bn1 = nn.BatchNorm2d(s3)
        cin = s3
        for i in range(4):
            cout = widths[i] * expansion
            stage = []
            for j in range(blocks[i]):
                stride = 2 if (i > 0 and j == 0) else 1
                shortcut = None
                if j == 0:
                    shortcut = VdShortcut(cin, cout, pool=i > 0)
                stage.append(TorchBlockVd(cin, widths[i], cout, stride, groups, se_reduction,
                                          shortcut))
                cin = cout
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))

    def stages(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, 2, 1)
        outs = [x]
        for i in range(4):
            outs.append(getattr(self, f"layer{i + 1}")(outs[-1]))
        return outs


def resnet152_vd(blocks=(3, 8, 36, 3)):
    return TorchResNetVd(blocks)


def resnet200_vd(blocks=(3, 12, 48, 3)):
    return TorchResNetVd(blocks)


def se_resnext152_64x4d_vd(blocks=(3, 8, 36, 3)):
    return TorchResNetVd(blocks, stem=(64, 64, 128), widths=(256, 512, 1024, 2048),
                         expansion=1, groups=64, se_reduction=16)


# ---- Inception-v4 ----------------------------------------------------------------------------

class CBR(nn.Module):
    def __init__(self, cin, cout, k, stride=1, padding=0):
        super().__init__()
        self.conv = _conv(cin, cout, k, stride, padding)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def _seq(*convs):
    return nn.Sequential(*convs)


def _avg3(x):
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def _max3(x):
    return F.max_pool2d(x, 3, 2, 0)


class TStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = _seq(CBR(3, 32, 3, 2), CBR(32, 32, 3), CBR(32, 64, 3, 1, 1))
        self.mixed1 = CBR(64, 96, 3, 2)
        self.branch_a = _seq(CBR(160, 64, 1), CBR(64, 96, 3))
        self.branch_b = _seq(CBR(160, 64, 1), CBR(64, 64, (7, 1), 1, (3, 0)),
                             CBR(64, 64, (1, 7), 1, (0, 3)), CBR(64, 96, 3))
        self.mixed3 = CBR(192, 192, 3, 2)

    def forward(self, x):
        x = self.convs(x)
        x = torch.cat([_max3(x), self.mixed1(x)], 1)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], 1)
        return torch.cat([self.mixed3(x), _max3(x)], 1)


class TA(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch_pool = CBR(384, 96, 1)
        self.branch_1x1 = CBR(384, 96, 1)
        self.branch_3x3 = _seq(CBR(384, 64, 1), CBR(64, 96, 3, 1, 1))
        self.branch_3x3dbl = _seq(CBR(384, 64, 1), CBR(64, 96, 3, 1, 1), CBR(96, 96, 3, 1, 1))

    def forward(self, x):
        return torch.cat([self.branch_pool(_avg3(x)), self.branch_1x1(x), self.branch_3x3(x),
                          self.branch_3x3dbl(x)], 1)


class TRedA(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch_3x3 = CBR(384, 384, 3, 2)
        self.branch_3x3dbl = _seq(CBR(384, 192, 1), CBR(192, 224, 3, 1, 1), CBR(224, 256, 3, 2))

    def forward(self, x):
        return torch.cat([_max3(x), self.branch_3x3(x), self.branch_3x3dbl(x)], 1)


class TB(nn.Module):
    def __init__(self):
        super().__init__()
        r, c = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        self.branch_pool = CBR(1024, 128, 1)
        self.branch_1x1 = CBR(1024, 384, 1)
        self.branch_7x7 = _seq(CBR(1024, 192, 1), CBR(192, 224, r[0], 1, r[1]),
                               CBR(224, 256, c[0], 1, c[1]))
        self.branch_7x7dbl = _seq(CBR(1024, 192, 1), CBR(192, 192, r[0], 1, r[1]),
                                  CBR(192, 224, c[0], 1, c[1]), CBR(224, 224, r[0], 1, r[1]),
                                  CBR(224, 256, c[0], 1, c[1]))

    def forward(self, x):
        return torch.cat([self.branch_pool(_avg3(x)), self.branch_1x1(x), self.branch_7x7(x),
                          self.branch_7x7dbl(x)], 1)


class TRedB(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch_3x3 = _seq(CBR(1024, 192, 1), CBR(192, 192, 3, 2))
        self.branch_7x7x3 = _seq(CBR(1024, 256, 1), CBR(256, 256, (1, 7), 1, (0, 3)),
                                 CBR(256, 320, (7, 1), 1, (3, 0)), CBR(320, 320, 3, 2))

    def forward(self, x):
        return torch.cat([_max3(x), self.branch_3x3(x), self.branch_7x7x3(x)], 1)


class TC(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch_pool = CBR(1536, 256, 1)
        self.branch_1x1 = CBR(1536, 256, 1)
        self.branch_3x3_reduce = CBR(1536, 384, 1)
        self.branch_3x3_1x3 = CBR(384, 256, (1, 3), 1, (0, 1))
        self.branch_3x3_3x1 = CBR(384, 256, (3, 1), 1, (1, 0))
        self.branch_3x3dbl = _seq(CBR(1536, 384, 1), CBR(384, 448, (1, 3), 1, (0, 1)),
                                  CBR(448, 512, (3, 1), 1, (1, 0)))
        self.branch_3x3dbl_1x3 = CBR(512, 256, (1, 3), 1, (0, 1))
        self.branch_3x3dbl_3x1 = CBR(512, 256, (3, 1), 1, (1, 0))

    def forward(self, x):
        a = self.branch_3x3_reduce(x)
        b = self.branch_3x3dbl(x)
        return torch.cat([self.branch_pool(_avg3(x)), self.branch_1x1(x),
                          self.branch_3x3_1x3(a), self.branch_3x3_3x1(a),
                          self.branch_3x3dbl_1x3(b), self.branch_3x3dbl_3x1(b)], 1)


class TorchInceptionV4(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = TStem()
        self.inception_a = _seq(*[TA() for _ in range(4)])
        self.reduction_a = TRedA()
        self.inception_b = _seq(*[TB() for _ in range(7)])
        self.reduction_b = TRedB()
        self.inception_c = _seq(*[TC() for _ in range(3)])

    def stages(self, x):
        outs = [self.stem(x)]
        for name in ("inception_a", "reduction_a", "inception_b", "reduction_b", "inception_c"):
            outs.append(getattr(self, name)(outs[-1]))
        return outs


# ---- heads -----------------------------------------------------------------------------------

class TorchBaiduRetrieval(nn.Module):
    """base -> GAP -> fc (bias); keys ``base.*``, ``fc.*``."""

    def __init__(self, base, in_features, embed_dim=512):
        super().__init__()
        self.base = base
        self.fc = nn.Linear(in_features, embed_dim)

    def forward_stages(self, x):
        stages = self.base.stages(x)
        return stages, self.fc(stages[-1].mean(dim=(2, 3)))


class TorchBaiduClassifier(nn.Module):
    """base -> GAP -> classifier (Linears with bias, no activation in between)."""

    def __init__(self, base, in_features, num_classes, hidden=()):
        super().__init__()
        self.base = base
        widths = [in_features, *hidden, num_classes]
        self.classifier = nn.Sequential(*[nn.Linear(widths[i], widths[i + 1])
                                          for i in range(len(widths) - 1)])

    def forward_stages(self, x):
        stages = self.base.stages(x)
        return stages, torch.softmax(self.classifier(stages[-1].mean(dim=(2, 3))), dim=1)
