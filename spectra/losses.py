"""Loss functions the Hessian is taken of, and the units they average over.

A loss maps ``(output, target)`` of one batch to a scalar.  spectra needs to
know two more things to combine batches: its *reduction* and how many *units*
a batch holds.  For ``reduction="mean"`` the dataset loss is the mean over all
units of the dataset, ``sum_b (n_b / N) * loss_b`` with ``n_b`` the units of
batch ``b`` (so a short last batch, or a batch with more padding, is not
over-weighted); for ``"sum"`` it is ``sum_b loss_b``.  A unit is a sample, or,
for a token loss, a target token that is not ``ignore_index``.

Built-in names (also as factories with options: :func:`cross_entropy`, :func:`mse`):

* ``"cross_entropy"``: softmax + negative log-likelihood, averaged over units.
  Outputs ``[N, C]`` with labels ``[N]``, or token logits ``[N, L, V]`` (the
  Hugging Face layout) with labels ``[N, L]``, or ``[N, C, L]`` (torch's layout)
  where the shapes say which axis holds the classes.  Labels equal to
  ``ignore_index`` (-100, as in torch and Hugging Face) are not counted.
* ``"mse"``: ``mean over units of 0.5 * ||f - y||^2`` (half the squared error
  summed over a unit's outputs).  Integer labels are one-hot encoded first, as
  in the paper's MSE experiment, with the same shapes and ``ignore_index`` as
  cross-entropy; float targets are shaped like the outputs and each sample is
  a unit (``unit_dims=2``: each ``[N, L]`` position).

``reduction`` is honoured for every loss: ``resolve_loss("cross_entropy",
"sum")`` sums over units.  A callable ``(output, target) -> scalar`` is taken to
average over its batch's samples (``target.shape[0]``) unless told it sums.

>>> import torch
>>> loss = resolve_loss("mse")
>>> float(loss(torch.zeros(2, 3), torch.tensor([0, 2])))
0.5
>>> ce = resolve_loss("cross_entropy")
>>> labels = torch.tensor([[1, 2, -100], [0, -100, -100]])  # ragged padding
>>> ce.count(labels), float(ce(torch.zeros(2, 3, 4), labels)) == float(torch.log(torch.tensor(4.)))
(3, True)
>>> resolve_loss("cross_entropy", "sum").reduction
'sum'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Union

import torch
import torch.nn.functional as F

from .errors import InvalidInputError

LossLike = Union[str, "Loss", Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]

#: Labels equal to this are ignored by the built-in losses by default (torch's and Hugging Face's value).
IGNORE_INDEX = -100
REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise InvalidInputError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
    return reduction


@dataclass(frozen=True)
class Loss:
    """A loss ``(output, target) -> scalar`` with a declared reduction over the units of a batch.

    This base class wraps a plain callable: it averages (or sums) over the
    batch's samples, ``target.shape[0]`` of them.  The built-in losses are
    subclasses that also check targets and count tokens.
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    reduction: str = "mean"

    def __call__(self, output: torch.Tensor, target: Any) -> torch.Tensor:
        return self.fn(output, target)

    def check_target(self, output: torch.Tensor, target: Any) -> None:
        """Raise :class:`InvalidInputError` if ``target`` cannot go with ``output`` (no check for a callable)."""

    def count(self, target: Any) -> int:
        """How many units (samples) the batch with this target holds."""
        if isinstance(target, torch.Tensor) and target.ndim > 0:
            return int(target.shape[0])
        raise InvalidInputError(
            f"cannot count the samples of a batch whose target is a {type(target).__name__}; "
            "tell spectra how many units each batch holds: BatchReader(units=...) (spectra.batches)"
        )

    def unit(self, target: Any) -> str:
        """What one unit of the batch with this target is: ``"sample"`` or ``"token"``."""
        return "sample"

    def unit_axes(self, output: torch.Tensor, target: Any) -> tuple[int, ...]:
        """The axes of ``output`` besides the batch axis that index units (a sample's tokens); ``()``: samples.

        The other non-batch axes hold one unit's outputs (its logits, its vector).
        """
        return ()

    def counted(self, target: Any) -> torch.Tensor | None:
        """Which units count, ``[N, *unit axes' sizes]`` (False: an ignored label); ``None``: all."""
        return None

    def describe(self) -> dict[str, Any]:
        """The loss's settings, for a result's provenance."""
        return {"loss": self.name, "reduction": self.reduction}


