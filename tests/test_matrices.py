"""Every curvature matrix on every product engine against dense float64 truth, and the path taken.

Truth: :mod:`tests.curvature_truth` (autograd's Hessian, J^T S J from torch.func,
per-sample gradients by a plain loop).  Tolerance: 1e-10 relative to the
largest entry (float64 round-off).  Each row also asserts the engine that ran
and, where the chain cannot, the reason recorded.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spectra
from spectra.errors import InvalidInputError
from spectra.operators import curvature
from spectra.operators.fisher import EmpiricalFisherOperator, MCFisherOperator
from spectra.operators.ggn import GGNOperator
from spectra.operators.hessian import HessianOperator
from spectra.operators.residual import ResidualOperator

from .cases import CASES, uneven_batches
from .curvature_truth import MATRICES, dense_truth

RTOL = 1e-10
CLASSES = {"hessian": HessianOperator, "ggn": GGNOperator, "residual": ResidualOperator,
           "empirical_fisher": EmpiricalFisherOperator, "mc_fisher": MCFisherOperator}
MC = {"mc_samples": 3, "seed": 7}

# (case, params, engine asked for, engine expected, fragment of the recorded reason or None)
ENGINE_ROWS = [
    (CASES[0], None, "auto", "chain", None),  # relu MLP, cross-entropy
    (CASES[0], None, "reverse", "reverse", None),
    (CASES[0], None, "forward", "forward", None),
    (CASES[1], ["2.weight", "4.bias"], "chain", "chain", None),  # tanh MLP, MSE, a parameter subset
    (CASES[1], ["2.weight", "4.bias"], "reverse", "reverse", None),
    (CASES[2], None, "auto", "reverse", "Conv2d"),  # a CNN is no chain: auto records why
    (CASES[2], None, "forward", "forward", None),
]
ROW_IDS = [f"{c.name}-{asked}" for c, _, asked, _, _ in ENGINE_ROWS]


def _options(matrix: str) -> dict:
    return dict(MC) if matrix == "mc_fisher" else {}


@pytest.mark.parametrize("matrix", MATRICES)
@pytest.mark.parametrize("case,params,asked,engine,reason", ENGINE_ROWS, ids=ROW_IDS)
def test_matrix_on_engine_equals_dense_truth(matrix, case, params, asked, engine, reason):
    model, (X, y) = case.build_model(), case.build_data()
    op = CLASSES[matrix](model, case.loss, uneven_batches(X, y, (7, 5)), params=params, mode=asked,
                         chunk_size=11, **_options(matrix))
    info = op.describe()
    assert op.engine.name == engine and info["product_engine"] == engine and info["matrix"] == op.name
    if reason is None:
        assert info["chain_products"] == ("used" if engine == "chain" else "not requested")
    else:
        assert reason in op.engine_note and reason in info["chain_products"]
    truth = dense_truth(matrix, model, case.loss, X, y, op.param_names, **_options(matrix))
    scale = float(truth.abs().max())
    torch.testing.assert_close(op.to_dense(), truth, rtol=0, atol=RTOL * scale)
    V = torch.randn(truth.shape[0], 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(op @ V, truth @ V, rtol=0, atol=RTOL * scale * float(V.abs().max()) * 10)


@pytest.mark.parametrize("matrix", MATRICES)
def test_explicit_chain_on_a_non_chain_raises(matrix):
    case = CASES[2]
    with pytest.raises(InvalidInputError, match="mode='chain' cannot be used here: .*Conv2d"):
        CLASSES[matrix](case.build_model(), case.loss, case.build_data(), mode="chain", **_options(matrix))


# ----------------------------------------------------------------------- the empirical Fisher
@pytest.mark.parametrize("case", CASES[:2], ids=[c.name for c in CASES[:2]])
def test_analyze_empirical_fisher_exact_equals_mean_of_per_sample_outer_products(case):
    """analyze(matrix="empirical_fisher", method="exact") is (1/N) sum_i g_i g_i^T over uneven batches."""
    model, (X, y) = case.build_model(), case.build_data()
    r = spectra.analyze(model, uneven_batches(X, y, (8, 3)), loss=case.loss, matrix="empirical_fisher",
                        method="exact", return_eigenvectors=True)
    truth = dense_truth("empirical_fisher", model, case.loss, X, y)
    vectors, values = torch.as_tensor(r.eigenvectors), torch.as_tensor(r.eigenvalues)
    rebuilt = vectors @ torch.diag(values) @ vectors.T
    relative = float((rebuilt - truth).abs().max()) / float(truth.abs().max())
    assert relative < RTOL
    assert r.provenance["matrix"] == "empirical_fisher" and r.provenance["product_engine"] == "chain"


def test_empirical_fisher_sum_reduction_is_the_sum():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X, y = torch.randn(9, 3, dtype=torch.float64), torch.randint(0, 2, (9,))

    def summed(out, target):
        return nn.functional.cross_entropy(out, target, reduction="sum")

    F = EmpiricalFisherOperator(model, summed, [(X[:4], y[:4]), (X[4:], y[4:])], reduction="sum")
    assert F.engine.name == "reverse" and "not a built-in loss" in F.engine_note
    truth = dense_truth("empirical_fisher", model, "cross_entropy", X, y) * X.shape[0]
    torch.testing.assert_close(F.to_dense(), truth, rtol=0, atol=RTOL * float(truth.abs().max()))


# ----------------------------------------------------------------------- the Monte-Carlo Fisher
SEEDS = 64
MC_SAMPLES = 16
Z_MAX = 6.0  # no entry of the mean may stand further than 6 standard errors from the truth


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_mc_fisher_is_unbiased_for_the_gauss_newton_matrix(loss):
    """Over 64 seeds (16 labels per sample each) the mean MC Fisher is the GGN within stated noise.

    For the softmax cross-entropy and for MSE (a unit Gaussian) the Fisher equals
    the GGN.  Entry by entry, |mean - GGN| must be below 6 standard errors of the
    mean (estimated from the 64 seeds), and the squared z-scores must average
    near 1 (0.3 to 3): errors of the size the noise explains, and no larger.
    """
    case = CASES[0]
    model, (X, y) = case.build_model(), case.build_data()
    data = uneven_batches(X, y, (9,))
    G = GGNOperator(model, loss, data).to_dense()
    draws = torch.stack([MCFisherOperator(model, loss, data, mc_samples=MC_SAMPLES, seed=s).to_dense()
                         for s in range(SEEDS)])
    mean, stderr = draws.mean(0), draws.std(0) / SEEDS ** 0.5
    noisy = stderr > 1e-12 * float(G.abs().max())  # entries with no noise must be exact
    z = (mean - G)[noisy] / stderr[noisy]
    assert float(z.abs().max()) < Z_MAX
    assert 0.3 < float((z ** 2).mean()) < 3.0
    torch.testing.assert_close(mean[~noisy], G[~noisy], rtol=0, atol=1e-12 * float(G.abs().max()))


def test_mc_fisher_is_reproducible_and_independent_of_the_batching():
    case = CASES[0]
    model, (X, y) = case.build_model(), case.build_data()
    a = MCFisherOperator(model, case.loss, (X, y), mc_samples=2, seed=5).to_dense()
    b = MCFisherOperator(model, case.loss, (X, y), mc_samples=2, seed=5).to_dense()
    c = MCFisherOperator(model, case.loss, uneven_batches(X, y, (4, 11)), mc_samples=2, seed=5,
                         mode="reverse").to_dense()
    other = MCFisherOperator(model, case.loss, (X, y), mc_samples=2, seed=6).to_dense()
    assert torch.equal(a, b)
    torch.testing.assert_close(c, a, rtol=0, atol=RTOL * float(a.abs().max()))
    assert float((other - a).abs().max()) > 1e-3 * float(a.abs().max())


def test_analyze_mc_fisher_takes_the_analysis_seed_and_records_it():
    case = CASES[0]
    model, data = case.build_model(), case.build_data()
    r1 = spectra.analyze(model, data, matrix="fisher", method="exact", seed=2, mc_samples=3)
    r2 = spectra.analyze(model, data, matrix="mc_fisher", method="exact", seed=2, mc_samples=3)
    assert r1.provenance["matrix"] == "mc_fisher" and r1.provenance["mc_samples"] == 3
    assert r1.provenance["mc_seed"] == 2 and "categorical" in r1.provenance["mc_likelihood"]
    assert (r1.eigenvalues == r2.eigenvalues).all()


@pytest.mark.parametrize("options,loss,match", [
    ({"mc_samples": 0}, "cross_entropy", "mc_samples must be a positive integer"),
    ({"mc_samples": 2.0}, "cross_entropy", "mc_samples must be a positive integer"),
    ({"seed": -1}, "cross_entropy", "seed must be a non-negative integer"),
    ({}, lambda o, t: nn.functional.cross_entropy(o, t), "not one of them: use matrix='empirical_fisher'"),
])
def test_mc_fisher_refusals(options, loss, match):
    case = CASES[0]
    with pytest.raises(InvalidInputError, match=match):
        MCFisherOperator(case.build_model(), loss, case.build_data(), **options)


# ----------------------------------------------------------------------- one pass per product
@pytest.mark.parametrize("matrix", MATRICES)
@pytest.mark.parametrize("engine,cache,passes", [("reverse", False, 1), ("reverse", True, 0), ("chain", False, 1),
                                                 ("chain", True, 0)])
def test_one_pass_over_the_data_per_product(matrix, engine, cache, passes, monkeypatch):
    """A product builds each batch's context at most once, shared by all its terms (R: H and G)."""
    case = CASES[0]
    model, (X, y) = case.build_model(), case.build_data()
    batches = uneven_batches(X, y, (8, 8))
    op = CLASSES[matrix](model, case.loss, batches, mode=engine, cache_graph=cache, **_options(matrix))
    assert op.engine.name == engine and op.cache_graph == cache
    built = []
    real = curvature.CurvatureOperator._context
    monkeypatch.setattr(curvature.CurvatureOperator, "_context",
                        lambda self, batch, *a, **k: built.append(batch.index) or real(self, batch, *a, **k))
    op.matmat(torch.randn(op.shape[0], 3, dtype=torch.float64))
    assert built == list(range(len(batches))) * passes
