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
  callback_steps=tracker.schedule(max_steps))``.  A killed run continues with
  ``resume=True`` (same settings; the records and the warm-start state come
  back from ``curvature.npz``, recorded steps are skipped).

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
import inspect
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ._io import atomic_save_npz, atomic_write_json, atomic_write_text, to_json
from .errors import InvalidInputError, ResultFormatError

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


def record_rows(r: CurvatureRecord) -> list[dict[str, Any]]:
    """The tidy rows of one record, in table order (see :meth:`CurvatureTracker.rows`)."""
    out: list[dict[str, Any]] = []

    def add(step: int, quantity: str, value: float, index: int = 0, stderr: float = math.nan) -> None:
        out.append({"step": step, "quantity": quantity, "index": index, "value": float(value),
                    "stderr": float(stderr)})

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


TRACK_FORMAT = "spectra-curvature-track"
# 2: curvature.npz holds the whole state (settings, table, last eigenvectors), so a track can be resumed
TRACK_FORMAT_VERSION = 2
NPZ, CSV, JSON = "curvature.npz", "curvature.csv", "curvature.json"
TRACK_FILES = (NPZ, CSV, JSON)  # the order save() writes them in: the npz is the snapshot, the others its views
# Quantities the tracker writes itself; extra values passed to record() may not reuse these names, so a
# saved table can be read back into records without ambiguity.
BUILTIN_QUANTITIES = frozenset({
    "loss", "grad_norm", "eigenvalue", "eigen_residual", "eig_matvecs", "eig_warm", "eigenvalue_cold",
    "eig_matvecs_cold", "eig_matvecs_cold_lanczos", "trace", "trace_matvecs", "density_matvecs", "seconds"})
# The options of curvature_at a tracker passes on (all of them define its table), with their defaults.
OPTION_DEFAULTS = {name: p.default for name, p in inspect.signature(curvature_at).parameters.items()
                   if p.kind is p.KEYWORD_ONLY and name not in ("step", "loss", "k", "previous")}


