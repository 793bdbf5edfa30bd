"""The residual ``R = H - G``: the part of the Hessian that comes from the network's curvature.

``R = sum_b w_b sum_k (d l_b / d f_k) d^2 f_k`` is weighted by the loss
gradient w.r.t. the outputs, so it vanishes where the model fits the data
exactly (MSE at zero residual) and for models linear in their parameters.
Each product is one pass over the data on one prepared context per batch:
``H_b V - G_b V`` (the chain engine computes only the terms that differ).

>>> import torch
>>> from spectra.operators.ggn import GGNOperator
>>> from spectra.operators.hessian import HessianOperator
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
>>> X, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))
>>> R = ResidualOperator(model, "cross_entropy", (X, y))
>>> D = HessianOperator(model, "cross_entropy", (X, y)).to_dense() - GGNOperator(model, "cross_entropy", (X, y)).to_dense()
>>> bool(torch.allclose(R.to_dense(), D, atol=1e-12))
True
"""

from __future__ import annotations

from typing import Any

from .curvature import CurvatureOperator
from .engines.base import HESSIAN, JACOBIAN, LOSS_HESSIAN, Block, Blocks, ProductEngine

__all__ = ["ResidualOperator"]


class ResidualOperator(CurvatureOperator):
    """``H - G`` for ``loss(model(X), y)`` over a dataset.

    The arguments are :class:`~spectra.operators.curvature.CurvatureOperator`'s.
    """

    name = "residual"
    title = "the residual H - G"
    needs = frozenset({HESSIAN, JACOBIAN, LOSS_HESSIAN})

    def _batch_product(self, engine: ProductEngine, context: Any, block: Block) -> Blocks:
        return engine.residual(context, block)
