"""Newton continuation to the minima of ReLU nets, which lie on kinks, and the certificate of convergence.

References: autograd gradients (away from kinks the certificate is the gradient norm, to 1e-12
relative), one-sided difference quotients of the loss along random directions (at a minimum none
falls below -1e-5 with steps of 1e-6), and plain GD from the same start (it stalls on the kink).
"""

from __future__ import annotations

import pytest
import torch

from spectra.errors import InvalidInputError
from spectra.experiments._batched import StackedNet, _grad_fn, batched_gd
from spectra.experiments._kinks import has_relu, kink_polish, relu_stationarity, smoothed

WEIGHT_DECAY = 1e-2


def _problem(loss="cross_entropy"):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 2, dtype=torch.float64, generator=g)
    y = (X[:, 0] + 0.5 * torch.randn(40, dtype=torch.float64, generator=g) > 0).long()  # overlapping classes
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    stack = StackedNet(net, loss=loss)
    thetas = 0.5 * torch.randn(3, stack.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return stack, thetas, X, y


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_certificate_is_the_gradient_norm_away_from_kinks(loss):
    stack, thetas, X, y = _problem(loss)
    grads, _ = _grad_fn(stack, WEIGHT_DECAY)(thetas, X, y)
    cert = relu_stationarity(stack, thetas, X, y, weight_decay=WEIGHT_DECAY, beta=1e6)
    torch.testing.assert_close(cert, grads.norm(dim=1), rtol=1e-12, atol=0)


def test_gd_stalls_on_a_kink_and_the_continuation_finishes():
    stack, thetas, X, y = _problem()
    gd = batched_gd(stack, thetas, X, y, lr=0.5, grad_tol=1e-6, max_steps=3000, weight_decay=WEIGHT_DECAY)
    stalled = ~gd["converged"]
    assert stalled.any()  # the path: GD alone does not get there
    cert_gd = relu_stationarity(stack, gd["theta"], X, y, weight_decay=WEIGHT_DECAY, beta=1e6)
    assert (cert_gd[stalled] > 1e-4).all()  # the certificate fails where GD stopped: it can fail
    out = kink_polish(stack, gd["theta"], X, y, weight_decay=WEIGHT_DECAY, grad_tol=1e-6)
    assert out["converged"].all() and (out["grad_norm"] < 1e-6).all()
    assert (out["loss"] < gd["loss"] - 1e-4)[stalled].all()  # a lower minimum than where GD stalled
    on_kink = out["piece_grad_norm"] > 1e-3  # autograd's gradient stays large: the minimum lies on a kink
    assert on_kink.any()


def test_polished_points_are_minima_along_every_direction_tried():
    # the point sits within about 1/beta of the crease, so the test is on loss differences over steps much
    # longer than that: no random direction lowers the loss by more than 1e-8 (GD's stall left 1e-4 to gain)
    stack, thetas, X, y = _problem()
    out = kink_polish(stack, thetas, X, y, weight_decay=WEIGHT_DECAY, grad_tol=1e-7)
    assert (out["piece_grad_norm"] > 1e-3).any()  # at least one minimum on a kink (the case at stake)
    f = lambda t: stack.loss(t, X, y) + 0.5 * WEIGHT_DECAY * t.pow(2).sum()  # noqa: E731
    dirs = torch.randn(300, stack.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    dirs /= dirs.norm(dim=1, keepdim=True)
    def largest_drop(theta):
        return float(torch.stack([f(theta + h * d) - f(theta) for d in dirs for h in (1e-4, 1e-3, 1e-2)]).min())

    for theta in out["theta"]:
        assert largest_drop(theta) > -1e-8
    gd = batched_gd(stack, thetas, X, y, lr=0.5, grad_tol=1e-6, max_steps=3000, weight_decay=WEIGHT_DECAY)
    assert all(largest_drop(t) < -1e-7 for t in gd["theta"])  # the test fails where GD stalled


def test_smoothed_replaces_only_relu_units():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 3), torch.nn.Tanh())
    out = smoothed(net, 1e4)
    assert isinstance(out[1], torch.nn.Softplus) and out[1].beta == 1e4 and isinstance(out[3], torch.nn.Tanh)
    assert isinstance(net[1], torch.nn.ReLU)  # the template is untouched
    assert has_relu(net) and not has_relu(out)


def test_kink_polish_refuses_a_net_without_relu():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()
    stack = StackedNet(net)
    with pytest.raises(InvalidInputError, match="ReLU"):
        kink_polish(stack, torch.zeros(1, stack.num_params, dtype=torch.float64), torch.zeros(3, 2,
                    dtype=torch.float64), torch.tensor([0, 1, 0]), weight_decay=0.0, grad_tol=1e-6)


