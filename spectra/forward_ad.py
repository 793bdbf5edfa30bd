"""Forward-over-reverse Hessian products that survive torch ops without forward derivatives of their backward.

A forward-mode product is ``jvp`` of ``grad`` of the loss, vmapped over the
columns of a block.  Some of torch's backward formulas have no forward
derivative, or one that breaks: ``jvp(grad(L))`` of ``F.mse_loss`` with its
default mean raises ``ZeroTensors are immutable``, and ``nn.HuberLoss`` has
no forward derivative of ``huber_loss_backward``.  Taking the first derivative
with ``jacrev`` instead of ``grad`` (one ``vjp`` with an explicit cotangent)
avoids both and gives the same numbers (measured 1.2x slower on a small MLP,
so it is the fallback, not the default).  :func:`hessian_columns` tries
``grad`` first, falls back to ``jacrev`` and says which it used and why; where
neither works it raises a clear error that names the mode that does.

>>> import torch
>>> f = lambda theta: torch.nn.functional.mse_loss(theta[0] * 2.0, torch.ones(3))  # H = 8/3 I
>>> primal, tangent = (torch.zeros(3),), [torch.eye(3)]
>>> columns, path = hessian_columns(f, primal, tangent)
>>> [round(x, 6) for x in columns[0].diagonal().tolist()], path.startswith("jvp(jacrev)")
([2.666667, 2.666667, 2.666667], True)
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .errors import InvalidInputError, first_line

__all__ = ["hessian_columns", "DIRECT_PATH", "is_forward_ad_gap"]

#: The path taken when nothing needed working around.
DIRECT_PATH = "jvp(grad)"
MESSAGE_CHARS = 160  # torch's reason, quoted in our message, cut to one readable line

# torch's messages when a backward formula has no usable forward derivative
_FORWARD_AD_GAPS = ("ZeroTensors are immutable", "Trying to use forward AD with",
                    "forward AD is not implemented", "does not support forward AD",
                    "autograd.Function with functorch transforms")


def is_forward_ad_gap(exc: BaseException) -> bool:
    """Whether ``exc`` is torch refusing a forward derivative (not a bug in the model or the data)."""
    return isinstance(exc, (RuntimeError, NotImplementedError)) and any(m in str(exc) for m in _FORWARD_AD_GAPS)


def hessian_columns(loss_of_params: Callable[[tuple[torch.Tensor, ...]], torch.Tensor],
                    primal: tuple[torch.Tensor, ...],
                    tangents: Sequence[torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], str]:
    """``H v`` for each column ``v`` of ``tangents`` (per-parameter ``[m, *shape]``), and the path taken.

    ``loss_of_params(theta)`` is the scalar loss at parameters ``theta`` (a
    tuple like ``primal``).  The path is :data:`DIRECT_PATH`, or
    ``"jvp(jacrev): ..."`` with the reason ``grad`` could not be used.
    """
    from torch.func import grad, jacrev, jvp, vmap

    def columns(first_derivative: Callable) -> tuple[torch.Tensor, ...]:
        gradient = first_derivative(loss_of_params)

        def column(*tangent: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return jvp(gradient, (primal,), (tuple(tangent),))[1]

        return vmap(column)(*tangents)

    try:
        return columns(grad), DIRECT_PATH
    except (RuntimeError, NotImplementedError) as exc:
        if not is_forward_ad_gap(exc):
            raise
        reason = first_line(exc, MESSAGE_CHARS)
    try:
        return columns(jacrev), f"jvp(jacrev): jvp(grad) failed ({reason})"
    except (RuntimeError, NotImplementedError) as exc:
        if not is_forward_ad_gap(exc):
            raise
        raise InvalidInputError(
            f"mode='forward' cannot differentiate this model and loss: torch has no forward derivative for an "
            f"operation in it ({first_line(exc, MESSAGE_CHARS)}); use mode='reverse' (double backward), which needs none"
        ) from exc


