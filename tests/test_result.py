"""SpectrumResult: summary numbers, densities, plots, save/load and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spectra.errors import InvalidInputError, ResultFormatError
from spectra.result import SpectrumResult, load

# A trained-net-like spectrum: 2 outliers, a bulk at ~0, small negatives.
LAMBDA = np.sort(np.concatenate([[3.0, 1.5], np.full(90, 1e-6), np.linspace(0.01, 0.02, 5), [-0.002, -0.001, -1e-5]]))

SUMMARY_CASES = [
    # key, expected
    ("lambda_max", 3.0),
    ("lambda_min", -0.002),
    ("num_negative", 3),
    ("negative_sum", -0.00301),
    ("zero_tol", 3e-3),
    ("num_negative_raw", 3),
    ("num_zero", 0),
    ("num_outliers", 2),
    ("bulk_edge", 0.02),
    ("outlier_cut_ratio", 1.5 / 0.02),
]


@pytest.mark.parametrize("key,expected", SUMMARY_CASES)
def test_exact_summary(key, expected):
    s = SpectrumResult(method="exact", eigenvalues=LAMBDA, num_params=LAMBDA.size).summary()
    assert s[key] == pytest.approx(expected, rel=1e-9)


def test_zero_fraction_uses_stated_tolerance():
    r = SpectrumResult(method="exact", eigenvalues=LAMBDA, num_params=LAMBDA.size)
    assert r.summary()["zero_fraction"] == pytest.approx(93 / 100)  # 90 bulk + 3 negatives within 3e-3
    assert r.summary(zero_tol=1e-5)["zero_fraction"] == pytest.approx(90 / 100)


def test_density_integrates_to_one_and_matches_between_representations():
    exact = SpectrumResult(method="exact", eigenvalues=LAMBDA, num_params=LAMBDA.size)
    grid, rho = exact.density(sigma=0.05)
    assert np.trapezoid(rho, grid) == pytest.approx(1.0, abs=1e-6)
    # the same measure written as one "probe" of quadrature gives the same density
    quad = SpectrumResult(method="lanczos", nodes=LAMBDA[None, :], weights=np.full((1, LAMBDA.size), 0.01),
                          num_params=LAMBDA.size)
    _, rho_q = quad.density(grid=grid, sigma=0.05)
    np.testing.assert_allclose(rho_q, rho, rtol=1e-12)


def test_arpack_density_is_refused_with_reason():
    r = SpectrumResult(method="arpack", eigenvalues=np.array([1.0, 2.0]), num_params=10)
    with pytest.raises(InvalidInputError, match="holds only 2 eigenvalues"):
        r.density()


@pytest.mark.parametrize("result", [
    SpectrumResult(method="exact", eigenvalues=LAMBDA, num_params=100),
    SpectrumResult(method="lanczos", nodes=np.array([[0.0, 1.0], [0.5, 2.0]]), weights=np.full((2, 2), 0.5),
                   num_params=100),
    SpectrumResult(method="arpack", eigenvalues=np.array([1.0, 2.0]), residuals=np.array([1e-12, 1e-12]),
                   num_params=100, provenance={"which": "largest"}),
], ids=["exact", "lanczos", "arpack"])
def test_plot_returns_figure_and_axes(result):
    import matplotlib

    matplotlib.use("Agg")
    fig, ax = result.plot()
    assert ax.get_xlabel() and fig is ax.figure
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_save_load_roundtrip(tmp_path):
    r = SpectrumResult(method="lanczos", nodes=np.arange(6.0).reshape(2, 3), weights=np.full((2, 3), 1 / 3),
                       num_params=50, num_samples=7, num_matvecs=6, provenance={"seed": 3},
                       arrays={"hessian": np.eye(2)})
    r.save(tmp_path / "r")
    back = load(tmp_path / "r")
    np.testing.assert_array_equal(back.nodes, r.nodes)
    np.testing.assert_array_equal(back.arrays["hessian"], np.eye(2))
    assert (back.method, back.num_params, back.num_samples, back.num_matvecs) == ("lanczos", 50, 7, 6)
    assert back.provenance == {"seed": 3}
    manifest = json.loads((tmp_path / "r" / "result.json").read_text())
    assert manifest["summary"]["estimated"] is True and manifest["format_version"] == 1


def test_save_refuses_to_mix_results(tmp_path):
    r = SpectrumResult(method="exact", eigenvalues=LAMBDA, num_params=100)
    r.save(tmp_path)
    with pytest.raises(InvalidInputError, match="already holds a result"):
        r.save(tmp_path)
    r.save(tmp_path, overwrite=True)


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "result.json").unlink(), "missing result.json"),
    (lambda d: (d / "result.json").write_text("{not json"), "corrupt"),
    (lambda d: (d / "result.json").write_text(json.dumps({"format": "spectra-result", "format_version": 99})),
     "format 99"),
    (lambda d: (d / "arrays.npz").write_bytes(b"garbage"), "corrupt"),
    (lambda d: (d / "arrays.npz").unlink(), "lacks arrays"),
])
def test_load_refuses_damaged_results(tmp_path, damage, message):
    SpectrumResult(method="exact", eigenvalues=LAMBDA, num_params=100).save(tmp_path)
    damage(tmp_path)
    with pytest.raises(ResultFormatError, match=message):
        load(tmp_path)


def test_no_temporary_files_left(tmp_path):
    SpectrumResult(method="exact", eigenvalues=LAMBDA, num_params=100).save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.npz", "result.json"]
