"""The pieces behind the reproduction's science: statistics, Newton polish, batched derivatives, kinks, plots.

References are independent: autograd Hessians and Jacobians in float64 (tolerances 1e-10 relative
unless stated), closed forms, hand-built nets with a sample exactly on a ReLU kink.
"""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch

import spectra
from spectra.experiments import _batched as bt

DOCTEST_MODULES = ["spectra.experiments._stats", "spectra.experiments._polish", "spectra.experiments._small_data",
                   "spectra.experiments.std_sweep", "spectra.experiments.bulk_outliers", "spectra.plotting",
                   "spectra.experiments._batched_mlp", "spectra.counts",
                   "spectra.experiments.interpolation", "spectra.experiments.mnist_width", "spectra.experiments._kinks",
                   "spectra.experiments._report"]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_doctests(name):
    assert doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS).failed == 0


def _blob_stack(loss="cross_entropy", activation="tanh", hidden=3):
    data = spectra.datasets.load("blobs", n=40, std=0.8, seed=1, dtype="float64")
    net = spectra.models.create("mlp", sizes=[2, hidden, hidden, 2], activation=activation, dtype="float64")
    return bt.StackedNet(net, loss=loss), data.X, data.y


def _flat_loss(stack, X, y, weight_decay=0.0):
    return lambda v: stack.loss(v, X, y) + 0.5 * weight_decay * v.pow(2).sum()


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_weight_decay_gradient_and_gauss_newton_part_against_autograd(loss):
    from spectra.experiments._batched_mlp import chain_hessian, output_tangents
    from spectra.operators.ggn import GGNOperator

    stack, X, y = _blob_stack(loss)
    thetas = bt.init_thetas(stack.num_params, [bt.init_seed(3, i) for i in range(2)], 2.0)
    grad_fn = bt._grad_fn(stack, 0.01)
    g, v = grad_fn(thetas, X, y)
    for i, t in enumerate(thetas):
        t = t.clone().requires_grad_(True)
        value = _flat_loss(stack, X, y, 0.01)(t)
        ref = torch.autograd.grad(value, t)[0]
        torch.testing.assert_close(g[i], ref, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(v[i], value.detach(), rtol=1e-12, atol=0)
    # output tangents are the Jacobian df/dtheta of every sample
    f, dh, _ = output_tangents(stack.chain, thetas, X)
    J = torch.func.jacrev(lambda t: stack.forward(t, X))(thetas[0])  # [N, C, P]
    torch.testing.assert_close(dh[0].permute(2, 0, 1), J, rtol=1e-10, atol=1e-13)
    # the Gauss-Newton part alone equals the GGN operator's dense matrix
    G = chain_hessian(stack.chain, thetas, X, y, loss, gauss_newton_only=True)[0]
    model = stack.to_model(thetas[0])
    dense = GGNOperator(model, loss, (X, y)).to_dense()
    torch.testing.assert_close(G, dense, rtol=1e-10, atol=1e-13)


def test_newton_polish_reaches_a_minimum_of_the_regularised_loss():
    from spectra.experiments._polish import newton_polish

    stack, X, y = _blob_stack()
    thetas = bt.init_thetas(stack.num_params, [bt.init_seed(4, i) for i in range(3)], 1.5)
    out = newton_polish(stack, thetas, X, y, weight_decay=1e-2, grad_tol=1e-10)
    assert out["converged"].all() and (out["min_eigenvalue"] > 0).all()
    for t, gn in zip(out["theta"], out["grad_norm"]):
        t = t.clone().requires_grad_(True)
        g = torch.autograd.grad(_flat_loss(stack, X, y, 1e-2)(t), t)[0]
        assert float(g.norm()) < 1e-10 and float(gn) < 1e-10  # recorded and recomputed agree
    # the loss went down from every start
    start = torch.stack([_flat_loss(stack, X, y, 1e-2)(t) for t in thetas])
    assert bool((out["loss"] < start).all())


def test_kink_distance_finds_a_sample_on_a_relu_switching_surface():
    from spectra.experiments._common import KINK_RELATIVE, kink_distance, run_record, training_summary

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2)).double()
    X = torch.tensor([[1.0, 2.0], [0.5, -1.0], [-2.0, 0.3]], dtype=torch.float64)
    y = torch.tensor([0, 1, 0])
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([-0.5, 0.2]))  # unit 0: z = x1 - 0.5 = 0 for the second sample
    assert kink_distance(net, (X, y)) < 1e-15
    with torch.no_grad():
        net[0].bias[0] = -0.4
    assert kink_distance(net, (X, y)) > 0.01
    tanh = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh()).double()
    assert kink_distance(tanh, (X, y)) is None
    summary = training_summary([run_record("a", True, 1e-5, 1e-4), run_record("b", False, 2e-2, 1e-4, 0.0),
                                run_record("c", False, 3e-3, 1e-4, 0.5)])
    assert (summary["runs"], summary["converged"], summary["on_kink"]) == (3, 1, 1)
    assert any("on a ReLU kink: b" in s for s in summary["not_converged"]) and KINK_RELATIVE < 1e-3


def test_histogram_shows_negative_eigenvalues_and_density_hides_the_unresolved_floor():
    import matplotlib

    matplotlib.use("Agg")
    from spectra.plotting import density_plot, eigenvalue_histogram, new_figure

    lam = np.concatenate([[-1e-3, -2e-2], np.zeros(50), [0.5, 1.0]])
    fig, axes = new_figure(1, 2)
    ax = eigenvalue_histogram(axes[0, 0], lam, counts={"num_negative": 2, "num_outliers": 2})
    assert ax.get_xscale() == "symlog"
    negative_bars = [p for p in ax.patches if p.get_x() + p.get_width() <= -1e-3 * 0.99 and p.get_height() > 0]
    assert len(negative_bars) >= 1  # the negatives sit in bars of their own, left of the zero band
    assert "2 negative beyond rounding" in "".join(t.get_text() for t in ax.texts)
    grid = np.linspace(-1, 1, 201)
    rho = np.exp(-grid**2 / 0.02)
    density_plot(axes[0, 1], grid, rho, num_params=100, sigma=0.05)
    shown = axes[0, 1].lines[0].get_ydata()
    floor = 1 / (100 * 0.05 * np.sqrt(2 * np.pi))
    assert np.isnan(shown[rho < floor]).all() and np.isfinite(shown[rho >= floor]).all()