# ----------------------------------------------------------------------------- label layouts
def _class_axis(output: torch.Tensor, target: torch.Tensor, class_dim: int | None, name: str) -> int:
    """The axis of ``output`` that holds the classes, for integer labels ``target``."""
    if output.ndim < 2:
        raise InvalidInputError(
            f"{name} needs model outputs of shape [batch, classes] or [batch, length, classes]; "
            f"got {tuple(output.shape)}"
        )
    if class_dim is not None:
        axis = class_dim % output.ndim
        if axis == 0:
            raise InvalidInputError(f"class_dim={class_dim} points at the batch axis")
        if tuple(target.shape) != tuple(s for i, s in enumerate(output.shape) if i != axis):
            raise InvalidInputError(
                f"{name} with class_dim={class_dim} needs labels shaped like the outputs without that axis: "
                f"outputs {tuple(output.shape)}, labels {tuple(target.shape)}"
            )
        return axis
    last = tuple(target.shape) == tuple(output.shape[:-1])
    second = tuple(target.shape) == (output.shape[0], *output.shape[2:])
    if last and second and output.ndim > 2:
        raise InvalidInputError(
            f"{name}: outputs {tuple(output.shape)} with labels {tuple(target.shape)} are ambiguous: the classes "
            f"may be the last axis ([N, L, V], Hugging Face) or axis 1 ([N, C, L], torch); pass "
            f"spectra.losses.{name}(class_dim=-1) or ({name}(class_dim=1))"
        )
    if last or second:
        return output.ndim - 1 if last else 1
    if output.ndim == 2:
        raise InvalidInputError(
            f"{name} needs one label per sample: outputs {tuple(output.shape)}, labels {tuple(target.shape)}"
        )
    raise InvalidInputError(
        f"{name} needs labels shaped like the outputs without their class axis ([N, L] labels for [N, L, V] "
        f"or [N, C, L] logits): outputs {tuple(output.shape)}, labels {tuple(target.shape)}"
    )


def _check_labels(output: torch.Tensor, target: torch.Tensor, axis: int, ignore_index: int | None,
                  name: str) -> None:
    num_classes = output.shape[axis]
    kept = target if ignore_index is None else target[target != ignore_index]
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= num_classes):
        ignored = "" if ignore_index is None else f" (or {ignore_index}, ignored)"
        raise InvalidInputError(
            f"labels out of range: the model has {num_classes} outputs, so labels must lie in "
            f"[0, {num_classes - 1}]{ignored}; got labels in [{int(kept.min())}, {int(kept.max())}]"
        )


