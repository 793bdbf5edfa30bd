"""What a newcomer meets first: printed results, short reprs, progress in Python, readable plots."""

from __future__ import annotations

import numpy as np
import pytest

import spectra
from spectra.result import SpectrumResult


@pytest.fixture(scope="module")
def net_and_data():
    model = spectra.models.create("blobnet", hidden=6, dtype="float64", seed=0)
    data = spectra.datasets.load("blobs", n=200, dtype="float64", seed=0)
    return model, data


# (method, options, the summary keys print() must show)
PRINTED = [
    ("exact", {}, ["lambda_max", "num_negative", "num_outliers"]),
    ("lanczos", {"num_probes": 2, "num_steps": 10}, ["lambda_max", "num_probes", "estimated"]),
    ("arpack", {"k": 3, "which": "both"}, ["lambda_max", "computed_eigenvalues", "which"]),
]


@pytest.mark.parametrize("method, options, keys", PRINTED, ids=[p[0] for p in PRINTED])
def test_print_shows_the_summary_and_repr_stays_short(net_and_data, method, options, keys, capsys):
    result = spectra.analyze(*net_and_data, method=method, return_eigenvectors=method != "lanczos",
                             progress=False, **options)
    print(result)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{method}: P=74, N=200, {result.num_matvecs} Hessian-vector products"
    shown = {line.split()[0] for line in printed[1:]}
    assert set(keys) <= shown and shown == set(result.summary())
    text = repr(result)
    assert text.startswith(f"SpectrumResult(method='{method}', num_params=74, num_samples=200")
    assert len(text) < 200 and "array(" not in text and "\n" not in text


def test_the_repr_of_a_dataset_shows_shapes_not_tensors():
    data = spectra.datasets.load("mnist", n=1000, seed=0)
    text = repr(data)
    assert text.startswith("Dataset(name='mnist', n=1000, X=[1000, 1, 28, 28] float64, y=[1000] int64, info keys:")
    assert "indices" in text and len(text) < 300 and "tensor(" not in text


# (method, options, what the bar counts towards)
PROGRESS = [
    ("exact", {}, "/74"),
    ("lanczos", {"num_probes": 2, "num_steps": 10}, "/20"),
    ("arpack", {"k": 2}, "product"),  # no total: the count and the time only
]


@pytest.mark.parametrize("method, options, total", PROGRESS, ids=[p[0] for p in PROGRESS])
def test_analyze_shows_progress_in_python_unless_told_not_to(net_and_data, capsys, method, options, total):
    spectra.analyze(*net_and_data, method=method, progress=True, **options)
    err = capsys.readouterr().err
    assert f"computing the Hessian spectrum ({method})" in err and total in err
    spectra.analyze(*net_and_data, method=method, progress=False, **options)
    spectra.analyze(*net_and_data, method=method, **options)  # default: only on a terminal (captured here)
    assert capsys.readouterr().err == ""


def test_a_both_ends_stem_plot_keeps_the_ends_apart():
    from matplotlib.figure import Figure

    lam = np.r_[-2.0, -1.0, 5.0, 6.0]
    result = SpectrumResult(method="arpack", eigenvalues=lam, num_params=100, provenance={"which": "both"})
    ax = Figure().add_subplot()
    result.plot(ax=ax)
    x = ax.containers[0].markerline.get_xdata()
    gaps = np.diff(x)
    assert gaps.tolist() == [1, 1 + spectra.result.STEM_GAP, 1]  # the two ends, a shaded gap between them
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "99", "100"]  # ranks in the spectrum
    assert any("96 not computed" in t.get_text() for t in ax.texts)


def test_a_one_end_stem_plot_labels_its_ranks():
    from matplotlib.figure import Figure

    result = SpectrumResult(method="arpack", eigenvalues=np.array([5.0, 6.0, 7.0]), num_params=50,
                            provenance={"which": "largest"})
    ax = Figure().add_subplot()
    result.plot(ax=ax)
    assert np.diff(ax.containers[0].markerline.get_xdata()).tolist() == [1, 1]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["48", "49", "50"]


def test_loss_aliases_and_case_give_the_same_spectrum(net_and_data):
    ref = spectra.analyze(*net_and_data, method="exact", loss="cross_entropy", progress=False)
    for name in ("CE", "nll", "CrossEntropy"):
        r = spectra.analyze(*net_and_data, method="exact", loss=name, progress=False)
        assert r.provenance["loss"] == "cross_entropy"
        assert np.array_equal(r.eigenvalues, ref.eigenvalues)
