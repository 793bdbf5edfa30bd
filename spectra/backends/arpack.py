"""ARPACK backend: a few extreme eigenvalues with ``scipy.sparse.linalg.eigsh``.

``which="largest"`` (largest algebraic), ``"smallest"`` (smallest algebraic —
negative eigenvalues matter for Hessians) or ``"both"`` (``k`` from each end,
two runs).  Every eigenpair comes with its residual ``||H v - lambda v||``,
recomputed with fresh products.

``tol`` is ARPACK's relative *residual* tolerance.  For a symmetric operator
an eigenvalue is far more accurate than its residual: the error is at most
``r`` and about ``r**2 / gap``, so the default ``tol=1e-6`` typically gives
eigenvalues to ~1e-12 relative (measured: 1e-13 against the exact spectrum of
784-10-10, 4e-13 on 784-64-64-10) for about two thirds of the products of
``tol=0`` (machine-precision residuals).  Each result carries that estimate,
``min(r, r**2 / gap)`` with the gap to the nearest other computed eigenvalue,
in ``provenance["eigenvalue_error_estimates"]``.

scipy's BLAS threads and torch's threads fight over few cores (ARPACK paths
ran 3x slower on 2 cores); BLAS is limited to one thread while ``eigsh`` runs.

>>> import torch
>>> from spectra.operators.base import DenseOperator
>>> A = torch.diag(torch.arange(-3.0, 7.0, dtype=torch.float64))
>>> ArpackBackend().run(DenseOperator(A), k=2, which="both").eigenvalues.round(8).tolist()
[-3.0, -2.0, 5.0, 6.0]
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import ConvergenceError, InvalidInputError
from ..result import SpectrumResult
from .base import refuses_unknown_options

_WHICH = {"largest": "LA", "smallest": "SA"}
# Eigenvalues this close (relative to the spectrum's scale) count as repeated or as zero: the case where a
# single-vector Krylov run misses copies and the multiplicity check runs.
REPEAT_TOL = 1e-8
# Found eigenpairs are pushed this many spectral scales away before the search for missed copies.
DEFLATION_PUSH = 4.0
# The largest eigenvalue's cheap estimate is padded by this factor, so the shifted spectrum stays one-signed.
SHIFT_PADDING = 1.01
TINY = 1e-300  # keeps a scale positive when every eigenvalue found is exactly zero
KEPT_NORM = 0.5  # a new vector keeping less of its norm off the found ones lay in their span: not a new copy
TOP_ESTIMATE_TOL = 1e-2  # a loose tolerance: the shift only needs the largest eigenvalue roughly
# More products than this many times P cost several times the whole dense spectrum (P products and
# eigh): the small end of a singular Hessian, where ARPACK can take 40-250 P, is the usual case.
COSTLY_PRODUCTS_PER_PARAMETER = 5.0
COSTLY_PRODUCTS_MIN = 200  # fewer products are cheap whatever P is (tiny P needs ~2P for two ends)


class CostlyRunWarning(UserWarning):
    """ARPACK spent several times the products of the exact spectrum."""


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit numpy/scipy BLAS to one thread for the block (torch keeps its own)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


class ArpackBackend:
    """Extreme eigenpairs by implicitly restarted Lanczos (ARPACK)."""

    name = "arpack"
    is_exact = False

    @refuses_unknown_options
    def run(self, op: Any, *, k: int = 10, which: str = "largest", tol: float = 1e-6, ncv: int | None = None,
            maxiter: int | None = None, seed: int = 0, return_eigenvectors: bool = False,
            check_multiplicity: bool | str = "auto") -> SpectrumResult:
        P = op.shape[0]
        if which not in ("largest", "smallest", "both"):
            raise InvalidInputError(f"which must be 'largest', 'smallest' or 'both'; got {which!r}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k must be a positive integer; got {k!r}")
        if k >= P:
            raise InvalidInputError(
                f"arpack needs k < P; got k={k} for P={P} parameters (use method='exact' for all eigenvalues)"
            )
        if not (isinstance(tol, (int, float)) and 0.0 <= tol < 1.0):
            raise InvalidInputError(f"tol must be a number in [0, 1) (0 means machine precision); got {tol!r}")
        if ncv is not None and not (k < ncv <= P):
            raise InvalidInputError(f"ncv must satisfy k < ncv <= P; got ncv={ncv}, k={k}, P={P}")
        scipy_op = op.to_scipy()
        v0 = np.random.default_rng(seed).standard_normal(P)
        start = time.perf_counter()
        before = op.num_matvecs
        values, vectors = [], []
        shift = None
        deflation_runs = 0
        for end in ["largest", "smallest"] if which == "both" else [which]:
            sigma = 0.0
            if end == "smallest":
                # ARPACK tests convergence relative to |theta|; a Hessian's smallest
                # eigenvalues often sit in an exact null space (theta = 0), where that
                # test can never pass.  Shift by an upper bound of the spectrum so the
                # wanted eigenvalues are far from zero: lambda = theta + shift.
                top = float(values[0].max()) if values else _top_estimate(scipy_op, v0)
                shift = abs(top) if top > 0 else 1.0
                sigma = -shift
            solve = _EndSolver(scipy_op, end, int(k), tol, ncv, maxiter, v0, int(seed))
            w, v = solve(sigma, None)
            w, v, extra = _recover_multiplicities(solve, sigma, w, v, check_multiplicity)
            deflation_runs += extra
            values.append(w)
            vectors.append(v)
        solver_matvecs = op.num_matvecs - before
        seconds = time.perf_counter() - start
        if solver_matvecs > max(COSTLY_PRODUCTS_PER_PARAMETER * P, COSTLY_PRODUCTS_MIN):
            warnings.warn(
                f"arpack took {solver_matvecs} products for P={P} parameters ({solver_matvecs / P:.0f} per "
                f"parameter, which={which!r}), more than the whole exact spectrum costs (P products and eigh); "
                "method='topk' (the default for the small end) switches to that cheaper path by itself, and "
                "method='exact' returns every eigenvalue", CostlyRunWarning, stacklevel=2)
        lam = np.concatenate(values)
        vec = np.concatenate(vectors, axis=1)
        order = np.argsort(lam)
        lam, vec = lam[order], vec[:, order]
        # residuals with fresh products, in the operator's own precision
        V = torch.as_tensor(vec, dtype=op.dtype, device=op.device)
        HV = op.matmat(V)
        residuals = (HV - V * torch.as_tensor(lam, dtype=op.dtype, device=op.device)).norm(dim=0)
        op.num_matvecs -= V.shape[1]
        residuals_np = residuals.cpu().numpy().astype(np.float64)
        return SpectrumResult(
            method=self.name,
            is_exact=self.is_exact,
            eigenvalues=lam.astype(np.float64),
            eigenvectors=vec if return_eigenvectors else None,
            residuals=residuals_np,
            num_params=P,
            num_matvecs=solver_matvecs,
            provenance={"k": int(k), "which": which, "tol": tol, "ncv": ncv, "maxiter": maxiter,
                        "seed": seed, "v0": "standard normal, numpy default_rng(seed)",
                        "smallest_end_shift": shift, "multiplicity_check_runs": deflation_runs,
                        "solver_seconds": seconds, "residual_matvecs": int(V.shape[1]),
                        "eigenvalue_error_estimates": error_estimates(lam, residuals_np).tolist(),
                        "blas_threads": 1},
        )


def error_estimates(eigenvalues: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """Eigenvalue error estimates ``min(r, r**2 / gap)`` from residual norms.

    ``r`` bounds the error of a symmetric operator's Ritz value; ``r**2 / gap``
    (Kato-Temple) is the sharper estimate, with ``gap`` taken to the nearest
    other *computed* eigenvalue, so it is an estimate, not a bound, for the
    innermost value of each end.

    >>> error_estimates(np.array([1.0, 2.0]), np.array([1e-6, 1e-3])).tolist()
    [1e-12, 1e-06]
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    r = np.abs(np.asarray(residuals, dtype=np.float64))
    if lam.size < 2:
        return r.copy()
    gaps = np.abs(lam[:, None] - lam[None, :])
    np.fill_diagonal(gaps, np.inf)
    gap = gaps.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kt = np.where(gap > 0, r**2 / gap, np.inf)
    return np.minimum(r, kt)


