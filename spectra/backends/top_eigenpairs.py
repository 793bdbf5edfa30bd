"""The top eigenpairs of a symmetric operator, warm-started from earlier ones.

:func:`top_eigenpairs` runs Lanczos with full reorthogonalisation and stops
as soon as the ``k`` largest Ritz pairs have residuals
``||H x - theta x|| <= tol * max|theta|`` (the residuals come for free from
the tridiagonal matrix).  Cold, it starts from a seeded random vector; warm,
from the sum of earlier eigenvectors plus a small random part (``mix``) so
that no direction is missing from the Krylov space (:func:`warm_vector`).
Between nearby training steps or points on a path the top eigenvectors move
little, so the warm run stops after fewer products.

:func:`warm_top_eigenpairs` is the solver that curvature tracks
(:mod:`spectra.tracking`) and paths (:mod:`spectra.path`) call: the one place
to change how they find the top eigenpairs.  It runs the ``topk`` backend's
block Krylov-Schur with the previous eigenvectors as the first block.  :func:`arpack_top` is the cold
ARPACK reference they compare against.

>>> import torch
>>> from spectra.operators.base import DenseOperator
>>> A = DenseOperator(torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64)))
>>> pairs = top_eigenpairs(A, k=3, tol=1e-10)
>>> pairs.values.round(6).tolist(), pairs.converged
([100.0, 99.0, 98.0], True)
>>> again = warm_top_eigenpairs(A, 3, previous=pairs, tol=1e-10)
>>> again.warm, again.num_matvecs < pairs.num_matvecs
(True, True)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import ConvergenceError, InvalidInputError

BREAKDOWN = 1e-10  # relative to max|theta|: the Krylov space is (numerically) invariant
DEFAULT_MIX = 0.05  # weight of the random part of a warm start vector
# Default step cap: max(STEPS_PER_EIGENVALUE * k + STEPS_EXTRA, STEPS_MIN), at most P.
STEPS_PER_EIGENVALUE, STEPS_EXTRA, STEPS_MIN = 4, 40, 80
RESTART_SEED_STRIDE = 7919  # a prime: restart r draws from seed + r * stride, apart from other seeds in use
TINY = 1e-300  # keeps a scale positive when every Ritz value is exactly zero
WARM_BLOCK_SIZE = 1  # warm_top_eigenpairs: one start vector (see its docstring for the measurement)
WARM_MAX_BASES = 20  # warm_top_eigenpairs gives up (ConvergenceError) after this many bases' worth of products


@dataclass
class Eigenpairs:
    """The ``k`` largest eigenpairs found: values descending, vectors ``[P, k]`` (float64)."""

    values: np.ndarray
    vectors: torch.Tensor
    residuals: np.ndarray
    num_matvecs: int
    converged: bool
    solver: str
    warm: bool
    steps: int = 0


def _random_unit(P: int, seed: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(seed))
    v = torch.randn(P, generator=gen, dtype=torch.float64)
    return (v / v.norm()).to(device)


def top_eigenpairs(op: Any, k: int = 1, *, v0: torch.Tensor | np.ndarray | None = None,
                   tol: float = 1e-4, max_steps: int | None = None, seed: int = 0,
                   fallback: bool = True) -> Eigenpairs:
    """The ``k`` algebraically largest eigenpairs of a symmetric operator by early-stopping Lanczos.

    ``v0`` is the start vector (``None``: seeded random).  Stops when the top
    ``k`` Ritz residuals are at most ``tol * max|theta|``; if that has not
    happened after ``max_steps`` products (default ``min(P, max(4k + 40, 80))``)
    and ``fallback`` is true, ARPACK finishes the job from the best Ritz
    vector (``solver="lanczos+arpack"``).  The Lanczos basis is kept in
    float64: ``P x max_steps`` numbers.
    """
    P = op.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < P:
        raise InvalidInputError(f"k must be an integer in [1, P-1] = [1, {P - 1}]; got {k!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise InvalidInputError(f"tol must be a positive number; got {tol!r}")
    k = int(k)
    steps_cap = min(P, int(max_steps) if max_steps else max(STEPS_PER_EIGENVALUE * k + STEPS_EXTRA, STEPS_MIN))
    device = op.device
    before = op.num_matvecs
    warm = v0 is not None
    if v0 is None:
        q = _random_unit(P, seed, device)
    else:
        q = torch.as_tensor(v0).to(device=device, dtype=torch.float64).reshape(-1)
        if q.numel() != P or not bool(torch.isfinite(q).all()) or float(q.norm()) == 0.0:
            raise InvalidInputError(f"v0 must be a finite, nonzero vector of length P={P}")
        q = q / q.norm()
    Q = torch.zeros(P, steps_cap, dtype=torch.float64, device=device)
    alpha: list[float] = []
    beta: list[float] = []  # beta[j] couples step j and j+1 (0 after a restart)
    Q[:, 0] = q
    restarts = 0
    converged = False
    theta = np.zeros(0)
    S = np.zeros((0, 0))
    b = 0.0
    m = 0
    for j in range(steps_cap):
        w = op.matvec(Q[:, j].to(op.dtype)).to(torch.float64)
        a = float(Q[:, j] @ w)
        w = w - a * Q[:, j]
        if j and beta[j - 1] != 0.0:
            w = w - beta[j - 1] * Q[:, j - 1]
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - Q[:, : j + 1] @ (Q[:, : j + 1].T @ w)
        b = float(w.norm())
        alpha.append(a)
        m = j + 1
        T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
        theta, S = np.linalg.eigh(T)
        scale = max(float(np.abs(theta).max()), TINY)
        if m >= k:
            res = b * np.abs(S[-1, -k:])
            if bool(np.all(res <= tol * scale)):
                converged = True
                break
        if m == steps_cap:
            break
        if b <= BREAKDOWN * scale:
            # The Krylov space is invariant: continue from a fresh random direction
            # (orthogonal to it) so eigenvalues outside it can still be found.
            restarts += 1
            w = _random_unit(P, seed + RESTART_SEED_STRIDE * restarts, device)
            for _ in range(2):
                w = w - Q[:, : j + 1] @ (Q[:, : j + 1].T @ w)
            beta.append(0.0)
            Q[:, j + 1] = w / w.norm()
            continue
        beta.append(b)
        Q[:, j + 1] = w / b
    top = np.argsort(theta)[::-1][:k]
    values = theta[top]
    vectors = Q[:, :m] @ torch.as_tensor(S[:, top], dtype=torch.float64, device=device)
    residuals = b * np.abs(S[-1, top])
    solver = "lanczos"
    if not converged and fallback:
        values, vectors, residuals = _arpack_finish(op, k, vectors[:, 0], tol)
        solver = "lanczos+arpack"
        converged = True
    return Eigenpairs(values=values, vectors=vectors, residuals=residuals, num_matvecs=op.num_matvecs - before,
                      converged=converged, solver=solver, warm=warm, steps=m)


def _arpack_finish(op: Any, k: int, v0: torch.Tensor, tol: float) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    from scipy.sparse.linalg import eigsh

    from .arpack import single_threaded_blas

    with single_threaded_blas(), _arpack_convergence(k, tol):
        w, V = eigsh(op.to_scipy(), k=k, which="LA", tol=tol, v0=v0.cpu().numpy())
    order = np.argsort(w)[::-1]
    return w[order], torch.as_tensor(V[:, order], dtype=torch.float64, device=op.device), np.full(k, np.nan)


def arpack_top(op: Any, k: int, tol: float = 1e-4, seed: int = 0) -> Eigenpairs:
    """Cold ARPACK (``eigsh``, largest algebraic, seeded random ``v0``): the reference solver."""
    from scipy.sparse.linalg import eigsh

    from .arpack import single_threaded_blas

    before = op.num_matvecs
    v0 = np.random.default_rng(seed).standard_normal(op.shape[0])
    with single_threaded_blas(), _arpack_convergence(k, tol):
        w, V = eigsh(op.to_scipy(), k=k, which="LA", tol=tol, v0=v0)
    order = np.argsort(w)[::-1]
    return Eigenpairs(values=w[order], vectors=torch.as_tensor(V[:, order]), residuals=np.full(k, np.nan),
                      num_matvecs=op.num_matvecs - before, converged=True, solver="arpack", warm=False)


def warm_vector(previous: Eigenpairs | torch.Tensor | None, P: int, seed: int,
                mix: float = DEFAULT_MIX) -> torch.Tensor | None:
    """Start vector from previous eigenvectors: their sum plus ``mix`` of a random unit vector."""
    if previous is None:
        return None
    V = previous.vectors if isinstance(previous, Eigenpairs) else torch.as_tensor(previous)
    V = V.to(torch.float64)
    if V.ndim == 1:
        V = V[:, None]
    if V.shape[0] != P:
        raise InvalidInputError(f"the previous eigenvectors have length {V.shape[0]}, the operator P={P}")
    v = V.sum(dim=1)
    v = v / v.norm()
    return v + mix * _random_unit(P, seed, V.device)



def warm_top_eigenpairs(op: Any, k: int, previous: Eigenpairs | torch.Tensor | None = None, *,
                        tol: float = 1e-4, seed: int = 0, mix: float = DEFAULT_MIX) -> Eigenpairs:
    """The ``k`` largest eigenpairs of ``op``, started from ``previous`` eigenvectors when given.

    The solver of curvature tracks and paths (the one place to change it): the
    ``topk`` backend's Krylov-Schur solver
    (:func:`spectra.backends.block_krylov.block_krylov_schur`, thick restarts
    and locking) started from :func:`warm_vector` of ``previous`` (its random
    part seeded by ``seed + 1``; cold: a seeded random vector), stopped when
    the ``k`` largest Ritz pairs have residuals ``<= tol * max|theta|``, as
    :func:`top_eigenpairs`.  Blocks of one vector: on the tracking test
    problem (blob net, k = 3, four warm records) the previous eigenvectors as
    a block of three took 84 products against 52 for their sum as one vector.
    """
    from .block_krylov import BudgetExhausted, block_krylov_schur

    P = op.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < P:
        raise InvalidInputError(f"k must be an integer in [1, P-1] = [1, {P - 1}]; got {k!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise InvalidInputError(f"tol must be a positive number; got {tol!r}")
    start = warm_vector(previous, P, seed + 1, mix)
    start = None if start is None else start[:, None]
    block = WARM_BLOCK_SIZE
    before = op.num_matvecs

    def matmat(V: torch.Tensor) -> torch.Tensor:
        return op.matmat(V.to(op.dtype))

    # the basis of the single-vector Lanczos this replaced (its default step cap), restarted thickly
    basis = min(P, max(STEPS_PER_EIGENVALUE * k + STEPS_EXTRA, STEPS_MIN))
    try:
        found = block_krylov_schur(matmat, P, top=int(k), bottom=0, block_size=block, tol=0.0, stop_residual=tol,
                                   max_basis=basis, generator=torch.Generator().manual_seed(int(seed)), start=start,
                                   device=op.device, max_products=WARM_MAX_BASES * basis)
    except BudgetExhausted:
        raise ConvergenceError(f"the top {k} eigenpairs did not reach residuals <= {tol:g} x max|theta| within "
                               f"{WARM_MAX_BASES * basis} products; loosen tol or ask for fewer eigenvalues") from None
    order = torch.argsort(found.values, descending=True)
    return Eigenpairs(values=found.values[order].cpu().numpy(), vectors=found.vectors[:, order],
                      residuals=found.residuals[order].cpu().numpy(), num_matvecs=op.num_matvecs - before,
                      converged=bool((found.residuals <= tol * max(found.scale, TINY)).all()), solver="topk",
                      warm=start is not None, steps=found.iterations)


@contextlib.contextmanager
def _arpack_convergence(k: int, tol: float) -> Iterator[None]:
    """ARPACK's ``ArpackNoConvergence`` as a :class:`~spectra.errors.ConvergenceError` saying what to change."""
    from scipy.sparse.linalg import ArpackNoConvergence

    try:
        yield
    except ArpackNoConvergence as exc:
        raise ConvergenceError(
            f"ARPACK did not converge for the top {k} eigenpairs ({len(exc.eigenvalues)} converged, tol={tol:g}); "
            "loosen tol or ask for fewer eigenvalues"
        ) from exc


__all__ = ["DEFAULT_MIX", "Eigenpairs", "arpack_top", "top_eigenpairs", "warm_top_eigenpairs", "warm_vector"]
