"""topk's guards: the default product cap (no endless restarts without ``max_matvecs``) and the progress
bar, which counts the float32 search as well as the float64 finish."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import spectra
import spectra.api
from spectra.progress import ProductBar
from spectra.backends.topk import DEFAULT_PRODUCT_CAP_BASES, TopkBackend, default_product_cap
from spectra.errors import ConvergenceError
from spectra.operators.base import DenseOperator
from spectra.operators.hessian import HessianOperator


def _singular_layer():
    """An untrained ReLU net's second layer: a large zero cluster meets tiny negatives at the small end."""
    model = spectra.models.create("mlp", sizes=[2, 10, 10, 2], dtype="float64", seed=0)
    return model, spectra.datasets.load("blobs", n=400, seed=0), ["fc2.weight", "fc2.bias"]


def test_small_basis_at_a_singular_end_stops_at_the_default_cap_with_advice():
    """Blocks of 10 in a basis of 30 restart for ever at this small end (150,000 products were seen);
    without max_matvecs and without the dense path the default cap ends it with a clear error."""
    model, data, layer = _singular_layer()
    op = HessianOperator(model, "cross_entropy", data, params=layer)
    before = op.num_matvecs
    cap = default_product_cap(30, 10)
    assert cap == DEFAULT_PRODUCT_CAP_BASES * 40
    with pytest.raises(ConvergenceError, match=rf"default cap of {cap} products .* raise max_basis"):
        TopkBackend().run(op, which="smallest", k=10, dense=False, block_size=10, max_basis=30)
    assert cap - 10 < op.num_matvecs - before <= cap


# (P, reason of the dense path): equally spaced eigenvalues, blocks of 2 in a basis of 8 converge too slowly at
# both ends; the dense path takes over after P products, or after the default cap where that is below P
CAP = default_product_cap(8, 4)
FALLBACKS = [(200, "spent P 200 products"), (1000, f"the default cap of {CAP} products")]


