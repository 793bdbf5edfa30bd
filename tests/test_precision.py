"""Dtypes: one default (float64) for registry models in Python and the CLI; half precision refused, measured."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import spectra
from spectra import cli
from spectra.errors import InvalidInputError
from spectra.operators.hessian import HessianOperator
from spectra.precision import LOW_PRECISION_DTYPES


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 5)).double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(100, 10, generator=g, dtype=torch.float64), torch.randint(0, 5, (100,), generator=g)


def _hvp(model: nn.Module, v: torch.Tensor) -> torch.Tensor:
    X, y = _data()
    params = list(model.parameters())
    g = torch.autograd.grad(nn.functional.cross_entropy(model(X.to(params[0].dtype)), y), params, create_graph=True)
    flat = torch.cat([t.reshape(-1) for t in g])
    return torch.cat([t.reshape(-1) for t in torch.autograd.grad(flat @ v.to(flat.dtype), params)]).double()


@pytest.mark.parametrize("dtype,low,high", [(torch.bfloat16, 1e-3, 2e-2), (torch.float16, 1e-4, 2e-3),
                                            (torch.float32, 0.0, 1e-6)], ids=["bfloat16", "float16", "float32"])
def test_product_error_by_dtype(dtype, low, high):
    """The relative product errors spectra.precision quotes (float64 at the same, rounded weights as truth)."""
    model = copy.deepcopy(_mlp()).to(dtype)
    truth = copy.deepcopy(model).double()
    P = sum(p.numel() for p in model.parameters())
    errors = []
    for seed in range(3):
        v = torch.randn(P, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).to(dtype).double()
        want = _hvp(truth, v)
        errors.append(float((_hvp(model, v) - want).norm() / want.norm()))
    assert low <= float(np.median(errors)) <= high, errors


@pytest.mark.parametrize("dtype", LOW_PRECISION_DTYPES, ids=str)
def test_half_precision_refused_with_a_pointer_to_product_dtype(dtype):
    model = _mlp().to(dtype)
    X, y = _data()
    for call in (lambda: HessianOperator(model, "cross_entropy", (X, y)),
                 lambda: spectra.analyze(model, (X, y), method="exact")):
        with pytest.raises(InvalidInputError) as info:
            call()
        assert "product_dtype='float32'" in str(info.value) and str(dtype).replace("torch.", "") in str(info.value)


def test_half_precision_model_analysed_through_float32_products():
    model = _mlp().to(torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    X, y = _data()
    r = spectra.analyze(model, (X, y), method="exact", product_dtype="float32")
    ref = spectra.analyze(copy.deepcopy(model).float(), (X.float(), y), method="exact")
    assert r.provenance["dtype"] == "float32" and r.provenance["model_dtype"] == "bfloat16"
    np.testing.assert_allclose(r.eigenvalues, ref.eigenvalues, rtol=0, atol=1e-5 * np.abs(ref.eigenvalues).max())
    assert all(torch.equal(a, b) and b.dtype == torch.bfloat16 for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("model", [lambda x: x, 3.5, nn.Linear(2, 2).forward],
                         ids=["function", "number", "bound-method"])
def test_non_module_model_refused(model):
    X, y = _data()
    with pytest.raises(InvalidInputError, match="torch.nn.Module"):
        spectra.analyze(model, (X, y))


def test_registry_defaults_are_float64_and_explicit_dtype_wins():
    assert next(spectra.models.create("blobnet").parameters()).dtype == torch.float64
    assert spectra.datasets.load("blobs", n=10).X.dtype == torch.float64
    assert next(spectra.models.create("blobnet", dtype="float32").parameters()).dtype == torch.float32
    assert spectra.datasets.load("blobs", n=10, dtype="float32").X.dtype == torch.float32


def test_python_and_cli_give_the_same_numbers(tmp_path):
    """``analyze("blobnet", "blobs")`` and ``spectra analyze --model blobnet --dataset blobs`` agree exactly."""
    in_python = spectra.analyze("blobnet", "blobs", method="exact")
    code = cli.main(["analyze", "--model", "blobnet", "--dataset", "blobs", "--method", "exact",
                     "--out", str(tmp_path / "r"), "--quiet"])
    from_cli = spectra.load(tmp_path / "r")
    assert code == 0 and in_python.provenance["dtype"] == from_cli.provenance["dtype"] == "float64"
    np.testing.assert_array_equal(np.sort(in_python.eigenvalues), np.sort(from_cli.eigenvalues))
