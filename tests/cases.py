"""Small models and datasets used as ground-truth cases across the core tests.

Each case builds a float64 model and data in a few milliseconds; the dense
reference Hessian comes from torch.autograd.functional.hessian, independent of
spectra's products.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class Case:
    name: str
    build_model: Callable[[], nn.Module]
    build_data: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    loss: str


def _relu_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()


def _tanh_mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()


def _class_data(n: int, d: int, c: int, seed: int) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    def build() -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(n, d, generator=g, dtype=torch.float64),
                torch.randint(0, c, (n,), generator=g))
    return build


def _image_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(13, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (13,), generator=g)


CASES = [
    Case("relu-mlp-ce", _relu_mlp, _class_data(23, 4, 3, 10), "cross_entropy"),
    Case("tanh-mlp-mse", _tanh_mlp, _class_data(19, 3, 2, 11), "mse"),
    Case("tiny-cnn-ce", _tiny_cnn, _image_data, "cross_entropy"),
]
CASE_IDS = [c.name for c in CASES]


def uneven_batches(X: torch.Tensor, y: torch.Tensor, sizes: tuple[int, ...] = (8, 8)) -> list:
    """Consecutive batches of the given sizes, then a short remainder batch."""
    out, start = [], 0
    for s in sizes:
        out.append((X[start : start + s], y[start : start + s]))
        start += s
    out.append((X[start:], y[start:]))
    return out