def _labels_to_rows(output: torch.Tensor, target: torch.Tensor, axis: int,
                    ignore_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [M, C], labels [M])`` of the counted units only (ignored ones dropped)."""
    rows = output.movedim(axis, -1).reshape(-1, output.shape[axis])
    labels = target.reshape(-1).long()
    if ignore_index is not None:
        keep = labels != ignore_index
        if not bool(keep.all()):
            rows, labels = rows[keep], labels[keep]
    return rows, labels


def _label_unit_axes(output: torch.Tensor, class_axis: int) -> tuple[int, ...]:
    """With integer labels every output axis but the batch and class axes indexes tokens."""
    return tuple(a for a in range(1, output.ndim) if a != class_axis)


def _integer_count(target: torch.Tensor, ignore_index: int | None) -> int:
    if ignore_index is None:
        return int(target.numel())
    return int((target != ignore_index).sum())


def _reduce(total: torch.Tensor, count: int, reduction: str) -> torch.Tensor:
    # a batch with no counted unit has no weight; its mean is 0 rather than 0/0
    return total if reduction == "sum" else total / max(count, 1)


@dataclass(frozen=True)
class CrossEntropy(Loss):
    """Softmax cross-entropy over classes; a unit is a sample or a non-ignored token.

    >>> loss = CrossEntropy(reduction="sum")
    >>> round(float(loss(torch.zeros(3, 2), torch.tensor([0, 1, -100]))), 6) == round(2 * math.log(2), 6)
    True
    """

    name: str = "cross_entropy"
    fn: None = None
    reduction: str = "mean"
    ignore_index: int | None = IGNORE_INDEX
    class_dim: int | None = None

    def __post_init__(self) -> None:
        _check_reduction(self.reduction)

    def check_target(self, output: torch.Tensor, target: Any) -> None:
        if not isinstance(target, torch.Tensor):
            raise InvalidInputError(f"{self.name} needs a tensor of labels; got a {type(target).__name__}")
        if target.is_floating_point():
            raise InvalidInputError(
                f"{self.name} needs integer class labels; got float targets of dtype {target.dtype} "
                "(use loss='mse' for regression targets)"
            )
        _check_labels(output, target, _class_axis(output, target, self.class_dim, self.name), self.ignore_index,
                      self.name)

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        axis = _class_axis(output, target, self.class_dim, self.name)
        rows, labels = _labels_to_rows(output, target, axis, self.ignore_index)
        return _reduce(F.cross_entropy(rows, labels, reduction="sum"), labels.numel(), self.reduction)

    def count(self, target: Any) -> int:
        if not isinstance(target, torch.Tensor):
            return super().count(target)
        return _integer_count(target, self.ignore_index)

    def unit(self, target: Any) -> str:
        return "token" if isinstance(target, torch.Tensor) and target.ndim > 1 else "sample"

    def unit_axes(self, output: torch.Tensor, target: Any) -> tuple[int, ...]:
        return _label_unit_axes(output, _class_axis(output, target, self.class_dim, self.name))

    def counted(self, target: Any) -> torch.Tensor | None:
        return None if self.ignore_index is None else target != self.ignore_index

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "ignore_index": self.ignore_index, "class_dim": self.class_dim}


@dataclass(frozen=True)
class MeanSquaredError(Loss):
    """``0.5 * ||f - y||^2`` per unit, averaged (or summed) over units.

    Integer labels are one-hot encoded over the class axis (same layouts and
    ``ignore_index`` as :class:`CrossEntropy`).  Float targets are shaped like
    the outputs; the first ``unit_dims`` axes index the units (1: samples,
    2: the positions of ``[N, L, D]`` outputs).

    >>> float(MeanSquaredError()(torch.zeros(2, 3), torch.ones(2, 3)))
    1.5
    """

    name: str = "mse"
    fn: None = None
    reduction: str = "mean"
    ignore_index: int | None = IGNORE_INDEX
    class_dim: int | None = None
    unit_dims: int = 1

    def __post_init__(self) -> None:
        _check_reduction(self.reduction)
        if self.unit_dims not in (1, 2):
            raise InvalidInputError(f"unit_dims must be 1 (samples) or 2 (positions); got {self.unit_dims!r}")

    def check_target(self, output: torch.Tensor, target: Any) -> None:
        if not isinstance(target, torch.Tensor):
            raise InvalidInputError(f"mse needs a tensor target; got a {type(target).__name__}")
        if target.is_floating_point():
            if target.shape != output.shape:
                raise InvalidInputError(
                    f"mse needs targets shaped like the outputs: outputs {tuple(output.shape)}, "
                    f"targets {tuple(target.shape)}"
                )
            if output.ndim < self.unit_dims:
                raise InvalidInputError(f"mse with unit_dims={self.unit_dims} needs outputs with at least "
                                        f"{self.unit_dims} axes; got {tuple(output.shape)}")
            return
        _check_labels(output, target, _class_axis(output, target, self.class_dim, "mse"), self.ignore_index, "mse")

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.is_floating_point() or target.dtype == torch.bool:
            diff = output - target.to(output.dtype)
            total = 0.5 * diff.pow(2).sum()
            count = math.prod(diff.shape[: self.unit_dims])
        else:
            axis = _class_axis(output, target, self.class_dim, "mse")
            rows, labels = _labels_to_rows(output, target, axis, self.ignore_index)
            diff = rows - F.one_hot(labels, num_classes=rows.shape[1]).to(rows.dtype)
            total, count = 0.5 * diff.pow(2).sum(), labels.numel()
        return _reduce(total, count, self.reduction)

    def count(self, target: Any) -> int:
        if not isinstance(target, torch.Tensor):
            return super().count(target)
        if target.is_floating_point() or target.dtype == torch.bool:
            return math.prod(target.shape[: self.unit_dims])
        return _integer_count(target, self.ignore_index)

    def unit(self, target: Any) -> str:
        if not isinstance(target, torch.Tensor):
            return "sample"
        if target.is_floating_point() or target.dtype == torch.bool:
            return "token" if self.unit_dims == 2 else "sample"
        return "token" if target.ndim > 1 else "sample"

    def unit_axes(self, output: torch.Tensor, target: Any) -> tuple[int, ...]:
        if target.is_floating_point() or target.dtype == torch.bool:
            return tuple(range(1, self.unit_dims))
        return _label_unit_axes(output, _class_axis(output, target, self.class_dim, "mse"))

    def counted(self, target: Any) -> torch.Tensor | None:
        if target.is_floating_point() or target.dtype == torch.bool or self.ignore_index is None:
            return None
        return target != self.ignore_index

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "ignore_index": self.ignore_index, "class_dim": self.class_dim,
                "unit_dims": self.unit_dims}


def cross_entropy(*, reduction: str = "mean", ignore_index: int | None = IGNORE_INDEX,
                  class_dim: int | None = None) -> CrossEntropy:
    """The built-in cross-entropy with options (``class_dim``: -1 for ``[N, L, V]``, 1 for ``[N, C, L]``).

    >>> cross_entropy(class_dim=1).class_dim
    1
    """
    return CrossEntropy(reduction=reduction, ignore_index=ignore_index, class_dim=class_dim)


def mse(*, reduction: str = "mean", ignore_index: int | None = IGNORE_INDEX, class_dim: int | None = None,
        unit_dims: int = 1) -> MeanSquaredError:
    """The built-in half squared error with options (see :class:`MeanSquaredError`).

    >>> mse(unit_dims=2).count(torch.zeros(4, 7, 3))
    28
    """
    return MeanSquaredError(reduction=reduction, ignore_index=ignore_index, class_dim=class_dim,
                            unit_dims=unit_dims)


BUILTIN_LOSSES: dict[str, Loss] = {"cross_entropy": CrossEntropy(), "mse": MeanSquaredError()}
# Other names of the built-in losses (registered with them, found without regard to case).
LOSS_ALIASES = {"ce": "cross_entropy", "nll": "cross_entropy", "crossentropy": "cross_entropy",
                "mean_squared_error": "mse"}


def resolve_loss(loss: LossLike, reduction: str | None = None) -> Loss:
    """Turn a name, a :class:`Loss` or a callable into a :class:`Loss`.

    Names are looked up in the ``losses`` registry (plugins can add more).
    ``reduction`` (``"mean"`` or ``"sum"``; ``None``: the loss's own, else
    ``"mean"``) is honoured for the built-in names; a plain callable is declared to average
    over its batch unless ``reduction="sum"`` says it sums.  A :class:`Loss`
    keeps its own reduction; asking it for another one is refused, since
    spectra cannot change what its function computes.

    >>> resolve_loss("ce") is BUILTIN_LOSSES["cross_entropy"]
    True
    """
    if reduction is not None:
        _check_reduction(reduction)
    if isinstance(loss, Loss):
        if reduction is not None and reduction != loss.reduction:
            raise InvalidInputError(
                f"the loss {loss.name!r} declares reduction={loss.reduction!r}; reduction={reduction!r} conflicts "
                "with it (pass one of them)"
            )
        return loss
    if isinstance(loss, str):
        from . import plugins

        entry = plugins.get_entry("losses", loss)  # registered by plugins; names and aliases in any case
        if not isinstance(entry.factory, Loss):  # a registered function: declared like a callable
            return Loss(entry.name, entry.factory, reduction or "mean")
        if reduction in (None, entry.factory.reduction):
            return entry.factory
        if type(entry.factory) in (CrossEntropy, MeanSquaredError):  # built-ins compute either reduction
            return replace(entry.factory, reduction=reduction)
        return resolve_loss(entry.factory, reduction)  # refused: it declares another reduction
    if callable(loss):
        name = getattr(loss, "__name__", type(loss).__name__)
        return Loss(f"callable:{name}", loss, reduction or "mean")
    raise InvalidInputError(
        "loss must be 'cross_entropy', 'mse', a spectra.losses.Loss or a callable (output, target) -> scalar; "
        f"got {type(loss).__name__}"
    )


def is_default_builtin(loss: Loss) -> str | None:
    """The name of the built-in loss ``loss`` is with its default settings (mean, ignore -100), else None.

    >>> is_default_builtin(resolve_loss("mse")), is_default_builtin(resolve_loss("mse", "sum"))
    ('mse', None)
    """
    return next((name for name, builtin in BUILTIN_LOSSES.items() if loss == builtin), None)
