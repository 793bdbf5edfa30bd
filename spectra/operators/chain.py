"""Hessian products of Linear/activation chains, written out by hand (Pearlmutter's R-operator).

Most nets in the paper are ``nn.Sequential`` chains of ``Linear`` layers and
elementwise activations under the cross-entropy or MSE loss.  For such a chain a
Hessian product needs no autograd graph. One forward pass stores, for each
layer, its input, the activation's first and second derivatives and the backward
signals. After that, a block ``V`` of ``m`` directions costs one tangent pass
forward and one pass backward, and each layer takes two or three matrix
products over ``[N, m * width]`` tensors.  The first layer's two products with
the inputs ``X`` are the same two that a gradient needs.  Autograd's double
backward adds more on top: zero-filled buffers, products of the tangents with
the weights of layers that have no tangent, and its dispatch per operation.
``bench/bench_core.py`` measures both.

One batch, samples in rows, ``z_l = a_(l-1) W_l^T + b_l``, ``a_l = s(z_l)``,
``d_x = d loss / d x`` (the backward signals), and dots for derivatives along
``V`` (``V_W``, ``v_b`` are its pieces for a layer's weight and bias):

* forward: ``z'_l = a'_(l-1) W_l^T + a_(l-1) V_W^T + v_b``, ``a'_l = s'(z_l) z'_l``, ``a'_0 = 0``;
* loss head: ``d'_f = c * S f'`` with ``S = diag(p) - p p^T`` (cross-entropy)
  or ``I`` (MSE), ``c`` the batch weight over the batch size;
* backward: ``d'_z = s'(z) d'_a + s''(z) z' d_a``; ``(HV)_W = d'_z^T a_(l-1) + d_z^T a'_(l-1)``,
  ``(HV)_b = sum_n d'_z``, ``d'_(a_(l-1)) = d'_z W_l + d_z V_W``.

:class:`LayerChain` reads the chain off a model (or says why it cannot), and
computes a batch's stored values (:meth:`LayerChain.state`), its gradient
(:meth:`LayerChain.gradient`) and the products (:meth:`LayerChain.product`).
:class:`~spectra.operators.hessian.HessianOperator` uses it under
``mode="auto"`` whenever it applies, and checks it against autograd when it is
built (see ``HessianOperator``).

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
>>> chain = LayerChain.of(model, list(model.parameters()), "cross_entropy")
>>> X, y = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
>>> state = chain.state(X, y, weight=1.0)
>>> V = [torch.randn(2, *p.shape, dtype=torch.float64) for p in model.parameters()]
>>> [tuple(t.shape) for t in chain.product(state, V)]
[(2, 4, 3), (2, 4), (2, 2, 4), (2, 2)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..losses import is_default_builtin, resolve_loss
from ._activations import ELEMENTWISE_ACTIVATIONS, activation_derivatives, times_first_derivative

__all__ = ["ChainState", "LayerChain", "UnsupportedChain"]


class UnsupportedChain(Exception):
    """The model or loss is not a chain these products cover; the message says what is not."""


@dataclass
class _Linear:
    module: nn.Linear
    weight: int | None  # index of the weight among the operator's parameters (None: held fixed)
    bias: int | None


@dataclass
class _Activation:
    module: nn.Module


@dataclass
class ChainState:
    """What one batch's products need: layer inputs, activation derivatives, backward signals."""

    scale: float  # the batch's weight divided by its size
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> a_(l-1) [N, in]
    activations: dict[int, tuple] = field(default_factory=dict)  # step -> (s', s(z), s'' or None)
    signals: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> d_z (linear) or d_a (activation)
    probabilities: torch.Tensor | None = None  # softmax output [N, C] (cross-entropy)

    @property
    def num_samples(self) -> int:
        return next(iter(self.inputs.values())).shape[0]


def _leaves(module: nn.Module, where: str) -> list[tuple[str, nn.Module]]:
    """The modules a ``Sequential`` runs, in order, nested ``Sequential`` s opened."""
    if module._forward_hooks or module._forward_pre_hooks:
        raise UnsupportedChain(f"module {where or 'model'!r} has forward hooks")
    if isinstance(module, nn.Sequential):
        if type(module).forward is not nn.Sequential.forward:
            raise UnsupportedChain(f"{type(module).__name__} overrides Sequential.forward")
        out = []
        # _modules, as Sequential.forward runs them (named_children() skips a repeated module)
        for name, child in module._modules.items():
            if child is None:
                continue
            out += _leaves(child, f"{where}.{name}" if where else name)
        return out
    return [(where, module)]