@pytest.mark.parametrize("beta", [1.0, 1e3, 1e6])
def test_softplus_closed_form_derivatives_match_autograd(beta):
    # the smooth twins' Hessians use these; both sides of torch's threshold (z itself above beta z = 20)
    from spectra.operators._activations import activation_derivatives

    m = torch.nn.Softplus(beta=beta, threshold=20.0)
    z = torch.cat([torch.linspace(-30, 30, 601, dtype=torch.float64), torch.tensor([0.0, 20.0, 20.5])]) / beta
    a, s1, s2 = activation_derivatives(m, z.clone(), order=2)
    zz = z.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(m(zz).sum(), zz, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), zz)
    torch.testing.assert_close(a, m(z), rtol=0, atol=0)
    torch.testing.assert_close(s1, g1.detach(), rtol=0, atol=1e-15)
    # at beta z = 20 exactly torch's double backward takes the linear side: a jump of beta e^-20, 1e-8 of the peak
    torch.testing.assert_close(s2, g2, rtol=1e-14, atol=1e-8 * beta)
    assert (s2 - g2).abs().max() <= 1e-15 * beta or (s2 - g2).abs().argmax() == 500


def _unit(tmp_path, make, data, newton_on_kinks, max_steps=100, tol=1e-6):
    from spectra.experiments._common import Context, train_unit
    from spectra.experiments._report import RunDir

    ctx = Context("figX", "tiny", 0, {}, RunDir(tmp_path, "figX", config={}, seed=0), quiet=True)
    return train_unit(ctx, "u", make, data, loss="mse", spectrum=False, init_seed=3, newton_on_kinks=newton_on_kinks,
                      train_kwargs={"optimizer": "gd", "lr": 0.5, "grad_tol": tol, "max_steps": max_steps})


@pytest.mark.parametrize("width, method, tol", [(4, "Newton continuation", 1e-6),
                                               (40, "softplus (beta 10) detour, then GD", 1e-3)])
def test_train_unit_finishes_where_gd_stops_short(tmp_path, width, method, tol):
    """The path: GD alone stops above the tolerance; nets with cheap Newton steps get them, costlier ones the detour."""
    import spectra.experiments._kinks as kinks

    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 2, dtype=torch.float64, generator=g)
    y = (X[:, :1] > 0).to(torch.float64)  # MSE onto a step: ReLU nets fit it exactly, a minimum exists

    def make():
        return torch.nn.Sequential(torch.nn.Linear(2, width), torch.nn.ReLU(), torch.nn.Linear(width, 1)).double()

    plain = _unit(tmp_path / "plain", make, (X, y), False, tol=tol)["meta"]
    assert not plain["converged"] and plain.get("finish_method") is None
    limit = kinks.FINISH_MAX_COST
    try:  # width 4 (17 parameters) under it, width 40 (161 parameters) over it (no decay: the longer budget)
        kinks.FINISH_MAX_COST = kinks.CONTINUATION_STEPS["undecayed"] * kinks.newton_step_cost(50, 30, 1)
        meta = _unit(tmp_path / "finished", make, (X, y), True, max_steps=3000, tol=tol)["meta"]
    finally:
        kinks.FINISH_MAX_COST = limit
    assert meta["finish_method"] == method and meta["converged"] and meta["final_grad_norm"] < tol
    assert meta["gd_final_grad_norm"] > tol and meta["final_loss"] <= meta["gd_final_loss"]


@pytest.mark.parametrize("weight_decay, takes_newton", [(1e-2, True), (0.0, False)])
def test_finish_budget_counts_the_longer_undecayed_continuation(weight_decay, takes_newton):
    """A budget between 300 and 1500 Newton steps' cost: the decayed net gets Newton steps, the undecayed one not."""
    import spectra.experiments._kinks as kinks

    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 2, dtype=torch.float64, generator=g)
    y = (X[:, :1] > 0).to(torch.float64)
    net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)).double()
    step = kinks.newton_step_cost(17, 30, 1)
    limit = kinks.FINISH_MAX_COST
    try:
        kinks.FINISH_MAX_COST = 1000 * step
        out = kinks.finish_on_kinks(net, X, y, loss="mse", weight_decay=weight_decay, grad_tol=1e-6)
    finally:
        kinks.FINISH_MAX_COST = limit
    assert (out is not None and out["method"] == "Newton continuation") == takes_newton
    if takes_newton:
        assert out["converged"] and out["grad_norm"] < 1e-6
