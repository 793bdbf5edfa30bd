"""First and second derivatives of elementwise activations, for the hand-written products.

Both closed-form paths -- Hessian products of Linear/activation chains
(:mod:`spectra.operators.engines.chain`) and the many-init Hessians of Figure 8
(:mod:`spectra.experiments._batched_mlp`) -- need ``sigma(z)``,
``sigma'(z)`` and ``sigma''(z)`` at every layer.  The common activations have
them in closed form; any other elementwise module gets them by autograd on the
elementwise map.

>>> import torch
>>> a, s1, s2 = activation_derivatives(torch.nn.Tanh(), torch.zeros(2, 3), order=2)
>>> s1.tolist()[0], s2.tolist()[0]
([1.0, 1.0, 1.0], [-0.0, -0.0, -0.0])
"""

from __future__ import annotations

import torch

__all__ = ["ELEMENTWISE_ACTIVATIONS", "activation_derivatives", "times_first_derivative"]

#: Activation modules known to act elementwise (and to have no parameters).
ELEMENTWISE_ACTIVATIONS = (torch.nn.ReLU, torch.nn.Tanh, torch.nn.Sigmoid, torch.nn.Identity, torch.nn.LeakyReLU,
                           torch.nn.GELU, torch.nn.ELU, torch.nn.Softplus)


def activation_derivatives(m: torch.nn.Module, z: torch.Tensor, order: int) -> tuple:
    """``(sigma(z), sigma'(z), sigma''(z) or None)``; None stands for an exact zero.

    ReLU returns ``sigma'`` as the string ``"relu"``: :func:`times_first_derivative`
    then masks with one fused kernel (torch's own relu backward) instead of
    building and multiplying a 0/1 tensor.  ``z`` may be overwritten (ReLU
    rectifies it in place): pass a fresh layer output that nothing else reads.
    """
    if isinstance(m, torch.nn.ReLU):
        return torch.relu_(z), "relu", None
    if isinstance(m, torch.nn.Identity):
        return z, torch.ones_like(z), None
    if isinstance(m, torch.nn.LeakyReLU):
        # torch's leaky_relu backward takes the negative slope at z == 0
        return (torch.nn.functional.leaky_relu(z, m.negative_slope),
                torch.ones_like(z).masked_fill_(z <= 0, m.negative_slope), None)
    if isinstance(m, torch.nn.Tanh):
        a = torch.tanh(z)
        s1 = 1 - a * a
        return a, s1, (-2 * a * s1 if order > 1 else None)
    if isinstance(m, torch.nn.Sigmoid):
        a = torch.sigmoid(z)
        s1 = a * (1 - a)
        return a, s1, (s1 * (1 - 2 * a) if order > 1 else None)
    if isinstance(m, torch.nn.Softplus):
        # softplus(beta z) / beta, and z itself where beta z > threshold (as torch computes it)
        bz = m.beta * z
        linear = bz > m.threshold
        a = torch.nn.functional.softplus(z, beta=m.beta, threshold=m.threshold)
        s1 = torch.where(linear, torch.ones_like(z), torch.sigmoid(bz))
        return a, s1, (torch.where(linear, torch.zeros_like(z), m.beta * s1 * (1 - s1)) if order > 1 else None)
    # any other elementwise module: its derivatives by autograd on the elementwise map
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        a = m(zz)
        (s1,) = torch.autograd.grad(a.sum(), zz, create_graph=order > 1)
        s2 = None
        if order > 1 and s1.requires_grad:
            (s2,) = torch.autograd.grad(s1.sum(), zz, materialize_grads=True)
    return a.detach(), s1.detach(), s2


def times_first_derivative(s1: torch.Tensor | str, a: torch.Tensor, g: torch.Tensor,
                           tangent_axis: int) -> torch.Tensor:
    """``sigma'(z) * g``, with ``sigma'`` broadcast over g's tangent axis when g has one more axis.

    ``a = sigma(z)``; for ReLU (``s1 == "relu"``) the result is g where
    ``a > 0`` and 0 elsewhere, 0 at ``z == 0`` as in torch's relu backward.
    """
    if isinstance(s1, str):
        return torch.ops.aten.threshold_backward(g, a if a.ndim == g.ndim else a.unsqueeze(tangent_axis), 0)
    return g * (s1 if s1.ndim == g.ndim else s1.unsqueeze(tangent_axis))
