"""Which parameters an operator differentiates, and how they become one flat vector.

:func:`select_parameters` picks trainable ``(name, parameter)`` pairs;
:class:`ParameterLayout` is the one place where per-parameter tensors become a
flat vector of length ``P`` (or a block ``[P, m]``) and back, in the order the
parameters were selected.

>>> import torch
>>> model = torch.nn.Linear(2, 3)
>>> layout = ParameterLayout([p for _, p in select_parameters(model)])
>>> layout.num_params, [tuple(t.shape) for t in layout.unflatten(torch.zeros(9))]
(9, [(3, 2), (3,)])
>>> layout.flatten(layout.unflatten(torch.arange(9.0))).tolist() == list(range(9))
True
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Sequence, Union

import torch
from torch import nn

from ..errors import InvalidInputError

__all__ = ["ParamSelector", "ParameterLayout", "select_parameters"]

ParamSelector = Union[None, str, torch.Tensor, Sequence[Union[str, torch.Tensor]],
                      Callable[[str, torch.Tensor], bool]]


def select_parameters(model: nn.Module, params: ParamSelector = None) -> list[tuple[str, nn.Parameter]]:
    """Trainable ``(name, parameter)`` pairs of ``model`` chosen by ``params``.

    ``params`` may be ``None`` (all trainable), a name, a glob (``"0.*"``), a
    module prefix (``"layers.0"`` selects ``layers.0.weight`` and
    ``layers.0.bias``), the parameter tensors themselves (``[model[0].weight]``, as
    other curvature libraries take them), a list mixing those, or a predicate
    ``(name, p) -> bool``. The order is always the model's.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> [n for n, _ in select_parameters(net, "0.w*")]
    ['0.weight']
    >>> [n for n, _ in select_parameters(net, [net[0].bias, net[0].weight])]
    ['0.weight', '0.bias']
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        total = sum(1 for _ in model.parameters())
        raise InvalidInputError(
            "the model has no trainable parameters"
            + (f" ({total} parameter tensors, all with requires_grad=False)" if total else "")
        )
    if params is None:
        return named
    if callable(params) and not isinstance(params, str):
        chosen = [(n, p) for n, p in named if params(n, p)]
    else:
        patterns = [params] if isinstance(params, (str, torch.Tensor)) else list(params)
        chosen = []
        for pattern in patterns:
            hits = _matching(named, pattern, model)
            if not hits:
                raise InvalidInputError(
                    f"no trainable parameter matches {pattern!r}; trainable parameters: "
                    + ", ".join(n for n, _ in named)
                )
            chosen.extend(h for h in hits if all(h[0] != c[0] for c in chosen))
        order = {n: i for i, (n, _) in enumerate(named)}
        chosen.sort(key=lambda item: order[item[0]])
    if not chosen:
        raise InvalidInputError("the parameter selection chose no trainable parameter")
    return chosen


def _matching(named: list[tuple[str, nn.Parameter]], pattern: object,
              model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The pairs one selector entry picks: a tensor by identity, a string by name, prefix or glob."""
    if isinstance(pattern, torch.Tensor):
        hits = [(n, p) for n, p in named if p is pattern]
        if not hits:
            frozen = any(p is pattern for p in model.parameters())
            raise InvalidInputError(
                f"a selected tensor of shape {tuple(pattern.shape)} is "
                + ("a parameter of the model with requires_grad=False" if frozen
                   else "not a parameter of the model")
                + "; pass the model's own parameters (or their names)")
        return hits
    if not isinstance(pattern, str):
        raise InvalidInputError(
            f"params entries must be parameter names, globs or the model's parameter tensors; "
            f"got {type(pattern).__name__}")
    return [(n, p) for n, p in named
            if n == pattern or n.startswith(pattern + ".") or fnmatch.fnmatchcase(n, pattern)]


class ParameterLayout:
    """Flat-vector view of a list of parameter tensors (their shapes, sizes and offsets)."""

    def __init__(self, params: Sequence[torch.Tensor]):
        self.shapes = [p.shape for p in params]
        self.numels = [p.numel() for p in params]
        self.offsets = [0]
        for n in self.numels:
            self.offsets.append(self.offsets[-1] + n)
        self.num_params = self.offsets[-1]

    def flatten(self, tensors: Iterable[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors (shapes as the parameters) into one vector of length P."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def flatten_params(self, params: Iterable[torch.Tensor]) -> torch.Tensor:
        """The parameters' current values as one detached vector of length P."""
        return self.flatten(p.detach() for p in params)

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat vector into per-parameter views, or a block ``[P, m]`` into pieces ``[m, *shape]``."""
        pieces = torch.split(vector, self.numels, dim=0)
        if vector.ndim == 1:
            return [piece.view(shape) for piece, shape in zip(pieces, self.shapes)]
        m = vector.shape[1]
        return [piece.T.reshape(m, *shape) for piece, shape in zip(pieces, self.shapes)]

    def flatten_block(self, blocks: Sequence[torch.Tensor | None], m: int, like: torch.Tensor) -> torch.Tensor:
        """Per-parameter blocks ``[m, *shape]`` (``None``: zero) as one block ``[P, m]`` (dtype/device of ``like``)."""
        parts = [like.new_zeros(m, n) if b is None else b.reshape(m, -1) for b, n in zip(blocks, self.numels)]
        return torch.cat(parts, dim=1).T

    def spans(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of each parameter in the flat vector."""
        return list(zip(self.offsets, self.offsets[1:]))
