"""The generalised Gauss-Newton matrix ``G = J^T (d^2 l / d f^2) J`` as a linear operator.

Write the dataset loss as ``L(theta) = sum_b w_b * l_b(f_b(theta))`` where
``f_b`` is the model's output on batch ``b`` and ``l_b`` the batch's loss as a
function of that output (``w_b = n_b / N`` for a mean-reduced loss, as in
:class:`~spectra.operators.hessian.HessianOperator`).  The chain rule splits
the Hessian into two parts::

    H = sum_b w_b J_b^T (d^2 l_b) J_b  +  sum_b w_b sum_k (d l_b / d f_k) d^2 f_k
      =              G                 +                 R

``G`` (this operator) only needs first derivatives of the network and the
small Hessian of the loss w.r.t. the outputs; it is positive semi-definite for
convex losses (cross-entropy, MSE).  ``R = H - G`` is
:class:`~spectra.operators.residual.ResidualOperator`.

A product ``G V`` for a block ``V`` of ``m`` columns is, per batch, a
Jacobian product ``J V``, the product with the small loss Hessian w.r.t. the
outputs, and a transposed Jacobian product ``J^T (.)``; all columns of a
chunk (``chunk_size``) go through each step at once.  Three exact modes:

``"chain"`` (the default under ``"auto"`` where it applies)
    for the Linear/activation ``Sequential`` s and built-in losses of
    :mod:`spectra.operators.chain`: the Hessian's chain products without the
    terms that carry the backward signals, on the stored values of the
    Hessian operator kept as :attr:`GGNOperator.hessian_base` (which checked
    them against autograd when it was built).
``"reverse"`` (the default otherwise)
    plain autograd on graphs built once per batch (and kept with
    ``cache_graph``): ``J V`` is the derivative of the linear map
    ``u -> J^T u`` (the "double vjp" trick), the loss Hessian a double
    backward, ``J^T`` a backward, each with ``is_grads_batched``.
``"forward"``
    ``torch.func``: ``jvp`` of the network, ``grad`` of ``grad`` of the
    loss, the network's ``vjp`` function, vmapped over the columns.

Both give the same matrix to round-off; bench/bench_ggn.py times them
against the Hessian's products.

>>> import torch
>>> model = torch.nn.Linear(3, 2).double()
>>> X, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
>>> G = GGNOperator(model, "cross_entropy", (X, y))
>>> H = HessianOperator(model, "cross_entropy", (X, y))
>>> # a linear model has no second derivative of its outputs: H = G exactly
>>> bool(torch.allclose(G.to_dense(), H.to_dense(), atol=1e-12))
True
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from .dataset import DatasetOperator, model_mode
from .hessian import HessianOperator

__all__ = ["GGNOperator"]

_PRODUCT = {
    "chain": "J V, the loss Hessian and J^T written out for a Linear/activation chain (spectra.operators.chain)",
    "reverse": "J V by the double-vjp trick, loss Hessian by double backward, J^T by backward (autograd)",
    "forward": "J V by torch.func.jvp, loss Hessian by grad-of-grad, J^T by torch.func.vjp (vmapped)",
}

# Keep each batch's forward graph (for J^T products) when the in-memory inputs are at most this big.
AUTO_CACHE_MAX_BYTES = 256 * 2**20


class GGNOperator(DatasetOperator):
    """Gauss-Newton matrix ``sum_b w_b J_b^T H_l,b J_b`` of ``loss(model(X), y)`` over a dataset.

    Parameters are those of :class:`~spectra.operators.hessian.HessianOperator`
    (``params``, ``chunk_size``, ``train_mode``, ``check_determinism``,
    ``reduction``, ``mode``, ``cache_graph``).  ``mode`` is ``"auto"``
    (``"chain"`` where it applies, else ``"reverse"``), ``"chain"``,
    ``"reverse"`` or ``"forward"`` (see the module notes); ``cache_graph``
    keeps each batch's graphs (chain: stored values) between products
    (``"auto"``: when the data is in memory and small).  A cached operator is
    a snapshot: rebuild it after changing the weights.

    The data handling, parameter selection, validation and batch weighting are
    :class:`~spectra.operators.dataset.DatasetOperator`'s, as for the Hessian
    operator.  A Hessian operator built on the same arguments (without a graph
    cache) is kept as :attr:`hessian_base`: it provides :attr:`loss_value` and
    :attr:`gradient`, and its determinism check stands for this operator's.
    """

    auto_cache_max_bytes = AUTO_CACHE_MAX_BYTES
    modes = ("auto", "chain", "reverse", "forward")

    # The constructor is DatasetOperator's: it checks the arguments, picks the
    # parameters and sets the batch weights, then calls _prepare.
    def _prepare(self, **options: Any) -> None:
        # A Hessian operator on the same data and parameters records loss and
        # gradient; its determinism check (two products of one vector) also
        # catches dropout and shuffling here.  For the chain products it also
        # holds (and has checked) the stored values this operator reuses.
        chain = options["mode"] in ("auto", "chain")
        base = HessianOperator(self.model, self.loss, self.source,
                               **{**options, "mode": options["mode"] if chain else "reverse",
                                  "cache_graph": self.cache_graph if chain else False})
        if base.mode == "chain":
            self.mode = "chain"
        self.hessian_base = base
        self.loss_value = base.loss_value
        self.gradient = base.gradient
        self.grad_norm = base.grad_norm
        self.check_matvecs = base.check_matvecs
        self._cache: dict[int, tuple[torch.Tensor, ...]] = {}

    # --------------------------------------------------------------- products
    def _reverse_graphs(self, b: int, X: torch.Tensor, y: torch.Tensor, w: float) -> tuple[torch.Tensor, ...]:
        """Graphs for one batch: outputs ``f``, a dummy ``u`` with ``g_u = J^T u``, and ``dl/df``."""
        if b in self._cache:
            return self._cache[b]
        out = self.reader.call(self.model, X)
        # J V as the derivative of the linear map u -> J^T u (the "double vjp" trick):
        # keeps every product in reverse mode, on graphs built once per batch.
        u = torch.zeros_like(out, requires_grad=True)
        g_u = torch.autograd.grad(out, self.params, grad_outputs=u, create_graph=True, allow_unused=True)
        g_u = tuple(torch.zeros_like(p) if g is None else g for g, p in zip(g_u, self.params))
        o = out.detach().requires_grad_(True)
        g_o = torch.autograd.grad(w * self.loss(o, y), o, create_graph=True)[0]
        graphs = (out, u, g_u, o, g_o)
        if self.cache_graph:
            self._cache[b] = graphs
        return graphs

    def _matmat_reverse(self, V: torch.Tensor) -> torch.Tensor:
        pieces = self.unflatten(V)  # each [m, *shape]
        if self.mode == "chain":
            return self.hessian_base._matmat_chain(V, pieces, gauss_newton=True)
        result = torch.zeros_like(V)
        with model_mode(self.model, self.train_mode):
            for b, X, y, w in self._batches():
                graphs = self._reverse_graphs(b, X, y, w)
                result += self._batched_or_by_column(functools.partial(self._gvp, *graphs), pieces)
        return result

    def _gvp(self, out, u, g_u, o, g_o, pieces, m, batched: bool) -> torch.Tensor:
        grad = torch.autograd.grad
        Jv = grad(g_u, u, grad_outputs=pieces, retain_graph=True, is_grads_batched=batched, allow_unused=True)[0]
        if Jv is None:  # the outputs do not depend on the selected parameters
            return torch.zeros(self.shape[0], m, dtype=self.dtype, device=self.device)
        HJv = grad(g_o, o, grad_outputs=Jv, retain_graph=True, is_grads_batched=batched)[0]
        return self._grad_block(out, HJv, m, batched)

    def _forward_batch(self, output_fn: Callable[..., torch.Tensor], primal: tuple[torch.Tensor, ...],
                       tangents: list[torch.Tensor], y: torch.Tensor, w: float) -> tuple[torch.Tensor, ...]:
        from torch.func import grad, jvp, vjp, vmap

        out, vjp_fn = vjp(output_fn, *primal)
        loss_grad = grad(lambda o_: w * self.loss(o_, y))

        def column(*tangent: torch.Tensor) -> tuple[torch.Tensor, ...]:
            Jv = jvp(output_fn, primal, tangent)[1]
            # reverse-over-reverse for the small loss Hessian: forward AD through
            # the loss's backward ops needs scripted decompositions
            HJv = grad(lambda o_: torch.sum(loss_grad(o_) * Jv))(out)
            return vjp_fn(HJv)

        return vmap(column)(*tangents)

    # ------------------------------------------------------------- metadata
    def describe(self) -> dict[str, Any]:
        """Provenance of this operator, for results."""
        info = self.hessian_base.describe()
        info.update(matrix="ggn", hvp_mode=self.mode, cache_graph=self.cache_graph,
                    ggn_product=_PRODUCT[self.mode])
        if self.mode != "chain":
            info["chain_products"] = self.hessian_base.chain_note or "not requested"
        return info
