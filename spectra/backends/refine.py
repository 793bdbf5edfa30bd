"""Rayleigh-Ritz refinement: finish approximate eigenvectors with exact products.

The float64 phase of ``topk`` after a low-precision search.  The search hands
over ``k`` vectors whose residuals are near the low-precision products' noise;
this phase multiplies them with the exact operator, takes the Rayleigh-Ritz
values of their span and, while some pairs miss ``tol``, adds the residuals of
only those pairs to the space (one product each) and repeats:

1. ``HV = H V`` for the new columns of the orthonormal basis ``V``;
2. ``V^T HV = Y diag(theta) Y^T``; the wanted Ritz pairs ``(theta_i, V y_i)``
   have residuals ``HV y_i - theta_i V y_i`` computed from the stored products,
   so they are the true residuals (no recurrence stands in for them);
3. converged when every wanted pair's error estimate ``min(r, rho^2/delta)``
   (:func:`~spectra.backends.block_krylov.error_estimates`, with the search's
   other Ritz pairs as neighbours) is below ``tol`` times the scale; else the
   residuals of the open pairs, orthogonalised against ``V``, join it.

A block Krylov step from the same vectors would multiply the residuals of all
``k`` pairs; most of them have converged after the first step when the
low-precision products are convolutions, whose float32 results differ from
float64 ones more than dense layers' do.

>>> import torch
>>> d = torch.arange(1.0, 301.0, dtype=torch.float64)
>>> X = torch.eye(300, dtype=torch.float64)[:, -3:] + 1e-7 * torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
>>> out = refine(lambda V: d[:, None] * V, X, top=3, bottom=0, tol=1e-10, neighbours=(d[-8:-3], torch.zeros(5)))
>>> out.values.round(decimals=9).tolist(), out.converged, [h["open"] for h in out.history], out.products
([298.0, 299.0, 300.0], True, [3, 0], 6)
"""

from __future__ import annotations

from typing import Callable

import torch

from .block_krylov import BudgetExhausted, KrylovResult, error_estimates, wanted_indices

# Rounds of residual expansion before the caller's fallback (a block Krylov run from the search's vectors)
# takes over: from float32 searches the open pairs converged within 1-3 rounds on the MNIST MLPs and CNNs.
MAX_ROUNDS = 6
# ...or once a round does not halve the largest error estimate (a cluster too large for
# these vectors, such as the zero eigenvalues of a singular Hessian: a Krylov run does better there).
MIN_GAIN = 0.5
# A residual direction with less than this share of its norm left after orthogonalisation against the basis
# adds nothing (the Galerkin condition makes residuals orthogonal to the basis up to rounding).
NEGLIGIBLE_SHARE = 1e-8

Matmat = Callable[[torch.Tensor], torch.Tensor]


def refine(matmat: Matmat, X: torch.Tensor, *, top: int, bottom: int, tol: float,
           neighbours: tuple[torch.Tensor, torch.Tensor], max_products: int | None = None,
           max_columns: int | None = None, scale: float = 0.0) -> KrylovResult:
    """The ``top`` largest and ``bottom`` smallest eigenpairs near the span of ``X`` ``[P, k]`` (float64).

    ``neighbours`` ``(values, residuals)``: Ritz pairs of the search beyond
    the answer, for the gaps of the error estimates.  Returns a
    :class:`~spectra.backends.block_krylov.KrylovResult` (``iterations`` the
    rounds, ``converged`` whether every wanted pair met ``tol``: it stops
    without after :data:`MAX_ROUNDS` rounds, a round that gains less than
    :data:`MIN_GAIN`, or when the basis would pass ``max_columns`` vectors,
    which with their products bound its memory); raises
    :class:`~spectra.backends.block_krylov.BudgetExhausted` rather than exceed
    ``max_products``.
    """
    P = X.shape[0]
    V = torch.linalg.qr(X.to(torch.float64))[0]
    HV = V.new_zeros(P, 0)
    new = V
    out = KrylovResult(values=V.new_zeros(0), vectors=V.new_zeros(P, 0), residuals=V.new_zeros(0),
                       estimates=V.new_zeros(0), converged=False, scale=float(scale), residuals_from_products=True)
    while True:
        if max_products is not None and out.products + new.shape[1] > max_products:
            raise BudgetExhausted(out)
        HV = torch.cat([HV, matmat(new).to(torch.float64)], 1)
        out.products += new.shape[1]
        out.iterations += 1
        G = V.T @ HV
        theta, Y = torch.linalg.eigh(0.5 * (G + G.T))
        out.scale = max(out.scale, float(theta.abs().max()))
        want = wanted_indices(theta, top, bottom)
        # the wanted pairs' true residuals, from the stored products; the others' norms from HV's Gram
        # matrix (||HV y||^2 - theta^2, cancelling only where a residual is tiny, as wanted ones become)
        R = HV @ Y[:, want] - V @ (Y[:, want] * theta[want])
        r = ((Y * ((HV.T @ HV) @ Y)).sum(0) - theta ** 2).clamp_min(0).sqrt()
        r[want] = R.norm(dim=0)
        est = error_estimates(torch.cat([theta, neighbours[0].to(theta)]),
                              torch.cat([r, neighbours[1].to(r)]))[: theta.numel()]
        out.estimates = est[want]  # what a BudgetExhausted carries
        is_open = est[want] > tol * out.scale
        out.history.append({"products": out.products, "basis": V.shape[1], "open": int(is_open.sum()),
                            "max_estimate": float(est[want].max() / max(out.scale, 1e-300))})
        new = _expansion(R[:, is_open], r[want][is_open], V) if bool(is_open.any()) else V[:, :0]
        stalled = len(out.history) > 1 and out.history[-1]["max_estimate"] > MIN_GAIN * out.history[-2]["max_estimate"]
        full = max_columns is not None and V.shape[1] + new.shape[1] > max_columns
        if new.shape[1] == 0 or out.iterations >= MAX_ROUNDS or stalled or full:  # converged, or no way on
            return _answer(out, theta, Y, V, r, est, want, neighbours, converged=not bool(is_open.any()))
        V = torch.cat([V, new], 1)


def _expansion(R: torch.Tensor, r: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Orthonormal directions of the residuals ``R`` outside ``V`` (those with more than rounding left)."""
    for _ in range(2):  # orthogonal to V already up to rounding (Galerkin): twice is enough
        R = R - V @ (V.T @ R)
    Q, S = torch.linalg.qr(R)
    return Q[:, S.diagonal().abs() > NEGLIGIBLE_SHARE * r]


def _answer(out: KrylovResult, theta, Y, V, r, est, want, neighbours, converged: bool) -> KrylovResult:
    order = want[torch.argsort(theta[want])]
    rest = torch.ones(theta.numel(), dtype=torch.bool, device=theta.device)
    rest[want] = False
    out.values, out.vectors = theta[order], V @ Y[:, order]
    out.residuals, out.estimates = r[order], est[order]
    out.others_values = torch.cat([theta[rest], neighbours[0].to(theta)])
    out.others_residuals = torch.cat([r[rest], neighbours[1].to(r)])
    out.converged = converged
    return out


__all__ = ["refine", "MAX_ROUNDS"]
