"""Products of Linear/activation chains written out by hand (Pearlmutter's R-operator).

Most nets in the paper are ``nn.Sequential`` chains of ``Linear`` layers and
elementwise activations under the cross-entropy or MSE loss
(:func:`~spectra.operators.layer_chain.parse_chain` recognises them).  For such
a chain a product needs no autograd graph.  One forward pass stores, for each
layer, its input, the activation's first and second derivatives and the
backward signals.  After that, a block ``V`` of ``m`` directions costs one
tangent pass forward and one pass backward, each layer two or three matrix
products over ``[N, m * width]`` tensors (bench/bench_core.py: 1.1-1.4x faster
than autograd's cached double backward).

One batch, samples in rows, ``z_l = a_(l-1) W_l^T + b_l``, ``a_l = s(z_l)``,
``d_x = d loss / d x`` (the backward signals), and dots for derivatives along
``V`` (``V_W``, ``v_b`` are its pieces for a layer's weight and bias):

* forward: ``z'_l = a'_(l-1) W_l^T + a_(l-1) V_W^T + v_b``, ``a'_l = s'(z_l) z'_l``, ``a'_0 = 0``;
  the output's tangent is ``J V``;
* head: ``d'_f = c S f'`` with ``S = diag(p) - p p^T`` (cross-entropy) or ``I``
  (MSE), ``c`` the batch weight over the batch size (the Gauss-Newton head);
* backward: ``d'_z = s'(z) d'_a + s''(z) z' d_a``; ``(HV)_W = d'_z^T a_(l-1) + d_z^T a'_(l-1)``,
  ``(HV)_b = sum_n d'_z``, ``d'_(a_(l-1)) = d'_z W_l + d_z V_W``.

The three terms that carry the backward signals ``d`` (the ``s''`` term and
the two cross terms of each Linear layer) are the residual ``R = H - G``.
Without them the backward pass is ``J^T``, so ``G V`` is the same passes
without those terms, any other output-space curvature (a Fisher's) is the
same passes with another head, and ``R V`` is the backward pass with those
terms only (no head): one pass each.

The engine checks itself against autograd when the operator is built: each
batch's gradient must agree with autograd's (:meth:`ChainEngine.verify`), and
the determinism check compares one product with autograd's.

>>> import torch
>>> from spectra.operators.hessian import HessianOperator
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
>>> X, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
>>> H = HessianOperator(model, "cross_entropy", (X, y))
>>> H.engine.name, H.describe()["chain_products"]
('chain', 'used')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from ...losses import is_default_builtin
from .._activations import activation_derivatives, times_first_derivative
from ..layer_chain import UnsupportedChain, parse_chain
from .base import Block, Blocks, ForwardPass, ProductEngine

if TYPE_CHECKING:
    from ...batches import Batch

__all__ = ["ChainEngine", "ChainProducts", "ChainState", "ChainMismatch"]


class ChainMismatch(Exception):
    """The chain products cannot serve this data, or disagree with autograd; the message says how."""


@dataclass
class _Linear:
    module: nn.Linear
    weight: int | None  # index of the weight among the operator's parameters (None: held fixed)
    bias: int | None


@dataclass
class _Activation:
    module: nn.Module


@dataclass
class _Flatten:
    pass


@dataclass
class ChainState:
    """What one batch's products need: layer inputs, activation derivatives, backward signals."""

    scale: float  # the batch's weight divided by its size
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> a_(l-1) [N, in]
    activations: dict[int, tuple] = field(default_factory=dict)  # step -> (s', s(z), s'' or None)
    signals: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> d_z (linear) or d_a (activation)
    probabilities: torch.Tensor | None = None  # softmax output [N, C] (cross-entropy)
    output: torch.Tensor | None = None  # the chain's output [N, C]

    @property
    def num_samples(self) -> int:
        return next(iter(self.inputs.values())).shape[0]


