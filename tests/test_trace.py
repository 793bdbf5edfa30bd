"""Trace and diagonal estimators against exact traces.

References: numpy.trace of explicit matrices, and the trace / diagonal of the
dense Hessian from torch.autograd.functional.hessian for a small net.
Statistical checks use fixed seeds; the tolerances (k standard errors) are
stated per test and hold for every seed listed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spectra.operators.base import DenseOperator
from spectra.operators.hessian import HessianOperator
from spectra import trace as tr

from .test_ggn import dense_hessian


def small_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g)
    return model, X, y


def random_symmetric(P, seed):
    A = np.random.default_rng(seed).standard_normal((P, P))
    return (A + A.T) / 2


def low_rank_plus_noise(P=300, rank=10, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((P, rank)))
    E = rng.standard_normal((P, P)) * noise
    return U @ np.diag(np.linspace(50, 100, rank)) @ U.T + (E + E.T) / 2


@pytest.mark.parametrize("P,seed", [(5, 0), (37, 1), (64, 2)])
def test_exact_trace_equals_numpy_trace(P, seed):
    A = random_symmetric(P, seed)
    op = DenseOperator(torch.from_numpy(A))
    est = tr.exact_trace(op, block_size=7)
    assert est.estimate == pytest.approx(np.trace(A), abs=1e-12 * P)
    assert est.num_matvecs == P and est.stderr == 0.0
    np.testing.assert_allclose(tr.exact_diagonal(op), np.diag(A), atol=1e-13)


def test_exact_trace_of_a_hessian():
    model, X, y = small_net()
    H = HessianOperator(model, "cross_entropy", (X, y))
    ref = dense_hessian(model, "cross_entropy", X, y)
    assert tr.exact_trace(H).estimate == pytest.approx(float(torch.trace(ref)), rel=1e-10)
    blocks = tr.exact_layer_traces(H)
    assert list(blocks) == ["0", "2"]
    n0 = 3 * 6 + 6
    assert blocks["0"].estimate == pytest.approx(float(torch.trace(ref[:n0, :n0])), rel=1e-10)
    assert blocks["2"].estimate == pytest.approx(float(torch.trace(ref[n0:, n0:])), rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("method", ["hutchinson", "hutchpp"])
def test_estimates_within_4_stderr_of_exact(seed, method):
    # Hessian of a small net: |estimate - exact| <= 4 standard errors
    model, X, y = small_net()
    H = HessianOperator(model, "cross_entropy", (X, y))
    exact = tr.exact_trace(H).estimate
    est = tr.estimate_trace(H, method, num_matvecs=60, seed=seed)
    assert est.num_matvecs == 60
    assert est.stderr > 0
    assert abs(est.estimate - exact) <= 4 * est.stderr


def test_hutchinson_stderr_matches_theory():
    # Per-probe variance of Rademacher Hutchinson is 2 (||A||_F^2 - sum A_jj^2).
    A = random_symmetric(50, 3)
    sd = np.sqrt(2 * ((A**2).sum() - (np.diag(A) ** 2).sum()))
    est = tr.hutchinson(DenseOperator(torch.from_numpy(A)), num_probes=400, seed=0)
    assert 0.85 < est.stderr * np.sqrt(400) / sd < 1.15
    assert abs(est.estimate - np.trace(A)) <= 4 * est.stderr


def test_hutchpp_beats_hutchinson_on_low_rank_plus_noise():
    # Equal budget (60 products); variance over 30 seeds.  Hutch++ removes the
    # rank-10 part exactly, so its variance must be far smaller (measured: ~100x).
    op = DenseOperator(torch.from_numpy(low_rank_plus_noise()))
    exact = np.trace(op.matrix.numpy())
    h = np.array([tr.hutchinson(op, num_probes=60, seed=s).estimate for s in range(30)])
    hpp = np.array([tr.hutchpp(op, num_matvecs=60, seed=s).estimate for s in range(30)])
    assert np.var(hpp) < 0.1 * np.var(h)
    assert abs(hpp.mean() - exact) < 4 * hpp.std(ddof=1) / np.sqrt(30) + 1e-9


def test_block_size_does_not_change_estimates():
    A = random_symmetric(40, 4)
    op = DenseOperator(torch.from_numpy(A))
    a = tr.hutchinson(op, num_probes=50, seed=7, block_size=50)
    b = tr.hutchinson(op, num_probes=50, seed=7, block_size=8)
    assert a.estimate == pytest.approx(b.estimate, rel=1e-14)


def test_diagonal_estimate_and_layer_traces():
    model, X, y = small_net()
    H = HessianOperator(model, "cross_entropy", (X, y))
    d_exact = np.diag(dense_hessian(model, "cross_entropy", X, y).numpy())
    est = tr.diagonal(H, num_probes=200, seed=0)
    z = np.abs(est.mean - d_exact) / np.maximum(est.stderr, 1e-15)
    # about 1 in 16,000 entries exceeds 4 standard errors under normality; allow one
    assert (z > 4).sum() <= 1
    layers = tr.layer_traces(H, num_probes=200, seed=0)
    exact_layers = tr.exact_layer_traces(H)
    for name, e in layers.items():
        assert abs(e.estimate - exact_layers[name].estimate) <= 4 * e.stderr
        assert e.num_matvecs == 200
    # the blocks partition the parameters: their samples add up to the full Hutchinson samples
    total = tr.hutchinson(H, num_probes=200, seed=0)
    assert sum(e.estimate for e in layers.values()) == pytest.approx(total.estimate, rel=1e-10)
    by_param = tr.layer_traces(H, num_probes=20, seed=0, groups="parameter")
    assert list(by_param) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_bad_arguments():
    op = DenseOperator(torch.eye(4, dtype=torch.float64))
    from spectra.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="num_probes"):
        tr.hutchinson(op, num_probes=0)
    with pytest.raises(InvalidInputError, match="num_matvecs"):
        tr.hutchpp(op, num_matvecs=3)
    with pytest.raises(InvalidInputError, match="method"):
        tr.estimate_trace(op, "exactish")
    with pytest.raises(InvalidInputError, match="parameter names"):
        tr.layer_traces(op, num_probes=4)
