"""Chain products (the R-operator written out) against autograd's dense Hessian, and when they are used.

Ground truth: ``torch.autograd.functional.hessian`` in float64
(:func:`spectra.testing.reference_hessian`).  Every operator here is also
asserted to have taken the path the test is about (``op.mode``, the engine's
name) and, for the chain, not to run autograd during its products.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spectra.errors import InvalidInputError
from spectra.operators import curvature
from spectra.operators.engines import chain as chain_module
from spectra.operators.engines.base import ProductEngine
from spectra.operators.engines.forward import ForwardEngine
from spectra.operators.engines.reverse import ReverseEngine
from spectra.operators.hessian import HessianOperator
from spectra.parallel import LocalReducer
from spectra.testing import assert_operator_matches, reference_hessian

from .test_ggn import dense_ggn  # the GGN reference: sum_b J_b^T H_b J_b from torch.func

RTOL = 1e-10  # float64 products against the dense reference


def _net(*layers: nn.Module, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*layers).double()


def _data(n: int, shape: tuple[int, ...], classes: int, seed: int, float_targets: bool = False):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    y = torch.randn(n, classes, generator=g, dtype=torch.float64) if float_targets else \
        torch.randint(0, classes, (n,), generator=g)
    return X, y


# (id, model builder, data builder, loss, params selector)
CHAINS = [
    ("relu-ce", lambda: _net(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)),
     lambda: _data(23, (4,), 3, 1), "cross_entropy", None),
    ("flatten-relu2-ce", lambda: _net(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(),
                                      nn.Linear(5, 4)),
     lambda: _data(17, (2, 3), 4, 2), "cross_entropy", None),
    ("tanh-sigmoid-mse-labels", lambda: _net(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Sigmoid(),
                                             nn.Linear(4, 2)),
     lambda: _data(19, (3,), 2, 3), "mse", None),
    ("softplus-mse-float-targets", lambda: _net(nn.Linear(3, 4), nn.Softplus(), nn.Linear(4, 3)),
     lambda: _data(15, (3,), 3, 4, float_targets=True), "mse", None),
    ("gelu-elu-leaky-ce", lambda: _net(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 4), nn.ELU(), nn.LeakyReLU(0.2),
                                       nn.Linear(4, 3)),
     lambda: _data(21, (3,), 3, 5), "cross_entropy", None),
    ("no-bias-identity", lambda: _net(nn.Linear(3, 4, bias=False), nn.Identity(), nn.Tanh(),
                                      nn.Linear(4, 2, bias=False)),
     lambda: _data(12, (3,), 2, 6), "cross_entropy", None),
    ("nested-sequential", lambda: _net(nn.Sequential(nn.Linear(3, 4), nn.Tanh()), nn.Sequential(nn.Linear(4, 3))),
     lambda: _data(13, (3,), 3, 7), "cross_entropy", None),
    ("subset-middle-layer", lambda: _net(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)),
     lambda: _data(18, (3,), 3, 8), "cross_entropy", "2"),
    ("subset-first-bias-last-weight", lambda: _net(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.Sigmoid(),
                                                   nn.Linear(4, 3)),
     lambda: _data(18, (3,), 3, 9), "mse", ["0.bias", "4.weight"]),
    ("subset-last-layer", lambda: _net(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)),
     lambda: _data(14, (3,), 3, 10), "cross_entropy", "2.*"),
    ("activation-before-the-first-linear", lambda: _net(nn.ReLU(), nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)),
     lambda: _data(16, (3,), 3, 14), "cross_entropy", None),
]


def _forbid_autograd_products(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every autograd product path (engines, forward passes, loss heads) fail if anything takes it."""
    def refuse(*args, **kwargs):
        raise AssertionError("an autograd product path ran")

    for owner, method in ((ReverseEngine, "prepare"), (ReverseEngine, "grad_block"), (ForwardEngine, "prepare"),
                          (ProductEngine, "loss_hessian"), (curvature.CurvatureOperator, "forward_pass")):
        monkeypatch.setattr(owner, method, refuse)


