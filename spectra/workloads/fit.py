"""A short Adam training loop over batches of any convention, with an honest record of where it stopped.

Adam does not settle at a critical point in a few hundred steps; the record
says so: ``converged`` is true only when the gradient of the full-data loss
(the mean over all units, as spectra's operators define it) has norm at most
``grad_tol`` at the end.

>>> import torch
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Linear(2, 2)
>>> X, y = torch.randn(20, 2), torch.randint(0, 2, (20,))
>>> record = fit(model, [(X, y)], steps=5, lr=0.1)
>>> record.steps, record.converged, record.final_loss < record.initial_loss
(5, False, True)
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..batches import BatchReader
from ..errors import NonFiniteError
from ..losses import LossLike, resolve_loss

__all__ = ["FitRecord", "fit", "full_loss_and_gradient"]


@dataclass
class FitRecord:
    """Where training stopped: losses, the full-data gradient norm, and whether that is a critical point."""

    optimizer: str
    lr: float
    steps: int
    initial_loss: float
    final_loss: float
    final_grad_norm: float
    grad_tol: float
    converged: bool
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read(model: nn.Module, batches: Sequence[Any], loss: Any, reader: BatchReader | None) -> tuple:
    """The bound reader and every batch as ``(inputs, target, units)`` in the model's dtype."""
    reader = (reader or BatchReader()).bind(model, loss)
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    device = next(model.parameters()).device
    out = []
    for raw in batches:
        inputs, target = reader.to(*reader.split(raw), device, dtype)
        out.append((inputs, target, reader.count(inputs, target)))
    return reader, out


def full_loss_and_gradient(model: nn.Module, batches: Sequence[Any], loss: LossLike = "cross_entropy",
                           reader: BatchReader | None = None) -> tuple[float, float]:
    """Mean loss over all units of ``batches`` and the norm of its gradient (model in eval mode)."""
    loss_fn = resolve_loss(loss)
    reader, prepared = _read(model, batches, loss_fn, reader)
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(units for _, _, units in prepared)
    grads = [torch.zeros_like(p) for p in params]
    value = 0.0
    was_training = model.training
    model.eval()
    try:
        for inputs, target, units in prepared:
            if units == 0:
                continue
            weight = units / total if loss_fn.reduction == "mean" else 1.0
            batch_loss = weight * loss_fn(reader.call(model, inputs), target)
            for g, gi in zip(grads, torch.autograd.grad(batch_loss, params, allow_unused=True)):
                if gi is not None:
                    g += gi
            value += float(batch_loss.detach())
    finally:
        model.train(was_training)
    return value, float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


def fit(model: nn.Module, batches: Sequence[Any], loss: LossLike = "cross_entropy", *,
        reader: BatchReader | None = None, steps: int = 300, lr: float = 3e-3, grad_tol: float = 1e-3,
        seed: int = 0) -> FitRecord:
    """Train ``model`` with Adam for ``steps`` minibatch steps, cycling through ``batches`` in order.

    The model trains in train mode (BatchNorm on batch statistics) and is left
    in the mode it had.  The record's losses and gradient norm are those of
    the full-data loss in eval mode, before and after training.
    """
    torch.manual_seed(seed)
    loss_fn = resolve_loss(loss)
    reader, prepared = _read(model, batches, loss_fn, reader)
    start = time.perf_counter()
    initial, _ = full_loss_and_gradient(model, batches, loss_fn, reader)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    was_training = model.training
    model.train()
    try:
        for step in range(steps):
            inputs, target, units = prepared[step % len(prepared)]
            if units == 0:
                continue
            optimizer.zero_grad()
            value = loss_fn(reader.call(model, inputs), target)
            if not math.isfinite(float(value.detach())):
                raise NonFiniteError(f"training diverged at step {step}: loss {float(value.detach())} (lower lr)")
            value.backward()
            optimizer.step()
    finally:
        model.train(was_training)
    final, grad_norm = full_loss_and_gradient(model, batches, loss_fn, reader)
    return FitRecord("adam", lr, steps, initial, final, grad_norm, grad_tol, grad_norm <= grad_tol,
                     time.perf_counter() - start)
