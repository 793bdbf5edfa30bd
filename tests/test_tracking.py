"""Curvature tracking: the early-stopping Lanczos against numpy.linalg.eigvalsh and
cold ARPACK; warm starts must match cold eigenvalues and cost fewer products."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from torch import nn

import spectra
from spectra.errors import InvalidInputError
from spectra.operators.base import DenseOperator
from spectra.tracking import CurvatureTracker, curvature_at, top_eigenpairs


def spiked(P=120, seed=0):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((P, P)))
    lam = np.concatenate([[40.0, 25.0, 12.0], rng.uniform(-1, 1, P - 3)])
    return (U * lam) @ U.T


@pytest.mark.parametrize("k", [1, 3, 5])
def test_top_eigenpairs_match_eigvalsh(k):
    A = spiked()
    op = DenseOperator(torch.from_numpy(A))
    pairs = top_eigenpairs(op, k, tol=1e-8)
    ref = np.sort(np.linalg.eigvalsh(A))[::-1][:k]
    assert pairs.converged and pairs.solver == "lanczos"
    np.testing.assert_allclose(pairs.values, ref, rtol=1e-10, atol=1e-10)
    # the vectors are eigenvectors: ||A v - lambda v|| small
    V = pairs.vectors.numpy()
    assert np.abs(A @ V - V * pairs.values).max() < 1e-6 * 40
    assert pairs.num_matvecs == op.num_matvecs


def test_invariant_start_vector_still_finds_the_top():
    # v0 = an eigenvector of a small eigenvalue: the Krylov space closes at once;
    # the solver must restart and still find the largest eigenvalues.
    A = np.diag(np.arange(1.0, 51.0))
    e1 = np.zeros(50)
    e1[0] = 1.0
    pairs = top_eigenpairs(DenseOperator(torch.from_numpy(A)), 3, v0=e1, tol=1e-10)
    np.testing.assert_allclose(pairs.values, [50.0, 49.0, 48.0], atol=1e-8)


def test_fallback_to_arpack_when_lanczos_runs_out_of_steps():
    A = spiked()
    pairs = top_eigenpairs(DenseOperator(torch.from_numpy(A)), 4, tol=1e-12, max_steps=5)
    assert pairs.solver == "lanczos+arpack"
    np.testing.assert_allclose(pairs.values, np.sort(np.linalg.eigvalsh(A))[::-1][:4], rtol=1e-9)


def test_bad_k():
    with pytest.raises(InvalidInputError, match="k must be"):
        top_eigenpairs(DenseOperator(torch.eye(3, dtype=torch.float64)), 3)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    out = tmp_path_factory.mktemp("track")
    model = spectra.models.create("blobnet", hidden=6, dtype="float64")
    data = spectra.datasets.load("blobs", n=200, seed=0, dtype="float64")
    tracker = CurvatureTracker(data, k=3, every=40, out=out, trace="hutchpp", trace_matvecs=12,
                               compare_cold=True, tol=1e-5)
    spectra.train(model, data, lr=0.1, grad_tol=0, max_steps=160, callbacks=tracker,
                  callback_steps=tracker.schedule(160))
    return tracker, out


def test_warm_start_matches_cold_and_costs_fewer_products(tracked):
    tracker, _ = tracked
    assert [r.step for r in tracker.records] == [0, 40, 80, 120, 160]
    for r in tracker.records:
        np.testing.assert_allclose(r.eig.values, r.cold.values, rtol=1e-6, atol=1e-9)
        if r.cold_lanczos is not None:
            np.testing.assert_allclose(r.eig.values, r.cold_lanczos.values, rtol=1e-6, atol=1e-9)
    summary = tracker.matvec_summary()
    # Measured over these four records: 52 warm products, 59 for the same Lanczos
    # started cold (ratio 0.88), 99 for cold ARPACK (ratio 0.53).
    assert summary["warm_records"] == 4
    assert summary["warm_matvecs_total"] <= 0.75 * summary["cold_arpack_matvecs_total"]
    assert summary["warm_matvecs_total"] < summary["cold_lanczos_matvecs_total"]
    # and each warm record no dearer than its cold start
    for r in tracker.records[1:]:
        assert r.eig.warm and r.eig.num_matvecs <= r.cold.num_matvecs


def test_table_files_are_written_and_tidy(tracked):
    tracker, out = tracked
    rows = list(csv.DictReader(io.StringIO((out / "curvature.csv").read_text())))
    assert list(rows[0]) == ["step", "quantity", "index", "value", "stderr"]
    lam = [r for r in rows if r["quantity"] == "eigenvalue" and r["step"] == "160"]
    assert [int(r["index"]) for r in lam] == [1, 2, 3]
    assert float(lam[0]["value"]) == pytest.approx(tracker.records[-1].eig.values[0], rel=1e-15)
    manifest = json.loads((out / "curvature.json").read_text())
    assert manifest["format"] == "spectra-curvature-track" and len(manifest["rows"]) == len(rows)
    with np.load(out / "curvature.npz", allow_pickle=False) as z:
        assert z["eigenvalues"].shape == (5, 3)
    trace_rows = [r for r in rows if r["quantity"] == "trace"]
    assert all(float(r["stderr"]) >= 0 for r in trace_rows)
    fig, axes = tracker.plot()
    assert len(axes) == 3
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_plain_loop_with_torch_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    X = torch.randn(80, 2, dtype=torch.float64)
    y = (X[:, 0] > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    tracker = CurvatureTracker((X, y), k=2, steps=[0, 10, 20], trace=None, density=True,
                               density_probes=2, density_steps=10)
    for step in range(21):
        if tracker.wants(step):
            tracker.record(model, step)
        if step == 20:
            break
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    assert [r.step for r in tracker.records] == [0, 10, 20]
    assert tracker.records[-1].density.nodes.shape == (2, 10)
    # a record is the Hessian's top eigenvalues at that point
    H = spectra.analyze(model, (X, y), method="exact")
    np.testing.assert_allclose(tracker.records[-1].eig.values, H.eigenvalues[::-1][:2], rtol=1e-6)


def test_curvature_at_exact_trace():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X, y = torch.randn(30, 2, dtype=torch.float64), torch.randint(0, 2, (30,))
    rec = curvature_at(model, (X, y), k=1, trace="exact")
    H = spectra.analyze(model, (X, y), method="exact")
    assert rec.trace.estimate == pytest.approx(H.eigenvalues.sum(), rel=1e-10)
    assert rec.eig.values[0] == pytest.approx(H.eigenvalues[-1], rel=1e-8)


def test_tracker_needs_a_schedule():
    with pytest.raises(InvalidInputError, match="steps"):
        CurvatureTracker((torch.zeros(2, 2), torch.zeros(2).long()), k=1)