class CurvatureTracker:
    """Record curvature at chosen steps; a tidy table, saved atomically, resumable and plotted.

    ``steps``: the steps to record (an iterable), or ``every`` = record each
    multiple of it; the final step of :func:`spectra.train` is always
    recorded.  Other options go to :func:`curvature_at`.  With ``out`` (a
    folder), ``curvature.npz``, ``curvature.csv`` and ``curvature.json`` are
    rewritten (atomically, in that order) after every record.

    **Resuming.**  ``curvature.npz`` is the snapshot: the settings, the whole
    table and the last eigenvectors (the warm-start state); the CSV and JSON
    are views of it.  ``resume=True`` continues the track already in ``out``:
    the settings must be the ones it was started with (k, loss, the schedule
    and every option; a difference is refused by name), its records are
    restored, the next record warm-starts from the saved eigenvectors exactly
    as the uninterrupted run would have, and steps up to the last recorded one
    are never redone (``wants`` is false for them and the callback skips
    them), so training restarted from an earlier checkpoint replays without
    duplicate rows.  An empty ``out`` starts a fresh track.  Without
    ``resume``, a folder that already holds a track is refused unless
    ``force=True`` (which deletes the three files first).
    :meth:`load` reads a saved track for its table and plots.

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

    A run that stopped after step 10 (its weights at step 10 kept, here in
    memory; in practice ``model.load_state_dict(torch.load(path,
    weights_only=True))``) continues with the same call plus ``resume=True``
    and ``spectra.train(..., start_step=10)``:

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> torch.manual_seed(1) and None
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    >>> first = CurvatureTracker((X, y), k=2, every=10, trace_matvecs=12, out=out)
    >>> _ = spectra.train(net, (X, y), lr=0.5, max_steps=10, grad_tol=0, callbacks=first,
    ...                   callback_steps=first.schedule(10))
    >>> again = CurvatureTracker((X, y), k=2, every=10, trace_matvecs=12, out=out, resume=True)
    >>> again.resumed, again.last_step, again.wants(10), again.wants(20)
    (2, 10, False, True)
    >>> _ = spectra.train(net, (X, y), lr=0.5, start_step=10, max_steps=10, grad_tol=0, callbacks=again,
    ...                   callback_steps=again.schedule(20))
    >>> [r.step for r in CurvatureTracker.load(out).records], again.records[-1].eig.warm
    ([0, 10, 20], True)
    """

    def __init__(self, data: Any, *, loss: Any = "cross_entropy", k: int = 5, steps: Iterable[int] | None = None,
                 every: int | None = None, out: str | Path | None = None, resume: bool = False,
                 force: bool = False, **options: Any):
        if steps is None and every is None:
            raise InvalidInputError("give the steps to record (steps=[...]) or a period (every=N)")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise InvalidInputError(f"every must be a positive integer; got {every!r}")
        unknown = sorted(set(options) - set(OPTION_DEFAULTS))
        if unknown:
            raise InvalidInputError(f"unknown CurvatureTracker option(s) {', '.join(unknown)}; "
                                    f"known: {', '.join(OPTION_DEFAULTS)}")
        if resume and force:
            raise InvalidInputError("resume=True continues the track in out and force=True replaces it: give one")
        if (resume or force) and out is None:
            raise InvalidInputError("resume=True and force=True need out= (the folder of the track)")
        self.data = data
        self.loss = loss
        self.k = int(k)
        self.steps = None if steps is None else sorted({int(s) for s in steps})
        self.every = every
        self.out = None if out is None else Path(out)
        self.options = options
        self.records: list[CurvatureRecord] = []
        self.resumed = 0  # records restored from out by resume=True
        self.repaired: list[str] = []  # views rewritten on resume because a kill had left them behind the npz
        self._saved_settings: dict[str, Any] | None = None  # set by load(): the settings read from the file
        self._check_gap = False  # the first record after a resume checks no scheduled step was skipped
        if self.out is not None:
            self._open(resume, force)

    def _open(self, resume: bool, force: bool) -> None:
        """Refuse, replace or resume a track already in ``out``."""
        assert self.out is not None
        if self.out.exists() and not self.out.is_dir():
            raise InvalidInputError(f"out={self.out} exists and is not a folder")
        present = [name for name in TRACK_FILES if (self.out / name).exists()]
        if not present:
            return
        if force:
            for name in present:
                (self.out / name).unlink()
            return
        if not resume:
            raise InvalidInputError(
                f"{self.out} already holds a curvature track ({', '.join(present)}); pass resume=True to "
                "continue it, force=True to replace it, or choose another out")
        saved = _read_track(self.out)
        differences = _differences(saved.settings, self.settings())
        if differences:
            raise InvalidInputError(
                f"cannot resume the curvature track in {self.out}: {'; '.join(differences)}; use the settings "
                "it was started with, or force=True to start over")
        self.records = saved.records
        self.resumed = len(saved.records)
        self._check_gap = bool(saved.records)
        if saved.stale:
            self.repaired = saved.stale
            self._write_views(self.out)

    @classmethod
    def load(cls, out: str | Path) -> CurvatureTracker:
        """Read the track saved in ``out`` (validated; for its table, summary and plots).

        The snapshot ``curvature.npz`` is read; views a kill left one record
        behind are ignored (not rewritten).  A damaged or foreign file raises
        :class:`~spectra.errors.ResultFormatError` naming it.  The tracker has
        no data: to continue recording, build one with ``resume=True``.
        """
        out = Path(out)
        if not out.is_dir():
            raise ResultFormatError(f"{out} is not a folder holding a curvature track")
        saved = _read_track(out)
        s = saved.settings
        try:
            tracker = cls(None, loss=s["loss"], k=s["k"], steps=s["steps"], every=s["every"])
        except (InvalidInputError, TypeError, ValueError) as exc:
            raise ResultFormatError(f"{out / NPZ}: its settings are not a tracker's ({exc})") from exc
        tracker.options = dict(s["options"])
        tracker.records = saved.records
        tracker.resumed = len(saved.records)
        tracker._saved_settings = s
        return tracker

    def settings(self) -> dict[str, Any]:
        """What defines the table (JSON-ready): k, loss, the schedule and every option, defaults filled in."""
        if self._saved_settings is not None:
            return json.loads(json.dumps(self._saved_settings))
        from .losses import resolve_loss

        lo = resolve_loss(self.loss)
        return _plain({"k": self.k, "loss": lo.name, "loss_reduction": lo.reduction, "steps": self.steps,
                       "every": self.every,
                       "options": {name: self.options.get(name, default) for name, default in OPTION_DEFAULTS.items()}})

    # -- scheduling -----------------------------------------------------------
    def schedule(self, max_steps: int) -> list[int]:
        """The steps in ``[0, max_steps]`` this tracker records (for ``callback_steps=``)."""
        if self.steps is not None:
            return [s for s in self.steps if s <= max_steps]
        return list(range(0, max_steps + 1, self.every))

    def wants(self, step: int) -> bool:
        """Whether ``step`` is scheduled and after the last recorded step (recorded steps are never redone)."""
        if self.records and step <= self.records[-1].step:
            return False
        if self.steps is not None:
            return step in self.steps
        return step % self.every == 0

    @property
    def last_step(self) -> int | None:
        """The last recorded step (``None`` before the first record)."""
        return self.records[-1].step if self.records else None

    # -- recording ------------------------------------------------------------
    def record(self, model: torch.nn.Module, step: int, **extra: float) -> CurvatureRecord:
        """Record the curvature now (the plain call for any training loop); ``extra`` values go in the table.

        Steps must increase: a step at or before the last recorded one is refused.
        """
        if self.data is None:
            raise InvalidInputError("this tracker was loaded for reading (CurvatureTracker.load); to continue "
                                    "recording, build it with its data, the same settings and resume=True")
        step = int(step)
        if self.records and step <= self.records[-1].step:
            raise InvalidInputError(f"step {step} is not after the last recorded step {self.records[-1].step}: "
                                    "a track's steps increase and recorded steps are not redone")
        clash = sorted(set(extra) & BUILTIN_QUANTITIES)
        if clash:
            raise InvalidInputError(f"extra value name(s) {', '.join(clash)} are table quantities of the tracker "
                                    "itself; choose other names")
        if self._check_gap:
            self._refuse_gap(step)
        previous = self.records[-1] if self.records else None
        if previous is not None and previous.eig is not None and previous.eig.vectors is not None:
            # Restored eigenvectors come from the file on the CPU; the warm start is built where the
            # uninterrupted run built it, on the model's device.
            param = next(iter(model.parameters()), None)
            if param is not None and previous.eig.vectors.device != param.device:
                previous.eig.vectors = previous.eig.vectors.to(param.device)
        rec = curvature_at(model, self.data, step=step, loss=self.loss, k=self.k, previous=previous,
                           **self.options)
        rec.extra = {k: float(v) for k, v in extra.items()}
        self.records.append(rec)
        self._check_gap = False
        if self.out is not None:
            self.save(self.out)
        return rec

    def _refuse_gap(self, step: int) -> None:
        """After a resume: a scheduled step between the last record and ``step`` would be missing for good."""
        last = self.records[-1].step
        if self.steps is not None:
            missed = [s for s in self.steps if last < s < step]
        else:
            nxt = (last // self.every + 1) * self.every
            missed = [nxt] if nxt < step else []
        if missed:
            raise InvalidInputError(
                f"the resumed track's last record is step {last}, but training continues at step {step}: "
                f"scheduled step {missed[0]} would never be recorded; restart training from a checkpoint at or "
                f"before step {missed[0]}")

    def __call__(self, model: torch.nn.Module, info: dict) -> None:
        """The :func:`spectra.train` callback: ``f(model, info)``."""
        step = int(info["step"])
        if self.records and step <= self.records[-1].step:
            return  # recorded already: the final call repeating a scheduled step, or a replay after a resume
        if self.wants(step) or info.get("final"):
            self.record(model, step, accuracy=info.get("accuracy", math.nan))

    # -- the table --------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """Tidy rows ``{step, quantity, index, value, stderr}`` (index: eigenvalue rank from 1, else 0)."""
        return [row for r in self.records for row in record_rows(r)]

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
        """Write ``curvature.npz`` (the snapshot), then ``curvature.csv`` and ``curvature.json`` into ``out``.

        Each file is written atomically.  A kill between the writes leaves the
        views one record behind the snapshot; :meth:`load` and ``resume=True``
        detect that and trust the snapshot (``resume`` rewrites the views).
        """
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_save_npz(out / NPZ, **self._state_arrays())
        self._write_views(out)
        return out

    def _state_arrays(self) -> dict[str, np.ndarray]:
        """Everything a resume needs, as arrays (strings as unicode arrays: no pickle)."""
        numbered = [(i, row) for i, r in enumerate(self.records) for row in record_rows(r)]
        arrays: dict[str, np.ndarray] = {
            "format": np.array(TRACK_FORMAT),
            "format_version": np.array(TRACK_FORMAT_VERSION, dtype=np.int64),
            "settings": np.array(json.dumps(self.settings(), sort_keys=True)),
            "records": np.array(len(self.records), dtype=np.int64),
            "step": np.array([r.step for r in self.records], dtype=np.int64),
            "table_record": np.array([i for i, _ in numbered], dtype=np.int64),
            "table_step": np.array([row["step"] for _, row in numbered], dtype=np.int64),
            "table_quantity": np.array([row["quantity"] for _, row in numbered], dtype=str),
            "table_index": np.array([row["index"] for _, row in numbered], dtype=np.int64),
            "table_value": np.array([row["value"] for _, row in numbered], dtype=np.float64),
            "table_stderr": np.array([row["stderr"] for _, row in numbered], dtype=np.float64),
            # what the table does not hold about each solve
            "eig_solver": np.array([r.eig.solver if r.eig is not None else "" for r in self.records], dtype=str),
            "eig_converged": np.array([bool(r.eig is not None and r.eig.converged) for r in self.records]),
            "eig_steps": np.array([r.eig.steps if r.eig is not None else 0 for r in self.records], dtype=np.int64),
        }
        eigs = [r.eig.values for r in self.records if r.eig is not None]
        if eigs:
            arrays["eigenvalues"] = np.array(eigs)
        last = self.records[-1].eig if self.records else None
        if last is not None and last.vectors is not None:
            # the warm-start state: the next record starts from these, resumed or not
            arrays["last_eigenvectors"] = last.vectors.detach().to("cpu", torch.float64).numpy()
        dens = [r.density for r in self.records if r.density is not None]
        if dens and len(dens) == len(self.records) and all(d.nodes is not None for d in dens):
            arrays["density_nodes"] = np.stack([d.nodes for d in dens])
            arrays["density_weights"] = np.stack([d.weights for d in dens])
        return arrays

    def _write_views(self, out: Path) -> None:
        rows = self.rows()
        atomic_write_text(out / CSV, tidy_csv(rows, TABLE_COLUMNS))
        settings = self.settings()
        atomic_write_json(out / JSON, {
            "format": TRACK_FORMAT, "format_version": TRACK_FORMAT_VERSION, "snapshot": NPZ,
            "records": len(self.records), "last_step": self.last_step, "k": self.k, "loss": settings["loss"],
            "options": {k: v for k, v in self.options.items() if isinstance(v, (int, float, str, bool, type(None)))},
            "settings": settings, "matvecs": self.matvec_summary(), "columns": list(TABLE_COLUMNS), "rows": rows,
        })

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


# ------------------------------------------------------------------ reading a saved track


def _plain(obj: Any) -> Any:
    """JSON-ready copy (what a comparison with settings read back from a file needs)."""
    return json.loads(to_json(obj))


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"<setting> differs (saved .., now ..)"`` for each setting that defines the table and differs."""
    missing = object()
    out = []
    for key in ("k", "loss", "loss_reduction", "steps", "every"):
        if saved.get(key, missing) != now.get(key, missing):
            out.append(f"{key} differs (saved {saved.get(key)!r}, now {now.get(key)!r})")
    old, new = saved.get("options") or {}, now.get("options") or {}
    for key in sorted(set(old) | set(new)):
        if old.get(key, missing) != new.get(key, missing):
            out.append(f"{key} differs (saved {old.get(key)!r}, now {new.get(key)!r})")
    return out


@dataclass
class _SavedTrack:
    settings: dict[str, Any]
    records: list[CurvatureRecord]
    stale: list[str]  # views a kill left one record behind the snapshot (or never wrote)


def _read_track(out: Path) -> _SavedTrack:
    """Read and check the track in ``out``: the snapshot, then its two views."""
    path = out / NPZ
    if not path.is_file():
        raise ResultFormatError(f"{path} is missing: it holds the track's state (curvature.csv and "
                                "curvature.json alone cannot be resumed); use force=True to start over")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except Exception as exc:  # a damaged zip raises one of several types (BadZipFile, OSError, ValueError, ...)
        raise ResultFormatError(f"{path} cannot be read as an npz archive ({type(exc).__name__}: {exc}); "
                                "it is damaged or not a curvature track") from exc
    fmt = arrays.get("format")
    if fmt is None or fmt.shape != () or str(fmt) != TRACK_FORMAT:
        if "format" not in arrays and _json_format_version(out / JSON) == 1:
            raise ResultFormatError(f"{path} was written by an older spectra (curvature track format 1), which "
                                    "saved no resume state (no eigenvectors); use force=True to start over")
        raise ResultFormatError(f"{path} is not a spectra curvature track (no 'format' entry {TRACK_FORMAT!r})")
    try:
        version = int(arrays["format_version"])
        if version > TRACK_FORMAT_VERSION:
            raise ResultFormatError(f"{path} has curvature track format version {version}; this spectra reads "
                                    f"up to {TRACK_FORMAT_VERSION} (it was written by a newer spectra)")
        settings = json.loads(str(arrays["settings"]))
        if not isinstance(settings, dict) or not isinstance(settings.get("options"), dict) or \
                not {"k", "loss", "steps", "every"} <= set(settings):
            raise ResultFormatError(f"{path}: its 'settings' entry is not a tracker's settings")
        records = _records_from_arrays(arrays, settings, path)
    except ResultFormatError:
        raise
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise ResultFormatError(f"{path} is damaged ({type(exc).__name__}: {exc})") from exc
    stale = [name for name in (CSV, JSON) if not _view_in_step(out / name, records)]
    return _SavedTrack(settings=settings, records=records, stale=stale)


def _json_format_version(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format_version")
    except (OSError, ValueError, AttributeError):
        return None


def _records_from_arrays(arrays: dict[str, np.ndarray], settings: dict[str, Any], path: Path) -> list[CurvatureRecord]:
    """Rebuild the records from the snapshot's table; check that they give the same table back."""
    from .result import SpectrumResult
    from .trace import TraceEstimate

    n = int(arrays["records"])
    steps = arrays["step"]
    rec_of = arrays["table_record"]
    table = [arrays[f"table_{c}"] for c in ("step", "quantity", "index", "value", "stderr")]
    if steps.shape != (n,) or any(t.shape != rec_of.shape for t in table) or \
            any(arrays[m].shape != (n,) for m in ("eig_solver", "eig_converged", "eig_steps")):
        raise ResultFormatError(f"{path}: its arrays disagree in length ({n} records)")
    if rec_of.size and (np.any(np.diff(rec_of) < 0) or rec_of[0] < 0 or rec_of[-1] >= n):
        raise ResultFormatError(f"{path}: its table's record numbers are out of order")
    if n > 1 and np.any(np.diff(steps) <= 0):
        raise ResultFormatError(f"{path}: its steps do not increase")
    t_step, t_quantity, t_index, t_value, t_stderr = table
    nodes, weights = arrays.get("density_nodes"), arrays.get("density_weights")
    records = []
    for i in range(n):
        rows = np.flatnonzero(rec_of == i)
        if not rows.size or np.any(t_step[rows] != steps[i]):
            raise ResultFormatError(f"{path}: record {i} (step {int(steps[i])}) has no rows or rows of another step")
        scalar: dict[str, float] = {}
        extra: dict[str, float] = {}
        ranked: dict[str, dict[int, float]] = {"eigenvalue": {}, "eigen_residual": {}, "eigenvalue_cold": {}}
        trace_stderr = math.nan
        for j in rows:
            q, v = str(t_quantity[j]), float(t_value[j])
            if q in ranked:
                ranked[q][int(t_index[j])] = v
            elif q in BUILTIN_QUANTITIES:
                scalar[q] = v
                if q == "trace":
                    trace_stderr = float(t_stderr[j])
            else:
                extra[q] = v
        eig = cold = cold_lz = trace = density = None
        if ranked["eigenvalue"]:
            ranks = sorted(ranked["eigenvalue"])
            eig = Eigenpairs(values=np.array([ranked["eigenvalue"][r] for r in ranks]), vectors=None,
                             residuals=np.array([ranked["eigen_residual"].get(r, math.nan) for r in ranks]),
                             num_matvecs=int(scalar["eig_matvecs"]), converged=bool(arrays["eig_converged"][i]),
                             solver=str(arrays["eig_solver"][i]), warm=bool(scalar["eig_warm"]),
                             steps=int(arrays["eig_steps"][i]))
        if ranked["eigenvalue_cold"]:
            values = np.array([ranked["eigenvalue_cold"][r] for r in sorted(ranked["eigenvalue_cold"])])
            cold = Eigenpairs(values=values, vectors=None, residuals=np.full(values.size, math.nan),
                              num_matvecs=int(scalar["eig_matvecs_cold"]), converged=True, solver="arpack",
                              warm=False)
        if "eig_matvecs_cold_lanczos" in scalar:
            # only its cost is in the table
            cold_lz = Eigenpairs(values=np.full(0, math.nan), vectors=None, residuals=np.full(0, math.nan),
                                 num_matvecs=int(scalar["eig_matvecs_cold_lanczos"]), converged=True,
                                 solver="lanczos", warm=False)
        if "trace" in scalar:
            trace = TraceEstimate(estimate=scalar["trace"], stderr=trace_stderr,
                                  method=str(settings["options"].get("trace")),
                                  num_matvecs=int(scalar["trace_matvecs"]))
        if "density_matvecs" in scalar:
            density = SpectrumResult(method="lanczos", num_matvecs=int(scalar["density_matvecs"]),
                                     nodes=None if nodes is None else nodes[i],
                                     weights=None if weights is None else weights[i])
        records.append(CurvatureRecord(step=int(steps[i]), loss=scalar["loss"], grad_norm=scalar["grad_norm"],
                                       eig=eig, trace=trace, density=density, cold=cold, cold_lanczos=cold_lz,
                                       seconds=scalar["seconds"], extra=extra))
    if records and records[-1].eig is not None:
        vectors = arrays.get("last_eigenvectors")
        k = records[-1].eig.values.size
        if vectors is None or vectors.ndim != 2 or vectors.shape[1] != k or not np.all(np.isfinite(vectors)):
            raise ResultFormatError(f"{path} lacks the last record's {k} eigenvectors (the warm-start state)")
        records[-1].eig.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float64))
    # The records must give back the saved table, value for value: anything else is not our file.
    rebuilt = [row for r in records for row in record_rows(r)]
    same = len(rebuilt) == rec_of.size and all(
        row["step"] == t_step[j] and row["quantity"] == t_quantity[j] and row["index"] == t_index[j]
        for j, row in enumerate(rebuilt)) and \
        np.array_equal([row["value"] for row in rebuilt], t_value.astype(np.float64), equal_nan=True) and \
        np.array_equal([row["stderr"] for row in rebuilt], t_stderr.astype(np.float64), equal_nan=True)
    if not same:
        raise ResultFormatError(f"{path}: its table does not rebuild from its records (damaged, or not written "
                                "by a CurvatureTracker)")
    return records


