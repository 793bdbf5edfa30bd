"""Curvature during training: top eigenvalues (warm-started), trace and density at chosen steps.

Two ways in:

* :func:`curvature_at` — a plain function for any PyTorch loop: the top-``k``
  Hessian eigenvalues (and, optionally, a trace estimate and an SLQ density)
  at the model's current weights.  Pass the previous call's result as
  ``previous=`` and the eigen-solver starts from its eigenvectors.
* :class:`CurvatureTracker` — keeps that state for you, builds a tidy table
  (one row per step, quantity and index), writes it atomically as CSV and
  JSON (plus an ``.npz`` of arrays) after every record, and plots it.  It is
  also a :func:`spectra.train` callback: ``train(..., callbacks=tracker,
  callback_steps=tracker.steps)``.

**Warm starts.**  The top eigenpairs come from a Lanczos run with full
reorthogonalisation that stops as soon as the ``k`` largest Ritz pairs have
residuals ``||H x - theta x|| <= tol * max|theta|`` (the residuals come for
free from the tridiagonal matrix).  Cold, it starts from a seeded random
vector; warm, from the sum of the previous eigenvectors plus a small random
part (``mix``) so that no direction is missing from the Krylov space.  Between
nearby training steps the top eigenvectors move little, so the warm run stops
after fewer products.  We compared, on the paper's nets along GD, cold
ARPACK (``eigsh``), ARPACK with ``v0`` from the previous eigenvectors, LOBPCG
(scipy) with the previous eigenvectors as its initial block, and this
early-stopping Lanczos cold and warm: warm LOBPCG needed *more* products than
cold ARPACK (each LOBPCG iteration costs ``k``) and ARPACK's ``v0`` saved
little (it fills ``ncv >= 2k+1`` vectors before it tests convergence), while
warm early-stopping Lanczos needed the fewest.  Most of the saving over ARPACK
comes from stopping early; the warm start itself saves a further few to ten
per cent over the same Lanczos started cold (``docs/beyond.md`` has the
numbers; ``examples/track_curvature.py --compare-cold`` measures them).
Like every Krylov method it can miss an eigenvalue whose direction is nearly
absent from the start vector; ``compare_cold=True`` re-solves cold (ARPACK,
and this Lanczos from a random vector) at each record and logs all three.

>>> import torch
>>> from spectra.operators.base import DenseOperator
>>> A = DenseOperator(torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64)))
>>> pairs = top_eigenpairs(A, k=3, tol=1e-10)
>>> pairs.values.round(6).tolist(), pairs.converged
([100.0, 99.0, 98.0], True)
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ._io import atomic_save_npz, atomic_write_json, atomic_write_text
from .errors import InvalidInputError

__all__ = ["Eigenpairs", "top_eigenpairs", "CurvatureRecord", "curvature_at", "CurvatureTracker"]

BREAKDOWN = 1e-10  # relative to max|theta|: the Krylov space is (numerically) invariant
DEFAULT_MIX = 0.05


# ------------------------------------------------------------------ eigen-solver


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
    steps_cap = min(P, int(max_steps) if max_steps else max(4 * k + 40, 80))
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
        scale = max(float(np.abs(theta).max()), 1e-300)
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
            w = _random_unit(P, seed + 7919 * restarts, device)
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

    from .backends.arpack import single_threaded_blas

    with single_threaded_blas():
        w, V = eigsh(op.to_scipy(), k=k, which="LA", tol=tol, v0=v0.cpu().numpy())
    order = np.argsort(w)[::-1]
    return w[order], torch.as_tensor(V[:, order], dtype=torch.float64, device=op.device), np.full(k, np.nan)


def arpack_top(op: Any, k: int, tol: float = 1e-4, seed: int = 0) -> Eigenpairs:
    """Cold ARPACK (``eigsh``, largest algebraic, seeded random ``v0``): the reference solver."""
    from scipy.sparse.linalg import eigsh

    from .backends.arpack import single_threaded_blas

    before = op.num_matvecs
    v0 = np.random.default_rng(seed).standard_normal(op.shape[0])
    with single_threaded_blas():
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


# ------------------------------------------------------------------ one record


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
    from .operators.hessian import HessianOperator

    start = time.perf_counter()
    options = {"check_determinism": previous is None, **(operator_options or {})}
    op = HessianOperator(model, loss, data, params=params, **options)
    prev = previous.eig if isinstance(previous, CurvatureRecord) else previous
    v0 = warm_vector(prev, op.shape[0], seed + 1, mix) if warm_start else None
    eig = top_eigenpairs(op, k, v0=v0, tol=tol, seed=seed)
    cold = arpack_top(op, k, tol=tol, seed=seed) if compare_cold else None
    cold_lz = top_eigenpairs(op, k, tol=tol, seed=seed) if (compare_cold and v0 is not None) else None
    tr = None
    if trace is not None:
        from .trace import estimate_trace

        tr = estimate_trace(op, trace, num_matvecs=trace_matvecs, seed=seed)
    dens = None
    if density:
        from .backends.lanczos import LanczosBackend

        dens = LanczosBackend().run(op, num_probes=density_probes, num_steps=min(density_steps, op.shape[0]),
                                    seed=seed)
    return CurvatureRecord(step=int(step), loss=op.loss_value, grad_norm=op.grad_norm, eig=eig, trace=tr,
                           density=dens, cold=cold, cold_lanczos=cold_lz, seconds=time.perf_counter() - start)


# ------------------------------------------------------------------ the tracker

TABLE_COLUMNS = ("step", "quantity", "index", "value", "stderr")


def tidy_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV text of tidy rows: ``value`` and ``stderr`` written exactly (``repr``), a NaN ``stderr`` left empty.

    Shared by the training track (``curvature.csv``) and the path between two
    points (``path.csv``, whose first column is ``t``).

    >>> print(tidy_csv([{"step": 3, "quantity": "trace", "index": 0, "value": 0.1, "stderr": math.nan}],
    ...                TABLE_COLUMNS), end="")
    step,quantity,index,value,stderr
    3,trace,0,0.1,
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "value": repr(row["value"]),
                         "stderr": "" if math.isnan(row["stderr"]) else repr(row["stderr"])})
    return buf.getvalue()


class CurvatureTracker:
    """Record curvature at chosen steps; a tidy table, saved atomically and plotted.

    ``steps``: the steps to record (an iterable), or ``every`` = record each
    multiple of it; the final step of :func:`spectra.train` is always
    recorded.  Other options go to :func:`curvature_at`.  With ``out`` (a
    folder), ``curvature.csv``, ``curvature.json`` and ``curvature.npz`` are
    rewritten (atomically) after every record.

    >>> import torch, spectra
    >>> torch.manual_seed(0) and None
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    >>> X, y = torch.randn(64, 2, dtype=torch.float64), (torch.randn(64) > 0).long()
    >>> tracker = CurvatureTracker((X, y), k=2, every=10, trace_matvecs=12)
    >>> hist = spectra.train(net, (X, y), lr=0.5, max_steps=20, grad_tol=0,
    ...                      callbacks=tracker, callback_steps=tracker.schedule(20))
    >>> [r.step for r in tracker.records]
    [0, 10, 20]
    >>> sorted({row["quantity"] for row in tracker.rows()})[:4]
    ['accuracy', 'eig_matvecs', 'eig_warm', 'eigen_residual']
    """

    def __init__(self, data: Any, *, loss: Any = "cross_entropy", k: int = 5, steps: Iterable[int] | None = None,
                 every: int | None = None, out: str | Path | None = None, **options: Any):
        if steps is None and every is None:
            raise InvalidInputError("give the steps to record (steps=[...]) or a period (every=N)")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise InvalidInputError(f"every must be a positive integer; got {every!r}")
        self.data = data
        self.loss = loss
        self.k = int(k)
        self.steps = None if steps is None else sorted({int(s) for s in steps})
        self.every = every
        self.out = None if out is None else Path(out)
        self.options = options
        self.records: list[CurvatureRecord] = []

    # -- scheduling -----------------------------------------------------------
    def schedule(self, max_steps: int) -> list[int]:
        """The steps in ``[0, max_steps]`` this tracker records (for ``callback_steps=``)."""
        if self.steps is not None:
            return [s for s in self.steps if s <= max_steps]
        return list(range(0, max_steps + 1, self.every))

    def wants(self, step: int) -> bool:
        if self.steps is not None:
            return step in self.steps
        return step % self.every == 0

    # -- recording ------------------------------------------------------------
    def record(self, model: torch.nn.Module, step: int, **extra: float) -> CurvatureRecord:
        """Record the curvature now (the plain call for any training loop); ``extra`` values go in the table."""
        previous = self.records[-1] if self.records else None
        rec = curvature_at(model, self.data, step=step, loss=self.loss, k=self.k, previous=previous,
                           **self.options)
        rec.extra = {k: float(v) for k, v in extra.items()}
        self.records.append(rec)
        if self.out is not None:
            self.save(self.out)
        return rec

    def __call__(self, model: torch.nn.Module, info: dict) -> None:
        """The :func:`spectra.train` callback: ``f(model, info)``."""
        step = int(info["step"])
        if self.wants(step) or info.get("final"):
            if self.records and self.records[-1].step == step:
                return  # the final call repeats a scheduled step
            self.record(model, step, accuracy=info.get("accuracy", math.nan))

    # -- the table --------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """Tidy rows ``{step, quantity, index, value, stderr}`` (index: eigenvalue rank from 1, else 0)."""
        out: list[dict[str, Any]] = []

        def add(step: int, quantity: str, value: float, index: int = 0, stderr: float = math.nan) -> None:
            out.append({"step": step, "quantity": quantity, "index": index, "value": float(value),
                        "stderr": float(stderr)})

        for r in self.records:
            add(r.step, "loss", r.loss)
            add(r.step, "grad_norm", r.grad_norm)
            for name, v in r.extra.items():
                add(r.step, name, v)
            if r.eig is not None:
                for i, (lam, res) in enumerate(zip(r.eig.values, r.eig.residuals), start=1):
                    add(r.step, "eigenvalue", lam, i)
                    add(r.step, "eigen_residual", res, i)
                add(r.step, "eig_matvecs", r.eig.num_matvecs)
                add(r.step, "eig_warm", float(r.eig.warm))
            if r.cold is not None:
                for i, lam in enumerate(r.cold.values, start=1):
                    add(r.step, "eigenvalue_cold", lam, i)
                add(r.step, "eig_matvecs_cold", r.cold.num_matvecs)
            if r.cold_lanczos is not None:
                add(r.step, "eig_matvecs_cold_lanczos", r.cold_lanczos.num_matvecs)
            if r.trace is not None:
                add(r.step, "trace", r.trace.estimate, stderr=r.trace.stderr)
                add(r.step, "trace_matvecs", r.trace.num_matvecs)
            if r.density is not None:
                add(r.step, "density_matvecs", r.density.num_matvecs)
            add(r.step, "seconds", r.seconds)
        return out

    def column(self, quantity: str, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one quantity from the table."""
        rows = [r for r in self.rows() if r["quantity"] == quantity and r["index"] == index]
        return np.array([r["step"] for r in rows]), np.array([r["value"] for r in rows])

    def matvec_summary(self) -> dict[str, Any]:
        """Products spent on the eigenvalues: warm vs cold (when ``compare_cold`` was on).

        Cold ARPACK and cold Lanczos totals cover the same records as the warm total
        (all but the first, which has nothing to start from).
        """
        warm = [r.eig.num_matvecs for r in self.records if r.eig is not None and r.eig.warm]
        first = [r.eig.num_matvecs for r in self.records if r.eig is not None and not r.eig.warm]
        cold = [r.cold.num_matvecs for r in self.records[1:] if r.cold is not None]
        out = {"records": len(self.records), "first_record_matvecs": sum(first),
               "warm_matvecs_total": sum(warm), "warm_records": len(warm)}
        cold_lz = [r.cold_lanczos.num_matvecs for r in self.records if r.cold_lanczos is not None]
        if cold:
            out.update(cold_arpack_matvecs_total=sum(cold), warm_to_cold_ratio=sum(warm) / max(sum(cold), 1))
        if cold_lz:
            out.update(cold_lanczos_matvecs_total=sum(cold_lz),
                       warm_to_cold_lanczos_ratio=sum(warm) / max(sum(cold_lz), 1))
        if cold:
            diffs = [float(np.max(np.abs(r.eig.values - r.cold.values)) / max(abs(r.cold.values).max(), 1e-300))
                     for r in self.records if r.cold is not None and r.eig is not None]
            out["max_relative_eigenvalue_difference"] = max(diffs)
        return out

    def to_csv(self) -> str:
        return tidy_csv(self.rows(), TABLE_COLUMNS)

    def save(self, out: str | Path) -> Path:
        """Write ``curvature.csv``, ``curvature.json`` and ``curvature.npz`` into ``out`` (atomically)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        if self.records:
            arrays["step"] = np.array([r.step for r in self.records], dtype=np.int64)
            arrays["eigenvalues"] = np.array([r.eig.values for r in self.records if r.eig is not None])
            dens = [r.density for r in self.records if r.density is not None]
            if dens and len(dens) == len(self.records):
                arrays["density_nodes"] = np.stack([d.nodes for d in dens])
                arrays["density_weights"] = np.stack([d.weights for d in dens])
        atomic_save_npz(out / "curvature.npz", **arrays)
        atomic_write_text(out / "curvature.csv", self.to_csv())
        atomic_write_json(out / "curvature.json", {
            "format": "spectra-curvature-track", "format_version": 1, "k": self.k, "loss": str(self.loss),
            "options": {k: v for k, v in self.options.items() if isinstance(v, (int, float, str, bool, type(None)))},
            "matvecs": self.matvec_summary(), "columns": list(TABLE_COLUMNS), "rows": self.rows(),
        })
        return out

    # -- plotting -----------------------------------------------------------------
    def plot(self, axes: Sequence[Any] | None = None) -> tuple[Any, Any]:
        """Top eigenvalues, trace (with 2 standard errors) and loss against the step; returns ``(fig, axes)``."""
        if axes is None:
            import matplotlib.pyplot as plt

            fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        else:
            fig = axes[0].figure
        steps = np.array([r.step for r in self.records])
        if self.records and self.records[0].eig is not None:
            lam = np.array([r.eig.values for r in self.records])
            for i in range(lam.shape[1]):
                axes[0].plot(steps, lam[:, i], marker=".", label=f"λ{i + 1}")
            axes[0].set_title(f"top-{lam.shape[1]} Hessian eigenvalues")
            axes[0].set_xlabel("step")
            if lam.shape[1] <= 6:
                axes[0].legend(fontsize=7)
        tr = [(r.step, r.trace.estimate, r.trace.stderr) for r in self.records if r.trace is not None]
        if tr:
            s, v, e = map(np.array, zip(*tr))
            axes[1].errorbar(s, v, yerr=2 * e, marker=".", capsize=2)
            axes[1].set_title("trace (± 2 s.e.)")
            axes[1].set_xlabel("step")
        axes[2].plot(steps, [r.loss for r in self.records], marker=".")
        axes[2].set_yscale("log")
        axes[2].set_title("loss")
        axes[2].set_xlabel("step")
        fig.tight_layout()
        return fig, axes
