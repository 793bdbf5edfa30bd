"""``product_dtype``: float32 Hessian products of a float64 model, against the float64 answer.

The reference is the same analysis in float64 (itself tested against
``torch.autograd.functional.hessian`` elsewhere) and ``numpy.linalg.eigvalsh``
of autograd's dense Hessian.  Float32 products carry a relative error near 1e-7,
so the tolerance here is 1e-5 of the largest |eigenvalue|.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import spectra
from spectra import cli
from spectra.api import _in_dtype
from spectra.errors import InvalidInputError
from spectra.testing import reference_hessian

TOL = 1e-5  # of max |eigenvalue|: float32 products


def _model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(1)
    return model, (torch.randn(40, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g))


# (method, options, what to compare)
CASES = [
    ("exact", {}, "eigenvalues"),
    ("arpack", {"k": 3, "which": "both"}, "eigenvalues"),
    ("lanczos", {"num_probes": 3, "num_steps": 12, "seed": 0}, "nodes"),
]


@pytest.mark.parametrize("method,options,field", CASES, ids=[c[0] for c in CASES])
def test_float32_products_of_a_float64_model(method, options, field):
    model, (X, y) = _model_and_data()
    before = [p.detach().clone() for p in model.parameters()]
    exact = np.linalg.eigvalsh(reference_hessian(model, "cross_entropy", X, y).numpy())
    scale = np.abs(exact).max()
    r64 = spectra.analyze(model, (X, y), method=method, **options)
    r32 = spectra.analyze(model, (X, y), method=method, product_dtype="float32", **options)
    assert r32.provenance["dtype"] == "float32" and r32.provenance["model_dtype"] == "float64"
    assert r64.provenance["dtype"] == "float64"
    got, want = np.asarray(getattr(r32, field)), np.asarray(getattr(r64, field))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL * scale)
    assert float(np.abs(got - want).max()) > 0  # really computed in float32, not the same numbers
    if method == "lanczos":  # the recurrence stays float64: the quadrature weights still sum to 1
        np.testing.assert_allclose(np.asarray(r32.weights).sum(axis=-1), 1.0, atol=1e-12)
    # the caller's model is untouched
    assert all(p.dtype == torch.float64 and torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))


def test_same_dtype_uses_the_model_itself_and_bad_values_are_refused():
    model, (X, y) = _model_and_data()
    assert _in_dtype(model, "float64") is model and _in_dtype(model, torch.float64) is model
    copy = _in_dtype(model, "float32")
    assert copy is not model and next(copy.parameters()).dtype == torch.float32
    for bad in ("float16", "double", torch.int64):
        with pytest.raises(InvalidInputError, match="product_dtype must be 'float32' or 'float64'"):
            spectra.analyze(model, (X, y), method="exact", product_dtype=bad)


def test_cli_product_dtype(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["analyze", "--model", "blobnet", "--model-arg", "hidden=2", "--dataset", "blobs", "--dataset-arg",
            "n=50", "--method", "exact", "--product-dtype", "float32", "--out", str(out)]
    assert cli.main(args) == 0
    r32 = spectra.load(out)
    assert r32.provenance["dtype"] == "float32" and r32.provenance["model_dtype"] == "float64"
    assert cli.main(args[:-4] + ["--out", str(tmp_path / "r64")]) == 0
    r64 = spectra.load(tmp_path / "r64")
    scale = np.abs(r64.eigenvalues).max()
    np.testing.assert_allclose(r32.eigenvalues, r64.eigenvalues, rtol=0, atol=TOL * scale)
