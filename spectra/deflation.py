"""Deflated spectral density: outliers exactly, the bulk by SLQ on what is left.

A trained net's Hessian has a few large outliers and a huge bulk near zero.
Plain stochastic Lanczos quadrature spends Lanczos steps resolving the
outliers and spreads its nodes over the whole range.  Here:

1. ARPACK finds the top-``k`` eigenpairs ``(lambda_i, v_i)`` (``V = [v_1..v_k]``).
2. SLQ runs on the deflated operator ``D = (I - V V^T) H (I - V V^T)`` with
   probes projected off ``span(V)``.  On the complement, ``D`` has exactly the
   other ``P - k`` eigenvalues, so every Lanczos node lands in the bulk; each
   probe's quadrature estimates the bulk measure ``(1/(P-k)) sum_{i>k} delta``.
3. The density is ``(1/P) sum_{i<=k} delta(lambda_i) + ((P-k)/P) * bulk``:
   the ``k`` eigenvalues come back as exact atoms of mass ``1/P``.

The result is an ordinary :class:`~spectra.result.SpectrumResult` (method
``"deflated-lanczos"``: ``nodes``/``weights`` hold both parts, ``eigenvalues``
the deflated ones), so ``density()``, ``summary()``, ``plot()`` and
``save()`` work as for SLQ.  :func:`log_abs_density` gives the density of
``log10 |lambda|`` (positive and negative parts separately), the view in which
a bulk spread over decades near zero is visible.

>>> import numpy as np, torch
>>> from spectra.operators.base import DenseOperator
>>> lam = np.concatenate([[50.0, 30.0], np.linspace(-0.1, 0.5, 98)])
>>> r = deflated_density(DenseOperator(torch.diag(torch.tensor(lam))), k=2, num_probes=4, num_steps=30)
>>> r.eigenvalues.round(8).tolist(), r.method
([30.0, 50.0], 'deflated-lanczos')
>>> bool(abs(r.nodes[r.weights > 1e-12]).max() <= 50.0 + 1e-9)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import density as _density
from .backends.lanczos import DEFAULT_ENGINE
from .errors import InvalidInputError
from .operators.base import SpectralOperator
from .result import SpectrumResult

__all__ = ["DeflatedOperator", "deflated_density", "LogDensity", "log_abs_density", "plot_log_density",
           "bulk_l1_distance"]


class DeflatedOperator(SpectralOperator):
    """``(I - V V^T) A (I - V V^T)`` for orthonormal columns ``V`` (``[P, k]``)."""

    def __init__(self, op: Any, V: torch.Tensor | np.ndarray):
        V = torch.as_tensor(V).to(device=op.device, dtype=torch.float64)
        if V.ndim != 2 or V.shape[0] != op.shape[0]:
            raise InvalidInputError(f"V must have shape [P={op.shape[0]}, k]; got {tuple(V.shape)}")
        # Re-orthonormalise: ARPACK's vectors are orthonormal to ~1e-15, the projector needs it.
        V, _ = torch.linalg.qr(V)
        super().__init__(op.shape, op.dtype, op.device)
        self.op, self.V = op, V
        self.max_block = getattr(op, "max_block", None)

    def project(self, X: torch.Tensor) -> torch.Tensor:
        """``(I - V V^T) X`` (in float64)."""
        X64 = X.to(torch.float64)
        return X64 - self.V @ (self.V.T @ X64)

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        Y = self.op.matmat(self.project(X).to(self.op.dtype))
        return self.project(Y).to(self.dtype)


def deflated_density(op: Any, k: int = 10, *, num_probes: int = 10, num_steps: int = 80, seed: int = 0,
                     which: str = "largest", arpack_tol: float = 0.0, engine: str = DEFAULT_ENGINE,
                     eigenpairs: tuple[np.ndarray, np.ndarray] | None = None) -> SpectrumResult:
    """Spectral density with the top ``k`` eigenvalues exact and the bulk by SLQ on the deflated operator.

    ``which``: ``"largest"`` deflates the ``k`` largest eigenvalues,
    ``"both"`` the ``k`` largest and the ``k`` smallest (for spectra with
    negative outliers).  ``eigenpairs=(values, vectors)`` skips ARPACK when
    you already have them.  ``num_matvecs`` of the result counts every
    product: ARPACK's (with its residual check) and SLQ's.
    """
    from .backends.arpack import ArpackBackend
    from .backends.lanczos import LanczosBackend, rademacher_probes

    P = op.shape[0]
    if which not in ("largest", "both"):
        raise InvalidInputError(f"which must be 'largest' or 'both'; got {which!r}")
    arpack_matvecs = 0
    residuals = None
    if eigenpairs is None:
        r = ArpackBackend().run(op, k=k, which=which, tol=arpack_tol, seed=seed, return_eigenvectors=True)
        values, vectors, residuals = r.eigenvalues, r.eigenvectors, r.residuals
        # the backend leaves its residual products out of the operator's count; they were spent, count them
        arpack_matvecs = int(r.num_matvecs) + int(r.provenance.get("residual_matvecs", 0))
    else:
        values, vectors = (np.asarray(a, dtype=np.float64) for a in eigenpairs)
        if vectors.ndim != 2 or vectors.shape != (P, values.size):
            raise InvalidInputError(f"eigenpairs must be (values [k], vectors [P={P}, k]); got shapes "
                                    f"{values.shape} and {vectors.shape}")
    kk = int(values.size)
    if P - kk < num_steps:
        raise InvalidInputError(f"num_steps={num_steps} exceeds the deflated dimension P-k={P - kk}")
    D = DeflatedOperator(op, vectors)
    probes = D.project(rademacher_probes(P, int(num_probes), seed, torch.float64, op.device))
    slq = LanczosBackend().run(D, num_probes=num_probes, num_steps=num_steps, seed=seed, probes=probes,
                               engine=engine)
    bulk_mass = (P - kk) / P
    n = slq.nodes.shape[0]
    nodes = np.concatenate([slq.nodes, np.tile(values, (n, 1))], axis=1)
    weights = np.concatenate([bulk_mass * slq.weights, np.full((n, kk), 1.0 / P)], axis=1)
    total = arpack_matvecs + int(slq.num_matvecs)
    return SpectrumResult(
        method="deflated-lanczos",
        eigenvalues=np.sort(values),
        residuals=None if residuals is None else np.asarray(residuals)[np.argsort(values)],
        nodes=nodes,
        weights=weights,
        num_params=P,
        num_matvecs=int(total),
        provenance={
            "deflation": {"k": kk, "which": which, "arpack_matvecs": arpack_matvecs,
                          "arpack_tol": arpack_tol, "eigenpairs_given": eigenpairs is not None},
            "slq": {**slq.provenance, "num_matvecs": int(slq.num_matvecs),
                    "probes": "Rademacher, projected off the deflated eigenvectors"},
            "measure": "(1/P) sum of the k deflated eigenvalues + ((P-k)/P) x SLQ measure of the deflated operator",
            "num_probes": int(num_probes), "num_steps": int(num_steps), "seed": seed,
        },
    )


# ------------------------------------------------------------------ log view


@dataclass
class LogDensity:
    """Density of ``log10|lambda|`` for positive and negative eigenvalues separately.

    ``rho_pos`` and ``rho_neg`` integrate (over ``grid``) to the mass of the
    positive and negative eigenvalues above ``floor`` in magnitude;
    ``mass_below_floor`` is the rest (``|lambda| < floor``, e.g. the exact zeros).
    """

    grid: np.ndarray
    rho_pos: np.ndarray
    rho_neg: np.ndarray
    mass_below_floor: float
    floor: float
    sigma: float


def _atoms(source: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(source, SpectrumResult):
        return source.spectral_measure()
    lam = np.asarray(source, dtype=np.float64).ravel()
    return lam, np.full(lam.shape, 1.0 / max(lam.size, 1))


def log_abs_density(source: SpectrumResult | np.ndarray, *, floor: float | None = None, sigma: float = 0.05,
                    num_points: int = 600) -> LogDensity:
    """Gaussian-broadened density of ``log10|lambda|`` (width ``sigma`` decades).

    ``source``: a result (exact, SLQ or deflated) or an array of eigenvalues.
    ``floor`` defaults to ``1e-6 * max|lambda|``.
    """
    atoms, mass = _atoms(source)
    big = float(np.abs(atoms).max()) if atoms.size else 1.0
    floor = 1e-6 * big if floor is None else float(floor)
    if floor <= 0:
        raise InvalidInputError(f"floor must be positive; got {floor}")
    keep = np.abs(atoms) >= floor
    logs = np.log10(np.abs(atoms[keep]))
    lo, hi = math.log10(floor), math.log10(max(big, floor))
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points)
    pos = atoms[keep] > 0
    rho_pos = _density.gaussian_density(logs[pos], mass[keep][pos], grid, sigma)
    rho_neg = _density.gaussian_density(logs[~pos], mass[keep][~pos], grid, sigma)
    return LogDensity(grid, rho_pos, rho_neg, float(mass[~keep].sum()), floor, sigma)


def plot_log_density(source: SpectrumResult | np.ndarray, ax: Any = None, **options: Any) -> tuple[Any, Any]:
    """Plot :func:`log_abs_density` (positive up, negative dashed); returns ``(fig, ax)``."""
    d = log_abs_density(source, **options)
    from .plotting import axes_or_new

    fig, ax = axes_or_new(ax)
    ax.plot(d.grid, d.rho_pos, label="λ > 0")
    ax.plot(d.grid, d.rho_neg, "--", label="λ < 0")
    ax.set_xlabel("log10 |λ|")
    ax.set_ylabel("density")
    ax.set_title(f"log-|λ| density (mass {d.mass_below_floor:.3f} with |λ| < {d.floor:.1e})", fontsize=9)
    ax.legend(fontsize=8)
    return fig, ax


# ------------------------------------------------------------------ measuring


def bulk_l1_distance(exact_eigenvalues: np.ndarray, estimate: SpectrumResult, k: int, *, view: str = "linear",
                     sigma: float | None = None, floor: float | None = None,
                     num_points: int = 2001) -> dict[str, Any]:
    """L1 distance between the broadened exact and estimated densities over the bulk region.

    ``lambda_(k+1)`` is the largest eigenvalue not among the top ``k``.

    ``view="linear"``: densities of ``lambda`` on ``[lambda_min - 5 sigma,
    lambda_(k+1) + 5 sigma]``, ``sigma`` default 1/100 of that width.
    ``view="log"``: densities of ``log10|lambda|`` (positive and negative
    parts, :func:`log_abs_density`) for ``floor <= |lambda| <= lambda_(k+1)``
    (plus 5 sigma), ``sigma`` default 0.1 decade, ``floor`` default
    ``1e-4 * max|lambda|``; the difference in mass below the floor is added.
    Both densities are those of the full measure (outlier atoms included).
    """
    lam = np.sort(np.asarray(exact_eigenvalues, dtype=np.float64))
    if not 0 <= k < lam.size:
        raise InvalidInputError(f"k must be in [0, {lam.size - 1}]; got {k}")
    top_bulk = lam[-k - 1]
    if view == "linear":
        width = max(top_bulk - lam[0], 1e-12 * max(abs(lam[-1]), 1.0))
        sigma = width / 100 if sigma is None else float(sigma)
        grid = np.linspace(lam[0] - 5 * sigma, top_bulk + 5 * sigma, num_points)
        rho_exact = _density.gaussian_density(lam, np.full(lam.size, 1.0 / lam.size), grid, sigma)
        atoms, mass = estimate.spectral_measure()
        rho_est = _density.gaussian_density(atoms, mass, grid, sigma)
        return {"view": "linear", "l1": _density.l1_distance(rho_est, rho_exact, grid), "sigma": sigma,
                "region": [float(grid[0]), float(grid[-1])]}
    if view != "log":
        raise InvalidInputError(f"view must be 'linear' or 'log'; got {view!r}")
    big = float(np.abs(lam).max())
    floor = 1e-4 * big if floor is None else float(floor)
    sigma = 0.1 if sigma is None else float(sigma)
    ex = log_abs_density(lam, floor=floor, sigma=sigma, num_points=num_points)
    es = log_abs_density(estimate, floor=floor, sigma=sigma, num_points=num_points)
    grid = ex.grid
    # the estimate's grid can differ (its own max|lambda|): evaluate on the exact one
    rho_pos = np.interp(grid, es.grid, es.rho_pos, left=0.0, right=0.0)
    rho_neg = np.interp(grid, es.grid, es.rho_neg, left=0.0, right=0.0)
    upper = math.log10(max(abs(top_bulk), floor)) + 5 * sigma
    mask = grid <= upper
    g = grid[mask]
    l1 = (_density.l1_distance(rho_pos[mask], ex.rho_pos[mask], g)
          + _density.l1_distance(rho_neg[mask], ex.rho_neg[mask], g)
          + abs(es.mass_below_floor - ex.mass_below_floor))
    return {"view": "log", "l1": float(l1), "sigma": sigma, "floor": floor,
            "region_log10": [float(g[0]), float(g[-1])],
            "mass_below_floor": {"exact": ex.mass_below_floor, "estimate": es.mass_below_floor}}
