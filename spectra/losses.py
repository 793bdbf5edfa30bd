"""Loss functions the Hessian is taken of.

A loss maps ``(output, target)`` of one batch to a scalar.  spectra needs to know
its *reduction* to combine batches: for ``"mean"`` the dataset loss is
``sum_b (n_b / N) * loss_b`` (so a short last batch is not over-weighted), for
``"sum"`` it is ``sum_b loss_b``.

Losses are looked up by name in the ``losses`` registry (plugins can add
more; ``spectra list losses``); names and aliases are found without regard to
case.  Built-in names:

* ``"cross_entropy"`` (also ``"ce"``, ``"nll"``, ``"crossentropy"``): softmax +
  negative log-likelihood, mean over samples.  Targets are integer class labels
  in ``[0, C)``.
* ``"mse"``: ``mean_i 0.5 * ||f(x_i) - y_i||^2`` (half the squared error summed
  over outputs, averaged over samples).  Integer class labels are one-hot
  encoded first, as in the paper's MSE experiment.

>>> import torch
>>> loss = resolve_loss("mse")
>>> float(loss(torch.zeros(2, 3), torch.tensor([0, 2])))
0.5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
import torch.nn.functional as F

from .errors import InvalidInputError

LossLike = Union[str, "Loss", Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class Loss:
    """A named loss with a declared reduction over the samples of a batch."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    reduction: str = "mean"

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.fn(output, target)

    def check_target(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Raise :class:`InvalidInputError` if ``target`` cannot go with ``output``."""
        checker = _CHECKERS.get(self.name)
        if checker is not None:
            checker(output, target)


def _check_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> None:
    if output.ndim != 2:
        raise InvalidInputError(
            f"cross_entropy needs model outputs of shape [batch, classes]; got {tuple(output.shape)}"
        )
    if target.is_floating_point():
        raise InvalidInputError(
            f"cross_entropy needs integer class labels; got float targets of dtype {target.dtype} "
            "(use loss='mse' for regression targets)"
        )
    if target.shape != output.shape[:1]:
        raise InvalidInputError(
            f"cross_entropy needs one label per sample: outputs {tuple(output.shape)}, "
            f"labels {tuple(target.shape)}"
        )
    num_classes = output.shape[1]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise InvalidInputError(
            f"labels out of range: the model has {num_classes} outputs, so labels must lie in "
            f"[0, {num_classes - 1}]; got labels in [{int(target.min())}, {int(target.max())}]"
        )


def _one_hot_like(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.is_floating_point() or target.dtype == torch.bool:
        return target.to(output.dtype)
    return F.one_hot(target.long(), num_classes=output.shape[-1]).to(output.dtype)


def _check_mse(output: torch.Tensor, target: torch.Tensor) -> None:
    if not target.is_floating_point():
        if output.ndim != 2:
            raise InvalidInputError(
                f"mse with integer labels needs outputs of shape [batch, classes]; got {tuple(output.shape)}"
            )
        _check_cross_entropy(output, target)  # same label rules
        return
    if target.shape != output.shape:
        raise InvalidInputError(
            f"mse needs targets shaped like the outputs: outputs {tuple(output.shape)}, "
            f"targets {tuple(target.shape)}"
        )


def _cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, target.long(), reduction="mean")


def _mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    diff = output - _one_hot_like(output, target)
    return 0.5 * diff.pow(2).reshape(diff.shape[0], -1).sum(dim=1).mean()


_CHECKERS = {"cross_entropy": _check_cross_entropy, "mse": _check_mse}
BUILTIN_LOSSES = {
    "cross_entropy": Loss("cross_entropy", _cross_entropy, "mean"),
    "mse": Loss("mse", _mse, "mean"),
}
# Other names of the built-in losses (registered with them, found without regard to case).
LOSS_ALIASES = {"ce": "cross_entropy", "nll": "cross_entropy", "crossentropy": "cross_entropy"}


def resolve_loss(loss: LossLike, reduction: str = "mean") -> Loss:
    """Turn a name, a :class:`Loss` or a callable into a :class:`Loss`.

    A plain callable is assumed to average over the samples of its batch
    (``reduction="mean"``); pass ``reduction="sum"`` if it sums.
    """
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        from . import plugins

        entry = plugins.get_entry("losses", loss)  # registered by plugins; names and aliases in any case
        return entry.factory if isinstance(entry.factory, Loss) else Loss(entry.name, entry.factory, "mean")
    if callable(loss):
        if reduction not in ("mean", "sum"):
            raise InvalidInputError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
        name = getattr(loss, "__name__", type(loss).__name__)
        return Loss(f"callable:{name}", loss, reduction)
    raise InvalidInputError(
        f"loss must be 'cross_entropy', 'mse' or a callable (output, target) -> scalar; got {type(loss).__name__}"
    )
