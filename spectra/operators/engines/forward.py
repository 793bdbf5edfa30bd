"""Forward-over-reverse products through ``torch.func``, vmapped over the columns of a block.

* ``H V``: ``jvp`` of ``grad`` of the weighted batch loss through ``functional_call``
  (``jacrev`` for the first derivative where ``grad`` has no forward derivative:
  :mod:`spectra.forward_ad`);
* ``J V``: ``jvp`` of the network; ``J^T U``: the network's ``vjp`` function.

Nothing is kept between products (``cache_graph`` does not apply).  On CPU
this measured 1.7-2.4x slower than double backward (bench/bench_core.py), so
``mode="auto"`` never picks it; ask for it with ``mode="forward"``.

>>> import torch
>>> from spectra.operators.hessian import HessianOperator
>>> model = torch.nn.Linear(3, 2).double()
>>> X, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
>>> H = HessianOperator(model, "cross_entropy", (X, y), mode="forward")
>>> H.engine.name, H.cache_graph
('forward', False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from ...errors import NonDeterministicError
from .base import JACOBIAN, LOSS_HESSIAN, Block, Blocks, ForwardPass, ProductEngine

if TYPE_CHECKING:
    from ...batches import Batch

__all__ = ["ForwardEngine"]


@dataclass
class ForwardContext:
    batch: "Batch"
    output_fn: Callable[..., torch.Tensor]  # parameters -> the model's output on the batch
    primal: tuple[torch.Tensor, ...]
    output: torch.Tensor | None  # (None when only Hessian products were asked for)
    vjp_fn: Callable[..., Any] | None
    loss_graph: tuple[torch.Tensor, torch.Tensor] | None = None


class ForwardEngine(ProductEngine):
    """Products by ``torch.func`` transforms (see the module notes)."""

    name = "forward"
    caches = False
    always_batched = True

    def prepare(self, batch: "Batch", needs: frozenset[str], forward: ForwardPass | None = None) -> ForwardContext:
        from torch.func import functional_call, vjp

        op = self.op
        names = op.param_names
        chosen = set(names)
        fixed = {n: p.detach() for n, p in op.model.named_parameters() if n not in chosen}
        fixed.update(dict(op.model.named_buffers()))

        def output_fn(*theta: torch.Tensor) -> torch.Tensor:
            state = {**fixed, **dict(zip(names, theta))}
            return op.reader.call(lambda *a, **k: functional_call(op.model, state, a, k), batch.inputs)

        primal = tuple(p.detach() for p in op.params)
        if JACOBIAN not in needs:  # Hessian products need neither the output nor its vjp
            return ForwardContext(batch, output_fn, primal, None, None)
        output, vjp_fn = _without_random_ops(lambda: vjp(output_fn, *primal))
        context = ForwardContext(batch, output_fn, primal, output.detach(), vjp_fn)
        if LOSS_HESSIAN in needs:
            context.loss_graph = self.loss_graph(output, batch)
        return context

    #: How the last Hessian product was taken: ``jvp(grad)``, or ``jvp(jacrev)`` and why (spectra.forward_ad).
    path: str | None = None

    def hessian(self, context: ForwardContext, block: Block) -> Blocks:
        from ...forward_ad import hessian_columns

        batch, loss = context.batch, self.op.loss
        columns, self.path = _without_random_ops(lambda: hessian_columns(
            lambda theta: batch.weight * loss(context.output_fn(*theta), batch.target), context.primal,
            _columns(block)))
        return list(columns)

    def jacobian(self, context: ForwardContext, block: Block) -> torch.Tensor:
        from torch.func import jvp, vmap

        def column(*tangent: torch.Tensor) -> torch.Tensor:
            return jvp(context.output_fn, context.primal, tangent)[1]

        return _without_random_ops(lambda: vmap(column)(*_columns(block)))

    def jacobian_t(self, context: ForwardContext, cotangent: torch.Tensor, block: Block) -> Blocks:
        from torch.func import vmap

        return list(vmap(context.vjp_fn)(cotangent))


def _columns(block: Block) -> list[torch.Tensor]:
    return list(block.pieces) if block.batched else [p[None] for p in block.pieces]


def _without_random_ops(compute: Callable[[], Any]) -> Any:
    try:
        return compute()
    except RuntimeError as exc:
        if "random" not in str(exc):
            raise
        # torch.func refuses random ops (dropout, noise) in the model: the same refusal
        # the determinism check gives with the other engines
        raise NonDeterministicError(
            "the model draws random numbers in its forward pass, so the curvature is not "
            "deterministic; analyse in eval mode, without dropout or noise"
        ) from exc