class _EndSolver:
    """One ARPACK run at one end of ``op + sigma I``, optionally with found pairs pushed away."""

    def __init__(self, op: Any, end: str, k: int, tol: float, ncv: int | None, maxiter: int | None,
                 v0: np.ndarray, seed: int = 0):
        self.op, self.end, self.k, self.tol, self.ncv, self.maxiter, self.v0 = op, end, k, tol, ncv, maxiter, v0
        self.seed = seed

    def __call__(self, sigma: float, push: tuple[np.ndarray, float] | None,
                 v0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, eigsh

        target = self.op if sigma == 0.0 and push is None else _shifted(self.op, sigma, push)
        with single_threaded_blas():
            try:
                w, v = eigsh(target, k=self.k, which=_WHICH[self.end], tol=self.tol, ncv=self.ncv,
                             maxiter=self.maxiter, v0=self.v0 if v0 is None else v0)
            except ArpackNoConvergence as exc:
                P = self.op.shape[0]
                ncv = self.ncv if self.ncv is not None else min(P, max(2 * self.k + 1, 20))  # scipy's default (choose_ncv)
                maxiter = self.maxiter if self.maxiter is not None else 10 * P  # scipy's default
                raise ConvergenceError(
                    f"ARPACK did not converge at the {self.end} end: {len(exc.eigenvalues)} of k={self.k} "
                    f"eigenvalues converged within maxiter={maxiter} restarts (ncv={ncv}, tol={self.tol:g}); "
                    f"raise maxiter, raise ncv (at most P={P}), loosen tol, or ask for fewer eigenvalues"
                ) from exc
            except ArpackError as exc:
                raise InvalidInputError(f"ARPACK failed for which={self.end!r} (k={self.k}): {exc}") from exc
        return w - sigma, v


def _recover_multiplicities(solve: _EndSolver, sigma: float, w: np.ndarray, v: np.ndarray,
                            check: bool | str, max_rounds: int = 4) -> tuple[np.ndarray, np.ndarray, int]:
    """Find copies of repeated eigenvalues that a single-vector Krylov run can miss.

    A Krylov space from one start vector holds at most one direction per
    distinct eigenvalue (in exact arithmetic), so a degenerate cluster — a
    Hessian's null space above all — can come back short.  Push the found
    eigenvectors far away (Hotelling deflation, ``+- c V V^T``) and solve again;
    keep the ``k`` best of old and new until nothing better appears.  ``"auto"``
    does this only when the found eigenvalues hold a repeat or a zero
    (relative ``REPEAT_TOL``), the case where copies go missing.
    """
    scale = max(float(np.abs(w).max()), abs(sigma), TINY)
    repeated = (np.abs(np.diff(np.sort(w))) <= REPEAT_TOL * scale).any() or (np.abs(w) <= REPEAT_TOL * scale).any()
    if check is False or (check == "auto" and not repeated):
        return w, v, 0
    sign = 1.0 if solve.end == "smallest" else -1.0
    c = sign * DEFLATION_PUSH * scale
    rounds = 0
    rng = np.random.default_rng([solve.seed, 1])  # reproducible, and independent of the first start
    for rounds in range(1, max_rounds + 1):
        # A fresh start vector, orthogonal to what was found: the first start vector's
        # component in a degenerate eigenspace is already among the found vectors, so
        # restarting from it finds no new copy unless rounding happens to add one.
        start = rng.standard_normal(v.shape[0])
        start -= v @ (v.T @ start)
        w_new, v_new = solve(sigma, (v, c), start)
        # eigenvectors of the pushed operator that are orthogonal to v are eigenvectors of op
        v_new = v_new - v @ (v.T @ v_new)
        norms = np.linalg.norm(v_new, axis=0)
        keep = norms > KEPT_NORM
        if not keep.any():
            break
        v_new = v_new[:, keep] / norms[keep]
        w_all = np.concatenate([w, w_new[keep]])
        v_all = np.concatenate([v, v_new], axis=1)
        order = np.argsort(w_all if solve.end == "smallest" else -w_all)[: solve.k]
        if set(order.tolist()) == set(range(len(w))):
            break  # nothing better than what we had
        w, v = w_all[order], v_all[:, order]
        # Rayleigh-Ritz on the merged set: orthonormalise, then diagonalise V^T H V
        v, _ = np.linalg.qr(v)
        M = v.T @ solve.op.matmat(v)
        w, U = np.linalg.eigh(0.5 * (M + M.T))
        v = v @ U
    return w, v, rounds


def _shifted(op: Any, sigma: float, push: tuple[np.ndarray, float] | None = None) -> Any:
    """``op + sigma I (+ c V V^T)`` as a scipy LinearOperator."""
    from scipy.sparse.linalg import LinearOperator

    def apply(x: np.ndarray) -> np.ndarray:
        X = x.reshape(op.shape[1], -1)
        Y = op.matmat(X) + sigma * X
        if push is not None:
            V, c = push
            Y = Y + c * (V @ (V.T @ X))
        return Y.reshape(x.shape)

    return LinearOperator(op.shape, matvec=apply, matmat=apply, dtype=np.float64)


def _top_estimate(op: Any, v0: np.ndarray) -> float:
    """A cheap estimate of the largest eigenvalue (loose tolerance, a few products)."""
    from scipy.sparse.linalg import eigsh

    with single_threaded_blas():
        w = eigsh(op, k=1, which="LA", tol=TOP_ESTIMATE_TOL, v0=v0, return_eigenvectors=False)
    return float(w[0]) * SHIFT_PADDING if w[0] > 0 else float(w[0])
