"""GGNOperator and ResidualOperator against dense float64 references.

Reference G: for each batch, the Jacobian of the outputs w.r.t. the selected
parameters (torch.func.jacrev) and the Hessian of the weighted batch loss
w.r.t. the outputs (torch.func.hessian), summed as sum_b J_b^T H_b J_b.
Reference H: torch.autograd.functional.hessian of the whole-dataset loss.
Tolerance: 1e-10 relative to the largest entry (float64 round-off).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from spectra.losses import resolve_loss
from spectra.operators.ggn import GGNOperator
from spectra.operators.residual import ResidualOperator

from .cases import CASE_IDS, CASES, uneven_batches

TOL = 1e-10


def dense_ggn(model, loss_name, batches, names=None):
    loss = resolve_loss(loss_name)
    named = [(n, p) for n, p in model.named_parameters() if names is None or n in names]
    keys = [n for n, _ in named]
    primal = tuple(p.detach() for _, p in named)
    others = {n: p.detach() for n, p in model.named_parameters() if n not in keys}
    N = sum(X.shape[0] for X, _ in batches)
    P = sum(p.numel() for p in primal)
    G = torch.zeros(P, P, dtype=torch.float64)
    for X, y in batches:
        def f(*theta):
            return functional_call(model, {**others, **dict(zip(keys, theta))}, (X,))
        out = f(*primal)
        J = torch.cat([j.reshape(out.numel(), -1) for j in jacrev(f, argnums=tuple(range(len(primal))))(*primal)],
                      dim=1)
        w = X.shape[0] / N
        Hl = hessian(lambda o: w * loss(o, y))(out).reshape(out.numel(), out.numel())
        G += J.T @ Hl @ J
    return G


def dense_hessian(model, loss_name, X, y, names=None):
    loss = resolve_loss(loss_name)
    named = [(n, p) for n, p in model.named_parameters() if names is None or n in names]
    keys = [n for n, _ in named]
    others = {n: p.detach() for n, p in model.named_parameters() if n not in keys}
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])
    shapes = [p.shape for _, p in named]

    def L(theta):
        pieces = torch.split(theta, [s.numel() for s in shapes])
        state = {**others, **{k: v.view(s) for k, v, s in zip(keys, pieces, shapes)}}
        return loss(functional_call(model, state, (X,)), y)

    return torch.autograd.functional.hessian(L, flat)


def close(A, B):
    return float((A - B).abs().max()) <= TOL * max(1.0, float(B.abs().max()))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("batched", [False, True], ids=["one-batch", "uneven-batches"])
def test_ggn_equals_dense_reference(case, batched):
    model, (X, y) = case.build_model(), case.build_data()
    batches = uneven_batches(X, y, (5, 4)) if batched else [(X, y)]
    G = GGNOperator(model, case.loss, batches, chunk_size=5)
    ref = dense_ggn(model, case.loss, batches)
    assert close(G.to_dense(), ref)
    # block products (several chunks) agree with the dense matrix too
    V = torch.randn(G.shape[0], 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert close(G @ V, ref @ V)
    assert G.num_matvecs == G.shape[0] + 7


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_residual_is_hessian_minus_ggn(case):
    model, (X, y) = case.build_model(), case.build_data()
    R = ResidualOperator(model, case.loss, (X, y))
    ref = dense_hessian(model, case.loss, X, y) - dense_ggn(model, case.loss, [(X, y)])
    assert close(R.to_dense(), ref)


def test_parameter_subset():
    case = CASES[0]
    model, (X, y) = case.build_model(), case.build_data()
    G = GGNOperator(model, case.loss, (X, y), params=["2"])  # last Linear layer only
    assert G.param_names == ["2.weight", "2.bias"]
    assert close(G.to_dense(), dense_ggn(model, case.loss, [(X, y)], names={"2.weight", "2.bias"}))


def test_float_targets_mse_and_psd():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X, y = torch.randn(11, 3, dtype=torch.float64), torch.randn(11, 2, dtype=torch.float64)
    G = GGNOperator(model, "mse", (X, y)).to_dense()
    assert close(G, dense_ggn(model, "mse", [(X, y)]))
    # MSE: the loss Hessian is I/N, so G = J^T J / N, positive semi-definite
    assert float(torch.linalg.eigvalsh(G).min()) > -1e-12


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_linear_model_has_zero_residual(loss):
    torch.manual_seed(5)
    model = nn.Linear(4, 3).double()
    X, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    R = ResidualOperator(model, loss, (X, y)).to_dense()
    assert float(R.abs().max()) < 1e-12


def test_relu_residual_has_zero_diagonal_blocks():
    # A ReLU net's output is linear in each single layer's weights, so the second
    # derivatives within a layer vanish: R's diagonal blocks are zero, tr R = 0.
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    X, y = torch.randn(17, 3, dtype=torch.float64), torch.randint(0, 3, (17,))
    R = ResidualOperator(model, "cross_entropy", (X, y)).to_dense()
    assert float(R.abs().max()) > 1e-3  # R itself is not zero
    start = 0
    for layer in (model[0], model[2], model[4]):
        n = layer.weight.numel() + layer.bias.numel()
        assert float(R[start : start + n, start : start + n].abs().max()) < 1e-12
        start += n
    assert abs(float(torch.trace(R))) < 1e-12


def test_cached_and_uncached_agree():
    case = CASES[1]
    model, (X, y) = case.build_model(), case.build_data()
    a = GGNOperator(model, case.loss, (X, y), cache_graph=True).to_dense()
    b = GGNOperator(model, case.loss, (X, y), cache_graph=False).to_dense()
    assert close(a, b)


@pytest.mark.parametrize("matrix", ["hessian", "ggn", "residual"])
def test_analyze_matrix_option(matrix):
    import spectra

    case = CASES[0]
    model, (X, y) = case.build_model(), case.build_data()
    r = spectra.analyze(model, (X, y), method="exact", matrix=matrix)
    H = dense_hessian(model, case.loss, X, y)
    G = dense_ggn(model, case.loss, [(X, y)])
    ref = {"hessian": H, "ggn": G, "residual": H - G}[matrix]
    assert r.provenance["matrix"] == matrix
    assert abs(r.eigenvalues - torch.linalg.eigvalsh(ref).numpy()).max() < 1e-9


def test_analyze_unknown_matrix():
    import spectra
    from spectra.errors import UnknownNameError

    case = CASES[0]
    with pytest.raises(UnknownNameError, match="unknown matrix 'hessain'; known matrices: .*did you mean 'hessian'"):
        spectra.analyze(case.build_model(), case.build_data(), matrix="hessain")