@pytest.mark.parametrize("layout", ["one-batch", "three-batches"])
@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("name,build_model,build_data,loss,params", CHAINS, ids=[c[0] for c in CHAINS])
def test_chain_products_match_dense_reference(name, build_model, build_data, loss, params, layout, cache,
                                              monkeypatch):
    model, (X, y) = build_model(), build_data()
    data = (X, y) if layout == "one-batch" else [(X[:5], y[:5]), (X[5:11], y[5:11]), (X[11:], y[11:])]
    X_before = X.clone()
    op = HessianOperator(model, loss, data, params=params, cache_graph=cache)
    assert op.mode == "chain" and op.describe()["chain_products"] == "used"
    H = reference_hessian(model, loss, X, y, param_names=op.param_names)
    _forbid_autograd_products(monkeypatch)  # the chain path, not autograd's
    assert_operator_matches(op, H, num_vectors=4, rtol=RTOL)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    torch.testing.assert_close(op @ v, H @ v, rtol=RTOL, atol=RTOL * float(H.abs().max()))
    assert torch.equal(X, X_before)  # a leading ReLU rectifies a copy, never the user's data


DENSE = [c for c in CHAINS if c[0] in ("relu-ce", "flatten-relu2-ce", "tanh-sigmoid-mse-labels",
                                       "subset-first-bias-last-weight")]


@pytest.mark.parametrize("cache,block", [(True, None), (False, 5)])
@pytest.mark.parametrize("name,build_model,build_data,loss,params", DENSE, ids=[c[0] for c in DENSE])
def test_chain_to_dense_and_blocks(name, build_model, build_data, loss, params, cache, block):
    """to_dense's triangle-and-mirror path (blocks that cut through parameters) and batched blocks."""
    model, (X, y) = build_model(), build_data()
    op = HessianOperator(model, loss, [(X[:8], y[:8]), (X[8:], y[8:])], params=params, chunk_size=7,
                         cache_graph=cache)
    assert op.mode == "chain"
    H = reference_hessian(model, loss, X, y, param_names=op.param_names)
    D = op.to_dense(block)
    torch.testing.assert_close(D, H, rtol=0, atol=1e-12 * float(H.abs().max()))
    assert torch.equal(D, D.T) and op.num_matvecs == H.shape[0]
    V = torch.randn(H.shape[0], 9, dtype=torch.float64)
    by_column = torch.cat([op.matmat(V[:, j : j + 1]) for j in range(9)], dim=1)
    torch.testing.assert_close(op.matmat(V), by_column, rtol=1e-12, atol=1e-14)


def test_chain_float32():
    model, (X, y) = CHAINS[1][1](), CHAINS[1][2]()
    H = reference_hessian(model, "cross_entropy", X, y)
    op = HessianOperator(model.float(), "cross_entropy", (X.float(), y))
    assert op.mode == "chain" and op.dtype == torch.float32
    assert_operator_matches(op, H, rtol=1e-5)


