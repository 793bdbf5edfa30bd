"""Exact, ARPACK and Lanczos backends against numpy.linalg.eigvalsh and closed forms."""

from __future__ import annotations

import functools

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import spectra
from spectra.backends.arpack import COSTLY_PRODUCTS_MIN, COSTLY_PRODUCTS_PER_PARAMETER, ArpackBackend, CostlyRunWarning
from spectra.backends.exact import ExactBackend
from spectra.backends.lanczos import LanczosBackend, rademacher_probes
from spectra.errors import InvalidInputError, MemoryBudgetError
from spectra.operators.base import DenseOperator
from spectra.operators.hessian import HessianOperator
from spectra.testing import (assert_extremes_match, assert_quadrature_moments, density_distance,
                             matrix_with_spectrum, reference_hessian)

from .cases import CASE_IDS, CASES


@pytest.fixture(scope="module")
def untrained_net():
    """A tanh net at initialisation: its Hessian has clearly negative eigenvalues."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(6)
    X, y = torch.randn(40, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g)
    H = reference_hessian(model, "cross_entropy", X, y).numpy()
    return model, X, y, H, np.linalg.eigvalsh(H)


# ----------------------------------------------------------------- exact
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_exact_equals_eigvalsh_of_reference(case):
    model, (X, y) = case.build_model(), case.build_data()
    expected = np.linalg.eigvalsh(reference_hessian(model, case.loss, X, y).numpy())
    result = ExactBackend().run(HessianOperator(model, case.loss, (X, y)))
    np.testing.assert_allclose(result.eigenvalues, expected, rtol=0, atol=1e-10 * np.abs(expected).max())
    assert result.num_matvecs == expected.size


def test_exact_closed_form_linear_mse():
    """Linear model, loss mean_i 0.5||W x_i - y_i||^2: H = I_C (x) X^T X / N (W flattened row-major)."""
    g = torch.Generator().manual_seed(0)
    N, D, C = 30, 4, 3
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    Y = torch.randn(N, C, generator=g, dtype=torch.float64)
    model = nn.Linear(D, C, bias=False).double()
    gram = (X.T @ X / N).numpy()
    expected = np.sort(np.repeat(np.linalg.eigvalsh(gram), C))
    result = ExactBackend().run(HessianOperator(model, "mse", (X, Y)), return_hessian=True)
    np.testing.assert_allclose(result.eigenvalues, expected, rtol=1e-12)
    np.testing.assert_allclose(result.arrays["hessian"], np.kron(np.eye(C), gram), atol=1e-13)


def test_exact_refuses_before_allocating():
    op = DenseOperator(torch.eye(100, dtype=torch.float64))
    with pytest.raises(MemoryBudgetError, match=r"needs about 234.4 KiB .* use method='lanczos'"):
        ExactBackend().run(op, memory_limit=1000)
    assert op.num_matvecs == 0


# ----------------------------------------------------------------- arpack
# (which, tol, residual bound relative to max|lambda|): ARPACK's tol is relative to the
# (shifted, for "smallest") Ritz value, so the bound is 2 tol; tol=0 means machine precision.
ARPACK_ENDS = [
    ("largest", 1e-6, 2e-6),
    ("smallest", 1e-6, 2e-6),
    ("both", 1e-6, 2e-6),
    ("largest", 0.0, 1e-8),
    ("both", 0.0, 1e-8),
]


@pytest.mark.parametrize("which,tol,residual_bound", ARPACK_ENDS)
def test_arpack_ends_equal_exact(untrained_net, which, tol, residual_bound):
    model, X, y, _H, exact = untrained_net
    assert exact.min() < -1e-3, "test premise: the Hessian has negative eigenvalues"
    op = HessianOperator(model, "cross_entropy", (X, y))
    result = ArpackBackend().run(op, k=5, which=which, tol=tol)
    assert result.eigenvalues.size == (10 if which == "both" else 5)
    assert_extremes_match(result, exact, rtol=1e-6)
    scale = np.abs(exact).max()
    assert result.residuals.max() < residual_bound * scale
    assert 0 < result.num_matvecs == op.num_matvecs  # residual checks are not counted as solver work
    assert result.provenance["residual_matvecs"] == result.eigenvalues.size
    # the reported error estimates are honest: never below the true error by more than rounding
    want = np.concatenate([exact[:5] if which != "largest" else [], exact[-5:] if which != "smallest" else []])
    err = np.abs(np.sort(result.eigenvalues) - np.sort(want))
    est = np.asarray(result.provenance["eigenvalue_error_estimates"])
    assert np.all(err <= est + 1e-13 * scale)


def test_arpack_warns_when_it_costs_more_than_the_exact_spectrum():
    # the small end of a singular Hessian: the output layer of an untrained MNIST net (P = 110)
    model = spectra.models.create("mlp", sizes=[784, 10, 10], seed=0)
    data = spectra.datasets.load("mnist", n=300, seed=0)
    with pytest.warns(CostlyRunWarning, match=r"arpack took \d+ products for P=110 .* method='topk'"):
        result = spectra.analyze(model, data, method="arpack", k=3, which="smallest", params="fc2")
    assert result.num_matvecs > max(COSTLY_PRODUCTS_PER_PARAMETER * 110, COSTLY_PRODUCTS_MIN)
    # the default method takes the cheap path on the same problem, and the largest end stays silent
    with warnings.catch_warnings():
        warnings.simplefilter("error", CostlyRunWarning)
        cheap = spectra.analyze(model, data, k=3, which="smallest", params="fc2")
        spectra.analyze(model, data, method="arpack", k=3, which="largest", params="fc2")
    assert cheap.method == "topk" and cheap.num_matvecs <= 110
    np.testing.assert_allclose(result.eigenvalues, cheap.eigenvalues, rtol=0, atol=1e-12)


def test_arpack_default_tol_needs_fewer_products_than_machine_precision(untrained_net):
    """Eigenvalues converge as the residual squared: tol=1e-6 is accurate and cheaper than tol=0."""
    model, X, y, _H, exact = untrained_net
    runs = {tol: ArpackBackend().run(HessianOperator(model, "cross_entropy", (X, y)), k=5, tol=tol) for tol in (0.0, 1e-6)}
    for result in runs.values():
        np.testing.assert_allclose(result.eigenvalues, exact[-5:], rtol=1e-10, atol=1e-12 * np.abs(exact).max())
    assert runs[1e-6].num_matvecs < runs[0.0].num_matvecs


ARPACK_BAD = [
    ({"k": 150}, "arpack needs k < P"),
    ({"k": 0}, "k must be a positive integer"),
    ({"which": "middle"}, "which must be"),
    ({"k": 3, "ncv": 2}, "ncv must satisfy"),
    ({"k": 3, "colour": "red"}, "does not take option"),
]


@pytest.mark.parametrize("options,message", ARPACK_BAD)
def test_arpack_bad_options(options, message):
    with pytest.raises(InvalidInputError, match=message):
        ArpackBackend().run(DenseOperator(torch.eye(150, dtype=torch.float64)), **options)


# ----------------------------------------------------------------- lanczos
def test_lanczos_quadrature_reproduces_moments_on_a_net(untrained_net):
    model, X, y, H, _exact = untrained_net
    m = 6
    probes = rademacher_probes(H.shape[0], 3, seed=1, dtype=torch.float64, device=torch.device("cpu"))
    op = HessianOperator(model, "cross_entropy", (X, y))
    result = LanczosBackend().run(op, probes=probes, num_steps=m)
    assert result.nodes.shape == (3, m) and result.weights.shape == (3, m)
    np.testing.assert_allclose(result.weights.sum(axis=1), 1.0, rtol=1e-12)
    assert_quadrature_moments(result, H, probes.numpy(), rtol=1e-9)  # j = 0 .. 2m-1


@pytest.mark.parametrize("engine", ["reorth", "linear_operator", "lowmem"])
def test_lanczos_moments_on_a_matrix(engine):
    lam = np.linspace(-1.0, 4.0, 60)
    A = matrix_with_spectrum(lam, seed=3)
    probes = rademacher_probes(60, 4, seed=2, dtype=torch.float64, device=torch.device("cpu"))
    result = LanczosBackend().run(DenseOperator(torch.as_tensor(A)), probes=probes, num_steps=8, engine=engine)
    assert result.provenance["engine"] == engine
    assert_quadrature_moments(result, A, probes.numpy(), rtol=1e-9)


def test_lanczos_density_approaches_exact_within_budget(untrained_net):
    """Broadened SLQ density within L1 0.15 of the broadened exact spectrum with 30 probes x 40 steps."""
    model, X, y, _H, exact = untrained_net
    op = HessianOperator(model, "cross_entropy", (X, y))
    sigma = (exact.max() - exact.min()) / 50
    few = LanczosBackend().run(op, num_probes=2, num_steps=40, seed=0)
    many = LanczosBackend().run(op, num_probes=30, num_steps=40, seed=0)
    d_few, d_many = density_distance(few, exact, sigma=sigma), density_distance(many, exact, sigma=sigma)
    assert d_many < 0.15, d_many
    assert d_many < d_few
    assert many.num_matvecs == 30 * 40


def test_lanczos_zero_mass_and_outliers():
    """90 % exact zeros and three outliers: outliers exact, zero mass right, no ghosts."""
    P = 600
    lam = np.zeros(P)
    lam[:57] = np.linspace(0.01, 0.2, 57)
    lam[57:60] = [5.0, 10.0, 20.0]
    A = torch.as_tensor(matrix_with_spectrum(lam, seed=0))
    result = LanczosBackend().run(DenseOperator(A), num_probes=8, num_steps=60, seed=0)
    top = np.sort(result.nodes.max(axis=1))
    np.testing.assert_allclose(top, 20.0, rtol=1e-10)  # every probe finds the top outlier
    for outlier in (5.0, 10.0):
        assert np.abs(result.nodes - outlier).min() < 1e-8
    atoms, mass = result.nodes.ravel(), result.weights.ravel() / 8
    zero_mass = mass[np.abs(atoms) < 1e-3].sum()
    assert abs(zero_mass - 0.9) < 0.03, zero_mass
    near_top = (np.abs(result.nodes - 20.0) < 1e-6) & (result.weights > 1e-12)
    assert near_top.sum(axis=1).max() == 1  # no ghost copies of a converged outlier
    summary = result.summary()
    assert summary["estimated"] and summary["lambda_max"] == pytest.approx(20.0, rel=1e-10)
    lo, hi = result.extreme_ritz_values
    assert abs(lo) < 1e-3 and hi == pytest.approx(20.0, rel=1e-10)


def test_lanczos_terminates_early_on_low_rank():
    lam = np.zeros(200)
    lam[:10] = np.arange(1, 11)
    A = torch.as_tensor(matrix_with_spectrum(lam, seed=1))
    result = LanczosBackend().run(DenseOperator(A), num_probes=3, num_steps=40, seed=0)
    taken = result.provenance["steps_taken"]
    assert max(taken) <= 12, taken  # rank 10 + the null direction
    assert np.isfinite(result.nodes).all() and np.isfinite(result.weights).all()
    np.testing.assert_allclose(result.weights.sum(axis=1), 1.0, rtol=1e-10)
    real = result.weights > 1e-10
    assert np.abs(result.nodes[real] - np.round(result.nodes[real])).max() < 1e-8  # nodes at 0..10


@pytest.mark.parametrize("options,message", [
    ({"num_steps": 1}, "num_steps must be an integer >= 2"),
    ({"num_steps": 51}, "exceeds P=50"),
    ({"num_probes": 0, "num_steps": 10}, "num_probes must be a positive integer"),
    ({"engine": "magic", "num_steps": 10}, "engine must be"),
])
def test_lanczos_bad_options(options, message):
    with pytest.raises(InvalidInputError, match=message):
        LanczosBackend().run(DenseOperator(torch.eye(50, dtype=torch.float64)), **options)


def test_lanczos_memory_refusal():
    with pytest.raises(MemoryBudgetError, match="engine='lowmem'"):
        LanczosBackend().run(DenseOperator(torch.eye(50, dtype=torch.float64)), num_steps=10, memory_limit=100)


# ----------------------------------------------------------------- analyze / auto
def test_auto_runs_exact_on_a_small_net(untrained_net):
    model, X, y, _H, exact = untrained_net
    result = spectra.analyze(model, (X, y), method="auto")
    assert result.method == "exact" and result.provenance["requested_method"] == "auto"
    assert result.provenance["auto_reason"].startswith("exact: P=")
    np.testing.assert_allclose(result.eigenvalues, exact, atol=1e-10 * np.abs(exact).max())


def test_auto_runs_lanczos_when_dense_does_not_fit(untrained_net, monkeypatch):
    model, X, y, _H, exact = untrained_net
    calls = []
    original = LanczosBackend.run

    @functools.wraps(original)  # analyze passes the common arguments run's signature names
    def spy(self, op, **kw):
        calls.append(kw)
        return original(self, op, **kw)

    monkeypatch.setattr(LanczosBackend, "run", spy)
    result = spectra.analyze(model, (X, y), method="auto", memory_limit=60_000, num_probes=2, num_steps=10)
    assert calls == [{"num_probes": 2, "num_steps": 10, "seed": 0, "memory_limit": 60_000}]
    assert result.method == "lanczos"
    assert "lanczos: the dense Hessian needs" in result.provenance["auto_reason"]
    assert result.nodes.shape == (2, 10)


def test_analyze_records_provenance(untrained_net):
    model, X, y, _H, _exact = untrained_net
    r = spectra.analyze(model, (X, y), method="arpack", k=3, seed=4)
    p = r.provenance
    for key in ("loss", "reduction", "dtype", "seed", "num_matvecs", "wall_seconds", "versions", "hvp_mode",
                "num_params", "num_samples", "grad_norm"):
        assert key in p, key
    assert p["reduction"] == "mean" and p["dtype"] == "float64" and p["seed"] == 4
    assert r.num_samples == 40 and r.num_params == H_size(model)


def H_size(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.filterwarnings("ignore::spectra.backends.arpack.CostlyRunWarning")  # the multiplicity runs cost
@pytest.mark.parametrize("which,expected,checks", [
    ("smallest", [0.0, 0.0, 0.0, 0.0], "some"),      # a 20-fold null space: copies must not go missing
    ("largest", [3.0, 4.0, 5.0, 7.0], "none"),        # distinct outliers: no extra runs
    ("both", [-2.0, 0.0, 0.0, 0.0, 3.0, 4.0, 5.0, 7.0], "some"),
])
def test_arpack_repeated_eigenvalues(which, expected, checks):
    lam = np.concatenate([np.zeros(20), np.linspace(0.5, 2.5, 26), [3.0, 4.0, 5.0, 7.0]])
    if which == "both":
        lam[0] = -2.0
    A = torch.as_tensor(matrix_with_spectrum(lam, seed=4))
    result = ArpackBackend().run(DenseOperator(A), k=4, which=which)
    np.testing.assert_allclose(result.eigenvalues, expected, atol=1e-9)
    runs = result.provenance["multiplicity_check_runs"]
    assert (runs > 0) if checks == "some" else (runs == 0)
    assert result.residuals.max() < 2e-6 * np.abs(lam).max()  # the default residual tol, 1e-6 relative


def test_lowmem_lanczos_memory_refusal():
    with pytest.raises(MemoryBudgetError, match="low-memory Lanczos needs"):
        LanczosBackend().run(DenseOperator(torch.eye(50, dtype=torch.float64)), num_steps=10, engine="lowmem",
                             num_probes=4, memory_limit=100)


def test_lanczos_single_probe():
    A = torch.as_tensor(matrix_with_spectrum(np.linspace(-1.0, 3.0, 40), seed=5))
    result = LanczosBackend().run(DenseOperator(A), num_probes=1, num_steps=10, seed=0)
    assert result.nodes.shape == (1, 10) and result.weights.sum() == pytest.approx(1.0)


# The default engine against gpytorch's lanczos_tridiag, the reference implementation:
# (spectrum, probes, steps). Clustered and degenerate spectra are where reorthogonalisation matters.
REORTH_CASES = [
    ("spread", np.linspace(-1.0, 4.0, 120), 3, 30),
    ("outliers over a null space", np.concatenate([np.zeros(100), np.linspace(0.1, 0.5, 17), [3.0, 6.0, 9.0]]), 4, 40),
    ("geometric, badly conditioned", np.geomspace(1e-8, 1.0, 120), 2, 60),
]


@pytest.mark.parametrize("name,lam,n_probes,steps", REORTH_CASES, ids=[c[0] for c in REORTH_CASES])
def test_reorth_engine_matches_linear_operator(name, lam, n_probes, steps):
    A = torch.as_tensor(matrix_with_spectrum(lam, seed=11))
    probes = rademacher_probes(A.shape[0], n_probes, seed=5, dtype=torch.float64, device=torch.device("cpu"))
    runs = {e: LanczosBackend().run(DenseOperator(A), probes=probes, num_steps=steps, engine=e)
            for e in ("reorth", "linear_operator")}
    ours, ref = runs["reorth"], runs["linear_operator"]
    assert ours.provenance["engine"] == "reorth" and ours.provenance["reorthogonalization"] == "full"
    assert ours.provenance["steps_taken"] == ref.provenance["steps_taken"]
    # Gauss quadrature of smooth functions agrees (nodes of weight ~0 may differ)
    for f in (lambda t: t, lambda t: t**2, lambda t: np.exp(-t)):
        np.testing.assert_allclose((ours.weights * f(ours.nodes)).sum(axis=1),
                                   (ref.weights * f(ref.nodes)).sum(axis=1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.nodes.max(axis=1), ref.nodes.max(axis=1), rtol=1e-10)
    np.testing.assert_allclose(ours.nodes.min(axis=1), ref.nodes.min(axis=1), rtol=1e-8, atol=1e-10)


def test_reorth_engine_keeps_the_basis_orthogonal(monkeypatch):
    """Without reorthogonalisation the converged top eigenvalue comes back as ghost copies; with it, once."""
    import spectra.backends.lanczos as lz

    lam = np.concatenate([np.linspace(0.0, 1.0, 300), [50.0]])
    A = torch.as_tensor(matrix_with_spectrum(lam, seed=2))
    probes = rademacher_probes(301, 2, seed=0, dtype=torch.float64, device=torch.device("cpu"))
    seen = {}
    real = lz._tridiag_reorth

    def spy(closure, V0, num_steps, second_passes=None):
        seen["called"] = True
        return real(closure, V0, num_steps, second_passes)

    monkeypatch.setattr(lz, "_tridiag_reorth", spy)
    full = LanczosBackend().run(DenseOperator(A), probes=probes, num_steps=80)
    plain = LanczosBackend().run(DenseOperator(A), probes=probes, num_steps=80, engine="lowmem")
    assert seen == {"called": True}  # the default path is spectra's own engine
    copies = lambda r: ((np.abs(r.nodes - 50.0) < 1e-6) & (r.weights > 1e-14)).sum(axis=1)
    assert copies(full).tolist() == [1, 1]
    assert copies(plain).max() > 1  # the premise: this case does grow ghosts
