"""The residual ``R = H - G``: the part of the Hessian that comes from the network's curvature.

``R = sum_b w_b sum_k (d l_b / d f_k) d^2 f_k`` is weighted by the loss
gradient w.r.t. the outputs, so it vanishes where the model fits the data
exactly (MSE at zero residual) and for models linear in their parameters.
Here it is the difference of the two exact operators: ``R V = H V - G V``.

>>> import torch
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
>>> X, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))
>>> R = ResidualOperator(model, "cross_entropy", (X, y))
>>> D = R.hessian.to_dense() - R.ggn.to_dense()
>>> bool(torch.allclose(R.to_dense(), D, atol=1e-12))
True
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidInputError
from .base import SpectralOperator
from .dataset import DatasetOperator
from .ggn import GGNOperator
from .hessian import HessianOperator

__all__ = ["ResidualOperator"]


class ResidualOperator(DatasetOperator):
    """``H - G`` for ``loss(model(X), y)`` over a dataset (same arguments as the Hessian operator).

    Use :meth:`from_operators` to combine a Hessian and a Gauss-Newton
    operator you already have (the result then has only the attributes those
    provide).  :attr:`hessian` and :attr:`ggn` count their own products;
    :attr:`num_matvecs` counts products with ``R``.
    """

    modes = ("auto", "chain", "reverse", "forward")

    # The constructor is DatasetOperator's: it checks the arguments and picks
    # the parameters, then calls _prepare.
    def _prepare(self, **options: Any) -> None:
        H = HessianOperator(self.model, self.loss, self.source, **options)
        # The Hessian operator has checked determinism; the GGN's own check would repeat it.
        G = GGNOperator(self.model, self.loss, self.source,
                        **{**options, "mode": "auto", "check_determinism": False})
        self._init_from(H, G)

    @classmethod
    def from_operators(cls, hessian: SpectralOperator, ggn: SpectralOperator) -> "ResidualOperator":
        """``hessian - ggn`` for two operators on the same parameters."""
        if hessian.shape != ggn.shape:
            raise InvalidInputError(f"the Hessian {hessian.shape} and the GGN {ggn.shape} differ in shape")
        if hessian.dtype != ggn.dtype or hessian.device != ggn.device:
            raise InvalidInputError(
                f"the Hessian ({hessian.dtype}, {hessian.device}) and the GGN ({ggn.dtype}, {ggn.device}) "
                "differ in dtype or device"
            )
        obj = cls.__new__(cls)
        obj._init_from(hessian, ggn)
        return obj

    def _init_from(self, H: SpectralOperator, G: SpectralOperator) -> None:
        SpectralOperator.__init__(self, H.shape, H.dtype, H.device)
        self.hessian, self.ggn = H, G
        self.max_block = getattr(H, "max_block", None)
        for attr in ("params", "param_names", "param_shapes", "param_numels", "num_samples", "loss",
                     "loss_value", "gradient", "grad_norm", "source"):
            if hasattr(H, attr):
                setattr(self, attr, getattr(H, attr))
        self.check_matvecs = getattr(H, "check_matvecs", 0)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.hessian.matmat(V) - self.ggn.matmat(V)

    def flatten(self, tensors: Any) -> torch.Tensor:
        return self.hessian.flatten(tensors)

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        return self.hessian.unflatten(vector)

    def describe(self) -> dict[str, Any]:
        info = dict(self.hessian.describe()) if hasattr(self.hessian, "describe") else {}
        info.update(matrix="residual", residual="H - G (difference of the exact Hessian and GGN products)")
        return info
