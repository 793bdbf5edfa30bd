"""BatchNorm with batch statistics: spectra's products against central finite differences of the gradient.

With ``train_mode=True`` BatchNorm normalises each batch by its own mean and
variance, so every sample's output depends on the whole batch.  The truth
here needs first derivatives only: ``(g(θ + εv) - g(θ - εv)) / 2ε`` equals
``H v`` up to ``O(ε²)`` (smooth activations, so no kink is crossed).  In
torch 2.13 ``torch.func.hessian`` (forward over ``jacrev``) is wrong on these
models, while spectra's products (double backward, and ``jvp`` of ``grad``)
agree with the finite differences.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spectra.operators.hessian import HessianOperator
from spectra.testing import gradient_difference
from spectra.workloads.resnet import SmallResNet

EPS = (1e-4, 1e-5)
FD_RTOL = 1e-6  # at eps = 1e-5: the O(eps^2) error, far above round-off (about 1e-16 / eps)


def _bn_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()


def _bn_cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Tanh(), nn.Flatten(),
                         nn.Linear(2 * 4 * 4, 3)).double()


def _resnet() -> nn.Module:
    torch.manual_seed(2)
    model = SmallResNet(channels=2, num_blocks=1, num_classes=3).double()
    for module in model.modules():  # smooth, so the finite differences see no kink
        if isinstance(module, nn.ReLU):
            module.__class__ = nn.Tanh
    return model


def _data(shape: tuple[int, ...], n: int = 12, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


# (name, model, input shape, batch sizes)
CASES = [
    ("bn1d-mlp-one-batch", _bn_mlp, (4,), (12,)),
    ("bn1d-mlp-two-batches", _bn_mlp, (4,), (7, 5)),
    ("bn2d-cnn-one-batch", _bn_cnn, (1, 6, 6), (12,)),
    ("resnet-two-batches", _resnet, (1, 6, 6), (6, 6)),
]


def _batches(X, y, sizes):
    out, start = [], 0
    for s in sizes:
        out.append((X[start:start + s], y[start:start + s]))
        start += s
    return out


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("name,build_model,shape,sizes", CASES, ids=[c[0] for c in CASES])
def test_batch_statistics_products_match_finite_differences(name, build_model, shape, sizes, mode):
    model = build_model()
    data = _batches(*_data(shape), sizes)
    op = HessianOperator(model, "cross_entropy", data, train_mode=True, mode=mode)
    assert op.describe()["model_mode"] == "train" and op.describe()["hvp_mode"] == mode
    V = torch.randn(op.shape[0], 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    HV = op.matmat(V)  # a batched block: every column is checked

    def build() -> HessianOperator:
        return HessianOperator(model, "cross_entropy", data, train_mode=True, check_determinism=False)

    for j in range(V.shape[1]):
        errors = [float((gradient_difference(build, op.params, V[:, j], eps) - HV[:, j]).norm() / HV[:, j].norm())
                  for eps in EPS]
        assert errors[1] <= FD_RTOL, errors
        assert errors[1] <= errors[0] / 20, errors  # shrinking as eps^2 (100x for 10x smaller eps)


def test_eval_mode_is_a_different_matrix():
    """Running statistics: the per-sample Hessian, which differs from the batch-statistics one."""
    model = _bn_mlp()
    with torch.no_grad():  # running statistics unlike the batch's own
        model[1].running_mean.fill_(0.3)
        model[1].running_var.fill_(2.0)
    data = _data((4,))
    H_eval = HessianOperator(model, "cross_entropy", data).to_dense()
    H_batch = HessianOperator(model, "cross_entropy", data, train_mode=True).to_dense()
    assert float((H_eval - H_batch).norm() / H_batch.norm()) > 0.1
    # analysing never changes the running statistics
    assert float(model[1].running_mean[0]) == 0.3 and float(model[1].running_var[0]) == 2.0


@pytest.mark.skipif(not torch.__version__.startswith("2.13"), reason="documents torch 2.13's behaviour")
def test_torch_func_hessian_is_wrong_with_batch_statistics():
    """What docs/models.md shows: ``torch.func.hessian`` is off where spectra matches finite differences."""
    from spectra.operators.model_state import model_mode

    model = _bn_cnn()
    X, y = _data((1, 6, 6))
    op = HessianOperator(model, "cross_entropy", (X, y), train_mode=True)
    names = op.param_names
    sizes = [p.numel() for p in op.params]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        pieces = [t.view(p.shape) for t, p in zip(torch.split(flat, sizes), op.params)]
        out = torch.func.functional_call(model, dict(zip(names, pieces)), (X,))
        return nn.functional.cross_entropy(out, y)

    flat = torch.cat([p.detach().reshape(-1) for p in op.params])
    with model_mode(model, True):
        by_func = torch.func.hessian(loss_of)(flat)
    dense = op.to_dense()
    assert float((by_func - dense).norm() / dense.norm()) > 1e-3
