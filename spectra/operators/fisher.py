"""Fisher matrices: outer products of per-sample gradients, true-label or sampled.

Every Fisher here is a generalised Gauss-Newton matrix ``sum_i J_i^T S_i J_i``
(``J_i`` the Jacobian of sample ``i``'s output) whose output-space matrix
``S_i`` is built from per-sample loss gradients ``s = d loss_i / d f_i``
(:mod:`spectra.operators.sampling`), so each product is ``J V``, a small
product in output space, and ``J^T``, on any engine:

* **empirical Fisher** (``matrix="empirical_fisher"``): ``S_i = c s_i s_i^T`` with
  the data's own labels, so ``F = c sum_i g_i g_i^T`` with ``g_i`` the
  gradient of sample ``i``'s own loss; ``c = 1/N`` for a mean-reduced loss (the
  mean over samples), ``1`` for a summed one;
* **Monte-Carlo Fisher** (``matrix="fisher"`` or ``"mc_fisher"``): the same with
  ``mc_samples`` labels per sample drawn from the model's predictive
  distribution, ``S_i = (c / M) sum_m s_im s_im^T``.  Its expectation is the
  Fisher information, which for the softmax cross-entropy and for MSE (a
  Gaussian of unit covariance) equals the Gauss-Newton matrix.  The draws are
  seeded (``seed``) and depend only on each sample's index in the dataset, so
  the operator is one fixed matrix, the same in one process and over ranks.

>>> import torch
>>> model = torch.nn.Linear(3, 2).double()
>>> X, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
>>> F = EmpiricalFisherOperator(model, "cross_entropy", (X, y)).to_dense()
>>> g = [torch.cat([t.reshape(-1) for t in torch.autograd.grad(
...     torch.nn.functional.cross_entropy(model(X[i:i + 1]), y[i:i + 1]), list(model.parameters()))])
...     for i in range(6)]
>>> bool(torch.allclose(F, sum(torch.outer(v, v) for v in g) / 6, atol=1e-12))
True
>>> MCFisherOperator(model, "cross_entropy", (X, y), mc_samples=4, seed=1).settings()
{'mc_samples': 4, 'mc_seed': 1, 'mc_likelihood': 'categorical (softmax of the outputs)'}
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidInputError
from .curvature import CurvatureOperator
from .engines.base import JACOBIAN, Block, Blocks, ProductEngine
from .sampling import LIKELIHOODS, draw_targets, likelihood_of, per_sample_output_gradients

__all__ = ["EmpiricalFisherOperator", "MCFisherOperator"]


class _OuterProductFisher(CurvatureOperator):
    """``sum_i J_i^T (A_i^T A_i) J_i`` with per-sample factors ``A_i`` ``[K, D]`` kept on each batch's context."""

    needs = frozenset({JACOBIAN})

    def _factors(self, context: Any) -> torch.Tensor:
        """The batch's scaled per-sample gradient factors ``[n, K, *output_shape[1:]]``."""
        raise NotImplementedError

    def _per_sample_weight(self, context: Any) -> float:
        batch = context.batch
        return batch.weight / batch.count if self.loss.reduction == "mean" else batch.weight

    def _extend_context(self, context: Any) -> None:
        context.fisher_factors = self._factors(context)

    def _batch_product(self, engine: ProductEngine, context: Any, block: Block) -> Blocks:
        return engine.gauss_newton(context, block, _outer_product_head)


def _outer_product_head(context: Any, tangent: torch.Tensor, batched: bool) -> torch.Tensor:
    """``A_i^T (A_i t_i)`` for output tangents ``t`` ``[m, n, *output_shape[1:]]``."""
    A = context.fisher_factors
    n, k = A.shape[:2]
    flat_a = A.reshape(n, k, -1)
    flat_t = tangent.reshape(tangent.shape[0], n, -1)
    coefficients = torch.einsum("nkd,mnd->mnk", flat_a, flat_t)
    return torch.einsum("mnk,nkd->mnd", coefficients, flat_a).reshape(tangent.shape)


class EmpiricalFisherOperator(_OuterProductFisher):
    """``c sum_i g_i g_i^T`` with ``g_i`` the gradient of sample ``i``'s own loss (see the module notes).

    The arguments are :class:`~spectra.operators.curvature.CurvatureOperator`'s.
    """

    name = "empirical_fisher"
    title = "the empirical Fisher"

    def _factors(self, context: Any) -> torch.Tensor:
        s = per_sample_output_gradients(self.loss, context.output, context.batch.target)
        return (s * self._per_sample_weight(context) ** 0.5).unsqueeze(1)


class MCFisherOperator(_OuterProductFisher):
    """The Fisher with ``mc_samples`` labels per sample drawn from the model (see the module notes).

    Arguments: :class:`~spectra.operators.curvature.CurvatureOperator`'s, plus
    ``mc_samples`` (labels drawn per sample, default 1) and ``seed`` (a
    non-negative integer, default 0).  The loss must be ``"cross_entropy"`` or ``"mse"``.
    """

    name = "mc_fisher"
    title = "the Monte-Carlo Fisher"
    extra_options = ("mc_samples", "seed")

    def __init__(self, model: Any, loss: Any = "cross_entropy", data: Any = None, *, mc_samples: int = 1,
                 seed: int = 0, **options: Any):
        self.mc_samples, self.mc_seed = mc_samples, seed
        super().__init__(model, loss, data, **options)

    def _check_options(self) -> None:
        for value, what in ((self.mc_samples, "mc_samples"), (self.mc_seed, "seed")):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if what == "mc_samples" else 0):
                need = "a positive integer" if what == "mc_samples" else "a non-negative integer"
                raise InvalidInputError(f"{what} must be {need}; got {value!r}")
        likelihood_of(self.loss)  # refuses a loss without a known predictive distribution

    def settings(self) -> dict[str, Any]:
        return {"mc_samples": self.mc_samples, "mc_seed": self.mc_seed,
                "mc_likelihood": LIKELIHOODS[likelihood_of(self.loss)]}

    def _factors(self, context: Any) -> torch.Tensor:
        batch, output, M = context.batch, context.output, self.mc_samples
        targets = draw_targets(self.loss, output, seed=self.mc_seed, first_row=batch.offset, mc_samples=M)
        repeated = output.unsqueeze(1).expand(output.shape[0], M, *output.shape[1:])
        s = per_sample_output_gradients(self.loss, repeated.reshape(-1, *output.shape[1:]),
                                        targets.reshape(-1, *targets.shape[2:]))
        return s.reshape(output.shape[0], M, *output.shape[1:]) * (self._per_sample_weight(context) / M) ** 0.5
