"""Fisher matrices: outer products of per-unit loss gradients, true-label or sampled.

A *unit* is what the loss averages over (:mod:`spectra.losses`): a sample, or,
for a token loss (``[N, L, V]`` logits), a target token that is not
``ignore_index``.  The loss is ``c sum_u loss_u`` (``c = 1/N`` with ``N`` the
units of the whole dataset for a mean, ``1`` for a sum), and each Fisher is
the same sum of outer products of the units' own gradients, so that their
mean is the loss gradient.

Every Fisher here is a generalised Gauss-Newton matrix ``sum_u J_u^T S_u J_u``
(``J_u`` the Jacobian of unit ``u``'s outputs) whose output-space matrix
``S_u`` is built from per-unit loss gradients ``s_u = d loss_u / d f_u``
(:mod:`spectra.operators.sampling`), so each product is ``J V``, a small
product in output space, and ``J^T``, on any engine:

* **empirical Fisher** (``matrix="empirical_fisher"``): ``S_u = c s_u s_u^T`` with
  the data's own labels, so ``F = c sum_u g_u g_u^T`` with ``g_u`` the
  gradient of unit ``u``'s own loss (a sample's: the loss of a batch holding it
  alone; a token's: its own cross-entropy);
* **Monte-Carlo Fisher** (``matrix="fisher"`` or ``"mc_fisher"``): the same with
  ``mc_samples`` targets per unit drawn from the model's predictive
  distribution, ``S_u = (c / M) sum_m s_um s_um^T``.  Its expectation is the
  Fisher information, which for the softmax cross-entropy and for MSE (a
  Gaussian of unit covariance) equals the Gauss-Newton matrix.  The draws are
  seeded (``seed``) and depend only on each sample's index in the dataset and
  the token's position, so the operator is one fixed matrix, the same in one
  process and over ranks.

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
{'outer_products': 'per sample', 'mc_samples': 4, 'mc_seed': 1, 'mc_likelihood': 'categorical (softmax of the outputs)'}
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidInputError
from .curvature import CurvatureOperator
from .engines.base import JACOBIAN, Block, Blocks, ProductEngine
from .sampling import LIKELIHOODS, likelihood_of, sampled_output_gradients, unit_layout, unit_output_gradients

__all__ = ["EmpiricalFisherOperator", "MCFisherOperator"]


class _OuterProductFisher(CurvatureOperator):
    """``sum_u J_u^T (A_u^T A_u) J_u`` over units ``u`` with factors ``A_u`` ``[K, D]`` kept on each batch's context."""

    needs = frozenset({JACOBIAN})

    def _factors(self, context: Any) -> torch.Tensor:
        """The batch's per-unit gradient factors ``[n, K, U, D]``, each unit's weight included."""
        raise NotImplementedError

    def _unit_weight(self, context: Any) -> float:
        """What one unit weighs: ``1 / N`` (``N`` counted over the whole dataset) for a mean, ``1`` for a sum."""
        batch = context.batch
        return batch.weight / batch.count if self.loss.reduction == "mean" else batch.weight

    def settings(self) -> dict[str, Any]:
        return {"outer_products": f"per {self.unit}"}

    def _extend_context(self, context: Any) -> None:
        context.fisher_layout = unit_layout(self.loss, context.output, context.batch.target)
        context.fisher_factors = self._factors(context)

    def _batch_product(self, engine: ProductEngine, context: Any, block: Block) -> Blocks:
        return engine.gauss_newton(context, block, _outer_product_head)


def _outer_product_head(context: Any, tangent: torch.Tensor, batched: bool) -> torch.Tensor:
    """``A_u^T (A_u t_u)`` for every unit, for output tangents ``t`` ``[m, n, *output_shape[1:]]``."""
    A, layout = context.fisher_factors, context.fisher_layout
    flat_t = layout.to_units(tangent)  # [m, n, U, D]
    coefficients = torch.einsum("nkud,mnud->mnku", A, flat_t)
    return layout.from_units(torch.einsum("mnku,nkud->mnud", coefficients, A))


class EmpiricalFisherOperator(_OuterProductFisher):
    """``c sum_u g_u g_u^T`` with ``g_u`` the gradient of unit ``u``'s own loss (see the module notes).

    The arguments are :class:`~spectra.operators.curvature.CurvatureOperator`'s.
    """

    name = "empirical_fisher"
    title = "the empirical Fisher"

    def _factors(self, context: Any) -> torch.Tensor:
        s = unit_output_gradients(self.loss, context.output, context.batch.target)
        return (context.fisher_layout.to_units(s) * self._unit_weight(context) ** 0.5).unsqueeze(1)


class MCFisherOperator(_OuterProductFisher):
    """The Fisher with ``mc_samples`` targets per unit drawn from the model (see the module notes).

    Arguments: :class:`~spectra.operators.curvature.CurvatureOperator`'s, plus
    ``mc_samples`` (targets drawn per unit, default 1) and ``seed`` (a
    non-negative integer, default 0).  The loss must be the built-in
    ``"cross_entropy"`` or ``"mse"`` (any reduction, ``ignore_index`` or ``class_dim``).
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
        return {**super().settings(), "mc_samples": self.mc_samples, "mc_seed": self.mc_seed,
                "mc_likelihood": LIKELIHOODS[likelihood_of(self.loss)]}

    def _factors(self, context: Any) -> torch.Tensor:
        batch, M = context.batch, self.mc_samples
        s = sampled_output_gradients(self.loss, context.output, batch.target, seed=self.mc_seed,
                                     first_row=batch.offset, mc_samples=M)  # [n, M, *output_shape[1:]]
        units = context.fisher_layout.to_units(s.transpose(0, 1)).transpose(0, 1)  # [n, M, U, D]
        return units * (self._unit_weight(context) / M) ** 0.5
