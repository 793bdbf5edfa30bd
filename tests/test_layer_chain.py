"""One recogniser of Linear/activation chains: the chain engine and the many-inits code agree on what a chain is.

Each row is a model and whether it is a chain (or a fragment of the reason it
is not).  The parser, the chain product engine (``mode="auto"`` picks it, or
records the reason) and the vectorised many-inits code (``StackedNet.chain``)
must all give the same answer.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spectra.experiments import _batched as bt
from spectra.operators.hessian import HessianOperator
from spectra.operators.layer_chain import UnsupportedChain, parse_chain


class _Overridden(nn.Sequential):
    def forward(self, x):  # not a chain: adds its input back
        return super().forward(x) + x


class _Custom(nn.Module):  # Linear/activation leaves, but not a Sequential
    def __init__(self):
        super().__init__()
        self.a, self.act, self.b = nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


def _hooked() -> nn.Module:
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    net[2].register_forward_hook(lambda m, i, o: 2 * o)
    return net


_shared = nn.Linear(3, 3)

# (id, model builder, input shape, None for a chain or a fragment of why it is not one)
ROWS = [
    ("mlp", lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3)), (3,), None),
    ("flatten-first", lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.GELU(), nn.Linear(4, 3)), (2, 3), None),
    ("activation-first", lambda: nn.Sequential(nn.Tanh(), nn.Linear(3, 3)), (3,), None),
    ("nested", lambda: nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.Sigmoid()), nn.Linear(4, 3)), (3,), None),
    ("no-bias", lambda: nn.Sequential(nn.Linear(3, 4, bias=False), nn.Softplus(), nn.Linear(4, 3)), (3,), None),
    ("conv", lambda: nn.Sequential(nn.Conv1d(1, 1, 2), nn.Flatten(), nn.Linear(2, 3)), (1, 3), "Conv1d"),
    ("dropout", lambda: nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.2), nn.Linear(4, 3)), (3,), "Dropout"),
    ("flatten-late", lambda: nn.Sequential(nn.Linear(3, 3), nn.Flatten(), nn.Linear(3, 3)), (3,), "Flatten"),
    ("not-sequential", _Custom, (3,), "not a Sequential"),
    ("overridden-forward", lambda: _Overridden(nn.Linear(3, 3)), (3,), "overrides Sequential.forward"),
    ("hooked", _hooked, (3,), "forward hooks"),
    ("shared-layer", lambda: nn.Sequential(_shared, nn.Tanh(), _shared), (3,), "shares a parameter"),
]


@pytest.mark.parametrize("name,build,shape,why", ROWS, ids=[r[0] for r in ROWS])
def test_parser_engine_and_many_inits_agree(name, build, shape, why):
    torch.manual_seed(0)
    model = build().double()
    if why is None:
        assert parse_chain(model).linears
    else:
        with pytest.raises(UnsupportedChain, match=why):
            parse_chain(model)
    assert (bt.StackedNet(model).chain is not None) == (why is None)
    X = torch.randn(7, *shape, dtype=torch.float64)
    op = HessianOperator(model, "cross_entropy", (X, torch.randint(0, 3, (7,))))
    assert op.engine.name == ("chain" if why is None else "reverse")
    assert why is None or why in op.engine_note


def test_a_chain_needs_a_linear_layer():
    with pytest.raises(UnsupportedChain, match="no Linear layer"):
        parse_chain(nn.Sequential(nn.Flatten(), nn.Tanh()))
