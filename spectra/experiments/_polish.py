"""Newton steps that finish what gradient descent approaches, for many small nets at once.

Gradient descent on an ill-conditioned loss creeps: where the smallest
curvature is ``mu`` and the largest ``L``, the gradient shrinks by about
``1 - mu / L`` per step.  Where the loss has a true minimum (a smooth net with
``weight_decay > 0``), :func:`newton_polish` takes the last stretch in
Levenberg-Marquardt steps on the exact Hessian,
``delta = -(|H| + m I)^-1 g`` (``|H|`` the Hessian with its eigenvalues made
positive, so a step never climbs a negative direction), accepting a step
only if it lowers the loss and adapting ``m`` (divided by 3 after a success,
multiplied by 4 after a refusal).  Near a minimum this is Newton's method,
which converges quadratically, so a point with a gradient norm of 1e-10
comes in tens of steps where GD needs 1e5.

The nets are chains of Linear layers and elementwise activations (the
closed-form Hessians of :mod:`spectra.experiments._batched_mlp`).

>>> import torch
>>> from spectra.experiments._batched import StackedNet
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()
>>> X = torch.randn(30, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> y = (X[:, 0] > 0).long()
>>> stack = StackedNet(net)
>>> thetas = torch.randn(2, stack.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
>>> out = newton_polish(stack, thetas, X, y, weight_decay=1e-2, grad_tol=1e-10)
>>> bool(out["converged"].all()), bool((out["min_eigenvalue"] > 0).all())
(True, True)
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidInputError

MU_START = 1e-3
MU_DOWN, MU_UP = 3.0, 4.0


def newton_polish(stack: Any, thetas: torch.Tensor, X: torch.Tensor, y: torch.Tensor, *, weight_decay: float,
                  grad_tol: float, max_iter: int = 300) -> dict[str, torch.Tensor]:
    """Levenberg-Marquardt steps from each row of ``thetas`` on ``loss + weight_decay / 2 |w|^2``.

    Returns ``theta``, ``grad_norm``, ``loss`` (the regularised loss),
    ``converged`` (gradient norm below ``grad_tol``), ``iterations`` and
    ``min_eigenvalue`` (of the regularised Hessian at the end: > 0 at a
    strict local minimum).
    """
    from ._batched import _grad_fn
    from ._batched_mlp import chain_hessian

    if stack.chain is None:
        raise InvalidInputError("newton_polish needs a chain of Linear layers and elementwise activations")
    X = X.to(stack.dtype) if X.is_floating_point() else X
    B, P = thetas.shape
    grad_fn = _grad_fn(stack, weight_decay)
    theta = thetas.detach().clone().to(stack.dtype)
    g, val = grad_fn(theta, X, y)
    mu = torch.full((B,), MU_START, dtype=theta.dtype)
    iterations = torch.zeros(B, dtype=torch.long)
    eye = torch.eye(P, dtype=theta.dtype)
    # a refused step leaves theta where it was: its Hessian's eigenpairs are kept instead of recomputed
    lam_all, V_all = torch.zeros(B, P, dtype=theta.dtype), torch.zeros(B, P, P, dtype=theta.dtype)
    stale = torch.ones(B, dtype=torch.bool)
    for _ in range(max_iter):
        active = g.norm(dim=1) >= grad_tol
        if not bool(active.any()):
            break
        idx = torch.nonzero(active).squeeze(1)
        need = idx[stale[idx]]
        if need.numel():
            H = chain_hessian(stack.chain, theta[need], X, y, stack.loss_obj.name) + weight_decay * eye
            lam_all[need], V_all[need] = torch.linalg.eigh(0.5 * (H + H.transpose(1, 2)))
            stale[need] = False
        lam, V = lam_all[idx], V_all[idx]
        coeff = (V.transpose(1, 2) @ g[idx].unsqueeze(2)).squeeze(2) / (lam.abs() + mu[idx].unsqueeze(1))
        proposal = theta[idx] - (V @ coeff.unsqueeze(2)).squeeze(2)
        g_new, val_new = grad_fn(proposal, X, y)
        ok = torch.isfinite(val_new) & (val_new <= val[idx])
        keep = idx[ok]
        theta[keep], g[keep], val[keep] = proposal[ok], g_new[ok], val_new[ok]
        stale[keep] = True
        mu[idx] = torch.where(ok, mu[idx] / MU_DOWN, mu[idx] * MU_UP)
        iterations[idx] += 1
    H = torch.stack([chain_hessian(stack.chain, t.unsqueeze(0), X, y, stack.loss_obj.name)[0] for t in theta])
    min_eig = torch.linalg.eigvalsh(0.5 * (H + H.transpose(1, 2)))[:, 0] + weight_decay
    norms = g.norm(dim=1)
    return {"theta": theta, "grad_norm": norms.to(torch.float64), "loss": val.to(torch.float64),
            "converged": norms < grad_tol, "iterations": iterations, "min_eigenvalue": min_eig.to(torch.float64)}


__all__ = ["newton_polish"]
