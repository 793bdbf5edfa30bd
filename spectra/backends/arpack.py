"""ARPACK backend: a few extreme eigenvalues with ``scipy.sparse.linalg.eigsh``.

``which="largest"`` (largest algebraic), ``"smallest"`` (smallest algebraic —
negative eigenvalues matter for Hessians) or ``"both"`` (``k`` from each end,
two runs).  Every eigenpair comes with its residual ``||H v - lambda v||``,
recomputed with fresh products.

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
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import InvalidInputError
from ..result import SpectrumResult
from .base import check_options

_WHICH = {"largest": "LA", "smallest": "SA"}


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit numpy/scipy BLAS to one thread for the block (torch keeps its own)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


class ArpackBackend:
    """Extreme eigenpairs by implicitly restarted Lanczos (ARPACK)."""

    name = "arpack"
    is_exact = False
    options = {"k", "which", "tol", "ncv", "maxiter", "seed", "return_eigenvectors"}

    def run(self, op: Any, *, k: int = 10, which: str = "largest", tol: float = 0.0, ncv: int | None = None,
            maxiter: int | None = None, seed: int = 0, return_eigenvectors: bool = False,
            **options: Any) -> SpectrumResult:
        check_options(self.name, options, set())
        from scipy.sparse.linalg import ArpackNoConvergence, eigsh

        P = op.shape[0]
        if which not in ("largest", "smallest", "both"):
            raise InvalidInputError(f"which must be 'largest', 'smallest' or 'both'; got {which!r}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k must be a positive integer; got {k!r}")
        if k >= P:
            raise InvalidInputError(
                f"arpack needs k < P; got k={k} for P={P} parameters (use method='exact' for all eigenvalues)"
            )
        if ncv is not None and not (k < ncv <= P):
            raise InvalidInputError(f"ncv must satisfy k < ncv <= P; got ncv={ncv}, k={k}, P={P}")
        scipy_op = op.to_scipy()
        v0 = np.random.default_rng(seed).standard_normal(P)
        start = time.perf_counter()
        before = op.num_matvecs
        values, vectors, runs = [], [], []
        ends = ["smallest", "largest"] if which == "both" else [which]
        for end in ends:
            with single_threaded_blas():
                try:
                    w, v = eigsh(scipy_op, k=int(k), which=_WHICH[end], tol=tol, ncv=ncv, maxiter=maxiter, v0=v0)
                except ArpackNoConvergence as exc:
                    raise InvalidInputError(
                        f"ARPACK did not converge for which={end!r} (k={k}, {len(exc.eigenvalues)} converged); "
                        "raise maxiter or ncv, or loosen tol"
                    ) from exc
            values.append(w)
            vectors.append(v)
            runs.append(end)
        solver_matvecs = op.num_matvecs - before
        seconds = time.perf_counter() - start
        lam = np.concatenate(values)
        vec = np.concatenate(vectors, axis=1)
        order = np.argsort(lam)
        lam, vec = lam[order], vec[:, order]
        # residuals with fresh products, in the operator's own precision
        V = torch.as_tensor(vec, dtype=op.dtype, device=op.device)
        HV = op.matmat(V)
        residuals = (HV - V * torch.as_tensor(lam, dtype=op.dtype, device=op.device)).norm(dim=0)
        op.num_matvecs -= V.shape[1]
        return SpectrumResult(
            method=self.name,
            eigenvalues=lam.astype(np.float64),
            eigenvectors=vec if return_eigenvectors else None,
            residuals=residuals.cpu().numpy().astype(np.float64),
            num_params=P,
            num_matvecs=solver_matvecs,
            provenance={"k": int(k), "which": which, "tol": tol, "ncv": ncv, "maxiter": maxiter,
                        "seed": seed, "v0": "standard normal, numpy default_rng(seed)",
                        "solver_seconds": seconds, "residual_matvecs": int(V.shape[1]),
                        "blas_threads": 1},
        )
