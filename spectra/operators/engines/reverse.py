"""Reverse-over-reverse products: autograd's double backward on graphs built once per batch.

* ``H V``: the gradient ``g = d(w_b loss_b)/d theta`` is built with
  ``create_graph=True``; ``H V`` is the backward of ``<g, V>``.
* ``J V``: the derivative of the linear map ``u -> J^T u`` (the "double vjp"
  trick), which keeps every product in reverse mode on graphs built once.
* ``J^T U``: a backward of the output.

All columns of a block go through each call at once (``is_grads_batched``);
with ``cache_graph`` the graphs of the operator's first pass are kept, so a
product costs one backward instead of a forward and two.  Measured on CPU
(bench/bench_core.py): a cached double-backward product 1.15-1.3x a gradient,
1.7-2.4x faster than forward-over-reverse.

>>> import torch
>>> from spectra.operators.hessian import HessianOperator
>>> model = torch.nn.Sequential(torch.nn.Conv1d(1, 1, 2), torch.nn.Flatten()).double()
>>> X, y = torch.randn(4, 1, 3, dtype=torch.float64), torch.randint(0, 2, (4,))
>>> HessianOperator(model, "cross_entropy", (X, y)).engine.name
'reverse'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .base import HESSIAN, JACOBIAN, LOSS_HESSIAN, Block, Blocks, ForwardPass, ProductEngine

if TYPE_CHECKING:
    from ...batches import Batch

__all__ = ["ReverseEngine"]


@dataclass
class ReverseContext:
    batch: "Batch"
    graph_output: torch.Tensor  # the output with its graph to the parameters
    grads: tuple[torch.Tensor, ...] | None = None  # the weighted gradient, with its graph
    u: torch.Tensor | None = None  # dummy cotangent of the output ...
    g_u: tuple[torch.Tensor, ...] | None = None  # ... and J^T u with its graph
    loss_graph: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def output(self) -> torch.Tensor:
        return self.graph_output.detach()


class ReverseEngine(ProductEngine):
    """Products by double backward (see the module notes)."""

    name = "reverse"
    #: Batched products compute broadcast-factor ``bmm`` calls as one wide matrix
    #: product (:mod:`spectra.operators._fold`); same numbers, 1.2-2x faster blocks on CPU.
    fold_batched_products: bool = True

    def prepare(self, batch: "Batch", needs: frozenset[str], forward: ForwardPass | None = None) -> ReverseContext:
        if forward is None:
            forward = self.op.forward_pass(batch, gradient=HESSIAN in needs, create_graph=HESSIAN in needs)
        context = ReverseContext(batch, forward.output, grads=forward.grads if HESSIAN in needs else None)
        params = self.op.params
        if JACOBIAN in needs:
            with torch.enable_grad():
                u = torch.zeros_like(forward.output, requires_grad=True)
                g_u = torch.autograd.grad(forward.output, params, grad_outputs=u, create_graph=True,
                                          allow_unused=True)
            context.u = u
            context.g_u = tuple(torch.zeros_like(p) if g is None else g for g, p in zip(g_u, params))
        if LOSS_HESSIAN in needs:
            context.loss_graph = self.loss_graph(forward.output, batch)
        return context

    def hessian(self, context: ReverseContext, block: Block) -> Blocks:
        return self.grad_block(context.grads, block.pieces, block.m, block.batched)

    def jacobian(self, context: ReverseContext, block: Block) -> torch.Tensor | None:
        Jv = torch.autograd.grad(context.g_u, context.u, grad_outputs=tuple(block.pieces), retain_graph=True,
                                 is_grads_batched=block.batched, allow_unused=True)[0]
        if Jv is None:
            return None
        return Jv if block.batched else Jv[None]

    def jacobian_t(self, context: ReverseContext, cotangent: torch.Tensor, block: Block) -> Blocks:
        return self.grad_block(context.graph_output, cotangent if block.batched else cotangent[0], block.m,
                               block.batched)

    def grad_block(self, outputs: Any, grad_outputs: Any, m: int, batched: bool) -> Blocks:
        """Vector-Jacobian products of ``outputs`` w.r.t. the parameters, per parameter ``[m, *shape]``.

        ``batched``: ``grad_outputs`` carry a leading axis of ``m`` columns;
        otherwise they are one column (``m = 1``).
        """
        params = self.op.params
        outputs = (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
        grad_outputs = (grad_outputs,) if isinstance(grad_outputs, torch.Tensor) else tuple(grad_outputs)
        # A zero cotangent adds nothing: drop it, and the backward work behind it.
        # Blocks of unit vectors (to_dense) are zero outside one parameter tensor.
        # (one host sync for all of them: this runs for every batch of every product)
        # (An output that does not require grad, such as the zero gradient of an unused
        # parameter, has no second derivative either.)
        flags = torch.stack([go.any() for go in grad_outputs]).tolist()
        nonzero = [i for i, flag in enumerate(flags) if flag and outputs[i].requires_grad]
        if not nonzero:
            return [None] * len(params)
        if len(nonzero) < len(grad_outputs):
            outputs = tuple(outputs[i] for i in nonzero)
            grad_outputs = tuple(grad_outputs[i] for i in nonzero)
        if batched and self.fold_batched_products:
            from .._fold import fold_shared_factor_bmm

            with fold_shared_factor_bmm():
                g = torch.autograd.grad(outputs, params, grad_outputs=grad_outputs, retain_graph=True,
                                        is_grads_batched=True, allow_unused=True)
        else:
            g = torch.autograd.grad(outputs, params, grad_outputs=grad_outputs, retain_graph=True,
                                    is_grads_batched=batched, allow_unused=True)
        return list(g) if batched else [None if t is None else t[None] for t in g]
