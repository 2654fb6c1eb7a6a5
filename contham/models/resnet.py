"""He et al. (2016)'s CIFAR ResNets (section 4.2 there; report table 4.6): depth 6n + 2.

conv3x3(16) -> BN -> ReLU -> three stages of n basic blocks (16, 32, 64 channels; the first
block of stages 2 and 3 halves the resolution) -> global average pooling -> FC. A basic block
is ``relu(x + BN(conv(relu(BN(conv(x))))))`` with option-A shortcuts: identity, or, where the
shape changes, stride-2 subsampling and zero channels half before and half after (no
parameters). Convolutions have no bias; weights start Kaiming-normal.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int


class ShortcutA(nn.Module):
    """Option-A shortcut: take every second pixel and pad zero channels around the input."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.before = (channels_out - channels_in) // 2
        self.after = channels_out - channels_in - self.before

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.before, self.after))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or option-A) shortcut, ReLU after the sum."""

    def __init__(self, channels_in: int, channels_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        changes = stride != 1 or channels_in != channels_out
        self.shortcut = ShortcutA(channels_in, channels_out) if changes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-``depth`` for small images; ``depth`` in 20, 32, 44, 56, 110, 1202 in the paper
    (any ``6n + 2`` works).

    Args:
        depth: number of weight layers, ``6n + 2``.
        in_channels: image channels; num_classes: outputs.
    """

    def __init__(self, depth: int = 20, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        check_int("depth", depth, 8)
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110, 1202, ...); got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv = nn.Conv2d(check_int("in_channels", in_channels), 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        stages, channels = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = [BasicBlock(channels, width, stride)] + [BasicBlock(width, width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(64, check_int("num_classes", num_classes))
        for layer in self.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(layer.weight)

    def forward(self, x: Tensor) -> Tensor:
        """Class scores (logits)."""
        out = self.stages(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))

    def extra_repr(self) -> str:
        return f"depth={self.depth}"
