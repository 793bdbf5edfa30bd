"""One record of curvature: :func:`curvature_at` the model's current weights, in any training loop.

>>> import torch
>>> torch.manual_seed(0) and None
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
>>> X, y = torch.randn(64, 2, dtype=torch.float64), torch.randint(0, 2, (64,))
>>> curvature_at(net, (X, y), k=2, trace=None).eig.values.shape
(2,)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..backends.top_eigenpairs import DEFAULT_MIX, Eigenpairs, arpack_top, top_eigenpairs, warm_top_eigenpairs

@dataclass
class CurvatureRecord:
    """Curvature at one step: top eigenpairs, trace, optional density, costs."""

    step: int
    loss: float
    grad_norm: float
    eig: Eigenpairs | None
    trace: Any = None  # spectra.trace.TraceEstimate
    density: Any = None  # spectra.result.SpectrumResult (SLQ)
    cold: Eigenpairs | None = None
    cold_lanczos: Eigenpairs | None = None
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def curvature_at(model: torch.nn.Module, data: Any, *, step: int = 0, loss: Any = "cross_entropy", k: int = 5,
                 previous: CurvatureRecord | Eigenpairs | None = None, warm_start: bool = True,
                 tol: float = 1e-4, trace: str | None = "hutchpp", trace_matvecs: int = 30,
                 density: bool = False, density_probes: int = 4, density_steps: int = 40,
                 compare_cold: bool = False, params: Any = None, seed: int = 0, mix: float = DEFAULT_MIX,
                 operator_options: dict[str, Any] | None = None) -> CurvatureRecord:
    """Curvature of ``loss`` over ``data`` at the model's current weights (any training loop).

    ``previous`` (the last record or its eigenpairs) warm-starts the
    eigen-solver.  ``trace``: ``"hutchpp"``, ``"hutchinson"``, ``"exact"`` or
    ``None``; ``density``: an SLQ density with ``density_probes`` probes of
    ``density_steps`` steps.  ``compare_cold`` also runs cold ARPACK and the
    same Lanczos from a random start (to measure what warm starts save).  All
    probes are seeded by ``seed``.

    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    >>> X, y = torch.randn(64, 2, dtype=torch.float64), torch.randint(0, 2, (64,))
    >>> r0 = curvature_at(net, (X, y), k=2)
    >>> r1 = curvature_at(net, (X, y), k=2, previous=r0)   # warm start: same weights, few products
    >>> r1.eig.num_matvecs < r0.eig.num_matvecs, bool(abs(r1.eig.values[0] - r0.eig.values[0]) < 1e-8)
    (True, True)
    """
    from ..operators.hessian import HessianOperator

    start = time.perf_counter()
    options = {"check_determinism": previous is None, **(operator_options or {})}
    op = HessianOperator(model, loss, data, params=params, **options)
    prev = previous.eig if isinstance(previous, CurvatureRecord) else previous
    warm_from = prev if warm_start else None
    eig = warm_top_eigenpairs(op, k, warm_from, tol=tol, seed=seed, mix=mix)
    cold = arpack_top(op, k, tol=tol, seed=seed) if compare_cold else None
    cold_lz = top_eigenpairs(op, k, tol=tol, seed=seed) if (compare_cold and warm_from is not None) else None
    tr = None
    if trace is not None:
        from ..trace import estimate_trace

        tr = estimate_trace(op, trace, num_matvecs=trace_matvecs, seed=seed)
    dens = None
    if density:
        from ..backends.lanczos import LanczosBackend

        dens = LanczosBackend().run(op, num_probes=density_probes, num_steps=min(density_steps, op.shape[0]),
                                    seed=seed)
    return CurvatureRecord(step=int(step), loss=op.loss_value, grad_norm=op.grad_norm, eig=eig, trace=tr,
                           density=dens, cold=cold, cold_lanczos=cold_lz, seconds=time.perf_counter() - start)


__all__ = ["CurvatureRecord", "curvature_at"]
