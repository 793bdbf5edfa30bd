"""Block Krylov-Schur: extreme eigenpairs of a symmetric operator from block products.

The solver behind ``method="topk"``.  It needs only ``matmat`` (a block
``[P, b] -> [P, b]``), so each step costs one *batched* product, which for
Hessians costs a fraction of ``b`` single products.

One iteration, with ``B = [L, V]`` the locked vectors and the active basis
(orthonormal, float64 whatever the product dtype):

1. ``W = H Q`` for the newest block ``Q`` (``b`` products); ``V <- [V, Q]``;
2. full reorthogonalisation: ``Z = W - B (B^T W)``, repeated once when a
   column lost more than 30 % of its norm ("twice is enough"); the
   coefficients ``V^T W`` extend the Rayleigh quotient ``M = V^T H V``;
3. Rayleigh-Ritz: ``M = Y diag(theta) Y^T``;  ``Z = Q' R`` (the next block);
   a Ritz pair's residual is ``||R Y_last||`` (the Krylov relation
   ``H V = V M + Q' R E^T``), so checking convergence costs no product;
4. thick restart when the basis is full: ``V <- V Y[:, kept]``,
   ``M <- diag(theta_kept)``; the continuation block ``Q'`` keeps the space a
   Krylov space (Stewart's Krylov-Schur, block form);
5. locking: converged wanted pairs leave the active basis for ``L``; later
   blocks are orthogonalised against them and they no longer move.

Convergence: each wanted pair's eigenvalue error estimate
``min(r, rho^2 / delta)`` is below ``tol * scale`` (``scale`` the largest
``|theta|`` seen), where ``rho`` is the residual of the pair's cluster of
Ritz values (those closer to it than their residuals can separate) and
``delta`` the distance from that cluster to the other Ritz values
(Kato-Temple; an estimate, not a bound, since the spectrum beyond the
computed values is unknown).

A block Krylov space finds at most ``b`` copies of a repeated eigenvalue.
When a converged cluster of the answer holds ``b`` or more values (copies
may be missing) or a block broke down, the answer is locked and the search
goes on from a fresh random block until that search's own best Ritz pair
converges and is no better than the answer ("multiplicity check").

>>> import torch
>>> d = torch.arange(1.0, 201.0, dtype=torch.float64)
>>> out = block_krylov_schur(lambda V: d[:, None] * V, 200, top=3, bottom=0, block_size=3,
...                          max_basis=30, tol=1e-12, generator=torch.Generator().manual_seed(0))
>>> out.values.round(decimals=8).tolist(), out.converged
([198.0, 199.0, 200.0], True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

# Ritz values closer than this many times the smaller of their residuals are one cluster.
CLUSTER_FACTOR = 10.0
# Classical Gram-Schmidt is repeated when a column keeps less than this share of its norm
# (Kahan-Parlett: "twice is enough").  A looser share (0.1) saved the second pass on most steps of
# the MNIST runs but lost orthogonality in a single-vector run on diag(1..100) once Ritz values
# converged (Ritz values grew past the spectrum): the classical threshold stays.  A column that loses
# this share again in the second pass lies in the span of the basis (a breakdown).
REORTH_KEEP = 0.7071
# A new block column whose norm after orthogonalisation is below this share of scale * sqrt(P)...
# ...is numerically in the span of the basis (breakdown): it is replaced by a random direction.
BREAKDOWN_RTOL = 1e-12
# A stop_residual run also stops when the largest wanted residual has not halved in STALL_ITERATIONS
# Rayleigh-Ritz steps, once below STALL_BELOW times the scale: noisier products than expected (float32
# ones stall near 1e-7), a safety net.  Above that, and up to SLOW_BELOW, only a far longer stall counts:
# a clustered 10th eigenvalue of 784-256-256-10 sat near 1e-3 for 20 steps and then converged (stopping
# there cost 300 float64 products in blocks of 10 instead of a few float32 ones).
STALL_ITERATIONS = 20
STALL_BELOW = 1e-5
SLOW_ITERATIONS = 100
SLOW_BELOW = 1e-3
# Cholesky QR is used for a new block when its Gram matrix is this well conditioned (twice applied it is
# then orthogonal to rounding; Householder QR takes the other blocks).
CHOLQR_MAX_CONDITION = 1e8
# A stop_residual run (a low-precision search) does its Rayleigh-Ritz step, which only watches the residuals
# between restarts, once every RR_SKIP_MAX iterations while the largest wanted residual is above
# RR_SKIP_ABOVE times the scale (it falls about tenfold per 7 products near the end of the MNIST searches).
RR_SKIP_MAX = 4
RR_SKIP_ABOVE = 1e-2
# Rounds of the multiplicity check before giving up (each finds at least one missing copy).
MAX_CHECK_ROUNDS = 4

Matmat = Callable[[torch.Tensor], torch.Tensor]


class BudgetExhausted(Exception):
    """Raised inside the solver when the next block would exceed ``max_products``."""

    def __init__(self, state: "KrylovResult"):
        super().__init__("product budget exhausted")
        self.state = state


@dataclass
class KrylovResult:
    """What :func:`block_krylov_schur` found.

    ``values`` ascending; ``vectors[:, i]`` its Ritz vector; ``residuals`` the
    recurrence residual norms ``||H x - theta x||``; ``estimates`` the
    eigenvalue error estimates; ``converged`` whether every wanted pair met
    ``tol``; ``others_values``/``others_residuals`` the Ritz pairs not in the
    answer (their gaps to it matter for error estimates); ``history`` one
    entry per iteration (products so far, locked count, active basis size,
    largest relative estimate among the wanted); ``residuals_from_products``
    whether the residuals come from stored products
    (:func:`~spectra.backends.refine.refine`) rather than the recurrence.
    """

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    estimates: torch.Tensor
    converged: bool
    products: int = 0
    iterations: int = 0
    restarts: int = 0
    locked: int = 0
    breakdowns: int = 0
    check_rounds: int = 0
    second_passes: int = 0
    scale: float = 0.0
    others_values: torch.Tensor | None = None
    others_residuals: torch.Tensor | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    residuals_from_products: bool = False  # residuals from stored products, not a recurrence


def error_estimates(theta: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Eigenvalue error estimates ``min(r, rho^2 / delta)`` for Ritz values ``theta`` with residuals ``r``.

    Ritz values closer to each other than ``CLUSTER_FACTOR`` times the
    smaller of their residuals cannot be told apart (a repeated or unresolved
    eigenvalue): they form a cluster, with ``rho`` its residual norm (root sum
    of squares) and ``delta`` its distance to the nearest Ritz value outside
    it (Kato-Temple; the gap to the computed values stands in for the unknown
    gap to the rest of the spectrum, as in ARPACK's estimates).  Where no
    such gap is known, only ``r`` remains.

    >>> e = error_estimates(torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([1e-6, 1e-3], dtype=torch.float64))
    >>> [f"{x:.1e}" for x in e.tolist()]
    ['1.0e-12', '1.0e-06']
    """
    if theta.numel() == 0:
        return r.clone()
    t_all = theta.detach().cpu().numpy().astype(np.float64)
    r_all = np.abs(r.detach().cpu().numpy().astype(np.float64))
    order = np.argsort(t_all, kind="stable")
    t, rr = t_all[order], r_all[order]
    n = t.size
    # cluster boundaries: neighbours farther apart than CLUSTER_FACTOR times the smaller residual
    apart = (t[1:] - t[:-1]) > CLUSTER_FACTOR * np.minimum(rr[1:], rr[:-1])
    label = np.concatenate([[0], np.cumsum(apart)]) if n > 1 else np.zeros(1, int)
    est = rr.copy()
    for c in range(int(label[-1]) + 1):
        inside = np.nonzero(label == c)[0]
        lo, hi = inside[0], inside[-1]
        delta = min(t[lo] - t[lo - 1] if lo > 0 else np.inf, t[hi + 1] - t[hi] if hi + 1 < n else np.inf)
        if 0 < delta < np.inf:
            est[inside] = np.minimum(rr[inside], (rr[inside] ** 2).sum() / delta)
    out = np.empty_like(est)
    out[order] = est
    return torch.as_tensor(out, dtype=r.dtype, device=r.device)


