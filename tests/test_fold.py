"""The folded batched products: same numbers as plain bmm and as separate products, and the fold path runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spectra.operators._fold import fold_shared_factor_bmm
from spectra.operators.hessian import HessianOperator
from spectra.testing import reference_hessian

# (left shape, right shape, which side is broadcast)
BMM_CASES = [
    ((6, 5, 3), (6, 3, 4), "left"),
    ((6, 5, 3), (6, 3, 4), "right"),
    ((6, 5, 3), (6, 3, 4), "neither"),
    ((1, 5, 3), (1, 3, 4), "left"),  # a batch of one is left alone
]


@pytest.mark.parametrize("a_shape,b_shape,shared", BMM_CASES)
def test_folded_bmm_equals_bmm(a_shape, b_shape, shared):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(a_shape, generator=g, dtype=torch.float64)
    b = torch.randn(b_shape, generator=g, dtype=torch.float64)
    if shared == "left":
        a = a[:1].expand(a_shape)
    elif shared == "right":
        b = b[:1].expand(b_shape)
    with fold_shared_factor_bmm():
        got = torch.bmm(a, b)
    torch.testing.assert_close(got, torch.bmm(a, b), rtol=1e-13, atol=1e-13)
    assert got.shape == (a_shape[0], a_shape[1], b_shape[2]) and got.is_contiguous()


# (model, loss): MLPs, whose linear layers give broadcast bmm calls in the batched double backward
NETS = {
    "relu-mlp/ce": (lambda: nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 3)), "cross_entropy"),
    "tanh-mlp/mse": (lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(),
                                           nn.Linear(5, 3)), "mse"),
}


@pytest.mark.parametrize("name", list(NETS))
def test_folded_block_products_match_the_reference_hessian(name, monkeypatch):
    """A block of 9 products, folded, equals H @ V from torch.autograd.functional.hessian (rel 1e-10)."""
    import spectra.operators._fold as fold

    torch.manual_seed(0)
    make, loss = NETS[name]
    model = make().double()
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(30, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (30,), generator=g)
    H = reference_hessian(model, loss, X, y)
    V = torch.randn(H.shape[0], 9, generator=g, dtype=torch.float64)
    folded_calls = []
    real = fold._FoldSharedFactor.__torch_dispatch__

    def spy(self, func, types, args=(), kwargs=None):
        if func is fold._BMM and (args[0].stride(0) == 0 or args[1].stride(0) == 0):
            folded_calls.append(func)
        return real(self, func, types, args, kwargs)

    monkeypatch.setattr(fold._FoldSharedFactor, "__torch_dispatch__", spy)
    results = {}
    for folded in (True, False):
        op = HessianOperator(model, loss, (X, y), mode="reverse")  # the autograd path folds
        op.fold_batched_products = folded
        results[folded] = op.matmat(V)
        torch.testing.assert_close(results[folded], H @ V, rtol=1e-10, atol=1e-12)
    assert folded_calls, "the batched products never met a broadcast bmm: the fold path did not run"
    torch.testing.assert_close(results[True], results[False], rtol=1e-12, atol=1e-14)


# (columns of the identity, tensors each chunk of 32 columns touches): unit vectors inside one
# tensor, across two, and all of them (P = 42 + 7 + 21 + 3 = 73; 0.weight is 0..41, 0.bias 42..48,
# 2.weight 49..69, 2.bias 70..72)
UNIT_BLOCKS = [
    (range(0, 12), [1]),
    (range(38, 46), [2]),
    (range(0, 73), [1, 3, 2]),  # chunks 0..31, 32..63, 64..72
]


@pytest.mark.parametrize("columns,touched", UNIT_BLOCKS)
def test_zero_pieces_are_skipped_and_products_stay_exact(columns, touched, monkeypatch):
    """Unit-vector blocks (as to_dense sends) backpropagate only through the tensors they touch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(30, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (30,), generator=g)
    H = reference_hessian(model, "cross_entropy", X, y)
    assert H.shape == (73, 73)
    op = HessianOperator(model, "cross_entropy", (X, y), mode="reverse")
    widths = []
    real = torch.autograd.grad

    def spy(outputs, inputs, grad_outputs=None, **kw):
        if kw.get("is_grads_batched"):
            widths.append(len(outputs))
        return real(outputs, inputs, grad_outputs=grad_outputs, **kw)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    E = torch.eye(73, dtype=torch.float64)[:, list(columns)]
    torch.testing.assert_close(op.matmat(E), H[:, list(columns)], rtol=1e-10, atol=1e-12)
    assert widths == touched
