"""What a product engine provides: the Hessian and Gauss-Newton products of one prepared batch.

A curvature matrix over a dataset is a sum over batches of per-batch
products.  An engine computes them for one batch, in its own way (autograd's
double backward, ``torch.func`` forward mode, or closed forms for
Linear/activation chains), from a *context* it prepared for the batch: the
graphs or stored values the products reuse.  The operator
(:class:`~spectra.operators.curvature.CurvatureOperator`) owns the data loop,
the weights and the reduction; a matrix class only says which product to take.

An engine implements

``prepare(batch, needs, forward=None)``
    the batch's context; ``needs`` lists what the matrix will ask for
    (:data:`HESSIAN`, :data:`JACOBIAN`, :data:`LOSS_HESSIAN`); ``forward``
    (a :class:`ForwardPass`, during the operator's first pass) is the batch's
    forward and gradient, which an engine may keep instead of computing its own.
    Every context has ``.batch`` and ``.output`` (the model's output, detached).
``hessian(context, block)``
    the batch's ``w_b H_b V`` as per-parameter blocks (``None``: zero);
``jacobian(context, block)`` and ``jacobian_t(context, cotangent, block)``
    ``J V`` as output tangents ``[m, *output_shape]`` (``None``: zero), and
    ``J^T U`` for output cotangents of that shape;
``loss_hessian(context, tangent, batched)``
    ``w_b (d^2 loss_b / d f^2) T``: the head of the generalised Gauss-Newton matrix.

and inherits ``gauss_newton(context, block, head)`` (``J^T head(J V)``) and
``residual(context, block)`` (``H V - G V`` on one context), which it may
override with something faster.

>>> import torch
>>> block = Block([torch.zeros(4, 3, 2), torch.zeros(4, 3)], m=4)  # 4 directions, two parameters
>>> block.batched, block.unit_start
(True, None)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

if TYPE_CHECKING:
    from ...batches import Batch
    from ..curvature import CurvatureOperator

__all__ = ["Block", "Blocks", "ForwardPass", "HESSIAN", "Head", "JACOBIAN", "LOSS_HESSIAN", "ProductEngine"]

#: The context must hold what Hessian products need.
HESSIAN = "hessian"
#: The context must hold what ``J V`` and ``J^T U`` need.
JACOBIAN = "jacobian"
#: The context must hold what the loss Hessian w.r.t. the outputs needs.
LOSS_HESSIAN = "loss_hessian"

Blocks = list  # per-parameter blocks ``[m, *shape]`` or None (zero)
#: An output-space curvature: ``head(context, tangent [m, *output_shape], batched) -> same shape``.
Head = Callable[[Any, torch.Tensor, bool], torch.Tensor]


@dataclass
class Block:
    """A block of directions as per-parameter pieces.

    ``batched``: ``pieces`` are ``[m, *shape]``; otherwise one column,
    ``[*shape]`` (``m == 1``), for models whose ops have no batching rule.
    ``unit_start``: the block is ``to_dense``'s identity columns starting at this
    index (engines that can may compute only the rows from there on).
    """

    pieces: Sequence[torch.Tensor]
    m: int
    batched: bool = True
    unit_start: int | None = None
    scratch: dict = field(default_factory=dict)  # what an engine derives once per block


@dataclass
class ForwardPass:
    """One batch's forward pass: output and weighted loss with their graphs, and the gradient."""

    output: torch.Tensor
    loss: torch.Tensor  # w_b * loss_b
    grads: tuple[torch.Tensor, ...] | None  # d(w_b loss_b)/d theta, with a graph if it was asked for
    value: torch.Tensor  # loss_b, unweighted


class ProductEngine:
    """Base of the product engines; see the module notes for what a subclass implements."""

    #: The engine's name, as in ``mode=`` and the provenance.
    name: str = ""
    #: Whether prepared contexts can be kept between products (``cache_graph``).
    caches: bool = True
    #: Whether all columns of a block always go through one call (no column-by-column fallback).
    always_batched: bool = False
    #: Whether ``to_dense`` may compute each block of unit columns from the diagonal down and mirror.
    triangular_dense: bool = False
    #: Whether the first pass builds every batch's context to :meth:`verify` it.
    verifies: bool = False

    def __init__(self, op: "CurvatureOperator"):
        self.op = op

    # -- what a subclass implements ---------------------------------------------
    def prepare(self, batch: "Batch", needs: frozenset[str], forward: ForwardPass | None = None) -> Any:
        raise NotImplementedError

    def hessian(self, context: Any, block: Block) -> Blocks:
        raise NotImplementedError

    def jacobian(self, context: Any, block: Block) -> torch.Tensor | None:
        raise NotImplementedError

    def jacobian_t(self, context: Any, cotangent: torch.Tensor, block: Block) -> Blocks:
        raise NotImplementedError

    def verify(self, context: Any, gradient: torch.Tensor) -> None:
        """Check the context against autograd's gradient of the batch (closed-form engines)."""

    # -- shared ---------------------------------------------------------------
    def loss_hessian(self, context: Any, tangent: torch.Tensor, batched: bool) -> torch.Tensor:
        """``w_b (d^2 loss_b / d f^2) T`` by double backward on the detached output."""
        o, g_o = context.loss_graph
        out = torch.autograd.grad(g_o, o, grad_outputs=tangent if batched else tangent[0], retain_graph=True,
                                  is_grads_batched=batched)[0]
        return out if batched else out[None]

    def gauss_newton(self, context: Any, block: Block, head: Head) -> Blocks:
        """``J^T head(J V)``: the generalised Gauss-Newton product with the output-space curvature ``head``."""
        tangent = self.jacobian(context, block)
        if tangent is None:  # the outputs do not depend on the selected parameters
            return [None] * len(block.pieces)
        return self.jacobian_t(context, head(context, tangent, block.batched), block)

    def residual(self, context: Any, block: Block) -> Blocks:
        """``H V - G V`` on one context."""
        h = self.hessian(context, block)
        g = self.gauss_newton(context, block, self.loss_hessian)
        return [_difference(a, b) for a, b in zip(h, g)]

    def loss_graph(self, output: torch.Tensor, batch: "Batch") -> tuple[torch.Tensor, torch.Tensor]:
        """``(o, d(w_b loss_b)/do)`` on a detached copy ``o`` of the output, with the graph kept."""
        o = output.detach().requires_grad_(True)
        with torch.enable_grad():
            g_o = torch.autograd.grad(batch.weight * self.op.loss(o, batch.target), o, create_graph=True)[0]
        return o, g_o

    def describe(self) -> dict[str, Any]:
        """What the engine adds to the operator's provenance."""
        return {}


def _difference(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if b is None:
        return a
    return -b if a is None else a - b
