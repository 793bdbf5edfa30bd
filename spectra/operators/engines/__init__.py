"""Product engines: how a curvature matrix's per-batch products are computed.

=========  ==================================================  =====================================
``mode``   engine                                              used
=========  ==================================================  =====================================
chain      closed forms for Linear/activation ``Sequential``   ``"auto"`` where it applies
           s under cross-entropy or MSE (:mod:`.chain`)
reverse    autograd's double backward (:mod:`.reverse`)        ``"auto"`` everywhere else
forward    ``torch.func`` forward-over-reverse (:mod:`.forward`)  only when asked for
=========  ==================================================  =====================================

:func:`select_engine` makes the choice; :func:`fall_back` handles a chain that
turned out not to serve (its products disagree with autograd's, or a batch is
not ``[batch, features]``): ``"auto"`` switches to ``"reverse"`` and records
why, an explicit ``mode="chain"`` raises, and so does a data-parallel
operator (a switch on one rank alone would desynchronise the ranks).

>>> import torch
>>> from spectra.operators.ggn import GGNOperator
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout(0.1)).double()
>>> X, y = torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,))
>>> G = GGNOperator(model, "cross_entropy", (X, y))
>>> G.engine.name, G.engine_note
('reverse', '1 (Dropout) in the chain')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import InvalidInputError
from ..layer_chain import UnsupportedChain
from .base import HESSIAN, JACOBIAN, LOSS_HESSIAN, Block, ForwardPass, ProductEngine
from .chain import ChainEngine, ChainMismatch
from .forward import ForwardEngine
from .reverse import ReverseEngine

if TYPE_CHECKING:
    from ..curvature import CurvatureOperator

__all__ = ["Block", "ChainMismatch", "ENGINES", "ForwardPass", "HESSIAN", "JACOBIAN", "LOSS_HESSIAN", "MODES",
           "ProductEngine", "fall_back", "select_engine"]

ENGINES: dict[str, type[ProductEngine]] = {"chain": ChainEngine, "reverse": ReverseEngine, "forward": ForwardEngine}
#: What ``mode=`` accepts.
MODES = ("auto", *ENGINES)


def select_engine(op: "CurvatureOperator", mode: str) -> tuple[ProductEngine, str | None]:
    """The engine for ``mode`` and, when ``"auto"`` could not use the chain products, why not."""
    if mode not in MODES:
        raise InvalidInputError(f"mode must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    if mode in ("reverse", "forward"):
        return ENGINES[mode](op), None
    try:
        return ChainEngine(op), None
    except UnsupportedChain as exc:
        return fall_back(op, mode, str(exc)), str(exc)


def fall_back(op: "CurvatureOperator", mode: str, reason: str, disagreement: bool = False,
              allowed: bool = True) -> ProductEngine:
    """The reverse engine instead of the chain one (``"auto"``), or the refusal (``"chain"``, data-parallel)."""
    if mode == "chain":
        raise InvalidInputError(f"mode='chain' cannot be used here: {reason}; use mode='auto' or 'reverse'")
    if disagreement and not allowed:
        raise InvalidInputError(f"the chain products cannot be used here: {reason}; pass mode='reverse'")
    return ReverseEngine(op)
