"""A small ResNet-style CNN with BatchNorm, sized for 8x8 digit images (or 28x28 MNIST).

A 3x3 stem convolution, ``num_blocks`` residual blocks (two 3x3 convolutions,
each followed by BatchNorm, with an identity skip), global average pooling and
a linear classifier.  Convolutions have no bias (BatchNorm's shift plays that
role), as in the original ResNet.

``activation`` is ``"relu"`` (as in the original) or a smooth one
(``"silu"``, ``"tanh"``): finite differences of the gradient, the check of
products with batch statistics, cross ReLU's kinks (BatchNorm centres the
pre-activations at zero, where the kinks are) and then do not converge.

BatchNorm makes the loss depend on the analysis mode: in eval mode it uses
its running statistics and acts per sample; with batch statistics
(``train_mode=True``) every sample's output depends on the whole batch, so
the Hessian couples samples (see ``docs/models.md``).

>>> model = SmallResNet(channels=4, num_blocks=1, num_classes=10)
>>> tuple(model(torch.zeros(2, 1, 8, 8)).shape), model.num_parameters()
((2, 10), 398)
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InvalidInputError

__all__ = ["SmallResNet", "ACTIVATIONS"]


ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, activation: type[nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        return self.act(x + self.bn2(self.conv2(out)))


class SmallResNet(nn.Module):
    """Stem conv + BatchNorm, residual blocks, global average pooling, linear classifier."""

    def __init__(self, channels: int = 8, num_blocks: int = 2, num_classes: int = 10, in_channels: int = 1,
                 activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise InvalidInputError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
        act = ACTIVATIONS[activation]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), act())
        self.blocks = nn.Sequential(*(_ResidualBlock(channels, act) for _ in range(num_blocks)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.blocks(self.stem(x))).flatten(1))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
