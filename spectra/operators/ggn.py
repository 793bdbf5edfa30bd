"""The generalised Gauss-Newton matrix ``G = sum_b w_b J_b^T (d^2 loss_b / d f^2) J_b``.

Write the dataset loss as ``L(theta) = sum_b w_b l_b(f_b(theta))`` where
``f_b`` is the model's output on batch ``b``.  The chain rule splits the
Hessian into two parts::

    H = sum_b w_b J_b^T (d^2 l_b) J_b  +  sum_b w_b sum_k (d l_b / d f_k) d^2 f_k
      =              G                 +                 R

``G`` needs only first derivatives of the network and the small Hessian of
the loss w.r.t. the outputs; it is positive semi-definite for convex losses
(cross-entropy, MSE).  ``R = H - G`` is
:class:`~spectra.operators.residual.ResidualOperator`.  A product is, per
batch, ``J V``, the loss Hessian, and ``J^T``, all columns at once
(bench/bench_ggn.py times the engines).

>>> import torch
>>> from spectra.operators.hessian import HessianOperator
>>> model = torch.nn.Linear(3, 2).double()
>>> X, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
>>> G = GGNOperator(model, "cross_entropy", (X, y))
>>> H = HessianOperator(model, "cross_entropy", (X, y))
>>> # a linear model has no second derivative of its outputs: H = G exactly
>>> bool(torch.allclose(G.to_dense(), H.to_dense(), atol=1e-12))
True
"""

from __future__ import annotations

from typing import Any

from .curvature import CurvatureOperator
from .engines.base import JACOBIAN, LOSS_HESSIAN, Block, Blocks, ProductEngine

__all__ = ["GGNOperator"]


class GGNOperator(CurvatureOperator):
    """Gauss-Newton matrix ``sum_b w_b J_b^T H_l,b J_b`` of ``loss(model(X), y)`` over a dataset.

    The arguments are :class:`~spectra.operators.curvature.CurvatureOperator`'s.
    """

    name = "ggn"
    title = "the Gauss-Newton matrix"
    needs = frozenset({JACOBIAN, LOSS_HESSIAN})

    def _batch_product(self, engine: ProductEngine, context: Any, block: Block) -> Blocks:
        return engine.gauss_newton(context, block, engine.loss_hessian)
