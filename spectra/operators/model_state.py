"""The model's mode during analysis, and the modules that make its curvature random.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
>>> random_modules(net), random_modules(net, active_dropout_only=True)
(['Dropout'], ['Dropout'])
>>> with model_mode(net, train=False):
...     net.training
False
>>> net.training
True
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["DROPOUT_MODULES", "model_mode", "random_modules"]

#: Modules that draw a new random mask at every forward pass in train mode.
DROPOUT_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_BATCH_NORM = nn.modules.batchnorm._BatchNorm


@contextlib.contextmanager
def model_mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Put every submodule in train/eval mode for the block, then restore each one.

    In train mode BatchNorm uses the batch statistics but does not update its
    running statistics: analysing a model must not change it (and an in-place
    buffer update would break ``torch.func`` transforms).
    """
    saved = [(m, m.training) for m in model.modules()]
    norms = [(m, m.track_running_stats) for m in model.modules() if isinstance(m, _BATCH_NORM)]
    model.train(train)
    if train:
        for m, _ in norms:
            m.track_running_stats = False
    try:
        yield
    finally:
        for m, was_training in saved:
            m.training = was_training
        for m, tracked in norms:
            m.track_running_stats = tracked


def random_modules(model: nn.Module, active_dropout_only: bool = False) -> list[str]:
    """Sorted type names of the model's modules that can make a curvature product random.

    ``active_dropout_only``: only dropout with ``p > 0`` (what makes train mode
    random by construction); otherwise dropout and batch norm (suspects named
    when two products of one vector differ).
    """
    if active_dropout_only:
        found = {type(m).__name__ for m in model.modules() if isinstance(m, DROPOUT_MODULES) and m.p > 0}
    else:
        found = {type(m).__name__ for m in model.modules() if isinstance(m, (*DROPOUT_MODULES, _BATCH_NORM))}
    return sorted(found)