@pytest.mark.parametrize("P,reason", FALLBACKS, ids=["after-P", "after-the-cap"])
def test_without_max_matvecs_the_dense_fallback_follows_the_cap(P, reason):
    op = DenseOperator(torch.diag(torch.arange(-P // 2, P // 2, dtype=torch.float64)))
    result = TopkBackend().run(op, k=2, which="both", block_size=2, max_basis=8)
    assert result.provenance["path"] == "dense" and reason in result.provenance["path_reason"]
    assert op.num_matvecs <= min(P, CAP) + P
    assert result.eigenvalues.tolist() == [-P // 2, -P // 2 + 1, P // 2 - 2, P // 2 - 1]


def test_progress_counts_the_float32_search_and_the_float64_finish(monkeypatch):
    data = spectra.datasets.load("mnist", n=200, seed=0)
    X = data.X.to(torch.float64).reshape(len(data), -1)
    model = spectra.models.create("mlp", sizes=[784, 2, 10], activation="tanh", dtype="float64", seed=0)
    model = nn.Sequential(*[m for m in model if not isinstance(m, nn.Flatten)])
    counts = []

    class RecordingBar(ProductBar):
        def __exit__(self, *exc):
            super().__exit__(*exc)
            counts.append((self.count(), self.bar.n))

    monkeypatch.setattr(spectra.api, "ProductBar", RecordingBar)
    result = spectra.analyze(model, (X, data.y), method="topk", k=3, progress=True)
    prov = result.provenance
    assert [p["operator"] for p in prov["phases"]] == ["low_precision", "main"]  # the path: both phases ran
    both = result.num_matvecs + prov["residual_matvecs"] + prov["low_precision_matvecs"]
    assert prov["low_precision_matvecs"] > 0 and counts == [(both, both)]  # the bar shows every product
    assert np.isfinite(result.eigenvalues).all()


def test_a_search_far_from_its_switch_point_skips_rayleigh_ritz_steps_at_no_cost_in_products(monkeypatch):
    """A stop_residual run (the float32 search) watches its residuals only every RR_SKIP_MAX iterations while
    they are large: the Krylov space, the products and the answer are those of watching every iteration."""
    from spectra.backends import block_krylov
    from spectra.testing import matrix_with_spectrum

    lam = np.concatenate([[0.552, 0.518, 0.490, 0.458, 0.433, 0.429, 0.417, 0.414, 0.401, 0.396],
                          np.linspace(-0.47, 0.39, 390)])
    A = torch.as_tensor(matrix_with_spectrum(lam, seed=2))

    def search():
        return block_krylov.block_krylov_schur(lambda V: A @ V, 400, top=10, bottom=0, block_size=1, max_basis=40,
                                               tol=0.0, stop_residual=1e-8, generator=torch.Generator().manual_seed(0))

    skipping = search()
    monkeypatch.setattr(block_krylov, "RR_SKIP_MAX", 1)  # watch every iteration
    watching = search()
    assert len(skipping.history) < len(watching.history) == watching.iterations  # the path: steps were skipped
    assert skipping.products == watching.products
    np.testing.assert_allclose(skipping.values.numpy(), watching.values.numpy(), rtol=0, atol=1e-14)
    np.testing.assert_allclose(skipping.values.numpy(), np.sort(lam)[-10:], rtol=0, atol=1e-7)


# (relative noise of every product, the residual the search stops at, at most): float32 products stall near
# 1e-7; noisier products stop the search after 20 Rayleigh-Ritz steps without progress below 1e-5 of the scale,
# or after 100 below 1e-3, instead of running to the budget
NOISE = [(1e-4, 1e-5), (1e-2, 1e-3)]


@pytest.mark.parametrize("noise,stops_below", NOISE, ids=["stalls-below-1e-5", "stalls-below-1e-3"])
def test_a_search_with_noisy_products_stops_where_its_residuals_stall(noise, stops_below):
    from spectra.backends import block_krylov
    from spectra.testing import matrix_with_spectrum

    lam = np.concatenate([[0.552, 0.518, 0.490, 0.458, 0.433, 0.429, 0.417, 0.414, 0.401, 0.396],
                          np.linspace(-0.47, 0.39, 390)])
    A = torch.as_tensor(matrix_with_spectrum(lam, seed=2))
    g = torch.Generator().manual_seed(5)

    def noisy(V):
        return A @ V + noise * 0.552 * torch.randn(V.shape, generator=g, dtype=V.dtype) / V.shape[0] ** 0.5

    result = block_krylov.block_krylov_schur(noisy, 400, top=10, bottom=0, block_size=1, max_basis=40, tol=0.0,
                                             stop_residual=3e-7, stop_when_stalled=True, max_products=1000,
                                             generator=torch.Generator().manual_seed(0))
    worst = float(result.residuals.max()) / result.scale
    assert 3e-7 < worst <= stops_below and result.products < 300


def test_a_single_new_vector_is_normalised_by_the_known_norm_into_its_basis_row():
    """The search's per-product bookkeeping: the norm the reorthogonalisation already knows divides the new
    vector (no second pass over it), which lands in the basis row it will occupy (no copy on append)."""
    from spectra.backends import block_krylov

    basis = block_krylov._Basis(4, 6, torch.float64, torch.device("cpu"))
    basis.append(torch.eye(6, dtype=torch.float64)[:1])
    Z = torch.tensor([[0.0, 3.0, 4.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    known = torch.tensor([10.0], dtype=torch.float64)  # not ||Z|| = 5: shows which norm was used
    Q, R, replaced = block_krylov._orthonormal_rows(Z, basis.all, 0.0, torch.Generator(), norms=known,
                                                    out=basis.next_row())
    assert replaced == 0 and float(R) == 10.0 and torch.equal(Q, Z / 10.0)
    assert Q.data_ptr() == basis.rows[1].data_ptr()
    before = basis.rows.clone()
    basis.append(Q)
    assert basis.n == 2 and torch.equal(basis.rows, before)
