"""The Hessian of a dataset loss, ``H = sum_b w_b d^2 loss_b / d theta^2``, as a linear operator.

For a loss with ``reduction="mean"`` over batches of sizes ``n_b``
(``N = sum n_b``), ``w_b = n_b / N``: exactly the Hessian of the mean loss
over the whole dataset, whatever the batch sizes.  For ``reduction="sum"``,
``w_b = 1``.  Products are exact (Pearlmutter); the engine
(:mod:`spectra.operators.engines`) is the chain's closed forms for
Linear/activation ``Sequential`` s, else autograd's double backward.

>>> import torch
>>> model = torch.nn.Linear(3, 2).double()
>>> X, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
>>> H = HessianOperator(model, "cross_entropy", (X, y))
>>> H.shape, H.describe()["matrix"]
((8, 8), 'hessian')
"""

from __future__ import annotations

from typing import Any

from .curvature import CurvatureOperator
from .engines.base import HESSIAN, Block, Blocks, ProductEngine

__all__ = ["HessianOperator"]


class HessianOperator(CurvatureOperator):
    """Exact Hessian of ``loss(model(X), y)`` over a dataset, w.r.t. chosen parameters.

    The arguments are :class:`~spectra.operators.curvature.CurvatureOperator`'s.
    """

    name = "hessian"
    title = "the Hessian"
    needs = frozenset({HESSIAN})

    def _batch_product(self, engine: ProductEngine, context: Any, block: Block) -> Blocks:
        return engine.hessian(context, block)
