"""Per-unit loss gradients w.r.t. the outputs, and targets drawn from the model's predictive distribution.

What the Fisher matrices (:mod:`spectra.operators.fisher`) are made of.  A
*unit* is what the loss averages over (:mod:`spectra.losses`): a sample, or,
for a token loss, a target token that is not ``ignore_index``.

* :func:`unit_output_gradients`: ``s_u = d loss_u / d f_u``, each unit's own
  loss w.r.t. its own outputs (a sample's loss is that of a batch holding it
  alone; a token's is its own cross-entropy or squared error);
* :func:`draw_targets`: ``mc_samples`` targets per unit from the distribution
  the loss is the negative log-likelihood of (cross-entropy: categorical on the
  softmax; MSE ``1/2 ||f - y||^2``: Gaussian with mean ``f`` and unit
  covariance); ignored tokens get ``ignore_index``;
* :func:`sampled_output_gradients`: the gradients of the drawn targets, ignored
  units set to zero.

The draws of sample ``i`` depend only on the seed, ``i``'s index in the whole
dataset and the position within the sample (:func:`uniforms`, a counter-based
generator): not on how the data is cut into batches or ranks, nor on how far a
batch is padded.

>>> import torch
>>> from spectra.losses import resolve_loss
>>> f = torch.tensor([[0.0, 0.0], [2.0, -1.0]], dtype=torch.float64)
>>> unit_output_gradients(resolve_loss("mse"), f, torch.tensor([0, 1])).tolist()
[[-1.0, 0.0], [2.0, -2.0]]
>>> draw_targets(resolve_loss("cross_entropy"), f, torch.tensor([0, 1]), seed=0, first_row=0, mc_samples=3).shape
torch.Size([2, 3])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import InvalidInputError
from ..losses import CrossEntropy, Loss, MeanSquaredError

__all__ = ["LIKELIHOODS", "UnitLayout", "draw_targets", "likelihood_of", "sampled_output_gradients",
           "unit_layout", "unit_output_gradients", "uniforms"]

#: The built-in losses that are a negative log-likelihood, and of what distribution.
LIKELIHOODS = {"cross_entropy": "categorical (softmax of the outputs)",
               "mse": "Gaussian (mean: the outputs, covariance: identity)"}
# Losses whose summed form is a sum of per-unit losses, each of its own unit's outputs only.
_PER_UNIT_LOSSES = {CrossEntropy: "cross_entropy", MeanSquaredError: "mse"}
_MANTISSA_BITS = 53
_INDEX_BITS = 32  # a row's draws are numbered below 2**32; the row index fills the bits above
# SplitMix64 (Steele, Lea, Flood 2014): its increment and its two finalising multipliers
_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class UnitLayout:
    """How a batch's outputs ``[n, *out]`` split into units: ``[n, U, D]`` once the unit axes come first.

    ``order``: the output's axes as batch, unit axes, then a unit's own axes;
    ``units`` (``U``): units per sample; ``width`` (``D``): outputs per unit.
    """

    order: tuple[int, ...]
    shape: tuple[int, ...]  # the output's shape in ``order``
    units: int
    width: int

    def to_units(self, t: torch.Tensor) -> torch.Tensor:
        """``[*lead, n, *out] -> [*lead, n, U, D]``."""
        lead = t.ndim - len(self.order)
        moved = t.permute(*range(lead), *(lead + a for a in self.order))
        return moved.reshape(*t.shape[:lead], self.shape[0], self.units, self.width)

    def from_units(self, t: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_units`."""
        lead = t.ndim - 3
        moved = t.reshape(*t.shape[:lead], *self.shape)
        inverse = [self.order.index(a) for a in range(len(self.order))]
        return moved.permute(*range(lead), *(lead + a for a in inverse))


def unit_layout(loss: Loss, output: torch.Tensor, target: torch.Tensor) -> UnitLayout:
    """The :class:`UnitLayout` of ``output`` under ``loss`` (``U = 1`` when the units are samples)."""
    unit_axes = tuple(loss.unit_axes(output, target))
    own = tuple(a for a in range(1, output.ndim) if a not in unit_axes)
    order = (0, *unit_axes, *own)
    shape = tuple(output.shape[a] for a in order)
    return UnitLayout(order, shape, math.prod(shape[1 : 1 + len(unit_axes)]), math.prod(shape[1 + len(unit_axes):]))