def _view_in_step(path: Path, records: list[CurvatureRecord]) -> bool:
    """True if the view at ``path`` matches the snapshot's records; False if it is missing or one record behind.

    A view that is neither (another run's, edited, damaged) raises: it is never silently overwritten.
    """
    if not path.exists():
        return False
    n = len(records)

    def rows(m: int) -> list[dict[str, Any]]:
        return [row for r in records[:m] for row in record_rows(r)]

    if path.name == CSV:
        text = path.read_text(encoding="utf-8", errors="replace")
        if text == tidy_csv(rows(n), TABLE_COLUMNS):
            return True
        if n and text == tidy_csv(rows(n - 1), TABLE_COLUMNS):
            return False
        raise ResultFormatError(f"{path} does not match {NPZ} (it is neither the snapshot's table nor the table "
                                "one record before it): the files are not from one run; use force=True to start over")
    try:
        view = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ResultFormatError(f"{path} is not valid JSON ({exc}); it is damaged") from exc
    if not isinstance(view, dict) or view.get("format") != TRACK_FORMAT:
        raise ResultFormatError(f"{path} is not a spectra curvature track (format {TRACK_FORMAT!r} expected)")
    if view.get("records") == n and view.get("rows") == _plain(rows(n)):
        return True
    if n and view.get("records") == n - 1 and view.get("rows") == _plain(rows(n - 1)):
        return False
    raise ResultFormatError(f"{path} does not match {NPZ} ({view.get('records')!r} records there, {n} in the "
                            "snapshot): the files are not from one run; use force=True to start over")