class LayerChain:
    """A ``Sequential`` of Linear layers and elementwise activations (after an optional Flatten).

    Build it with :meth:`of`; it holds the steps and, for each Linear
    layer, which of the operator's parameters are its weight and bias.
    """

    def __init__(self, steps: list[_Linear | _Activation], flatten: bool, loss: str):
        self.steps = steps
        self.flatten = flatten
        self.loss = loss
        linear = [k for k, s in enumerate(steps) if isinstance(s, _Linear) and (s.weight, s.bias) != (None, None)]
        self._numels: dict[int, int] = {}  # parameter index -> its number of entries
        for s in steps:
            if isinstance(s, _Linear):
                for index, tensor in ((s.weight, s.module.weight), (s.bias, s.module.bias)):
                    if index is not None:
                        self._numels[index] = tensor.numel()
        # tangents start at the first layer with a chosen parameter; signals are needed back to it
        self.first_chosen = linear[0]

    @classmethod
    def of(cls, model: nn.Module, params: Sequence[torch.Tensor], loss: Any) -> "LayerChain":
        """The chain of ``model`` w.r.t. ``params``, or :class:`UnsupportedChain` saying why not."""
        loss = resolve_loss(loss)
        kind = is_default_builtin(loss)
        if kind is None:
            raise UnsupportedChain(f"loss {loss.name!r} is not a built-in loss with its default settings "
                                   f"(reduction {loss.reduction!r})")
        if not isinstance(model, nn.Sequential):
            raise UnsupportedChain(f"the model is a {type(model).__name__}, not a Sequential")
        index = {id(p): i for i, p in enumerate(params)}
        steps: list[_Linear | _Activation] = []
        flatten = False
        seen: set[int] = set()
        for name, m in _leaves(model, ""):
            if type(m) is nn.Linear:
                for attr in ("weight", "bias"):
                    t = getattr(m, attr)
                    if t is not None and not isinstance(t, nn.Parameter):
                        raise UnsupportedChain(f"{name}.{attr} is computed (a parametrization?), not a Parameter")
                w, b = index.get(id(m.weight)), None if m.bias is None else index.get(id(m.bias))
                if any(i is not None and i in seen for i in (w, b)):
                    raise UnsupportedChain(f"{name} shares a parameter with an earlier layer")
                seen.update(i for i in (w, b) if i is not None)
                steps.append(_Linear(m, w, b))
            elif type(m) is nn.Flatten and not steps and not flatten:
                if (m.start_dim, m.end_dim) != (1, -1):
                    raise UnsupportedChain(f"{name} flattens dims {m.start_dim}..{m.end_dim}, not 1..-1")
                flatten = True
            elif type(m) in ELEMENTWISE_ACTIVATIONS and steps:
                steps.append(_Activation(m))
            else:
                where = "before the first Linear" if not steps else "in the chain"
                raise UnsupportedChain(f"{name or 'model'} ({type(m).__name__}) {where}")
        if len(seen) != len(params):
            raise UnsupportedChain("some chosen parameters are not a Linear layer's weight or bias")
        if not any(isinstance(s, _Linear) for s in steps):
            raise UnsupportedChain("the model has no Linear layer")
        return cls(steps, flatten, kind)

    # ------------------------------------------------------------------ one batch
    def state(self, X: torch.Tensor, y: torch.Tensor, weight: float) -> ChainState:
        """Forward pass and backward signals of one batch whose mean loss has weight ``weight``."""
        if not isinstance(X, torch.Tensor):
            raise UnsupportedChain(f"the inputs are a {type(X).__name__}, not one tensor")
        a = X.reshape(X.shape[0], -1) if self.flatten else X
        if a.ndim != 2:
            raise UnsupportedChain(f"inputs of shape {tuple(X.shape)} are not [batch, features]")
        if not y.is_floating_point() and (y.ndim != 1 or bool((y < 0).any())):
            raise UnsupportedChain("the labels are not one class per sample (ignored labels, or tokens)")
        n = a.shape[0]
        st = ChainState(scale=weight / n)
        for k, step in enumerate(self.steps):
            if isinstance(step, _Linear):
                st.inputs[k] = a
                a = nn.functional.linear(a, step.module.weight.detach(),
                                         None if step.module.bias is None else step.module.bias.detach())
            else:
                a, s1, s2 = activation_derivatives(step.module, a, order=2)
                st.activations[k] = (s1, a, s2)
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
            else:
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

    def product(self, st: ChainState, pieces: Sequence[torch.Tensor | None], *,
                nonzero_rows: dict[int, torch.Tensor] | None = None,
                first_row: Sequence[int] | None = None, gauss_newton: bool = False) -> list[torch.Tensor | None]:
        """``H V`` for the batch, per chosen parameter as ``[m, *shape]``; ``pieces`` likewise (None: zero).

        ``gauss_newton=True`` gives ``G V = J^T S J V`` instead: the same passes
        without the three terms that carry the backward signals ``d`` (the
        ``s''`` term and the two cross terms of each Linear layer), which
        together are the residual ``R = H - G``.

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
            signal = self._head_tangent(st, tangent)
            self._backward_tangents(st, pieces, signal, at_activation, at_linear, wanted, result, gauss_newton)
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
        """``d'_f = c S f'``: the loss Hessian w.r.t. the outputs applied to their tangent."""
        if st.probabilities is not None:  # S = diag(p) - p p^T
            p = st.probabilities.unsqueeze(1)
            g = tangent * p
            g = g.sub_(p * g.sum(2, keepdim=True))
        else:  # S = I
            g = tangent.clone()
        return g.mul_(st.scale)

    def _backward_tangents(self, st: ChainState, pieces: Sequence[torch.Tensor | None], g: torch.Tensor,
                           at_activation: dict, at_linear: dict, wanted: list[int],
                           result: list[torch.Tensor | None], gauss_newton: bool = False) -> None:
        """Run ``d'`` back through the chain, writing each wanted parameter's ``(HV)`` into ``result``."""
        n, m = g.shape[0], g.shape[1]
        # the pass can stop at the first layer with a wanted parameter
        last = min((k for k, s in enumerate(self.steps) if isinstance(s, _Linear)
                    and any(i is not None and wanted[i] < self._numels[i] for i in (s.weight, s.bias))),
                   default=len(self.steps))
        for k in range(len(self.steps) - 1, last - 1, -1):
            step = self.steps[k]
            if isinstance(step, _Activation):  # d'_z = s'(z) d'_a + s''(z) z' d_a
                s1, out, s2 = st.activations[k]
                new = times_first_derivative(s1, out, g, tangent_axis=1)
                if s2 is not None and at_activation[k] is not None and not gauss_newton:
                    new = new.add_(at_activation[k] * (s2 * st.signals[k]).unsqueeze(1))
                g = new
                continue
            W = step.module.weight.detach()
            out_f, in_f = W.shape
            d = st.signals[k]
            before = at_linear[k]
            if step.weight is not None and wanted[step.weight] < out_f * in_f:
                # (HV)_W = d'_z^T a_(l-1) + d_z^T a'_(l-1), from the first wanted output unit on
                first = wanted[step.weight] // in_f
                part = g if not first else g[:, :, first:].contiguous()
                rows = (part.reshape(n, m * (out_f - first)).T @ st.inputs[k]).view(m, out_f - first, in_f)
                if before is not None and not gauss_newton:
                    rows = rows.add_((d[:, first:].T @ before.reshape(n, m * in_f))
                                     .view(out_f - first, m, in_f).transpose(0, 1))
                if first:
                    hw = g.new_zeros(m, out_f, in_f)
                    hw[:, first:] = rows
                    rows = hw
                result[step.weight] = rows
            if step.bias is not None and wanted[step.bias] < out_f:
                result[step.bias] = g.sum(0)
            if k > last:  # d'_(a_(l-1)) = d'_z W + d_z V_W
                back = (g.reshape(n * m, out_f) @ W).view(n, m, in_f)
                V_w = None if step.weight is None else pieces[step.weight]
                if V_w is not None and not gauss_newton:
                    back = back.add_((d @ V_w.transpose(0, 1).reshape(out_f, m * in_f)).view(n, m, in_f))
                g = back
