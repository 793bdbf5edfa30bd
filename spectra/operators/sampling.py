"""Per-sample loss gradients w.r.t. the outputs, and targets drawn from the model's predictive distribution.

What the Fisher matrices (:mod:`spectra.operators.fisher`) are made of:

* :func:`per_sample_output_gradients`: ``s_i = d loss(f_i, y_i) / d f_i``, each
  sample's own loss (the loss of a batch of that sample alone);
* :func:`draw_targets`: ``mc_samples`` targets per sample from the
  distribution the loss is the negative log-likelihood of (cross-entropy:
  categorical on the softmax; MSE ``1/2 ||f - y||^2``: Gaussian with mean
  ``f`` and unit covariance).  The draws of sample ``i`` depend only on the
  seed and ``i``'s index in the whole dataset (:func:`uniforms`, a
  counter-based generator), not on how the data is cut into batches or ranks.

>>> import torch
>>> from spectra.losses import resolve_loss
>>> f = torch.tensor([[0.0, 0.0], [2.0, -1.0]], dtype=torch.float64)
>>> per_sample_output_gradients(resolve_loss("mse"), f, torch.tensor([0, 1])).tolist()
[[-1.0, 0.0], [2.0, -2.0]]
>>> draw_targets(resolve_loss("cross_entropy"), f, seed=0, first_row=0, mc_samples=3).shape
torch.Size([2, 3])
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InvalidInputError
from ..losses import BUILTIN_LOSSES, Loss

__all__ = ["LIKELIHOODS", "draw_targets", "per_sample_output_gradients", "uniforms"]

#: The built-in losses that are a negative log-likelihood, and of what distribution.
LIKELIHOODS = {"cross_entropy": "categorical (softmax of the outputs)",
               "mse": "Gaussian (mean: the outputs, covariance: identity)"}
_WORDS_PER_COUNTER = 4  # numpy's Philox makes four 64-bit words per counter step
_MANTISSA_BITS = 53


def per_sample_output_gradients(loss: Loss, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``d loss(f_i[None], y_i[None]) / d f_i`` for every sample ``i``, shaped like ``output``."""
    from torch.func import grad, vmap

    output = output.detach()

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
    """The built-in loss's name if it is a negative log-likelihood spectra can sample from; else refuse."""
    kind = next((name for name, builtin in BUILTIN_LOSSES.items() if loss is builtin), None)
    if kind not in LIKELIHOODS:
        raise InvalidInputError(
            f"the Monte-Carlo Fisher draws targets from the distribution the loss is the negative "
            f"log-likelihood of, which spectra knows for {', '.join(map(repr, LIKELIHOODS))}; the loss "
            f"{loss.name!r} is not one of them: use matrix='empirical_fisher' or 'ggn'"
        )
    return kind


def uniforms(seed: int, first_row: int, rows: int, per_row: int) -> np.ndarray:
    """``[rows, per_row]`` numbers uniform in ``(0, 1)``; row ``r`` depends only on ``seed`` and ``first_row + r``."""
    counters = math.ceil(per_row / _WORDS_PER_COUNTER)  # counter steps reserved for each row
    key = np.random.SeedSequence(seed).generate_state(2, np.uint64)
    bits = np.random.Philox(key=key)
    bits.advance(first_row * counters)
    raw = bits.random_raw(rows * counters * _WORDS_PER_COUNTER).reshape(rows, -1)[:, :per_row]
    # the top 53 bits, centred in their interval: never exactly 0 or 1
    return ((raw >> np.uint64(64 - _MANTISSA_BITS)).astype(np.float64) + 0.5) / 2.0 ** _MANTISSA_BITS


def draw_targets(loss: Loss, output: torch.Tensor, *, seed: int, first_row: int, mc_samples: int) -> torch.Tensor:
    """``mc_samples`` targets per sample from the model's predictive distribution: ``[n, mc_samples, ...]``.

    Cross-entropy: class labels ``[n, M]``; MSE: float targets ``[n, M, *output_shape[1:]]``.
    """
    kind = likelihood_of(loss)
    output = output.detach()
    n = output.shape[0]
    if kind == "cross_entropy":
        u = torch.as_tensor(uniforms(seed, first_row, n, mc_samples), dtype=output.dtype, device=output.device)
        cdf = torch.softmax(output, dim=1).cumsum(dim=1)
        labels = torch.searchsorted(cdf, u, right=True)  # the first class whose cdf exceeds u
        return labels.clamp_(max=output.shape[1] - 1)
    width = output[0].numel()
    u = torch.as_tensor(uniforms(seed, first_row, n, mc_samples * width), dtype=torch.float64)
    noise = torch.special.ndtri(u).to(device=output.device, dtype=output.dtype)
    return output.unsqueeze(1) + noise.reshape(n, mc_samples, *output.shape[1:])
