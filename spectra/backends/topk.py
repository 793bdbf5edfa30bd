"""The ``topk`` backend: a few extreme eigenpairs by block Krylov-Schur on batched products.

The recommended method for extreme eigenvalues (``which="largest"``,
``"smallest"`` or ``"both"``).  It multiplies the operator with blocks of
``block_size`` vectors (one batched product each, far cheaper per vector than
one-at-a-time products), keeps a float64 basis with full
reorthogonalisation, restarts thickly and locks converged pairs
(:mod:`spectra.backends.block_krylov`).  ``"arpack"`` stays as the reference.

Paths (recorded in ``provenance["path"]`` with the reason):

``"krylov"``   the block Krylov-Schur solver;
``"dense"``    every eigenvalue from the dense matrix (``P`` products and
               ``eigh``) when that is cheaper: when ``P`` is at most twice the
               Krylov basis (a restarted Krylov run needs about ``P``
               products there), or as a fallback when ``P <=``
               :data:`DENSE_FALLBACK_MAX_PARAMS` and the Krylov solver has spent
               ``P`` products without converging (the small end of a singular
               Hessian, where a huge zero cluster meets tiny negative
               eigenvalues, is such a case).

Accuracy: ``tol`` is the relative eigenvalue error aimed at, checked with the
estimate ``min(r, rho^2/delta)`` from each pair's residual ``r`` (see
:func:`spectra.backends.block_krylov.error_estimates`), relative to the
largest ``|eigenvalue|`` seen.  Default ``1e-10`` for float64 operators,
``1e-5`` for float32 ones (their products carry ~1e-7 relative rounding).
With ``verify=True`` (default) the answer's residuals are recomputed with
fresh products and a final Rayleigh-Ritz where they came from the Krylov
recurrence (``provenance["residuals_from"]`` says which); ``result.residuals``
are those.

``low_precision``: an operator for the same matrix in a cheaper precision
(for example built on a float32 copy of the model), or a function that
builds one (called only when the Krylov path runs).  The solver runs on it,
one vector at a time unless ``block_size`` is given, until every wanted
residual is below ``switch_residual`` times the scale, and finishes on
``op`` from those vectors by Rayleigh-Ritz refinement
(:mod:`spectra.backends.refine`: one product per vector, then one per
residual of a pair not yet within ``tol``, round after round); where that
stalls, or with ``check_multiplicity=True``, block Krylov-Schur on ``op``
goes on from the search's vectors.  The answer, its residuals and its error
estimates come from ``op``'s products.  Every phase's products are recorded.
:func:`spectra.analyze` passes a float32 twin of a float64 model's operator
(:func:`spectra.api.low_precision_twin`); ``low_precision=None`` turns it off.

``max_matvecs`` bounds the products of the whole run (verification
included); when it would be exceeded the run stops with
:class:`~spectra.errors.ConvergenceError`, which says how far it got.
Without it the Krylov path stops after :func:`default_product_cap`
products (:data:`DEFAULT_PRODUCT_CAP_BASES` bases' worth), with the dense
fallback where that applies and a ConvergenceError that says what to change
otherwise.

>>> import torch
>>> from spectra.operators.base import DenseOperator
>>> d = torch.cat([torch.tensor([-3.0, 5.0, 6.0]), torch.linspace(0.0, 1.0, 300)]).double()
>>> r = TopkBackend().run(DenseOperator(torch.diag(d)), k=2, which="both", block_size=4)
>>> r.eigenvalues.round(decimals=8).tolist(), r.provenance["path"]
([-3.0, 0.0, 5.0, 6.0], 'krylov')
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..errors import ConvergenceError, InvalidInputError, MemoryBudgetError
from ..result import SpectrumResult
from .base import available_memory_bytes, format_bytes, refuses_unknown_options
from .block_krylov import BudgetExhausted, KrylovResult, block_krylov_schur, error_estimates
from .refine import refine

DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# Block sizes (bench/bench_topk.py sweep, 784-64-64-10, clustered top-10): a block of b vectors costs
# less per vector than b single products, but the search needs more products as b grows (float64: 95,
# 130, 150, 168 and 300 products for b = 1, 2, 3, 4, 10).  One vector at a time wastes the most per
# product but needs the fewest, and wins with float32 products (0.61 against 0.50 gradients per vector,
# 98 against 136 products); without a low-precision phase b = 2, since b = 1 adds a multiplicity
# check (a single-vector Krylov space cannot see a second copy of an eigenvalue) of about 50 products.
DEFAULT_BLOCK_SIZE = 2
DEFAULT_LOW_PRECISION_BLOCK_SIZE = 1
# Active basis columns before a thick restart: DEFAULT_BASIS_BLOCKS blocks, and at least
# DEFAULT_BASIS_EXTRA more than the wanted pairs (small blocks restart too often otherwise:
# bench/bench_topk.py sweep).
DEFAULT_BASIS_BLOCKS = 8
DEFAULT_BASIS_EXTRA = 30
# Dense first when P is at most this many Krylov bases: restarted Krylov would need about P products.
DENSE_FIRST_BASES = 2
# ...and always up to this many parameters: a Krylov search of a few extremes takes ~100 products (more at a
# singular small end), P products in blocks of 64 cost less per vector, and eigh of P <= 160 is instant.
DENSE_FIRST_MAX_PARAMS = 160
# The dense fallback is tried only up to this many parameters (P products plus an O(P^3) eigh).
DENSE_FALLBACK_MAX_PARAMS = 5000
DENSE_COPIES = 3  # dense matrix, eigenvector output, LAPACK workspace
# Low-precision phase until every wanted residual is below this share of the scale: with float32
# products (relative rounding ~1e-7) the vectors are then so close that one float64 block of products
# and a Rayleigh-Ritz step give eigenvalues to ~1e-12 (bench/bench_topk.py notes); at 1e-6 the float64
# check sometimes failed by a little and cost another block, 3e-7 costs about 3 more float32 products.
DEFAULT_SWITCH_RESIDUAL = 3e-7
# Without max_matvecs, the Krylov path stops after this many bases' worth of products (max_basis plus the
# wanted pairs): converging runs took 2-6 (bench/bench_topk.py sweep), while a basis too small for a clustered
# or singular end can restart for ever without converging (150,000 products at the small end of a ReLU layer).
DEFAULT_PRODUCT_CAP_BASES = 50
_WHICH = ("largest", "smallest", "both")
REFINEMENT = "Rayleigh-Ritz refinement"  # the float64 phase after a low-precision search (spectra.backends.refine)


def topk_memory_bytes(num_params: int, max_basis: int, n_want: int, block_size: int, itemsize: int = 8) -> int:
    """Bytes of the Krylov basis and its work blocks (float64 whatever the product dtype)."""
    rows = max_basis + n_want + block_size  # the preallocated basis
    work = 4 * block_size + n_want  # the block, its product, its residual block, the Ritz vectors
    return int(num_params) * (rows + work) * max(itemsize, 8)


def default_basis(block_size: int, n_want: int) -> int:
    """Active basis columns before a thick restart when ``max_basis`` is not given (also the finishing
    phase's after a low-precision one, whose block holds every wanted vector)."""
    return max(DEFAULT_BASIS_BLOCKS * block_size, n_want + DEFAULT_BASIS_EXTRA, n_want + 2 * block_size)


def default_product_cap(max_basis: int, n_want: int) -> int:
    """Products the Krylov path may spend when ``max_matvecs`` is not given: DEFAULT_PRODUCT_CAP_BASES bases.

    >>> default_product_cap(40, 10)
    2500
    """
    return DEFAULT_PRODUCT_CAP_BASES * (max_basis + n_want)


class TopkBackend:
    """``k`` extreme eigenpairs by block Krylov-Schur (block Lanczos with thick restart and locking)."""

    name = "topk"
    is_exact = False

    @refuses_unknown_options
    def run(self, op: Any, *, k: int = 10, which: str = "largest", tol: float | None = None,
            block_size: int | None = None, max_basis: int | None = None, max_matvecs: int | None = None,
            seed: int = 0, v0: Any = None, return_eigenvectors: bool = False, memory_limit: int | None = None,
            check_multiplicity: bool | str = "auto", low_precision: Any = None,
            switch_residual: float = DEFAULT_SWITCH_RESIDUAL, verify: bool = True, dense: bool | str = "auto"
            ) -> SpectrumResult:
        P = op.shape[0]
        plan = _Plan.make(op, k=k, which=which, tol=tol, block_size=block_size, max_basis=max_basis,
                          max_matvecs=max_matvecs, v0=v0, check_multiplicity=check_multiplicity,
                          low_precision=low_precision, switch_residual=switch_residual, dense=dense)
        # the phases run one after the other (a low-precision one hands its k vectors to the main one): the
        # larger basis sets the need
        bases = [(plan.block_size, plan.max_basis)] if plan.low is not None else []
        bases.append(main_phase_basis(plan, plan.n_want if plan.low is not None else plan.block_size, P))
        need, width, basis_size = max((topk_memory_bytes(P, m, plan.n_want, b), b, m) for b, m in bases)
        have = available_memory_bytes(op.device) if memory_limit is None else int(memory_limit)
        if not plan.dense_first and need > have:
            raise MemoryBudgetError(
                f"topk needs about {format_bytes(need)} for its Krylov basis ({basis_size + plan.n_want + width} "
                f"vectors of P={P}) but {format_bytes(have)} is available; pass a smaller max_basis "
                f"(at least {plan.n_want + 2 * plan.block_size}) or block_size, or low_precision=None")
        start = time.perf_counter()
        before = op.num_matvecs
        generator = torch.Generator().manual_seed(int(seed))
        phases: list[dict[str, Any]] = []
        krylov = None
        if plan.dense_first:
            path, reason = "dense", plan.dense_reason
        else:
            krylov, path, reason = _run_krylov(op, plan, generator, phases, have)
        if path == "dense":
            values, vectors, residuals, estimates = _dense(op, plan, have)
            verify_products = 0
        else:
            spent = sum(p["products"] for p in phases)
            values, vectors, residuals, estimates, verify_products = _finish(op, plan, krylov, verify, spent)
        seconds = time.perf_counter() - start
        products = op.num_matvecs - before
        provenance = {
            "k": int(k), "which": which, "tol": plan.tol, "seed": seed, "path": path, "path_reason": reason,
            "algorithm": ("block Krylov-Schur (block Lanczos, full reorthogonalisation, thick restart, locking)"
                          + (", then Rayleigh-Ritz refinement" if any(p.get("algorithm") == REFINEMENT for p in phases)
                             else "")) if path == "krylov" else "dense matrix + torch.linalg.eigh",
            "block_size": plan.block_size, "max_basis": plan.max_basis, "max_matvecs": plan.max_matvecs,
            "warm_start_vectors": 0 if plan.v0 is None else int(plan.v0.shape[1]),
            "phases": phases, "solver_seconds": seconds, "recurrence_dtype": "float64",
            "residuals_from": "fresh products" if verify_products or (krylov is not None and residuals_are_fresh(krylov))
                              else ("dense eigh" if path == "dense" else "the Krylov recurrence"),
            "residual_matvecs": verify_products,
            "eigenvalue_error_estimates": estimates.tolist(),
        }
        if krylov is not None:
            provenance.update(restarts=krylov.restarts, iterations=krylov.iterations, locked=krylov.locked,
                              breakdowns=krylov.breakdowns, multiplicity_check_rounds=krylov.check_rounds,
                              converged=krylov.converged)
        if any(p["operator"] == "low_precision" for p in phases):
            provenance["low_precision_matvecs"] = sum(p["products"] for p in phases if p["operator"] == "low_precision")
        return SpectrumResult(
            method=self.name,
            eigenvalues=values,
            eigenvectors=vectors if return_eigenvectors else None,
            residuals=residuals,
            num_params=P,
            num_matvecs=products - verify_products,
            provenance=provenance,
        )


class _Plan:
    """Validated settings of one run."""

    @classmethod
    def make(cls, op: Any, *, k, which, tol, block_size, max_basis, max_matvecs, v0, check_multiplicity,
             low_precision, switch_residual, dense) -> "_Plan":
        plan = cls()
        P = op.shape[0]
        if which not in _WHICH:
            raise InvalidInputError(f"which must be 'largest', 'smallest' or 'both'; got {which!r}")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InvalidInputError(f"k must be a positive integer; got {k!r}")
        plan.top = int(k) if which in ("largest", "both") else 0
        plan.bottom = int(k) if which in ("smallest", "both") else 0
        plan.n_want = plan.top + plan.bottom
        if plan.n_want > P:
            raise InvalidInputError(f"topk needs k <= P ({'2k' if which == 'both' else 'k'} = {plan.n_want} "
                                    f"values asked of P={P}); use method='exact' for all eigenvalues")
        default_tol = DEFAULT_TOL.get(op.dtype, DEFAULT_TOL[torch.float32])
        plan.tol = default_tol if tol is None else tol
        if not isinstance(plan.tol, (int, float)) or isinstance(plan.tol, bool) or not 0 <= plan.tol < 1:
            raise InvalidInputError(f"tol must be a number in [0, 1); got {tol!r}")
        b = block_size
        if b is None:
            b = DEFAULT_BLOCK_SIZE if low_precision is None else DEFAULT_LOW_PRECISION_BLOCK_SIZE
        if not isinstance(b, (int, np.integer)) or isinstance(b, bool) or b < 1:
            raise InvalidInputError(f"block_size must be a positive integer; got {block_size!r}")
        plan.v0 = _warm_start(v0, P)
        plan.block_size = int(min(max(b, 0 if plan.v0 is None else plan.v0.shape[1]), P))
        need_basis = plan.n_want + 2 * plan.block_size
        mb = default_basis(plan.block_size, plan.n_want) if max_basis is None else max_basis
        if not isinstance(mb, (int, np.integer)) or isinstance(mb, bool) or mb < min(need_basis, P):
            raise InvalidInputError(f"max_basis must be an integer >= k + 2 * block_size = {need_basis} "
                                    f"(or >= P); got {max_basis!r}")
        plan.max_basis = int(min(mb, P))
        plan.basis_default = max_basis is None
        if max_matvecs is not None and (not isinstance(max_matvecs, (int, np.integer)) or isinstance(max_matvecs, bool)
                                        or max_matvecs < 1):
            raise InvalidInputError(f"max_matvecs must be a positive integer or None; got {max_matvecs!r}")
        plan.max_matvecs = None if max_matvecs is None else int(max_matvecs)
        if check_multiplicity not in (True, False, "auto"):
            raise InvalidInputError(f"check_multiplicity must be True, False or 'auto'; got {check_multiplicity!r}")
        plan.check_multiplicity = check_multiplicity
        if low_precision is not None and not callable(low_precision) and not hasattr(low_precision, "matmat"):
            raise InvalidInputError("low_precision must be an operator, a function that builds one, or None; "
                                    f"got {type(low_precision).__name__}")
        plan.low = low_precision
        _check_twin(op, low_precision)
        if not (isinstance(switch_residual, (int, float)) and 0 < switch_residual < 1):
            raise InvalidInputError(f"switch_residual must be a number in (0, 1); got {switch_residual!r}")
        plan.switch_residual = float(switch_residual)
        if dense not in (True, False, "auto"):
            raise InvalidInputError(f"dense must be True, False or 'auto'; got {dense!r}")
        plan.dense_first, plan.dense_reason = _dense_first(P, plan, dense)
        plan.dense_allowed = dense is not False
        return plan


def _check_twin(op: Any, low: Any) -> None:
    if hasattr(low, "matmat") and tuple(low.shape) != tuple(op.shape):
        raise InvalidInputError(f"low_precision must be an operator of the same shape {tuple(op.shape)}; "
                                f"got {tuple(low.shape)}")


def _low_operator(plan: "_Plan", op: Any) -> Any:
    """The low-precision operator, built now if ``low_precision`` was a builder (only the Krylov path needs it)."""
    if plan.low is not None and not hasattr(plan.low, "matmat"):
        built = plan.low()
        if not hasattr(built, "matmat"):
            raise InvalidInputError(f"low_precision's builder returned {type(built).__name__}, not an operator")
        _check_twin(op, built)
        plan.low = built
    return plan.low


def _warm_start(v0: Any, P: int) -> torch.Tensor | None:
    if v0 is None:
        return None
    v0 = torch.as_tensor(v0)
    if v0.ndim == 1:
        v0 = v0[:, None]
    if v0.ndim != 2 or v0.shape[0] != P or v0.shape[1] < 1:
        raise InvalidInputError(f"v0 must have shape [P={P}] or [P, j]; got {tuple(v0.shape)}")
    if not bool(torch.isfinite(v0).all()) or not bool((v0.norm(dim=0) > 0).all()):
        raise InvalidInputError("v0 must be finite with nonzero columns")
    return v0.to(torch.float64)


def _dense_first(P: int, plan: _Plan, dense: bool | str) -> tuple[bool, str | None]:
    if dense is True:
        return True, "dense=True"
    if dense is False:
        return False, None
    if P <= DENSE_FIRST_BASES * plan.max_basis:
        return True, (f"P={P} <= {DENSE_FIRST_BASES} x max_basis={plan.max_basis}: a Krylov run would take about "
                      "P products anyway, so P products and eigh are the cheaper, exact answer")
    if P <= DENSE_FIRST_MAX_PARAMS:
        return True, (f"P={P} <= {DENSE_FIRST_MAX_PARAMS}: P products in blocks and eigh cost about what a Krylov "
                      "search of the extremes costs, and give the exact answer")
    return False, None


def _run_krylov(op: Any, plan: _Plan, generator: torch.Generator, phases: list[dict[str, Any]],
                have: int) -> tuple[KrylovResult | None, str, str]:
    """The Krylov path (mixed precision if asked); falls back to dense when that is cheaper."""
    P = op.shape[0]
    dense_ok = plan.dense_allowed and P <= DENSE_FALLBACK_MAX_PARAMS and DENSE_COPIES * P * P * 8 <= have
    budget = plan.max_matvecs
    cap = default_product_cap(plan.max_basis, plan.n_want) if budget is None else None
    if dense_ok and (budget is None or budget >= 2 * P):
        # after P products without convergence, dense is the cheaper way on
        krylov_budget, fallback = P if cap is None else min(P, cap), True
    else:
        krylov_budget, fallback = (budget if cap is None else cap), False
    start, spent, neighbours = plan.v0, 0, None
    common = dict(top=plan.top, bottom=plan.bottom, generator=generator, check_multiplicity=plan.check_multiplicity,
                  device=op.device)
    try:
        if _low_operator(plan, op) is not None:
            t0 = time.perf_counter()
            first = block_krylov_schur(_matmat(plan.low), P, tol=0.0, stop_residual=plan.switch_residual,
                                       stop_when_stalled=True,
                                       start=start, block_size=plan.block_size, max_basis=plan.max_basis,
                                       max_products=krylov_budget, **common)
            phases.append(_phase_record("low_precision", None, plan.low, plan.block_size, first, t0))
            start, spent = first.vectors, first.products
            neighbours = (first.others_values, first.others_residuals)
        if neighbours is not None and plan.check_multiplicity is not True:
            # the search's vectors need only float64 Rayleigh-Ritz steps, each adding the open pairs' residuals
            t0 = time.perf_counter()
            # its basis and their products fit in the memory reserved for the block Krylov phase
            refined = refine(_matmat(op), start, top=plan.top, bottom=plan.bottom, tol=plan.tol,
                             neighbours=neighbours, scale=first.scale,
                             max_columns=main_phase_basis(plan, start.shape[1], P)[1] // 2,
                             max_products=krylov_budget - spent)
            phases.append(_phase_record("main", REFINEMENT, op, start.shape[1], refined, t0))
            if refined.converged:
                return refined, "krylov", "the Krylov basis is smaller than P"
            # it stalled (a large cluster): a block Krylov run goes on from the search's vectors, as without it
            spent += refined.products
        width, basis_size = main_phase_basis(plan, 0 if start is None else start.shape[1], P)
        t0 = time.perf_counter()
        result = block_krylov_schur(_matmat(op), P, tol=plan.tol, start=start, block_size=width, max_basis=basis_size,
                                    max_products=krylov_budget - spent, neighbours=neighbours, **common)
        phases.append(_phase_record("main", "block Krylov-Schur", op, width, result, t0))
        return result, "krylov", "the Krylov basis is smaller than P"
    except BudgetExhausted as stop:
        state = stop.state
        done = int((state.estimates <= plan.tol * max(state.scale, 1e-300)).sum()) if state.estimates.numel() else 0
        if fallback and (plan.max_matvecs is None or plan.max_matvecs - krylov_budget >= P):
            spent_what = "P" if krylov_budget == P else "the default cap of"
            return None, "dense", (f"the Krylov solver spent {spent_what} {krylov_budget} products without converging "
                                   f"({done} of {plan.n_want} pairs); P products and eigh finish exactly")
        if cap is not None:
            raise ConvergenceError(
                f"topk did not converge within its default cap of {cap} products ({DEFAULT_PRODUCT_CAP_BASES} x "
                f"(max_basis={plan.max_basis} + {plan.n_want} wanted pairs); {done} of {plan.n_want} pairs within "
                f"tol={plan.tol:g}): a basis this small restarts too often to separate a clustered or singular "
                f"end; raise max_basis, pass max_matvecs to allow more products, loosen tol, or use "
                f"method='exact' (P={P} products)") from None
        raise ConvergenceError(
            f"topk used its budget of max_matvecs={plan.max_matvecs} products before converging: "
            f"{spent + state.products} products, {done} of {plan.n_want} pairs within tol={plan.tol:g}; "
            "raise max_matvecs, "
            f"loosen tol, or use method='exact' (P={P} products)") from None


def _phase_record(operator: str, algorithm: str | None, on: Any, block_size: int, result: KrylovResult,
                  t0: float) -> dict[str, Any]:
    """One entry of ``provenance["phases"]``: which operator, its dtype, and what the phase spent."""
    return {"operator": operator, **({"algorithm": algorithm} if algorithm else {}),
            "dtype": str(on.dtype).replace("torch.", ""), "block_size": block_size, "products": result.products,
            "iterations": result.iterations, "restarts": result.restarts, "seconds": time.perf_counter() - t0}


def main_phase_basis(plan: _Plan, start_width: int, P: int) -> tuple[int, int]:
    """``(block width, max_basis)`` of the phase on ``op`` itself, which starts from ``start_width`` vectors
    (a warm start, or the low-precision phase's answer): a start wider than a block sets the width, and
    the basis must hold a few such blocks."""
    width = max(plan.block_size, start_width)
    basis = max(plan.max_basis, plan.n_want + 3 * width, default_basis(width, plan.n_want) if plan.basis_default else 0)
    return width, min(basis, P)


def _matmat(op: Any):
    def apply(V: torch.Tensor) -> torch.Tensor:
        return op.matmat(V.to(op.dtype))

    return apply


def _finish(op: Any, plan: _Plan, krylov: KrylovResult, verify: bool, spent: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Values, vectors, residuals and error estimates of the answer; fresh products if ``verify``
    (skipped when they would exceed ``max_matvecs``: the recurrence residuals are kept then)."""
    X = krylov.vectors
    values, residuals = krylov.values, krylov.residuals
    products = 0
    fresh = residuals_are_fresh(krylov)
    if verify and not fresh and (plan.max_matvecs is None or spent + X.shape[1] <= plan.max_matvecs):
        HX = op.matmat(X.to(op.dtype)).to(torch.float64)
        products = X.shape[1]
        # final Rayleigh-Ritz on span(X) with the fresh products: its values are the best the vectors give
        G = X.T @ HX
        values, U = torch.linalg.eigh(0.5 * (G + G.T))
        X, HX = X @ U, HX @ U
        residuals = (HX - X * values).norm(dim=0)
    # the gap of the innermost answer is to the next Ritz values, which the solver kept
    est = error_estimates(torch.cat([values, krylov.others_values]),
                          torch.cat([residuals, krylov.others_residuals]))[: values.numel()]
    order = torch.argsort(values)
    return (values[order].cpu().numpy(), X[:, order].cpu().numpy(), residuals[order].cpu().numpy(),
            est[order].cpu().numpy(), products)


def residuals_are_fresh(krylov: KrylovResult) -> bool:
    """Whether the answer's residuals come from products of its own vectors: a refinement's always do, and
    so do those of a Krylov run that ended after its first block."""
    return krylov.residuals_from_products or (krylov.iterations == 1 and krylov.check_rounds == 0)


def _dense(op: Any, plan: _Plan, have: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every eigenpair of the dense matrix, the wanted ones returned; residuals from eigh are round-off."""
    P = op.shape[0]
    need = DENSE_COPIES * P * P * 8
    if need > have:
        raise MemoryBudgetError(f"the dense path needs {format_bytes(need)} for P={P} but {format_bytes(have)} "
                                "is available; pass dense=False")
    if plan.max_matvecs is not None and P > plan.max_matvecs:
        raise ConvergenceError(f"the dense path needs P={P} products, more than max_matvecs={plan.max_matvecs}; "
                               "raise max_matvecs or pass dense=False")
    to_dense = getattr(op, "to_dense", None)
    if callable(to_dense):
        A = to_dense()
    else:
        A = torch.cat([op.matmat(torch.eye(P, dtype=op.dtype, device=op.device)[:, i:i + 64])
                       for i in range(0, P, 64)], 1)
        A = 0.5 * (A + A.T)
    A = A.to(torch.float64)
    lam, U = torch.linalg.eigh(A)
    idx = torch.cat([torch.arange(plan.bottom), torch.arange(P - plan.top, P)])
    values, X = lam[idx], U[:, idx]
    residuals = (A @ X - X * values).norm(dim=0)
    est = residuals.clone()
    return values.cpu().numpy(), X.cpu().numpy(), residuals.cpu().numpy(), est.cpu().numpy()