def wanted_indices(theta: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
    """Indices of the ``top`` largest and ``bottom`` smallest of ``theta`` (disjoint, largest first).

    >>> wanted_indices(torch.tensor([3.0, -1.0, 2.0, 0.5]), 1, 1).tolist()
    [0, 1]
    """
    n = theta.numel()
    desc = torch.argsort(theta, descending=True)
    top = min(top, n)
    bottom = min(bottom, n - top)
    return torch.cat([desc[:top], desc[n - bottom:]]) if bottom else desc[:top]


def _priority(theta: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
    """All indices of ``theta``, the most wanted first (alternating ends when both are wanted)."""
    desc = torch.argsort(theta, descending=True)
    if bottom == 0:
        return desc
    if top == 0:
        return torch.flip(desc, [0])
    asc = torch.flip(desc, [0])
    n = theta.numel()
    inter = torch.stack([desc[: (n + 1) // 2], asc[: (n + 1) // 2]], 1).flatten()
    seen, out = set(), []
    for i in inter.tolist():
        if i not in seen:
            seen.add(i)
            out.append(i)
    return torch.tensor(out[:n], dtype=torch.long, device=theta.device)


def _orthogonalise(W: torch.Tensor, rows: torch.Tensor, keep: float = REORTH_KEEP, local: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor, bool, torch.Tensor, torch.Tensor | None]:
    """``Z = W - C^T rows`` with ``C = rows W^T`` for a block ``W`` of rows ``[w, P]`` and orthonormal
    ``rows``; repeated once where a row kept less than ``keep`` of its norm.

    ``local``: the last ``local`` rows are projected out first, on their own.
    In a Lanczos step almost all of ``W`` lies along the newest two blocks, so
    after this cheap pass the pass over all rows removes little and its norm
    test usually spares the second full pass.

    Returns ``(Z, C, whether the second pass ran, in_span, norms)`` with ``C``
    of shape ``[len(rows), w]``, ``in_span`` marking the rows that lost that
    share again in the second pass (numerically in the span of ``rows``) and
    ``norms`` the row norms of ``Z`` where the pass knows them (else ``None``).  Blocks and
    basis are rows so that both products read contiguous memory (1.7x faster
    than the column layout on P = 55 050).
    """
    in_span = torch.zeros(W.shape[0], dtype=torch.bool, device=W.device)
    n = rows.shape[0]
    if n == 0:
        return W, W.new_zeros(0, W.shape[0]), False, in_span, None
    Ct = W.new_zeros(W.shape[0], n)
    Z = W
    if 0 < local < n:
        near = rows[n - local:]
        Ct[:, n - local:] = Z @ near.T
        Z = torch.addmm(Z, Ct[:, n - local:], near, alpha=-1)
    before = Z.norm(dim=1)
    C1 = Z @ rows.T
    Z = torch.addmm(Z, C1, rows, alpha=-1)
    Ct += C1
    # the norm left after projecting onto orthonormal rows, by Pythagoras (no pass over Z); where it
    # matters (a column that lost most of its norm) the second pass follows and measures it
    after = (before.square() - C1.square().sum(dim=1)).clamp_min(0).sqrt()
    again = bool((after < keep * before).any())
    if again:
        after = Z.norm(dim=1)  # Pythagoras cancels here: measure it
        C2 = Z @ rows.T
        Z = torch.addmm(Z, C2, rows, alpha=-1)
        Ct += C2
        norms = Z.norm(dim=1)
        return Z, Ct.T, again, norms < keep * after, norms
    return Z, Ct.T, again, in_span, after


def _random_rows(P: int, b: int, generator: torch.Generator, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """Seeded standard normal block as rows ``[b, P]``, drawn on the CPU (the same numbers on every device)."""
    return torch.randn(P, b, generator=generator, dtype=torch.float64).T.contiguous().to(device=device, dtype=dtype)


def _orthonormal_rows(Z: torch.Tensor, rows: torch.Tensor, threshold: float, generator: torch.Generator,
                      in_span: torch.Tensor | None = None, norms: torch.Tensor | None = None,
                      out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``Z^T = Q R`` with ``Q^T`` (returned as rows) orthonormal and orthogonal to ``rows``.

    Cholesky QR, twice (two passes over the block in the row layout, no
    transpose), when the block is well conditioned; Householder QR otherwise.
    Rows whose component outside the earlier ones is below ``threshold`` (a
    breakdown: the Krylov space closed in that direction) get a random
    direction orthogonal to everything instead, and a zero row in ``R``; so do
    the rows marked ``in_span`` by :func:`_orthogonalise`.
    A single row is divided by its norm (``norms`` when the caller knows it),
    into ``out`` when given (the basis row it will occupy: no copy later).
    Returns ``(Q rows, R, number replaced)``.
    """
    spanned = in_span is not None and bool(in_span.any())
    if Z.shape[0] == 1 and not spanned:  # one vector: its norm is the whole QR
        norm = Z.norm() if norms is None else norms.reshape(())
        if float(norm) > threshold:
            return torch.div(Z, norm, out=out) if out is not None else Z / norm, norm.reshape(1, 1), 0
    QR = None if spanned else _cholesky_qr2(Z, threshold)
    if QR is not None:
        return QR[0], QR[1], 0
    Q, R = torch.linalg.qr(Z.T)
    Q = Q.T.contiguous()
    small = R.diagonal().abs() <= threshold
    if spanned:
        small = small | in_span
    bad = torch.nonzero(small).flatten().tolist()
    for j in bad:
        R[j, :] = 0
        others = torch.cat([rows, Q[:j], Q[j + 1:]], dim=0)
        x = _random_rows(Z.shape[1], 1, generator, Z.dtype, Z.device)
        for _ in range(2):
            x = x - (x @ others.T) @ others
        Q[j:j + 1] = x / x.norm()
    return Q, R, len(bad)


def _cholesky_qr2(Z: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(Q rows, R)`` by Cholesky QR applied twice, or ``None`` when the block is too ill-conditioned
    (its Gram matrix's condition above ``CHOLQR_MAX_CONDITION``) or has a row below ``threshold``."""
    R_total = None
    Q = Z
    for _ in range(2):
        G = Q @ Q.T
        L, info = torch.linalg.cholesky_ex(G)
        if int(info) != 0:
            return None
        d = L.diagonal()
        if R_total is None and (bool((d <= threshold).any()) or float(d.max() / d.min()) ** 2 > CHOLQR_MAX_CONDITION):
            return None
        Q = torch.linalg.solve_triangular(L, Q, upper=False)
        R_total = L.T if R_total is None else L.T @ R_total
    return Q, R_total


class _Basis:
    """Orthonormal basis vectors stored as rows of one preallocated ``[capacity, P]`` buffer.

    Rows ``[0, n_locked)`` are locked Ritz vectors, ``[n_locked, n)`` the
    active basis.  Every prefix is contiguous, so the products with the whole
    basis are plain matrix products without copies.
    """

    def __init__(self, capacity: int, P: int, dtype: torch.dtype, device: torch.device):
        self.rows = torch.empty(capacity, P, dtype=dtype, device=device)
        self.n_locked = self.n = 0

    @property
    def all(self) -> torch.Tensor:
        return self.rows[: self.n]

    @property
    def active(self) -> torch.Tensor:
        return self.rows[self.n_locked: self.n]

    def next_row(self) -> torch.Tensor | None:
        """The free row after the basis (where a single new vector can be written in place), if any."""
        return self.rows[self.n: self.n + 1] if self.n < self.rows.shape[0] else None

    def append(self, Q: torch.Tensor) -> None:
        if Q.data_ptr() != self.rows[self.n: self.n + Q.shape[0]].data_ptr():  # not written in place already
            self.rows[self.n: self.n + Q.shape[0]] = Q
        self.n += Q.shape[0]

    def ritz_rows(self, Y: torch.Tensor) -> torch.Tensor:
        """Ritz vectors ``(V Y)^T`` of the active basis, as rows."""
        return Y.T @ self.active

    def restart(self, keep_locked: torch.Tensor, Y_lock: torch.Tensor, Y_keep: torch.Tensor) -> None:
        """Locked rows <- the ``keep_locked`` ones plus the active basis' Ritz vectors ``Y_lock``; the active
        basis <- its Ritz vectors ``Y_keep``."""
        new = torch.cat([Y_lock, Y_keep], 1).T @ self.active
        if keep_locked.numel() < self.n_locked:  # drop the locked pairs that left the answer
            kept = self.rows[keep_locked]
            self.rows[: kept.shape[0]] = kept
            self.n_locked = kept.shape[0]
        self.rows[self.n_locked: self.n_locked + new.shape[0]] = new
        self.n_locked += Y_lock.shape[1]
        self.n = self.n_locked + Y_keep.shape[1]

    def lock_only(self, vectors: torch.Tensor) -> None:
        """Replace everything by ``vectors`` (rows), all locked (the start of a multiplicity check)."""
        j = vectors.shape[0]
        self.rows[:j] = vectors
        self.n_locked = self.n = j


def _fresh_rows(P: int, b: int, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random orthonormal block (rows) orthogonal to ``rows``."""
    X = _orthogonalise(_random_rows(P, b, generator, rows.dtype, rows.device), rows, keep=1.0)[0]
    return torch.linalg.qr(X.T)[0].T.contiguous()


def block_krylov_schur(matmat: Matmat, P: int, *, top: int, bottom: int, block_size: int, max_basis: int,
                       tol: float, generator: torch.Generator, max_products: int | None = None,
                       start: torch.Tensor | None = None, stop_residual: float | None = None,
                       check_multiplicity: bool | str = "auto", dtype: torch.dtype = torch.float64,
                       device: torch.device | str = "cpu", scale: float = 0.0,
                       neighbours: tuple[torch.Tensor, torch.Tensor] | None = None, stop_when_stalled: bool = False,
                       reorth_keep: float = REORTH_KEEP) -> KrylovResult:
    """The ``top`` largest and ``bottom`` smallest eigenpairs of the symmetric ``matmat``.

    ``block_size`` columns per product; ``max_basis`` active basis columns
    before a thick restart; ``tol`` relative eigenvalue error (see the module
    docstring); ``start`` ``[P, j]`` warm-start vectors (a first block of
    ``max(j, block_size)`` columns, random columns added); ``stop_residual``
    stops as soon as every wanted residual is below ``stop_residual * scale``
    (the switch point of a mixed-precision run), and with ``stop_when_stalled``
    also when small residuals stop falling (``STALL_ITERATIONS`` iterations
    without halving: the noise floor of low-precision products); ``neighbours`` ``(values, residuals)`` are
    Ritz pairs from an earlier run that stand in for the unknown rest of the
    spectrum in the error estimates until this run has values of its own;
    ``max_products`` raises :class:`BudgetExhausted` (carrying the state
    reached) instead of exceeding the budget.
    """
    device = torch.device(device)
    n_want = top + bottom
    b = int(block_size)
    no_rows = torch.zeros(0, P, dtype=dtype, device=device)
    if start is not None:  # warm start: a first block of max(j, block_size) columns, which sets the width
        first = start.to(device=device, dtype=dtype).T
        b = max(b, first.shape[0])
        if first.shape[0] < b:
            first = torch.cat([first, _random_rows(P, b - first.shape[0], generator, dtype, device)], 0)
        Q, _, _ = _orthonormal_rows(first, no_rows, 0.0, generator)
    else:
        Q = torch.linalg.qr(_random_rows(P, b, generator, dtype, device).T)[0].T.contiguous()
    basis = _Basis(min(max_basis + n_want + b, P + b), P, dtype, device)
    L_theta = torch.zeros(0, dtype=dtype, device=device)
    L_res = torch.zeros(0, dtype=dtype, device=device)
    M = torch.zeros(0, 0, dtype=dtype, device=device)
    out = KrylovResult(values=L_theta, vectors=no_rows.T, residuals=L_res, estimates=L_res, converged=False,
                       scale=float(scale))
    checking: torch.Tensor | None = None  # the answer locked while a multiplicity check runs
    stalled: list[float] = []  # the largest wanted residual of each iteration (stop_residual runs)
    just_restarted = False
    skipped_rr = 0  # 1 + the Rayleigh-Ritz steps skipped in a row (0: none may be skipped yet)
    while True:
        w = Q.shape[0]
        if max_products is not None and out.products + w > max_products:
            out.estimates = est[want] if out.iterations else L_res
            raise BudgetExhausted(out)
        W = matmat(Q.T.contiguous()).to(dtype).T.contiguous()
        out.products += w
        out.iterations += 1
        m0 = basis.n - basis.n_locked
        previous_width = w if out.iterations > 1 and m0 >= w and not just_restarted else 0
        just_restarted = False
        basis.append(Q)
        # the newest block and the one before it (when no restart came between) carry almost all of W
        Z, C, again, in_span, norms = _orthogonalise(W, basis.all, reorth_keep, local=min(w + previous_width, m0 + w))
        out.second_passes += again
        M = _grow(M, C[basis.n_locked:], m0, w)
        if (stop_residual is not None and 0 < skipped_rr < RR_SKIP_MAX and stalled and stalled[-1] > RR_SKIP_ABOVE
                * out.scale and basis.n + b < P and basis.n - basis.n_locked + b <= max_basis):
            # far from the switch point: the Rayleigh-Ritz step only watches, so it waits (same products)
            Q, _, replaced = _orthonormal_rows(Z[:b], basis.all, max(BREAKDOWN_RTOL, 1e-2 * tol) * max(out.scale, 1e-300),
                                               generator, in_span[:b], norms, basis.next_row())
            out.breakdowns += replaced
            skipped_rr += 1
            continue
        skipped_rr = 1
        theta, Y = torch.linalg.eigh(M)
        out.scale = max(out.scale, float(theta.abs().max()), float(L_theta.abs().max()) if L_theta.numel() else 0.0)
        limit = tol * out.scale
        full_space = basis.n >= P
        if full_space:  # the basis spans everything: Rayleigh-Ritz is exact
            Q_next, R = Z[:0], Z.new_zeros(0, w)
        else:
            take = min(b, P - basis.n)
            threshold = max(BREAKDOWN_RTOL, 1e-2 * tol) * max(out.scale, 1e-300)
            Q_next, R, replaced = _orthonormal_rows(Z[:take], basis.all, threshold, generator, in_span[:take],
                                                    norms if take == w else None, basis.next_row())
            out.breakdowns += replaced
            if take < w:  # the last directions of the space: the rest of Z lies in span(Q_next)
                R = torch.cat([R, Q_next @ Z[take:].T], 1)
        r = (R @ Y[-w:, :]).norm(dim=0) if R.numel() else torch.zeros_like(theta)
        # candidates: the locked pairs and the active Ritz pairs, as one set
        all_theta, all_r = torch.cat([L_theta, theta]), torch.cat([L_res, r])
        want = wanted_indices(all_theta, top, bottom)
        enough = all_theta.numel() > n_want or full_space
        if not enough and neighbours is not None and all_theta.numel() == n_want:
            # the earlier run's other Ritz values give the gaps this run cannot see yet
            n = all_theta.numel()
            est = error_estimates(torch.cat([all_theta, neighbours[0].to(all_theta)]),
                                  torch.cat([all_r, neighbours[1].to(all_r)]))[:n]
            enough = True
        elif limit > 0:
            est = error_estimates(all_theta, all_r)
        else:  # tol=0 (a phase stopped by its residuals): an estimate is 0 exactly when its residual is
            est = all_r
        done = enough and bool((est[want] <= limit).all())
        if checking is not None and done and not full_space:
            # the check's own best Ritz pairs (at each wanted end) must have converged too
            active_best = wanted_indices(theta, min(top, 1), min(bottom, 1))
            done = bool((est[L_theta.numel() + active_best] <= limit).all())
        if stop_residual is not None and enough:
            worst = float(all_r[want].max())
            stalled.append(worst)
            done = done or worst <= stop_residual * out.scale or (stop_when_stalled and any(
                worst <= below * out.scale and len(stalled) > steps and worst > 0.5 * min(stalled[:-steps])
                for below, steps in ((STALL_BELOW, STALL_ITERATIONS), (SLOW_BELOW, SLOW_ITERATIONS))))
        out.history.append({"products": out.products, "locked": basis.n_locked, "basis": basis.n - basis.n_locked,
                            "max_estimate": float(est[want].max() / max(out.scale, 1e-300)) if enough else None,
                            "values": all_theta[want].tolist()})
        if done and stop_residual is None and not full_space and check_multiplicity is not False:
            if checking is None:
                again = _may_miss_copies(all_theta[want], b, out.breakdowns, check_multiplicity)
            else:
                again = _changed(all_theta[want], checking, limit) and out.check_rounds < MAX_CHECK_ROUNDS
            if again:  # lock the answer and search on from a random block orthogonal to it
                basis.lock_only(_candidate_rows(basis, Y, want))
                L_theta, L_res = all_theta[want], all_r[want]
                checking = L_theta.clone()
                M = M.new_zeros(0, 0)
                Q = _fresh_rows(P, b, basis.all, generator)
                out.check_rounds += 1
                continue
        if done or full_space:
            order = torch.argsort(all_theta[want])
            out.values, out.vectors = all_theta[want][order], _candidate_rows(basis, Y, want[order]).T
            out.residuals, out.estimates = all_r[want][order], est[want][order]
            rest = torch.ones_like(all_theta, dtype=torch.bool)
            rest[want] = False
            out.others_values, out.others_residuals = all_theta[rest], all_r[rest]
            if not bool(rest.any()) and neighbours is not None:
                out.others_values, out.others_residuals = neighbours[0].to(all_theta), neighbours[1].to(all_r)
            out.converged = bool((est[want] <= limit).all()) or full_space
            out.locked = basis.n_locked
            return out
        if basis.n - basis.n_locked + b > max_basis:
            M, L_theta, L_res = _restart(basis, Y, theta, r, est[L_theta.numel():], want, L_theta, L_res,
                                         top, bottom, limit, max_basis, b)
            out.restarts += 1
            just_restarted = True
        Q = Q_next


def _candidate_rows(basis: _Basis, Y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of the candidates ``index`` (locked rows first in the numbering, then active Ritz vectors)."""
    n_locked = basis.n_locked
    idx = index.tolist()
    active = [i - n_locked for i in idx if i >= n_locked]
    ritz = basis.ritz_rows(Y[:, active]) if active else None
    out, j = [], 0
    for i in idx:
        if i < n_locked:
            out.append(basis.rows[i:i + 1])
        else:
            out.append(ritz[j:j + 1])
            j += 1
    return torch.cat(out, 0)


def _grow(M: torch.Tensor, C: torch.Tensor, m0: int, w: int) -> torch.Tensor:
    """The Rayleigh quotient ``V^T H V`` extended by the new block's coefficients ``C = V^T H Q``."""
    grown = M.new_zeros(m0 + w, m0 + w)
    grown[:m0, :m0] = M
    grown[:m0, m0:] = C[:m0]
    grown[m0:, :m0] = C[:m0].T
    grown[m0:, m0:] = 0.5 * (C[m0:] + C[m0:].T)
    return grown


def _restart(basis: _Basis, Y, theta, r, est, want, L_theta, L_res, top, bottom, limit, max_basis, b):
    """Thick restart: locked pairs outside the answer are dropped, converged active pairs inside it are
    locked, and the most wanted of the other active Ritz vectors are kept."""
    n_locked = L_theta.numel()
    locked_in = want[want < n_locked]
    active_in = want[want >= n_locked] - n_locked
    lock = active_in[est[active_in] <= limit]
    order = _priority(theta, top, bottom)
    rest = order[~torch.isin(order, lock)]
    open_slots = active_in.numel() - lock.numel()
    keep = rest[: min(max(max_basis // 2, open_slots + b), max_basis - b)]
    basis.restart(torch.sort(locked_in).values, Y[:, lock], Y[:, keep])
    locked_in = torch.sort(locked_in).values
    return (torch.diag(theta[keep]), torch.cat([L_theta[locked_in], theta[lock]]),
            torch.cat([L_res[locked_in], r[lock]]))


def _may_miss_copies(values: torch.Tensor, b: int, breakdowns: int, check: bool | str) -> bool:
    """Whether the answer may lack copies of a repeated eigenvalue (see the module docstring)."""
    if check is True or breakdowns:
        return True
    v = torch.sort(values).values
    same = ((v[1:] - v[:-1]) <= 1e-8 * max(float(v.abs().max()), 1e-300)).tolist()
    run = longest = 1
    for s in same:
        run = run + 1 if s else 1
        longest = max(longest, run)
    return longest >= b


def _changed(values: torch.Tensor, before: torch.Tensor, limit: float) -> bool:
    """Whether the answer moved since the check began (it found a missing copy)."""
    a, c = torch.sort(values).values, torch.sort(before).values
    return bool(((a - c).abs() > limit).any())


__all__ = ["KrylovResult", "BudgetExhausted", "block_krylov_schur", "error_estimates", "wanted_indices"]
