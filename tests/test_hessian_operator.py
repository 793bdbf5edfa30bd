"""HessianOperator against dense float64 references (torch.autograd.functional.hessian)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spectra.errors import InvalidInputError, NonDeterministicError, NonFiniteError
from spectra.operators.hessian import HessianOperator
from spectra.testing import assert_operator_matches, reference_hessian

from .cases import CASE_IDS, CASES, uneven_batches

RTOL = 1e-10  # float64 products vs the dense reference


@pytest.fixture(scope="module", params=CASES, ids=CASE_IDS)
def case(request):
    c = request.param
    model, (X, y) = c.build_model(), c.build_data()
    return c, model, X, y, reference_hessian(model, c.loss, X, y)


@pytest.mark.parametrize("layout", ["one-batch", "uneven-batches"])
@pytest.mark.parametrize("mode,cache", [("reverse", True), ("reverse", False), ("forward", False)])
def test_products_match_dense_reference(case, layout, mode, cache):
    c, model, X, y, H = case
    data = (X, y) if layout == "one-batch" else uneven_batches(X, y)
    op = HessianOperator(model, c.loss, data, mode=mode, cache_graph=cache)
    assert op.mode == mode and op.cache_graph == cache
    assert_operator_matches(op, H, num_vectors=4, rtol=RTOL)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    torch.testing.assert_close(op @ v, H @ v, rtol=RTOL, atol=RTOL * float(H.abs().max()))


def test_matmat_is_batched_and_counted(case):
    c, model, X, y, H = case
    op = HessianOperator(model, c.loss, (X, y), chunk_size=3)
    V = torch.randn(H.shape[0], 7, dtype=torch.float64)
    op.matmat(V)
    assert op.num_matvecs == 7  # three chunks (3 + 3 + 1) of one batched call each
    assert op.check_matvecs == 2  # the determinism check is not counted as work


def test_to_dense_equals_reference(case):
    c, model, X, y, H = case
    op = HessianOperator(model, c.loss, (X, y))
    torch.testing.assert_close(op.to_dense(), H, rtol=0, atol=1e-12 * float(H.abs().max()))
    assert op.num_matvecs == H.shape[0]


def test_dataloader_equals_list_of_batches():
    c = CASES[0]
    model, (X, y) = c.build_model(), c.build_data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=5, shuffle=False)
    H = reference_hessian(model, c.loss, X, y)
    op = HessianOperator(model, c.loss, loader)
    assert op.source.batch_sizes == [5, 5, 5, 5, 3]
    assert_operator_matches(op, H, rtol=RTOL)


def test_short_last_batch_is_not_overweighted():
    """The operator is the Hessian of the mean over all samples, not the mean of batch Hessians."""
    c = CASES[0]
    model, (X, y) = c.build_model(), c.build_data()
    batches = uneven_batches(X, y, sizes=(20,))  # 20 + 3
    op = HessianOperator(model, c.loss, batches)
    H_all = reference_hessian(model, c.loss, X, y)
    H_b = [reference_hessian(model, c.loss, xb, yb) for xb, yb in batches]
    naive = 0.5 * (H_b[0] + H_b[1])
    assert float((naive - H_all).abs().max()) > 1e-3  # the naive average is really different here
    assert_operator_matches(op, H_all, rtol=RTOL)


def test_sum_reduction_callable_loss():
    c = CASES[0]
    model, (X, y) = c.build_model(), c.build_data()
    summed = lambda out, t: nn.functional.cross_entropy(out, t, reduction="sum")  # noqa: E731
    op = HessianOperator(model, summed, uneven_batches(X, y), reduction="sum")
    H = reference_hessian(model, "cross_entropy", X, y) * X.shape[0]
    assert_operator_matches(op, H, rtol=RTOL)
    assert op.describe()["reduction"] == "sum"


@pytest.mark.parametrize("selector,names", [
    ("2", ["2.weight", "2.bias"]),
    (["0.bias", "2.weight"], ["0.bias", "2.weight"]),
    ("*.bias", ["0.bias", "2.bias"]),
])
def test_parameter_subset_is_the_submatrix(selector, names):
    c = CASES[0]
    model, (X, y) = c.build_model(), c.build_data()
    op = HessianOperator(model, c.loss, (X, y), params=selector)
    assert op.param_names == names
    assert_operator_matches(op, reference_hessian(model, c.loss, X, y, param_names=names), rtol=RTOL)


def test_frozen_parameters_are_left_out():
    c = CASES[0]
    model, (X, y) = c.build_model(), c.build_data()
    model[0].weight.requires_grad_(False)
    op = HessianOperator(model, c.loss, (X, y))
    assert "0.weight" not in op.param_names and op.shape[0] == 6 + 6 * 3 + 3
    assert_operator_matches(op, reference_hessian(model, c.loss, X, y), rtol=RTOL)


def test_float32_model():
    c = CASES[0]
    model, (X, y) = c.build_model(), c.build_data()
    H = reference_hessian(model, c.loss, X, y)
    op = HessianOperator(model.float(), c.loss, (X.float(), y))
    assert op.dtype == torch.float32
    assert_operator_matches(op, H, rtol=1e-5)


def test_eval_mode_is_default_and_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double()
    X, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))
    model.train()
    op = HessianOperator(model, "cross_entropy", (X, y))
    assert op.describe()["model_mode"] == "eval"
    assert model.training and model[1].training


# --------------------------------------------------------------- bad input
def _mlp():
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _xy(n=10):
    return torch.randn(n, 3, dtype=torch.float64), torch.randint(0, 2, (n,))


BAD_INPUT = [
    ("no trainable parameters", lambda: (_mlp().requires_grad_(False), _xy(), {}), InvalidInputError,
     "no trainable parameters"),
    ("input shape", lambda: (_mlp(), (torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 2, (10,))), {}),
     InvalidInputError, "inputs of shape (10, 5)"),
    ("labels out of range", lambda: (_mlp(), (_xy()[0], torch.full((10,), 7)), {}), InvalidInputError,
     "labels out of range"),
    ("float targets with CE", lambda: (_mlp(), (_xy()[0], torch.rand(10, dtype=torch.float64)), {}),
     InvalidInputError, "integer class labels"),
    ("NaN in data", lambda: (_mlp(), (torch.full((10, 3), float("nan"), dtype=torch.float64), _xy()[1]), {}),
     NonFiniteError, "NaN or Inf"),
    ("NaN in weights", lambda: (_mlp().requires_grad_(False).requires_grad_(True), _xy(), {"nan_weight": True}),
     NonFiniteError, "parameter '0.weight'"),
    ("empty dataset", lambda: (_mlp(), (torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.long)), {}),
     InvalidInputError, "empty"),
    ("inconsistent batches", lambda: (_mlp(), [_xy(), (torch.randn(4, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.long))], {}),
     InvalidInputError, "inconsistent feature shapes"),
    ("dropout in train mode", lambda: (nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 2)).double(), _xy(), {"train_mode": True}),
     NonDeterministicError, "Dropout"),
    ("bad parameter name", lambda: (_mlp(), _xy(), {"params": "decoder"}), InvalidInputError,
     "no trainable parameter matches 'decoder'"),
    ("unknown mode", lambda: (_mlp(), _xy(), {"mode": "sideways"}), InvalidInputError, "mode must be"),
    ("tensor not of the model", lambda: (_mlp(), _xy(), {"params": [nn.Linear(3, 4).weight]}), InvalidInputError,
     "not a parameter of the model"),
    ("params of a wrong type", lambda: (_mlp(), _xy(), {"params": [3]}), InvalidInputError,
     "got int"),
]


@pytest.mark.parametrize("selector", [lambda m: [m[2].bias, m[0].weight], lambda m: m[0].weight,
                                      lambda m: ["2.bias", m[0].weight]], ids=["tensors", "one tensor", "mixed"])
def test_parameters_chosen_by_tensor_equal_those_chosen_by_name(selector):
    # curvlinops and PyHessian take parameter tensors; the order is the model's whatever the list's
    torch.manual_seed(0)
    model, data = _mlp(), _xy()
    chosen = selector(model)
    names = [n for n, p in model.named_parameters()
             if any(p is c for c in (chosen if isinstance(chosen, list) else [chosen]) if isinstance(c, torch.Tensor))]
    names += [c for c in (chosen if isinstance(chosen, list) else []) if isinstance(c, str)]
    by_tensor = HessianOperator(model, "cross_entropy", data, params=chosen)
    by_name = HessianOperator(model, "cross_entropy", data, params=names)
    assert by_tensor.describe()["param_names"] == by_name.describe()["param_names"] != []
    torch.testing.assert_close(by_tensor.to_dense(), by_name.to_dense(), rtol=0, atol=0)


@pytest.mark.parametrize("name,build,error,message", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_gets_a_clear_error(name, build, error, message):
    model, data, kwargs = build()
    if kwargs.pop("nan_weight", False):
        with torch.no_grad():
            model[0].weight[0, 0] = float("nan")
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        HessianOperator(model, "cross_entropy", data, **kwargs)


def test_nan_loss_is_refused():
    model = nn.Linear(3, 2).double()
    X, y = _xy()
    big = torch.full_like(X, 1e200)  # finite inputs, but the squared error overflows
    with pytest.raises(NonFiniteError, match="loss is inf"):
        HessianOperator(model, "mse", (big, y))


def test_shuffling_loader_is_refused():
    X, y = _xy()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=4, shuffle=True)
    with pytest.raises(NonDeterministicError, match="shuffles"):
        HessianOperator(_mlp(), "cross_entropy", loader)


@pytest.mark.parametrize("P,tile", [(1, 512), (7, 3), (64, 64), (130, 32), (300, 512)])
def test_in_place_symmetrisation_equals_the_formula(P, tile):
    from spectra.operators.base import symmetrise_in_place

    A = torch.randn(P, P, generator=torch.Generator().manual_seed(P), dtype=torch.float64)
    want = 0.5 * (A + A.T)
    symmetrise_in_place(A, tile=tile)
    assert torch.equal(A, want)
