"""Rayleigh-Ritz refinement, the float64 phase of ``topk`` after a low-precision search.

Tolerances: eigenvalues within ``1e-10 * max|lambda|`` of ``numpy.linalg.eigvalsh`` (the tol asked
for); residuals equal to ``||A x - lambda x||`` of the returned vectors to ``1e-12 * max|lambda|``
(round-off of two different products); error estimates not below the true error by more than
``1e-13 * max|lambda|``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import spectra
from spectra.backends import refine as refine_module
from spectra.backends.block_krylov import BudgetExhausted
from spectra.backends.refine import refine
from spectra.backends.topk import REFINEMENT, TopkBackend
from spectra.operators.base import DenseOperator
from spectra.testing import matrix_with_spectrum

P = 300
TOL = 1e-10


def _spectrum(name: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if name == "clustered_top":  # the MNIST 784-64-64-10 top: gaps of 1e-2 and less
        top = np.array([0.552, 0.518, 0.490, 0.458, 0.433, 0.429, 0.417, 0.414, 0.401, 0.396])
        return np.concatenate([top, np.linspace(-0.47, 0.39, P - 10)])
    if name == "outliers_both_ends":
        return np.concatenate([[-4.0, -3.0, -2.5], rng.uniform(-1.0, 1.0, P - 6), [2.0, 3.0, 5.0]])
    if name == "zero_cluster":  # 80 % exact zeros: the small end is a cluster far larger than k
        return np.concatenate([np.zeros(int(0.8 * P)), rng.uniform(0.01, 1.0, P - int(0.8 * P))])
    raise KeyError(name)


def _start(A: torch.Tensor, exact_vectors: np.ndarray, noise: float, seed: int = 0) -> torch.Tensor:
    """The wanted eigenvectors plus ``noise`` (relative), as a low-precision search hands them over."""
    g = torch.Generator().manual_seed(seed)
    X = torch.as_tensor(exact_vectors)
    return X + noise * torch.randn(X.shape, generator=g, dtype=torch.float64)


def _setup(name: str, k: int, which: str):
    lam = _spectrum(name)
    A = torch.as_tensor(matrix_with_spectrum(lam, seed=1))
    w, U = np.linalg.eigh(A.numpy())
    idx = np.r_[np.arange(k) if which != "largest" else [], np.arange(P - k, P) if which != "smallest" else []]
    idx = idx.astype(int)
    rest = np.setdiff1d(np.arange(P), idx)
    near = rest[np.argsort(np.abs(w[rest][:, None] - w[idx][None, :]).min(1))[:10]]
    neighbours = (torch.as_tensor(w[near]), torch.full((near.size,), 1e-7))
    return A, w, U, idx, neighbours


# (spectrum, which end, noise of the start vectors, rounds expected to converge at most)
CONVERGES = [
    ("clustered_top", "largest", 1e-7, 2),  # as a float32 search hands its vectors over
    ("clustered_top", "largest", 1e-6, 5),
    ("outliers_both_ends", "both", 1e-7, 1),
    ("outliers_both_ends", "smallest", 1e-6, 5),  # two of the five inside the continuum: slower
]


@pytest.mark.parametrize("name,which,noise,rounds", CONVERGES, ids=[f"{n}-{w}-{e:g}" for n, w, e, _ in CONVERGES])
def test_refinement_reaches_tol_with_true_residuals(name, which, noise, rounds):
    k = 3 if which == "both" else 5
    A, w, U, idx, neighbours = _setup(name, k, which)
    calls = []

    def matmat(V):
        calls.append(V.shape[1])
        return A @ V

    out = refine(matmat, _start(A, U[:, idx], noise), top=k * (which != "smallest"),
                 bottom=k * (which != "largest"), tol=TOL, neighbours=neighbours)
    scale = np.abs(w).max()
    assert out.converged and out.iterations <= rounds
    err = np.abs(np.sort(out.values.numpy()) - np.sort(w[idx]))
    assert err.max() <= TOL * scale
    assert np.all(err <= out.estimates.numpy() + 1e-13 * scale)  # values and estimates ascend together
    # the path: one product per start vector, then one per open pair of each round, nothing else
    assert calls[0] == idx.size and calls[1:] == [h["open"] for h in out.history[:-1]]
    assert out.products == sum(calls) and out.residuals_from_products
    X = out.vectors
    true = (A @ X - X * out.values).norm(dim=0)
    np.testing.assert_allclose(out.residuals.numpy(), true.numpy(), rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose((X.T @ X).numpy(), np.eye(idx.size), atol=1e-12)


def test_a_cluster_larger_than_k_stalls_and_says_so():
    """The small end of an 80 % zero spectrum: residual expansion gains little per round and stops."""
    A, w, U, idx, neighbours = _setup("zero_cluster", 5, "smallest")
    start = torch.randn(P, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = refine(lambda V: A @ V, start, top=0, bottom=5, tol=TOL, neighbours=neighbours)
    assert not out.converged and out.iterations < refine_module.MAX_ROUNDS
    gains = [b["max_estimate"] / a["max_estimate"] for a, b in zip(out.history, out.history[1:])]
    assert gains[-1] > refine_module.MIN_GAIN


# (what stops it, the setting) on a start that needs 5 rounds (clustered top, noise 1e-6)
LIMITS = [("rounds", {"MAX_ROUNDS": 2}), ("columns", {"max_columns": 12})]


@pytest.mark.parametrize("limit,setting", LIMITS, ids=[name for name, _ in LIMITS])
def test_rounds_and_columns_are_bounded(monkeypatch, limit, setting):
    A, w, U, idx, neighbours = _setup("clustered_top", 5, "largest")
    columns = setting.get("max_columns")
    if limit == "rounds":
        monkeypatch.setattr(refine_module, "MAX_ROUNDS", setting["MAX_ROUNDS"])
    out = refine(lambda V: A @ V, _start(A, U[:, idx], 1e-6), top=5, bottom=0, tol=TOL, neighbours=neighbours,
                 max_columns=columns)
    assert not out.converged
    if limit == "rounds":
        assert out.iterations == 2
    else:  # 5 + 5 columns; the next 5 would pass 12
        assert [h["basis"] for h in out.history] == [5, 10] and out.history[-1]["open"] > 2


def test_budget_is_never_exceeded():
    A, w, U, idx, neighbours = _setup("clustered_top", 5, "largest")
    with pytest.raises(BudgetExhausted) as stop:
        refine(lambda V: A @ V, _start(A, U[:, idx], 1e-5), top=5, bottom=0, tol=TOL, neighbours=neighbours,
               max_products=7)
    assert stop.value.state.products == 5 and stop.value.state.estimates.numel() == 5


# ---------------------------------------------------------------- inside topk
def _mixed_run(name: str, **options):
    A, w, *_ = _setup(name, 5, "largest")
    op, low = DenseOperator(A), DenseOperator(A.float())
    return TopkBackend().run(op, k=5, low_precision=low, **options), op, w


def test_topk_finishes_a_low_precision_search_by_refinement():
    r, op, w = _mixed_run("clustered_top", return_eigenvectors=True)
    prov = r.provenance
    assert [(p["operator"], p.get("algorithm")) for p in prov["phases"]] == [("low_precision", None),
                                                                            ("main", REFINEMENT)]
    assert prov["algorithm"].endswith("then Rayleigh-Ritz refinement")
    # its residuals come from its own products: no verification products
    assert prov["residual_matvecs"] == 0 and prov["residuals_from"] == "fresh products"
    assert op.num_matvecs == r.num_matvecs == prov["phases"][1]["products"]
    np.testing.assert_allclose(np.sort(r.eigenvalues), w[-5:], rtol=0, atol=TOL * np.abs(w).max())


def test_check_multiplicity_true_keeps_the_block_krylov_finish():
    r, op, w = _mixed_run("clustered_top", check_multiplicity=True)
    assert [p.get("algorithm") for p in r.provenance["phases"]] == [None, "block Krylov-Schur"]
    np.testing.assert_allclose(np.sort(r.eigenvalues), w[-5:], rtol=0, atol=TOL * np.abs(w).max())


def test_a_stalled_refinement_hands_over_to_block_krylov():
    """The small end of one untrained ReLU layer (a zero cluster): the refinement stalls, the block
    Krylov run takes over from the search's vectors, and the answer is exact."""
    model = spectra.models.create("mlp", sizes=[2, 10, 10, 2], dtype="float64", seed=0)
    data = spectra.datasets.load("blobs", n=400, seed=0)
    layer = ["fc2.weight", "fc2.bias"]
    exact = spectra.analyze(model, data, method="exact", params=layer).eigenvalues
    r = spectra.analyze(model, data, method="topk", which="smallest", k=10, params=layer, dense=False)
    phases = r.provenance["phases"]
    assert [(p["operator"], p.get("algorithm")) for p in phases] == [
        ("low_precision", None), ("main", REFINEMENT), ("main", "block Krylov-Schur")]
    np.testing.assert_allclose(np.sort(r.eigenvalues), exact[:10], atol=TOL * np.abs(exact).max())
