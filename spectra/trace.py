"""Traces and diagonals of a spectral operator, with standard errors.

Estimators (probes are seeded Rademacher vectors ``z`` with entries +-1):

``hutchinson``
    ``tr(A) ~ (1/n) sum_i z_i^T A z_i``; each term is an unbiased sample,
    the standard error is their sample standard deviation over ``sqrt(n)``.
    Variance per probe: ``2 (||A||_F^2 - sum_j A_jj^2)``.
``hutchpp`` (Hutch++, Meyer, Musco, Musco & Woodruff 2021)
    Spends a third of the products on a sketch ``Q = orth(A S)`` of the top
    eigen-directions, takes ``tr(Q^T A Q)`` exactly and runs Hutchinson on
    the deflated remainder ``(I - QQ^T) A (I - QQ^T)``.  Much lower variance
    when a few eigenvalues dominate (as they do for a trained net's Hessian).
    The standard error is that of the Hutchinson part, *conditional on the
    sketch* (the sketch term is not random once ``S`` is drawn).
``exact``
    ``sum_j e_j^T A e_j`` from ``P`` products with identity columns, keeping
    only the diagonal (memory ``O(P x block)``, not ``P^2``): for small nets,
    to check the estimates.

:func:`diagonal` estimates the whole diagonal (Hutchinson's diagonal
estimator ``mean_i z_i * (A z_i)``) with a standard error per entry, and
:func:`layer_traces` sums it over the parameter blocks of each layer, so one
set of probes gives every layer's trace and its standard error.

>>> import torch
>>> from spectra.operators.base import DenseOperator
>>> A = DenseOperator(torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64)))
>>> exact_trace(A).estimate
55.0
>>> est = hutchinson(A, num_probes=20, seed=0)
>>> est.estimate, est.stderr   # a diagonal matrix: every Rademacher sample is exact
(55.0, 0.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .errors import InvalidInputError
from .validation import check_int

__all__ = [
    "TraceEstimate",
    "DiagonalEstimate",
    "hutchinson",
    "hutchpp",
    "exact_trace",
    "exact_diagonal",
    "diagonal",
    "layer_traces",
    "exact_layer_traces",
    "parameter_groups",
    "estimate_trace",
]

DEFAULT_BLOCK = 32


@dataclass
class TraceEstimate:
    """A trace (or a block's trace) with its standard error and its cost."""

    estimate: float
    stderr: float
    method: str
    num_matvecs: int
    num_probes: int = 0
    seed: int | None = None
    samples: np.ndarray | None = field(default=None, repr=False)
    details: dict[str, Any] = field(default_factory=dict)

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """``estimate -+ z * stderr`` (normal approximation)."""
        return self.estimate - z * self.stderr, self.estimate + z * self.stderr

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (samples left out)."""
        d = asdict(self)
        d.pop("samples")
        return d


@dataclass
class DiagonalEstimate:
    """A diagonal estimate (length ``P``) with a standard error per entry."""

    mean: np.ndarray
    stderr: np.ndarray
    method: str
    num_matvecs: int
    num_probes: int = 0
    seed: int | None = None


# ----------------------------------------------------------------------- helpers


def _probes(op: Any, start: int, count: int, seed: int) -> torch.Tensor:
    """Probes ``start .. start+count`` of the seeded Rademacher sequence for ``op``.

    Probe ``i`` depends only on ``(seed, i)``, so results do not depend on the
    block size used to push them through the operator.
    """
    from .backends.lanczos import rademacher_probes

    cols = [rademacher_probes(op.shape[0], 1, _mix(seed, i), torch.float64, torch.device("cpu"))
            for i in range(start, start + count)]
    return torch.cat(cols, dim=1).to(device=op.device, dtype=op.dtype)


def _mix(seed: int, index: int) -> int:
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def _mean_stderr(samples: np.ndarray) -> tuple[float, float]:
    n = samples.shape[0]
    mean = float(samples.mean())
    stderr = float(samples.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return mean, stderr


def _as_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


# ---------------------------------------------------------------------- exact


def exact_diagonal(op: Any, block_size: int | None = None) -> np.ndarray:
    """The diagonal of ``op`` from ``P`` products with identity columns (float64 numpy)."""
    P = op.shape[0]
    block = block_size or getattr(op, "max_block", None) or DEFAULT_BLOCK
    diag = np.empty(P)
    for start in range(0, P, block):
        stop = min(start + block, P)
        E = torch.zeros(P, stop - start, dtype=op.dtype, device=op.device)
        idx = torch.arange(start, stop)
        E[idx, torch.arange(stop - start)] = 1
        AE = op.matmat(E)
        diag[start:stop] = _as_np(AE[idx, torch.arange(stop - start)])
    return diag


def exact_trace(op: Any, block_size: int | None = None) -> TraceEstimate:
    """``tr(A)`` exactly (``P`` products; only the diagonal is kept)."""
    before = op.num_matvecs
    d = exact_diagonal(op, block_size)
    return TraceEstimate(float(d.sum()), 0.0, "exact", op.num_matvecs - before)


# ------------------------------------------------------------------ estimators


def hutchinson(op: Any, num_probes: int = 100, seed: int = 0, block_size: int | None = None) -> TraceEstimate:
    """Hutchinson's trace estimate from ``num_probes`` seeded Rademacher probes."""
    n = check_int("num_probes", num_probes, 1)
    block = block_size or DEFAULT_BLOCK
    before = op.num_matvecs
    samples = np.empty(n)
    for start in range(0, n, block):
        count = min(block, n - start)
        Z = _probes(op, start, count, seed)
        samples[start : start + count] = _as_np((Z * op.matmat(Z)).sum(dim=0))
    mean, stderr = _mean_stderr(samples)
    return TraceEstimate(mean, stderr, "hutchinson", op.num_matvecs - before, n, seed, samples)


def hutchpp(op: Any, num_matvecs: int = 99, seed: int = 0) -> TraceEstimate:
    """Hutch++ with a budget of ``num_matvecs`` products (a third each: sketch, exact part, remainder).

    Needs ``num_matvecs >= 6`` (two Hutchinson probes for a standard error).
    """
    budget = check_int("num_matvecs", num_matvecs, 6)
    P = op.shape[0]
    k = budget // 3
    k_sketch = min(k, P)
    before = op.num_matvecs
    S = _probes(op, 0, k_sketch, seed)
    Q, _ = torch.linalg.qr(op.matmat(S).to(torch.float64))  # [P, k_sketch], orthonormal
    Q = Q.to(op.dtype)
    AQ = op.matmat(Q)
    top = float(torch.trace(Q.T.to(torch.float64) @ AQ.to(torch.float64)))
    # Remainder probes: a different stretch of the probe sequence than the sketch.
    G = _probes(op, k_sketch, k, seed)
    G = G - Q @ (Q.T @ G)
    samples = _as_np((G * op.matmat(G)).sum(dim=0))
    rest, stderr = _mean_stderr(samples)
    return TraceEstimate(top + rest, stderr, "hutchpp", op.num_matvecs - before, k, seed, samples,
                         {"sketch_size": k_sketch, "sketch_trace": top, "remainder_trace": rest,
                          "stderr": "conditional on the sketch"})


def diagonal(op: Any, num_probes: int = 100, seed: int = 0, block_size: int | None = None) -> DiagonalEstimate:
    """Hutchinson's diagonal estimate ``mean_i z_i * (A z_i)`` with a standard error per entry."""
    n = check_int("num_probes", num_probes, 2)
    s1, s2, before = _diag_sums(op, n, seed, block_size)
    mean = s1 / n
    var = np.maximum(s2 - n * mean**2, 0.0) / (n - 1)
    return DiagonalEstimate(mean, np.sqrt(var / n), "hutchinson-diagonal", op.num_matvecs - before, n, seed)


def _diag_sums(op: Any, n: int, seed: int, block_size: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    block = block_size or DEFAULT_BLOCK
    before = op.num_matvecs
    s1 = np.zeros(op.shape[0])
    s2 = np.zeros(op.shape[0])
    for start in range(0, n, block):
        count = min(block, n - start)
        Z = _probes(op, start, count, seed)
        D = _as_np(Z * op.matmat(Z))
        s1 += D.sum(axis=1)
        s2 += (D**2).sum(axis=1)
    return s1, s2, before


# ----------------------------------------------------------------- per layer


def parameter_groups(op: Any, by: str = "module") -> dict[str, np.ndarray]:
    """Flat index ranges of the operator's parameters, grouped by layer.

    ``by="module"`` groups ``fc1.weight`` and ``fc1.bias`` as ``"fc1"``;
    ``by="parameter"`` keeps one group per parameter tensor.  Needs an
    operator with ``param_names`` and ``param_numels`` (the Hessian, GGN and
    residual operators have them).
    """
    names = getattr(op, "param_names", None)
    numels = getattr(op, "param_numels", None)
    if names is None or numels is None:
        raise InvalidInputError(
            f"{type(op).__name__} has no parameter names; pass groups={{name: indices}} to layer_traces"
        )
    if by not in ("module", "parameter"):
        raise InvalidInputError(f"by must be 'module' or 'parameter'; got {by!r}")
    groups: dict[str, list[np.ndarray]] = {}
    offset = 0
    for name, numel in zip(names, numels):
        key = name.rsplit(".", 1)[0] if by == "module" and "." in name else name
        groups.setdefault(key, []).append(np.arange(offset, offset + numel))
        offset += numel
    return {k: np.concatenate(v) for k, v in groups.items()}


def _resolve_groups(op: Any, groups: str | Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    if isinstance(groups, str):
        return parameter_groups(op, groups)
    out = {}
    for k, idx in groups.items():
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= op.shape[0]):
            raise InvalidInputError(f"group {k!r} has indices outside [0, {op.shape[0]})")
        out[str(k)] = idx
    return out


def layer_traces(op: Any, num_probes: int = 100, seed: int = 0, groups: str | Mapping[str, Sequence[int]] = "module",
                 block_size: int | None = None) -> dict[str, TraceEstimate]:
    """The trace of each diagonal block (layer) of ``op``, from one shared set of probes.

    For a block ``B``, ``sum_{j in B} z_j (A z)_j`` is an unbiased sample of
    ``tr(A_BB)``; the samples of all blocks come from the same ``num_probes``
    products, so the whole table costs ``num_probes`` matvecs.
    """
    n = check_int("num_probes", num_probes, 2)
    index = _resolve_groups(op, groups)
    block = block_size or DEFAULT_BLOCK
    before = op.num_matvecs
    samples = {k: np.empty(n) for k in index}
    for start in range(0, n, block):
        count = min(block, n - start)
        Z = _probes(op, start, count, seed)
        D = _as_np(Z * op.matmat(Z))
        for k, idx in index.items():
            samples[k][start : start + count] = D[idx].sum(axis=0)
    cost = op.num_matvecs - before
    out = {}
    for k, s in samples.items():
        mean, stderr = _mean_stderr(s)
        out[k] = TraceEstimate(mean, stderr, "hutchinson-block", cost, n, seed, s,
                               {"num_params": int(index[k].size), "shared_probes": True})
    return out


def exact_layer_traces(op: Any, groups: str | Mapping[str, Sequence[int]] = "module") -> dict[str, TraceEstimate]:
    """Exact trace of each diagonal block (``P`` products)."""
    index = _resolve_groups(op, groups)
    before = op.num_matvecs
    d = exact_diagonal(op)
    cost = op.num_matvecs - before
    return {k: TraceEstimate(float(d[idx].sum()), 0.0, "exact", cost, details={"num_params": int(idx.size)})
            for k, idx in index.items()}


def estimate_trace(op: Any, method: str = "hutchpp", num_matvecs: int = 99, seed: int = 0) -> TraceEstimate:
    """One entry point: ``method`` in ``"hutchinson"``, ``"hutchpp"``, ``"exact"`` at about ``num_matvecs`` products."""
    if method == "hutchinson":
        return hutchinson(op, num_probes=num_matvecs, seed=seed)
    if method == "hutchpp":
        return hutchpp(op, num_matvecs=num_matvecs, seed=seed)
    if method == "exact":
        return exact_trace(op)
    raise InvalidInputError(f"method must be 'hutchinson', 'hutchpp' or 'exact'; got {method!r}")
