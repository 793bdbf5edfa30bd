"""The one recogniser of Linear/activation chains (the paper's MLPs).

Two closed-form paths need to know that a model is an ``nn.Sequential`` of
``Linear`` layers and elementwise activations: the chain product engine
(:mod:`spectra.operators.engines.chain`) and the vectorised many-inits code of
Figure 8 (:mod:`spectra.experiments._batched`).  :func:`parse_chain` reads the
chain off a model once, with one set of rules, or raises
:class:`UnsupportedChain` saying what is not a chain.

Rules: the model is an ``nn.Sequential`` (nested ones are opened, in the order
``forward`` runs them, repeats included) whose ``forward`` is not overridden
and that has no forward hooks; its modules are ``nn.Linear`` (exactly, with
``Parameter`` weight and bias), elementwise activations
(:data:`~spectra.operators._activations.ELEMENTWISE_ACTIVATIONS`) and at most
one ``nn.Flatten(1, -1)`` before the first Linear; no two Linear layers share
a parameter; there is at least one Linear.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
>>> [(s.kind, s.name) for s in parse_chain(net).steps]
[('flatten', '0'), ('linear', '1'), ('activation', '2'), ('linear', '3')]
>>> parse_chain(torch.nn.Conv1d(1, 1, 1))
Traceback (most recent call last):
...
spectra.operators.layer_chain.UnsupportedChain: the model is a Conv1d, not a Sequential
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ._activations import ELEMENTWISE_ACTIVATIONS

__all__ = ["ChainStep", "LayerChain", "UnsupportedChain", "parse_chain"]


class UnsupportedChain(Exception):
    """The model is not a chain the closed forms cover; the message says what is not."""


@dataclass(frozen=True)
class ChainStep:
    """One module of the chain: ``kind`` is ``"flatten"``, ``"linear"`` or ``"activation"``."""

    kind: str
    name: str
    module: nn.Module


@dataclass(frozen=True)
class LayerChain:
    """The steps of a recognised chain, in the order ``forward`` runs them."""

    steps: tuple[ChainStep, ...]

    @property
    def linears(self) -> list[ChainStep]:
        return [s for s in self.steps if s.kind == "linear"]


def parse_chain(model: nn.Module) -> LayerChain:
    """The chain of ``model``, or :class:`UnsupportedChain` saying why it is not one."""
    if not isinstance(model, nn.Sequential):
        raise UnsupportedChain(f"the model is a {type(model).__name__}, not a Sequential")
    steps: list[ChainStep] = []
    seen: set[int] = set()
    for name, m in _leaves(model, ""):
        linear_seen = any(s.kind == "linear" for s in steps)
        if type(m) is nn.Linear:
            for attr in ("weight", "bias"):
                t = getattr(m, attr)
                if t is not None and not isinstance(t, nn.Parameter):
                    raise UnsupportedChain(f"{name}.{attr} is computed (a parametrization?), not a Parameter")
            own = [id(t) for t in (m.weight, m.bias) if t is not None]
            if any(i in seen for i in own):
                raise UnsupportedChain(f"{name} shares a parameter with an earlier layer")
            seen.update(own)
            steps.append(ChainStep("linear", name, m))
        elif type(m) is nn.Flatten and not linear_seen and not any(s.kind == "flatten" for s in steps):
            if (m.start_dim, m.end_dim) != (1, -1):
                raise UnsupportedChain(f"{name} flattens dims {m.start_dim}..{m.end_dim}, not 1..-1")
            steps.append(ChainStep("flatten", name, m))
        elif type(m) in ELEMENTWISE_ACTIVATIONS:
            steps.append(ChainStep("activation", name, m))
        else:
            where = "before the first Linear" if not linear_seen else "in the chain"
            raise UnsupportedChain(f"{name or 'model'} ({type(m).__name__}) {where}")
    if not any(s.kind == "linear" for s in steps):
        raise UnsupportedChain("the model has no Linear layer")
    return LayerChain(tuple(steps))


def _leaves(module: nn.Module, where: str) -> list[tuple[str, nn.Module]]:
    """The modules a ``Sequential`` runs, in order, nested ``Sequential`` s opened."""
    if module._forward_hooks or module._forward_pre_hooks:
        raise UnsupportedChain(f"module {where or 'model'!r} has forward hooks")
    if isinstance(module, nn.Sequential):
        if type(module).forward is not nn.Sequential.forward:
            raise UnsupportedChain(f"{type(module).__name__} overrides Sequential.forward")
        out = []
        # _modules, as Sequential.forward runs them (named_children() skips a repeated module)
        for name, child in module._modules.items():
            if child is None:
                continue
            out += _leaves(child, f"{where}.{name}" if where else name)
        return out
    return [(where, module)]