def unit_output_gradients(loss: Loss, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``d loss_u / d f_u`` for every unit ``u``, shaped like ``output`` (ignored units: zero).

    For the built-in losses this is the gradient of their summed form w.r.t. the
    outputs (each unit's loss depends on its own outputs only); for any other
    loss, whose units are samples, the gradient of ``loss(f_i[None], y_i[None])``.
    A loss of another kind that counts tokens is refused: spectra cannot tell
    its tokens' own losses apart.
    """
    output = output.detach()
    if type(loss) in _PER_UNIT_LOSSES:
        summed = replace(loss, reduction="sum")
        o = output.requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(summed(o, target), o)[0]
    if loss.unit(target) != "sample":
        raise InvalidInputError(
            f"the Fisher needs each unit's own loss; the loss {loss.name!r} counts {loss.unit(target)}s, and "
            "spectra knows the per-token losses of the built-in 'cross_entropy' and 'mse' only: use one of "
            "them, or matrix='ggn'"
        )
    return _per_sample_gradients(loss, output, target)


def _per_sample_gradients(loss: Loss, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from torch.func import grad, vmap

    def one(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss(f[None], y[None])

    try:
        return vmap(grad(one))(output, target)
    except RuntimeError:  # a loss without batching rules: one sample at a time
        rows = []
        for f, y in zip(output, target):
            f = f.clone().requires_grad_(True)
            with torch.enable_grad():
                rows.append(torch.autograd.grad(one(f, y), f)[0])
        return torch.stack(rows)


def likelihood_of(loss: Loss) -> str:
    """The name of the distribution family of a built-in loss spectra can sample from; else refuse."""
    kind = _PER_UNIT_LOSSES.get(type(loss))
    if kind is None:
        raise InvalidInputError(
            f"the Monte-Carlo Fisher draws targets from the distribution the loss is the negative "
            f"log-likelihood of, which spectra knows for {', '.join(map(repr, LIKELIHOODS))}; the loss "
            f"{loss.name!r} is not one of them: use matrix='empirical_fisher' or 'ggn'"
        )
    return kind


def uniforms(seed: int, first_row: int, rows: int, per_row: int) -> np.ndarray:
    """``[rows, per_row]`` numbers uniform in ``(0, 1)``; entry ``(r, j)`` depends only on ``seed``, ``first_row + r`` and ``j``.

    A counter-based generator: the counter ``(row, j)`` goes through two rounds
    of SplitMix64's finaliser keyed by the seed, so any entry can be computed
    alone, and a row's first ``j`` numbers do not depend on ``per_row``.

    >>> bool((uniforms(4, 2, 3, 5)[1:, :2] == uniforms(4, 3, 2, 2)).all())
    True
    """
    if per_row >= 2 ** _INDEX_BITS or first_row + rows >= 2 ** (64 - _INDEX_BITS):
        raise InvalidInputError(f"too many draws for the Monte-Carlo Fisher: {rows} rows of {per_row}")
    key_1, key_2 = np.random.SeedSequence(seed).generate_state(2, np.uint64)
    row = np.arange(first_row, first_row + rows, dtype=np.uint64)[:, None]
    counter = (row << np.uint64(_INDEX_BITS)) | np.arange(per_row, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
        bits = _mix(_mix(counter * _GOLDEN_GAMMA + key_1) ^ key_2)
    # the top 53 bits, centred in their interval: never exactly 0 or 1
    return ((bits >> np.uint64(64 - _MANTISSA_BITS)).astype(np.float64) + 0.5) / 2.0 ** _MANTISSA_BITS


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def draw_targets(loss: Loss, output: torch.Tensor, target: torch.Tensor, *, seed: int, first_row: int,
                 mc_samples: int) -> torch.Tensor:
    """``mc_samples`` targets per unit from the model's predictive distribution: ``[n, mc_samples, ...]``.

    Cross-entropy: class labels shaped like ``target`` after the sample axis
    (``[n, M]`` for ``[n, C]`` outputs, ``[n, M, L]`` for tokens), ``ignore_index``
    where ``target`` has it; MSE: float targets ``[n, M, *output_shape[1:]]``.
    ``target`` (the data's) only says which units are ignored.
    """
    kind = likelihood_of(loss)
    output = output.detach()
    layout = unit_layout(loss, output, target)
    n, U, D, M = output.shape[0], layout.units, layout.width, mc_samples
    flat = layout.to_units(output)  # [n, U, D]
    if kind == "cross_entropy":
        u = torch.as_tensor(uniforms(seed, first_row, n, U * M), dtype=output.dtype, device=output.device)
        cdf = torch.softmax(flat, dim=-1).cumsum(dim=-1)  # [n, U, C]
        labels = torch.searchsorted(cdf, u.reshape(n, U, M), right=True)  # the first class whose cdf exceeds u
        labels = labels.clamp_(max=D - 1).transpose(1, 2).reshape(n, M, *target.shape[1:])
        counted = loss.counted(target)
        if counted is not None:
            labels = labels.masked_fill(~counted.unsqueeze(1), loss.ignore_index)
        return labels
    u = torch.as_tensor(uniforms(seed, first_row, n, U * M * D), dtype=torch.float64)
    noise = torch.special.ndtri(u).to(device=output.device, dtype=output.dtype).reshape(n, U, M, D)
    drawn = (flat.unsqueeze(2) + noise).permute(2, 0, 1, 3)  # [M, n, U, D]
    return layout.from_units(drawn).transpose(0, 1)


def sampled_output_gradients(loss: Loss, output: torch.Tensor, target: torch.Tensor, *, seed: int,
                             first_row: int, mc_samples: int) -> torch.Tensor:
    """``[n, mc_samples, *output_shape[1:]]``: each unit's loss gradient at each of its drawn targets."""
    drawn = draw_targets(loss, output, target, seed=seed, first_row=first_row, mc_samples=mc_samples)
    n, M = output.shape[0], mc_samples
    repeated = output.detach().unsqueeze(1).expand(n, M, *output.shape[1:]).reshape(n * M, *output.shape[1:])
    s = unit_output_gradients(loss, repeated, drawn.reshape(n * M, *drawn.shape[2:]))
    s = s.reshape(n, M, *output.shape[1:])
    counted = loss.counted(target)
    if counted is None:  # float MSE targets count every unit
        return s
    layout = unit_layout(loss, output, target)
    mask = counted.reshape(n, layout.units, 1).expand(n, layout.units, layout.width).to(s.dtype)
    return s * layout.from_units(mask).unsqueeze(1)
