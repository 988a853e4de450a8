"""Small CNNs for the offline demo zoo, each with a zero-argument factory usable as an arch spec.

``filterlens extract --arch pipeline.train.demo_models:small_resnet`` (and the zoo's
``arch:`` field) builds the network by calling the factory, binds the checkpoint
to it and orders the convs by a forward pass. The ``*_c100`` factories are the
same networks with 100 outputs, for CIFAR-100.

The three families mirror, in miniature, the architectures of the RobustBench
CIFAR leaderboards: a plain VGG-style stack, a ResNet with BasicBlocks (with 1x1
projection shortcuts, so the dataset has non-3x3 layers too) and a pre-activation
wide ResNet. All take 3x32x32 inputs in [0, 1] and normalise inside the model,
as RobustBench models do, so attacks work in pixel space.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

INPUT_SHAPE = (3, 32, 32)
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as buffers, so checkpoints are self-contained."""

    def __init__(self, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallVGG(nn.Module):
    """VGG-style: two 3x3 conv-BN-ReLU per stage, max-pool between stages, global average pool, linear."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), num_classes: int = 10) -> None:
        super().__init__()
        self.normalize = Normalize()
        layers: list[nn.Module] = []
        c_in = INPUT_SHAPE[0]
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers += [_conv_bn(c_in, width), _conv_bn(width, width)]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(self.normalize(x))).flatten(1))


class BasicBlock(nn.Module):
    """ResNet basic block (post-activation), 1x1 projection shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet for 32x32 inputs: stem conv, one BasicBlock per stage, global average pool, linear."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(INPUT_SHAPE[0], widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        c_in = widths[0]
        for i, width in enumerate(widths):
            stage = [BasicBlock(c_in if j == 0 else width, width, 2 if i and j == 0 else 1) for j in range(blocks)]
            stages.append(nn.Sequential(*stage))
            c_in = width
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(self.normalize(x))))
        return self.fc(self.pool(self.layers(out)).flatten(1))


class PreActBlock(nn.Module):
    """Pre-activation block (BN-ReLU-conv twice), as in WideResNet / PreAct-ResNet."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + skip


class SmallWideResNet(nn.Module):
    """Pre-activation WideResNet-ish: stem conv with ``base`` channels, three stages of width base*k*(1,2,4)."""

    def __init__(self, base: int = 8, widen: int = 2, blocks: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        widths = [base * widen * m for m in (1, 2, 4)]
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(INPUT_SHAPE[0], base, 3, padding=1, bias=False)
        stages = []
        c_in = base
        for i, width in enumerate(widths):
            stage = [PreActBlock(c_in if j == 0 else width, width, 2 if i and j == 0 else 1) for j in range(blocks)]
            stages.append(nn.Sequential(*stage))
            c_in = width
        self.blocks = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(c_in)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.conv1(self.normalize(x)))
        return self.fc(self.pool(torch.relu(self.bn(out))).flatten(1))


# --- zero-argument factories (arch specs pipeline.train.demo_models:<name>) -------------------------

def small_vgg() -> nn.Module:
    """SmallVGG, widths 16/32/64, 6 conv layers, 10 classes."""
    return SmallVGG()


def small_resnet() -> nn.Module:
    """SmallResNet, widths 16/32/64, one BasicBlock per stage (7 3x3 convs, 2 1x1 shortcuts), 10 classes."""
    return SmallResNet()


def small_wrn() -> nn.Module:
    """SmallWideResNet base 8, widen 2 (widths 16/32/64), one PreActBlock per stage, 10 classes."""
    return SmallWideResNet()


def tiny_cnn() -> nn.Module:
    """SmallVGG with two stages of widths 8/16 (4 conv layers): for tests and quick trials."""
    return SmallVGG(widths=(8, 16))


def small_vgg_c100() -> nn.Module:
    return SmallVGG(num_classes=100)


def small_resnet_c100() -> nn.Module:
    return SmallResNet(num_classes=100)


def small_wrn_c100() -> nn.Module:
    return SmallWideResNet(num_classes=100)


ARCHITECTURES: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "small_vgg": ("SmallVGG-6 (16/32/64)", small_vgg),
    "small_resnet": ("SmallResNet-8 (16/32/64)", small_resnet),
    "small_wrn": ("SmallPreActWRN-8-2 (16/32/64)", small_wrn),
    "tiny_cnn": ("TinyCNN-4 (8/16)", tiny_cnn),
    "small_vgg_c100": ("SmallVGG-6 (16/32/64)", small_vgg_c100),
    "small_resnet_c100": ("SmallResNet-8 (16/32/64)", small_resnet_c100),
    "small_wrn_c100": ("SmallPreActWRN-8-2 (16/32/64)", small_wrn_c100),
}
"""factory name -> (human-readable architecture name, factory)."""