def test_relu_at_exactly_zero_follows_autograd():
    """A pre-activation of exactly 0 takes torch's relu derivative (0) in both paths."""
    model = _net(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight[0] = 0.0
        model[0].bias[0] = 0.0  # unit 0 is exactly 0 for every input
    X, y = _data(9, (2,), 2, 11)
    op = HessianOperator(model, "cross_entropy", (X, y))
    assert op.mode == "chain"
    assert_operator_matches(op, reference_hessian(model, "cross_entropy", X, y), rtol=RTOL)


class _Residual(nn.Sequential):
    def forward(self, x):  # not a chain: adds its input back
        return super().forward(x) + x


# (id, model, loss, why the chain does not apply: a fragment of chain_products / the mode="chain" error)
NOT_CHAINS = [
    ("conv", lambda: _net(nn.Conv1d(1, 2, 2), nn.Flatten(), nn.Linear(8, 3)), "cross_entropy", "Conv1d"),
    ("custom-loss", lambda: _net(nn.Linear(3, 3)), lambda o, t: nn.functional.cross_entropy(o, t),
     "not a built-in loss"),
    ("sequential-subclass", lambda: _Residual(nn.Linear(3, 3)).double(), "cross_entropy", "overrides"),
    ("dropout", lambda: _net(nn.Linear(3, 4), nn.Dropout(0.1), nn.Linear(4, 3)), "cross_entropy", "Dropout"),
    ("not-sequential", lambda: nn.Linear(3, 3).double(), "cross_entropy", "not a Sequential"),
]


@pytest.mark.parametrize("name,build,loss,why", NOT_CHAINS, ids=[c[0] for c in NOT_CHAINS])
def test_auto_falls_back_to_autograd_and_chain_refuses(name, build, loss, why):
    model = build()
    X = torch.randn(10, 1, 5, dtype=torch.float64) if name == "conv" else torch.randn(10, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    op = HessianOperator(model, loss, (X, y))
    assert op.mode == "reverse" and why in op.describe()["chain_products"]
    ref_loss = "cross_entropy" if callable(loss) else loss
    assert_operator_matches(op, reference_hessian(model, ref_loss, X, y), rtol=RTOL)
    with pytest.raises(InvalidInputError, match=f"mode='chain' cannot be used here: .*{why}"):
        HessianOperator(model, loss, (X, y), mode="chain")


def test_shared_layer_is_not_a_chain():
    torch.manual_seed(0)
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.Tanh(), shared).double()
    X, y = _data(10, (3,), 3, 13)
    op = HessianOperator(model, "cross_entropy", (X, y))
    assert op.mode == "reverse" and "shares a parameter" in op.engine_note
    assert_operator_matches(op, reference_hessian(model, "cross_entropy", X, y), rtol=RTOL)


def test_a_data_parallel_operator_raises_instead_of_falling_back(monkeypatch):
    """A fallback on one rank alone would desynchronise the ranks: a data-parallel operator raises instead."""
    real = chain_module.ChainProducts.gradient
    monkeypatch.setattr(chain_module.ChainProducts, "gradient",
                        lambda self, *a, **k: [None if t is None else 2 * t for t in real(self, *a, **k)])

    class DataParallel(LocalReducer):  # what the operator knows of a data-parallel reducer here
        is_distributed = True

    monkeypatch.setattr(curvature, "make_reducer", lambda *args: DataParallel())
    model, (X, y) = CHAINS[0][1](), CHAINS[0][2]()
    with pytest.raises(InvalidInputError, match="chain products cannot be used here: its gradient differs"):
        HessianOperator(model, "cross_entropy", (X, y))


def test_hooked_layer_is_not_a_chain():
    model = _net(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    model[2].register_forward_hook(lambda m, i, o: 2 * o)
    X, y = _data(10, (3,), 3, 12)
    op = HessianOperator(model, "cross_entropy", (X, y))
    assert op.mode == "reverse" and "forward hooks" in op.engine_note
    assert_operator_matches(op, reference_hessian(model, "cross_entropy", X, y), rtol=RTOL)


@pytest.mark.parametrize("broken,stage", [("gradient", "gradient differs"), ("product", "product differs")])
def test_a_wrong_chain_is_caught_against_autograd(broken, stage, monkeypatch):
    """The construction checks catch a chain that disagrees with autograd: auto falls back, chain refuses."""
    real = getattr(chain_module.ChainProducts, broken)

    def off_by_a_bit(self, *args, **kwargs):
        return [None if t is None else 1.001 * t for t in real(self, *args, **kwargs)]

    monkeypatch.setattr(chain_module.ChainProducts, broken, off_by_a_bit)
    model, (X, y) = CHAINS[0][1](), CHAINS[0][2]()
    op = HessianOperator(model, "cross_entropy", (X, y))
    assert op.mode == "reverse" and stage in op.engine_note
    assert_operator_matches(op, reference_hessian(model, "cross_entropy", X, y), rtol=RTOL)
    with pytest.raises(InvalidInputError, match=stage):
        HessianOperator(model, "cross_entropy", (X, y), mode="chain")


GGN_CASES = [c for c in CHAINS if c[0] in ("relu-ce", "tanh-sigmoid-mse-labels", "gelu-elu-leaky-ce",
                                           "subset-first-bias-last-weight")]


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("name,build_model,build_data,loss,params", GGN_CASES, ids=[c[0] for c in GGN_CASES])
def test_chain_ggn_and_residual(name, build_model, build_data, loss, params, cache, monkeypatch):
    """G V by the chain (the Hessian's passes without the signal terms) and R = H - G, against autograd."""
    from spectra.operators.ggn import GGNOperator
    from spectra.operators.residual import ResidualOperator

    model, (X, y) = build_model(), build_data()
    data = [(X[:7], y[:7]), (X[7:], y[7:])]
    G = GGNOperator(model, loss, data, params=params, cache_graph=cache)
    assert G.mode == "chain" and G.describe()["hvp_mode"] == "chain"
    ref = dense_ggn(model, loss, [(X, y)], G.param_names)
    R = ResidualOperator(model, loss, data, params=params, cache_graph=cache, mode="chain")
    assert R.mode == "chain"
    H = reference_hessian(model, loss, X, y, param_names=G.param_names)
    _forbid_autograd_products(monkeypatch)
    assert_operator_matches(G, ref, num_vectors=4, rtol=RTOL)
    assert_operator_matches(R, H - ref, num_vectors=3, rtol=1e-9)


def test_ggn_chain_mode_refuses_a_non_chain():
    from spectra.operators.ggn import GGNOperator

    model = _net(nn.Conv1d(1, 2, 2), nn.Flatten(), nn.Linear(8, 3))
    X, y = torch.randn(6, 1, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    assert GGNOperator(model, "cross_entropy", (X, y)).mode == "reverse"
    with pytest.raises(InvalidInputError, match="mode='chain' cannot be used here: .*Conv1d"):
        GGNOperator(model, "cross_entropy", (X, y), mode="chain")


# ------------------------------------------------------------------ fuzz: random chains against autograd
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ACTIVATIONS = [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.Softplus, lambda: nn.LeakyReLU(0.1), nn.Identity]


@st.composite
def chains(draw):
    """A random Linear/activation Sequential, its data, loss, parameter choice and batch split."""
    widths = draw(st.lists(st.integers(1, 5), min_size=2, max_size=4))
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b, bias=draw(st.booleans())))
        if i < len(widths) - 2:
            layers += [_ACTIVATIONS[j]() for j in draw(st.lists(st.integers(0, len(_ACTIVATIONS) - 1),
                                                                 min_size=0, max_size=2))]
    torch.manual_seed(draw(st.integers(0, 1000)))
    model = nn.Sequential(*layers).double()
    names = [n for n, _ in model.named_parameters()]
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
    n = draw(st.integers(1, 9))
    loss = draw(st.sampled_from(["cross_entropy", "mse"]))
    classes = widths[-1]
    g = torch.Generator().manual_seed(draw(st.integers(0, 1000)))
    X = torch.randn(n, widths[0], generator=g, dtype=torch.float64)
    if loss == "mse" and draw(st.booleans()):
        y = torch.randn(n, classes, generator=g, dtype=torch.float64)
    else:
        y = torch.randint(0, classes, (n,), generator=g)
    cut = draw(st.integers(0, n - 1))
    return model, X, y, loss, chosen, cut


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains())
def test_random_chains_match_autograd(case):
    """Any small chain, loss, parameter subset and batch split: H products, to_dense and G products equal autograd's."""
    model, X, y, loss, chosen, cut = case
    data = (X, y) if cut == 0 else [(X[:cut], y[:cut]), (X[cut:], y[cut:])]
    op = HessianOperator(model, loss, data, params=chosen, chunk_size=3)
    assert op.mode == "chain", op.engine_note
    H = reference_hessian(model, loss, X, y, param_names=op.param_names)
    scale = max(float(H.abs().max()), 1e-300)
    V = torch.randn(H.shape[0], 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(op.matmat(V), H @ V, rtol=0, atol=1e-10 * scale * (1 + float(V.abs().max())))
    torch.testing.assert_close(op.to_dense(), H, rtol=0, atol=1e-12 * scale)
    from spectra.operators.ggn import GGNOperator

    G = GGNOperator(model, loss, data, params=chosen, chunk_size=3)
    assert G.mode == "chain"
    ref = dense_ggn(model, loss, [(X, y)], G.param_names)
    torch.testing.assert_close(G.matmat(V), ref @ V, rtol=0, atol=1e-10 * scale * (1 + float(V.abs().max())))
