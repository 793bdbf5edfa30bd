"""Curvature along a line: endpoints and midpoints against exact analyses of
explicitly built models, and both BatchNorm policies against direct statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import spectra
from spectra.errors import InvalidInputError
from spectra.path import curvature_path, interpolation_losses


def net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 2)).double()


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 2, generator=g, dtype=torch.float64)
    y = (X[:, 0] + 0.3 * X[:, 1] > 0).long()
    return net(0), net(1), (X, y)


def exact_at(model, data):
    r = spectra.analyze(model, data, method="exact")
    return r.eigenvalues[-1], r.eigenvalues.sum(), r.provenance["loss_value"]


@pytest.mark.parametrize("as_what", ["module", "state_dict", "flat"])
def test_endpoints_and_midpoint_match_exact(setup, as_what):
    a, b, data = setup
    conv = {
        "module": lambda m: m,
        "state_dict": lambda m: m.state_dict(),
        "flat": lambda m: torch.nn.utils.parameters_to_vector(m.parameters()).detach(),
    }[as_what]
    res = curvature_path(a, conv(a), conv(b), data, ts=[0.0, 0.5, 1.0], k=1, trace="exact")
    mid = net(0)
    with torch.no_grad():
        for pm, pa, pb in zip(mid.parameters(), a.parameters(), b.parameters()):
            pm.copy_(0.5 * (pa + pb))
    for i, model in enumerate([a, mid, b]):
        lam, tr, loss = exact_at(model, data)
        assert res.eigenvalues[i, 0] == pytest.approx(lam, rel=1e-7)
        assert res.trace[i] == pytest.approx(tr, rel=1e-9)
        assert res.loss[i] == pytest.approx(loss, rel=1e-12)
    ref = torch.nn.utils.parameters_to_vector(b.parameters()) - torch.nn.utils.parameters_to_vector(a.parameters())
    assert res.distance == pytest.approx(float(ref.detach().norm()), rel=1e-12)
    assert res.bn_policy == "none (no BatchNorm)"


def test_warm_start_along_the_line_and_files(setup, tmp_path):
    a, b, data = setup
    res = curvature_path(a, a, b, data, ts=6, k=2, trace="hutchpp", trace_matvecs=12)
    assert res.eigenvalues.shape == (6, 2)
    assert np.all(res.trace_stderr >= 0) and np.all(res.trace_matvecs == 12)
    # each later point starts from the previous eigenvectors and spends no more than the cold first point
    assert res.eig_matvecs[1:].max() <= res.eig_matvecs[0]
    out = res.save(tmp_path / "p")
    assert (out / "path.csv").read_text().startswith("t,quantity,index,value,stderr")
    with np.load(out / "path.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["ts"], res.ts)
    fig, _ = res.plot()
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_loss_only_line(setup):
    a, b, data = setup
    ts, losses = interpolation_losses(a, a, b, data, ts=5)
    assert ts.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    with torch.no_grad():
        ref = nn.functional.cross_entropy(b(data[0]), data[1]).item()
    assert losses[-1] == pytest.approx(ref, rel=1e-12)


def bn_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()


def trained_bn(seed, data):
    m = bn_net(seed)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(data[0] * (1 + seed))  # different running statistics at the two ends
    return m.eval()


@pytest.mark.parametrize("policy", ["interpolate", "reestimate"])
def test_batchnorm_policies(setup, policy):
    _, _, data = setup
    a, b = trained_bn(0, data), trained_bn(1, data)
    res = curvature_path(a, a, b, data, ts=[0.5], k=1, trace=None, bn=policy)
    assert res.bn_policy == policy
    # Build the midpoint by hand with the statistics the policy prescribes.
    mid = bn_net(0)
    sa, sb = a.state_dict(), b.state_dict()
    mid.load_state_dict({k: torch.lerp(sa[k], sb[k], 0.5) if sa[k].is_floating_point() else sa[k] for k in sa})
    if policy == "reestimate":
        with torch.no_grad():
            h = mid[0](data[0])
        mid[1].running_mean.copy_(h.mean(0))
        mid[1].running_var.copy_(h.var(0, unbiased=True))
    mid.eval()
    lam, _, loss = exact_at(mid, data)
    assert res.loss[0] == pytest.approx(loss, rel=1e-10)
    assert res.eigenvalues[0, 0] == pytest.approx(lam, rel=1e-7)
    # the caller's models are untouched
    assert torch.equal(a.state_dict()["1.running_mean"], sa["1.running_mean"])


def test_bad_policy_and_points(setup):
    a, b, data = setup
    with pytest.raises(InvalidInputError, match="bn must be"):
        curvature_path(a, a, b, data, bn="freeze")
    with pytest.raises(InvalidInputError, match="flat vector"):
        curvature_path(a, a, torch.zeros(3), data)
