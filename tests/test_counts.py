"""Rounding-aware counts and the outlier rule (spectra.counts, SpectrumResult.summary).

The guarantees pinned here:

* an eigenvalue counts as negative only below ``-negative_tol``, so the Gauss-Newton part of a trained net
  (positive semi-definite) reports 0 negatives although rounding puts some of its eigenvalues below 0;
* the tolerance covers rounding: two independent computations of the same Hessian (chain products +
  torch eigh; autograd's dense Hessian + numpy eigvalsh) give the same count, and float32 products
  move no eigenvalue by more than the float32 tolerance;
* the outlier rule counts eigenvalues above 0.1 lambda_max and reports the count at every swept fraction.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import spectra
from spectra import counts
from spectra.result import SpectrumResult


def test_doctests():
    import spectra.result

    for module in (counts, spectra.result):
        assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


# (spectrum, dtype, expected num_negative, expected num_zero)
ROUNDING_CASES = [
    ("rounding-size negatives are not counted", [-1e-16, -3e-17, 0.0, 0.5, 1.0], "float64", 0, 3),
    ("a real negative is", [-1e-6, -1e-16, 0.0, 0.5, 1.0], "float64", 1, 2),
    ("float32 products widen the band", [-1e-7, 1e-8, 0.5, 1.0], "float32", 0, 2),
    ("the same values with float64 products", [-1e-7, 1e-8, 0.5, 1.0], "float64", 1, 0),
]


@pytest.mark.parametrize("name,lam,dtype,negatives,zeros", ROUNDING_CASES, ids=[c[0] for c in ROUNDING_CASES])
def test_negative_and_zero_counts_ignore_rounding(name, lam, dtype, negatives, zeros):
    lam = np.array(lam)
    s = SpectrumResult(method="exact", eigenvalues=lam, num_params=lam.size, provenance={"dtype": dtype}).summary()
    assert (s["num_negative"], s["num_zero"]) == (negatives, zeros)
    assert s["negative_tol"] == pytest.approx(counts.negative_tolerance(lam.size, 1.0, dtype))
    assert s["num_negative_raw"] == int(np.sum(lam < 0))
    assert dtype in s["negative_tol_rule"]


def test_given_tolerances_are_used():
    lam = np.array([-1e-6, -1e-9, 0.0, 1.0])
    s = SpectrumResult(method="exact", eigenvalues=lam, num_params=4).summary(negative_tol=1e-8, zero_tol=1e-12)
    assert s["num_negative"] == 1 and s["negative_tol_rule"] == "given"
    assert s["zero_tol"] == 1e-8  # the near-zero band is never narrower than the rounding band
    assert s["zero_fraction"] == pytest.approx(0.5)


# (spectrum, num_outliers, sweep, cut ratio)
OUTLIER_CASES = [
    ("two clear outliers", [1.0, 0.5, 0.01, 0.005, 0.0], 2, {"0.03": 2, "0.05": 2, "0.1": 2, "0.2": 2, "0.3": 2}, 50.0),
    ("a flip shows in the sweep", [1.0, 0.2, 0.19, 0.09, 0.01], 3, {"0.03": 4, "0.05": 4, "0.1": 3, "0.2": 1,
                                                                     "0.3": 1}, 0.19 / 0.09),
    ("every eigenvalue above the cut", [1.0, 0.9], 2, {"0.03": 2, "0.05": 2, "0.1": 2, "0.2": 2, "0.3": 2}, None),
    ("no positive eigenvalue", [-1.0, -0.5], 0, {"0.03": 0, "0.05": 0, "0.1": 0, "0.2": 0, "0.3": 0}, None),
]


@pytest.mark.parametrize("name,lam,n,sweep,cut", OUTLIER_CASES, ids=[c[0] for c in OUTLIER_CASES])
def test_outlier_rule_and_sweep(name, lam, n, sweep, cut):
    lam = np.sort(np.array(lam))
    s = SpectrumResult(method="exact", eigenvalues=lam, num_params=lam.size).summary()
    assert s["num_outliers"] == n and s["outlier_sweep"] == sweep
    assert s["outlier_cut_ratio"] == (pytest.approx(cut) if cut is not None else None)
    assert s["outlier_rule"] == counts.RULE_TEXT


def test_lanczos_outliers_from_quadrature_mass():
    # one probe holding the exact measure of [2, 1, 0 x 98] (weights 1/P): 2 eigenvalues above 0.1 lambda_max
    nodes = np.array([[0.0, 1.0, 2.0]])
    weights = np.array([[0.98, 0.01, 0.01]])
    s = SpectrumResult(method="lanczos", nodes=nodes, weights=weights, num_params=100).summary()
    assert s["estimated"] and s["num_outliers"] == 2 and s["outlier_sweep"]["0.3"] == 2
    assert s["num_zero"] == 98 and s["num_negative"] == 0


@pytest.fixture(scope="module")
def trained_blobnet():
    torch.manual_seed(0)
    model = spectra.models.create("blobnet", hidden=6, dtype="float64")
    data = spectra.datasets.load("blobs", n=300, std=0.4, seed=0, dtype="float64")  # separable: GD converges
    hist = spectra.train(model, data, lr=8.0, grad_tol=1e-4, max_steps=5000, progress=False)
    assert hist.converged
    return model, data


@pytest.fixture(scope="module")
def trained_mnist_net():
    torch.manual_seed(0)
    model = spectra.models.create("mlp", sizes=[784, 2, 10], dtype="float64")
    data = spectra.datasets.load("mnist", n=100, seed=0, dtype="float64")
    spectra.train(model, data, lr=0.1, grad_tol=0.0, max_steps=200, progress=False)
    return model, data


@pytest.mark.parametrize("net", ["trained_blobnet", "trained_mnist_net"])
def test_gauss_newton_part_of_a_trained_net_has_no_negative_eigenvalue(net, request):
    model, data = request.getfixturevalue(net)
    r = spectra.analyze(model, data, method="exact", matrix="ggn")
    s = r.summary()
    assert s["num_negative"] == 0
    # the path: rounding did put eigenvalues of this PSD matrix below zero, and the band absorbed them
    assert s["num_negative_raw"] > 0 and r.eigenvalues[0] > -s["negative_tol"]


def test_counts_agree_between_independent_computations(trained_blobnet):
    model, data = trained_blobnet
    r = spectra.analyze(model, data, method="exact")
    assert r.provenance["hvp_mode"] == "chain"
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_at(v):
        pieces = torch.split(v, [int(np.prod(s)) for s in shapes])
        weights = {n: t.reshape(s) for n, t, s in zip(names, pieces, shapes)}
        out = torch.func.functional_call(model, weights, (data.X,))
        return torch.nn.functional.cross_entropy(out, data.y)

    H = torch.autograd.functional.hessian(loss_at, flat).numpy()
    reference = np.linalg.eigvalsh(0.5 * (H + H.T))
    s = r.summary()
    s_ref = SpectrumResult(method="exact", eigenvalues=reference, num_params=reference.size).summary()
    assert s["num_negative"] == s_ref["num_negative"] > 0
    assert s["num_outliers"] == s_ref["num_outliers"]


def test_float32_products_move_eigenvalues_less_than_their_tolerance():
    # at initialisation: the softmax is not confident, so the products' rounding is relative to ||H||
    model = spectra.models.create("blobnet", hidden=6, dtype="float64")
    data = spectra.datasets.load("blobs", n=300, std=0.4, seed=0, dtype="float64")
    r64 = spectra.analyze(model, data, method="exact")
    r32 = spectra.analyze(model, data, method="exact", product_dtype="float32")
    assert r32.provenance["dtype"] == "float32"
    s32 = r32.summary()
    moved = np.max(np.abs(r32.eigenvalues - r64.eigenvalues))
    assert moved < s32["negative_tol"]
    assert s32["negative_tol"] > 100 * r64.summary()["negative_tol"]