class ChainProducts:
    """The products of one recognised chain w.r.t. chosen parameters, under a built-in loss."""

    def __init__(self, model: nn.Module, params: Sequence[torch.Tensor], loss: Any):
        kind = is_default_builtin(loss)
        if kind is None:
            raise UnsupportedChain(f"loss {loss.name!r} is not a built-in loss with its default settings "
                                   f"(reduction {loss.reduction!r})")
        chain = parse_chain(model)
        index = {id(p): i for i, p in enumerate(params)}
        self.steps: list[_Linear | _Activation | _Flatten] = []
        found = 0
        for step in chain.steps:
            if step.kind == "linear":
                m = step.module
                w, b = index.get(id(m.weight)), None if m.bias is None else index.get(id(m.bias))
                found += sum(i is not None for i in (w, b))
                self.steps.append(_Linear(m, w, b))
            elif step.kind == "activation":
                self.steps.append(_Activation(step.module))
            else:
                self.steps.append(_Flatten())
        if found != len(params):
            raise UnsupportedChain("some chosen parameters are not a Linear layer's weight or bias")
        self.loss = kind
        self._numels = {i: p.numel() for i, p in enumerate(params)}
        # tangents start at the first layer with a chosen parameter; signals are needed back to it
        self.first_chosen = next(k for k, s in enumerate(self.steps)
                                 if isinstance(s, _Linear) and (s.weight, s.bias) != (None, None))

    # ------------------------------------------------------------------ one batch
    def state(self, X: torch.Tensor, y: torch.Tensor, weight: float) -> ChainState:
        """Forward pass and backward signals of one batch whose mean loss has weight ``weight``."""
        if not y.is_floating_point() and (y.ndim != 1 or bool((y < 0).any())):
            raise UnsupportedChain("the labels are not one class per sample (ignored labels, or tokens)")
        n = X.shape[0]
        st = ChainState(scale=weight / n)
        a, fresh = X, False  # fresh: `a` is a tensor of our own (activations may overwrite it)
        for k, step in enumerate(self.steps):
            if isinstance(step, _Flatten):
                a = a.reshape(n, -1)
            elif isinstance(step, _Linear):
                if a.ndim != 2:
                    raise UnsupportedChain(f"inputs of shape {tuple(X.shape)} are not [batch, features]")
                st.inputs[k] = a
                a = nn.functional.linear(a, step.module.weight.detach(),
                                         None if step.module.bias is None else step.module.bias.detach())
                fresh = True
            else:
                a, s1, s2 = activation_derivatives(step.module, a if fresh else a.clone(), order=2)
                st.activations[k] = (s1, a, s2)
                fresh = True
        st.output = a
        if self.loss == "cross_entropy":
            p = torch.softmax(a, dim=1)
            st.probabilities = p
            d = p.clone()
            d[torch.arange(n, device=d.device), y.long()] -= 1
        else:
            target = y.to(a.dtype) if y.is_floating_point() else \
                nn.functional.one_hot(y.long(), a.shape[1]).to(a.dtype)
            d = a - target.reshape(a.shape)
        d = d.mul_(st.scale)
        for k in range(len(self.steps) - 1, self.first_chosen - 1, -1):
            step = self.steps[k]
            if isinstance(step, _Activation):
                s1, out, s2 = st.activations[k]
                if s2 is not None:
                    st.signals[k] = d
                d = times_first_derivative(s1, out, d, tangent_axis=1)
            elif isinstance(step, _Linear):
                st.signals[k] = d
                if k > self.first_chosen:
                    d = d @ step.module.weight.detach()
        return st

    def gradient(self, st: ChainState, num_params: int) -> list[torch.Tensor | None]:
        """The batch's weighted loss gradient, per chosen parameter (to check the chain against autograd)."""
        out: list[torch.Tensor | None] = [None] * num_params
        for k, step in enumerate(self.steps):
            if isinstance(step, _Linear) and k in st.signals:
                d = st.signals[k]
                if step.weight is not None:
                    out[step.weight] = d.T @ st.inputs[k]
                if step.bias is not None:
                    out[step.bias] = d.sum(0)
        return out

    def product(self, st: ChainState, pieces: Sequence[torch.Tensor | None], *, part: str = "hessian",
                head: Callable[[torch.Tensor], torch.Tensor] | None = None,
                nonzero_rows: dict[int, torch.Tensor] | None = None,
                first_row: Sequence[int] | None = None) -> list[torch.Tensor | None]:
        """The batch's product with ``pieces`` (``[m, *shape]`` per chosen parameter, None: zero).

        ``part``: ``"hessian"`` (``H V``), ``"gauss_newton"`` (``J^T head(J V)``,
        ``head`` defaulting to the loss Hessian; a given ``head`` maps output
        tangents ``[n, m, C]`` to cotangents and includes every weight) or
        ``"residual"`` (``H V - G V``: the signal terms only).

        Two hints for sparse blocks (``to_dense`` sends unit vectors):
        ``nonzero_rows[i]`` lists the only nonzero rows of weight piece ``i``
        seen as ``[m * out, in]``; ``first_row[i]`` is the first entry of
        parameter ``i`` (flattened) whose product is wanted.  Entries before
        it may be left at zero, and a parameter wanted from its end on comes
        back as None.
        """
        m = next(p.shape[0] for p in pieces if p is not None)
        wanted = [0] * len(pieces) if first_row is None else list(first_row)
        tangent, at_activation, at_linear = self._forward_tangents(st, pieces, m, nonzero_rows or {})
        result: list[torch.Tensor | None] = [None] * len(pieces)
        if tangent is not None:
            if part == "residual":
                signal = None
            elif head is not None:
                signal = head(tangent)
            else:
                signal = self._head_tangent(st, tangent)
            self._backward_tangents(st, pieces, m, signal, at_activation, at_linear, wanted, result,
                                    signal_terms=part != "gauss_newton")
        return result

    def _forward_tangents(self, st: ChainState, pieces: Sequence[torch.Tensor | None], m: int,
                          nonzero_rows: dict[int, torch.Tensor]) -> tuple[torch.Tensor | None, dict, dict]:
        """The output's tangent ``[n, m, C]`` (None: zero), and the tangents at each activation's and Linear's input."""
        n = st.num_samples
        tangent: torch.Tensor | None = None  # [n, m, width]
        at_activation: dict[int, torch.Tensor | None] = {}  # z' at activation k's input
        at_linear: dict[int, torch.Tensor | None] = {}  # a' at Linear k's input
        for k in range(self.first_chosen, len(self.steps)):
            step = self.steps[k]
            if isinstance(step, _Activation):
                at_activation[k] = tangent
                if tangent is not None:
                    s1, out, _ = st.activations[k]
                    tangent = times_first_derivative(s1, out, tangent, tangent_axis=1)
                continue
            assert isinstance(step, _Linear)  # a Flatten comes before the first Linear
            at_linear[k] = tangent
            W = step.module.weight.detach()
            out_f, in_f = W.shape
            V_w = None if step.weight is None else pieces[step.weight]
            v_b = None if step.bias is None else pieces[step.bias]
            z = None
            if V_w is not None:  # a_(l-1) V_W^T
                flat = V_w.reshape(m * out_f, in_f)
                rows = nonzero_rows.get(step.weight)
                if rows is None:
                    z = (st.inputs[k] @ flat.T).view(n, m, out_f)
                else:
                    z = flat.new_zeros(n, m * out_f)
                    z[:, rows] = st.inputs[k] @ flat[rows].T
                    z = z.view(n, m, out_f)
            if tangent is not None:  # a'_(l-1) W^T
                moved = (tangent.reshape(n * m, in_f) @ W.T).view(n, m, out_f)
                z = moved if z is None else z.add_(moved)
            if v_b is not None:
                z = v_b.expand(n, m, out_f).clone() if z is None else z.add_(v_b)
            tangent = z
        return tangent, at_activation, at_linear

    @staticmethod
    def _head_tangent(st: ChainState, tangent: torch.Tensor) -> torch.Tensor:
        """``d'_f = c S f'``: the loss Hessian w.r.t. the outputs applied to their tangent ``[n, m, C]``."""
        if st.probabilities is not None:  # S = diag(p) - p p^T
            p = st.probabilities.unsqueeze(1)
            g = tangent * p
            g = g.sub_(p * g.sum(2, keepdim=True))
        else:  # S = I
            g = tangent.clone()
        return g.mul_(st.scale)

    def _backward_tangents(self, st: ChainState, pieces: Sequence[torch.Tensor | None], m: int,
                           g: torch.Tensor | None,
                           at_activation: dict, at_linear: dict, wanted: list[int],
                           result: list[torch.Tensor | None], signal_terms: bool) -> None:
        """Run ``d'`` (None: zero) back through the chain, writing each wanted parameter's product into ``result``."""
        n = st.num_samples
        # the pass can stop at the first layer with a wanted parameter
        last = min((k for k, s in enumerate(self.steps) if isinstance(s, _Linear)
                    and any(i is not None and wanted[i] < self._numels[i] for i in (s.weight, s.bias))),
                   default=len(self.steps))
        for k in range(len(self.steps) - 1, last - 1, -1):
            step = self.steps[k]
            if isinstance(step, _Activation):  # d'_z = s'(z) d'_a + s''(z) z' d_a
                s1, out, s2 = st.activations[k]
                new = None if g is None else times_first_derivative(s1, out, g, tangent_axis=1)
                if signal_terms and s2 is not None and at_activation[k] is not None:
                    term = at_activation[k] * (s2 * st.signals[k]).unsqueeze(1)
                    new = term if new is None else new.add_(term)
                g = new
                continue
            assert isinstance(step, _Linear)
            W = step.module.weight.detach()
            out_f, in_f = W.shape
            d = st.signals[k]
            before = at_linear[k]
            if step.weight is not None and wanted[step.weight] < out_f * in_f:
                # (HV)_W = d'_z^T a_(l-1) + d_z^T a'_(l-1), from the first wanted output unit on
                first = wanted[step.weight] // in_f
                rows = None
                if g is not None:
                    part = g if not first else g[:, :, first:].contiguous()
                    rows = (part.reshape(n, m * (out_f - first)).T @ st.inputs[k]).view(m, out_f - first, in_f)
                if before is not None and signal_terms:
                    cross = ((d[:, first:].T @ before.reshape(n, m * in_f))
                             .view(out_f - first, m, in_f).transpose(0, 1))
                    rows = cross if rows is None else rows.add_(cross)
                if rows is not None and first:
                    hw = rows.new_zeros(m, out_f, in_f)
                    hw[:, first:] = rows
                    rows = hw
                result[step.weight] = rows
            if step.bias is not None and wanted[step.bias] < out_f and g is not None:
                result[step.bias] = g.sum(0)
            if k > last:  # d'_(a_(l-1)) = d'_z W + d_z V_W
                back = None if g is None else (g.reshape(n * m, out_f) @ W).view(n, m, in_f)
                V_w = None if step.weight is None else pieces[step.weight]
                if V_w is not None and signal_terms:
                    term = (d @ V_w.transpose(0, 1).reshape(out_f, m * in_f)).view(n, m, in_f)
                    back = term if back is None else back.add_(term)
                g = back


