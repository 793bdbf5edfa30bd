"""Models users bring, against a dense autograd Hessian of the whole-dataset loss written with torch alone.

Each reference is ``torch.autograd.functional.hessian`` of the loss over *all*
the data at once, written with ``torch.nn.functional`` (not spectra's losses or
batch weighting), so it checks the reduction, the units of the mean
(samples or non-ignored tokens) and the batch weights together.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spectra.attention import differentiable_attention
from spectra.operators.hessian import HessianOperator

RTOL = 1e-9  # float64 eigenvalues against the dense reference, relative to the largest |eigenvalue|


def dense_hessian(model: nn.Module, total_loss: Callable[[Callable[..., Any]], torch.Tensor]) -> torch.Tensor:
    """Hessian of ``total_loss(call)`` w.r.t. all trainable parameters, ``call(*a, **k)`` running the model."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, shapes = [n for n, _ in named], [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]
    buffers = dict(model.named_buffers())

    def f(flat: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, (t.view(s) for t, s in zip(torch.split(flat, sizes), shapes))))

        def call(*args: Any, **kwargs: Any) -> Any:
            return torch.func.functional_call(model, {**buffers, **params}, args, kwargs)
        return total_loss(call)

    flat0 = torch.cat([p.detach().reshape(-1) for _, p in named])
    was_training = model.training
    model.eval()
    try:
        with differentiable_attention():
            return torch.autograd.functional.hessian(f, flat0)
    finally:
        model.train(was_training)


def _mlp(out: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, out)).double()


def _class_data(n: int = 13, c: int = 3, ignored: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, c, (n,), generator=g)
    y[list(ignored)] = -100
    return X, y


def _batches(X: torch.Tensor, y: torch.Tensor, sizes: tuple[int, ...]) -> list:
    out, start = [], 0
    for s in sizes:
        out.append((X[start:start + s], y[start:start + s]))
        start += s
    return out


# (name, model, loss, data, operator options, reference total loss, expected path)
def _cases() -> list:
    X, y = _class_data()
    Xi, yi = _class_data(ignored=(0, 1, 2, 9))
    Xr = torch.randn(13, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return [
        ("ce-sum-three-batches", _mlp(), "cross_entropy", _batches(X, y, (5, 5, 3)), {"reduction": "sum"},
         lambda call: F.cross_entropy(call(X), y, reduction="sum"), {"reduction": "sum", "hvp_mode": "reverse"}),
        ("ce-ignored-labels-uneven", _mlp(), "cross_entropy", _batches(Xi, yi, (4, 6, 3)), {},
         lambda call: F.cross_entropy(call(Xi), yi, ignore_index=-100),
         {"reduction": "mean", "num_samples": 9, "hvp_mode": "reverse"}),
        ("ce-ignored-labels-forward", _mlp(), "cross_entropy", _batches(Xi, yi, (4, 6, 3)), {"mode": "forward"},
         lambda call: F.cross_entropy(call(Xi), yi, ignore_index=-100), {"num_samples": 9, "hvp_mode": "forward"}),
        ("mse-sum-two-batches", _mlp(), "mse", _batches(X, Xr, (8, 5)), {"reduction": "sum"},
         lambda call: 0.5 * F.mse_loss(call(X), Xr, reduction="sum"), {"reduction": "sum", "hvp_mode": "reverse"}),
        ("ce-mean-chain", _mlp(), "cross_entropy", _batches(X, y, (5, 5, 3)), {},
         lambda call: F.cross_entropy(call(X), y), {"reduction": "mean", "hvp_mode": "chain"}),
    ]


CASES = _cases()


@pytest.mark.parametrize("name,model,loss,data,options,total_loss,path", CASES, ids=[c[0] for c in CASES])
def test_eigenvalues_match_dense_autograd(name, model, loss, data, options, total_loss, path):
    H = dense_hessian(model, total_loss)
    op = HessianOperator(model, loss, data, **options)
    info = op.describe()
    for key, value in path.items():
        assert info[key] == value, (key, info[key])
    got = torch.linalg.eigvalsh(op.to_dense())
    want = torch.linalg.eigvalsh(H)
    assert float((got - want).abs().max()) <= RTOL * float(want.abs().max())