@dataclass
class ChainContext:
    batch: "Batch"
    state: ChainState

    @property
    def output(self) -> torch.Tensor:
        return self.state.output


class ChainEngine(ProductEngine):
    """Closed-form products of a Linear/activation chain (see the module notes).

    Construction raises :class:`~spectra.operators.layer_chain.UnsupportedChain`
    when the model, the parameters or the loss are not covered.
    """

    name = "chain"
    always_batched = True
    triangular_dense = True
    verifies = True

    def __init__(self, op: Any):
        super().__init__(op)
        from ...batches import BatchReader

        if op.reader.settings() != BatchReader().bind(op.model, op.loss).settings():
            raise UnsupportedChain("the batches are read by a custom BatchReader")
        self.products = ChainProducts(op.model, op.params, op.loss)

    def prepare(self, batch: "Batch", needs: frozenset[str], forward: ForwardPass | None = None) -> ChainContext:
        if not isinstance(batch.inputs, torch.Tensor):
            raise ChainMismatch(f"the batch's inputs are a {type(batch.inputs).__name__}, not a tensor")
        try:
            return ChainContext(batch, self.products.state(batch.inputs, batch.target, batch.weight))
        except UnsupportedChain as exc:
            raise ChainMismatch(str(exc)) from exc

    def verify(self, context: ChainContext, gradient: torch.Tensor) -> None:
        from ..curvature import agreement_tolerance

        op = self.op
        pieces = self.products.gradient(context.state, len(op.params))
        mine = op.layout.flatten(torch.zeros_like(p) if t is None else t for t, p in zip(pieces, op.params))
        scale = max(float(gradient.norm()), float(torch.finfo(op.dtype).tiny))
        diff = float((mine - gradient).norm()) / scale
        if diff > agreement_tolerance(op.dtype):
            raise ChainMismatch(f"its gradient differs from autograd's by {diff:.1e} (relative) "
                                f"on batch {context.batch.index}")

    def hessian(self, context: ChainContext, block: Block) -> Blocks:
        return self._product(context, block, "hessian")

    def gauss_newton(self, context: ChainContext, block: Block, head: Any) -> Blocks:
        if getattr(head, "__func__", None) is ChainEngine.loss_hessian:
            return self._product(context, block, "gauss_newton")  # the closed-form head

        def layout_head(tangent: torch.Tensor) -> torch.Tensor:  # [n, m, C] <-> heads' [m, n, C]
            return head(context, tangent.transpose(0, 1), True).transpose(0, 1)

        return self._product(context, block, "gauss_newton", layout_head)

    def residual(self, context: ChainContext, block: Block) -> Blocks:
        return self._product(context, block, "residual")

    def loss_hessian(self, context: ChainContext, tangent: torch.Tensor, batched: bool) -> torch.Tensor:
        return self.products._head_tangent(context.state, tangent.transpose(0, 1)).transpose(0, 1)

    def jacobian(self, context: ChainContext, block: Block) -> torch.Tensor | None:
        pieces = self._chosen(block)
        tangent = self.products._forward_tangents(context.state, pieces, block.m, {})[0]
        return None if tangent is None else tangent.transpose(0, 1)

    def jacobian_t(self, context: ChainContext, cotangent: torch.Tensor, block: Block) -> Blocks:
        return self._product(context, block, "gauss_newton", lambda _tangent: cotangent.transpose(0, 1))

    def _product(self, context: ChainContext, block: Block, part: str,
                 head: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Blocks:
        pieces = self._chosen(block)
        if all(p is None for p in pieces):
            return [None] * len(pieces)
        hints = block.scratch.get("chain_hints", {})
        return self.products.product(context.state, pieces, part=part, head=head, **hints)

    def _chosen(self, block: Block) -> list[torch.Tensor | None]:
        """The block's nonzero pieces (None for zero ones), and to_dense's hints, derived once per block."""
        if "chain_pieces" in block.scratch:
            return block.scratch["chain_pieces"]
        pieces = list(block.pieces)
        if block.unit_start is not None:
            # to_dense's unit columns start:stop: rows above `start` are mirrored later, not computed
            start, stop = block.unit_start, block.unit_start + block.m
            spans = self.op.layout.spans()
            nonzero = [a < stop and b > start for a, b in spans]
            block.scratch["chain_hints"] = {
                "first_row": [min(max(start - a, 0), b - a) for a, b in spans],
                "nonzero_rows": {i: piece.reshape(piece.shape[0] * piece.shape[1], -1).any(1).nonzero().squeeze(1)
                                 for i, piece in enumerate(pieces) if nonzero[i] and piece.ndim == 3},
            }
        else:
            nonzero = torch.stack([p.any() for p in pieces]).tolist()  # zero pieces drop their terms; one sync
        chosen = [p if keep else None for p, keep in zip(pieces, nonzero)]
        block.scratch["chain_pieces"] = chosen
        return chosen
