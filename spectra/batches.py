"""How a batch becomes the model's output and its target, and how many units it counts.

Every place a curvature operator touches a batch goes through one
:class:`BatchReader`: it splits a batch into what the model is called with and
the target, moves both to the operator's device and dtype, calls the model (or
a functional version of it) and reads its output, and says how much the batch
weighs in a mean.  Over a dataset of batches ``b`` the operators compute the
curvature of ``sum_b w_b * loss_b`` with ``w_b = count_b / sum_b' count_b'``
for a mean-reduced loss (``1`` for a summed one).

The conventions users already know work with no argument:

* a tuple or list ``(X, y)``: the model is called as ``model(X)`` and ``y`` is
  the target; with more elements ``(x1, x2, ..., y)`` the last is the target
  and the others are passed in order, ``model(x1, x2, ...)``.  ``X`` may be a
  tensor or any nested structure of tensors (passed as one argument);
* a dict (or any mapping, such as Hugging Face's ``BatchEncoding``): the
  Hugging Face convention, ``model(**inputs)`` with ``labels`` taken out as the
  target;
* an output with a ``logits`` attribute or key (Hugging Face's
  ``ModelOutput``) is read as its logits; a tensor is used as it is;
* a Hugging Face causal language model (a ``transformers`` model of the
  causal-LM kind) predicts the next token: its labels are shifted by one, as
  its own loss does, and the last position is ignored.

A batch counts ``loss.count(target)`` units: its samples, or its target tokens
that are not ``ignore_index`` (see :mod:`spectra.losses`).  Any other convention
is one :class:`BatchReader` away: where the target is, how to call the model,
how to read its output, how many units a batch holds.

>>> import torch
>>> from spectra.losses import resolve_loss
>>> model = torch.nn.Embedding(5, 3)
>>> batch = {"input": torch.tensor([[1, 2, 0]]), "labels": torch.tensor([[2, 1, -100]])}
>>> reader = BatchReader().bind(model, resolve_loss("cross_entropy"))
>>> inputs, target = reader.split(batch)
>>> reader.count(inputs, target), tuple(reader.call(model, inputs).shape)
(2, (1, 3, 3))
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Union

import numpy as np
import torch
from torch import nn

from .errors import InvalidInputError
from .losses import IGNORE_INDEX, Loss

__all__ = ["Batch", "BatchReader", "HUGGING_FACE_LABELS", "map_tensors", "to_device", "tensors_in",
           "is_causal_lm", "shift_labels", "leading_size", "sample_count", "slice_samples"]

#: The key of the target in a Hugging Face dict batch.
HUGGING_FACE_LABELS = "labels"

_ARRAYS = (torch.Tensor, np.ndarray)  # what a batch may hold its samples in

TargetSpec = Union[str, int, Callable[[Any], Any]]


# ----------------------------------------------------------------------------- nested structures
def map_tensors(structure: Any, fn: Callable[[Any], Any], kinds: tuple[type, ...] = (torch.Tensor,)) -> Any:
    """``structure`` with ``fn`` applied to every tensor (every instance of ``kinds``); other values kept.

    Mappings become dicts, tuples (named ones included) and lists keep their type.

    >>> map_tensors({"a": (torch.ones(1), "name")}, lambda t: 2 * t)
    {'a': (tensor([2.]), 'name')}
    """
    if isinstance(structure, kinds):
        return fn(structure)
    if isinstance(structure, Mapping):
        return {key: map_tensors(value, fn, kinds) for key, value in structure.items()}
    if isinstance(structure, tuple) and hasattr(structure, "_fields"):  # a named tuple
        return type(structure)(*(map_tensors(value, fn, kinds) for value in structure))
    if isinstance(structure, (tuple, list)):
        return type(structure)(map_tensors(value, fn, kinds) for value in structure)
    return structure


def to_device(structure: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Any:
    """``structure`` with every tensor moved to ``device``; floating tensors also cast to ``dtype``.

    Integer tensors (token ids, labels, masks) keep their dtype.  Mappings become
    dicts, tuples (named ones included) and lists keep their type; anything else
    is returned unchanged.

    >>> out = to_device({"ids": torch.tensor([1]), "x": [torch.zeros(1)]}, dtype=torch.float64)
    >>> out["ids"].dtype, out["x"][0].dtype
    (torch.int64, torch.float64)
    """
    def move(t: torch.Tensor) -> torch.Tensor:
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        return t if device is None else t.to(device)

    return map_tensors(structure, move)


def tensors_in(structure: Any, where: str = "batch", kinds: tuple[type, ...] = (torch.Tensor,)
               ) -> Iterator[tuple[str, Any]]:
    """``(path, tensor)`` for every tensor (every instance of ``kinds``) in a nested structure, in order.

    >>> [path for path, _ in tensors_in({"a": (torch.zeros(1), 3), "b": torch.ones(1)})]
    ['batch["a"][0]', 'batch["b"]']
    """
    if isinstance(structure, kinds):
        yield where, structure
    elif isinstance(structure, Mapping):
        for key, value in structure.items():
            yield from tensors_in(value, _key_path(where, key), kinds)
    elif isinstance(structure, (tuple, list)):
        for i, value in enumerate(structure):
            yield from tensors_in(value, f"{where}[{i}]", kinds)


def _key_path(where: str, key: Any) -> str:
    return f"{where}[{key!r}]".replace("'", '"')


def leading_size(structure: Any) -> int | None:
    """The first axis of the first tensor with one (the number of samples), or None."""
    return next((int(t.shape[0]) for _, t in tensors_in(structure) if t.ndim > 0), None)


def sample_count(batch: Any, where: str = "batch") -> int:
    """The number of samples of a batch whose every tensor (or numpy array) has them on its first axis.

    Refuses, naming the part, a tensor without axes, one whose first axis
    disagrees with the others, and a list of plain values as long as the batch
    (spectra cannot tell whether it holds one value per sample).

    >>> sample_count({"input_ids": torch.zeros(3, 5), "mask": (torch.ones(3, 5),), "labels": torch.zeros(3)})
    3
    """
    parts = list(tensors_in(batch, where, _ARRAYS))
    if not parts:
        raise InvalidInputError(f"{where} holds no tensor: it has no samples to count")
    path, first = parts[0]
    for path, t in parts:
        if len(t.shape) == 0 or t.shape[0] != first.shape[0]:
            raise InvalidInputError(
                f"cannot cut {where} into samples: {path} has shape {tuple(t.shape)}, but {parts[0][0]} has "
                f"{first.shape[0]} samples on its first axis; every tensor of a batch must hold its samples on "
                "its first axis (expand a tensor shared by all samples, or shard the data before batching it)"
            )
    n = int(first.shape[0])
    for path, values in _plain_lists(batch, where):
        if len(values) == n:
            raise InvalidInputError(
                f"cannot cut {where} into samples: {path} is a {type(values).__name__} of {n} values that are not "
                "tensors, which may hold one value per sample; make it a tensor, or drop it before sharding"
            )
    return n


def slice_samples(batch: Any, start: int, stop: int) -> Any:
    """``batch`` with every tensor (and numpy array) cut to samples ``start:stop``; other values kept.

    Containers keep their type (mappings become dicts).  Check the batch with
    :func:`sample_count` first: this cuts whatever it finds.

    >>> part = slice_samples({"ids": torch.arange(4)[:, None], "flag": True}, 1, 3)
    >>> part["ids"].tolist(), part["flag"]
    ([[1], [2]], True)
    """
    return map_tensors(batch, lambda t: t[start:stop], _ARRAYS)


def _plain_lists(structure: Any, where: str) -> Iterator[tuple[str, Any]]:
    """``(path, container)`` for every tuple or list in ``structure`` that holds no array at any depth."""
    if isinstance(structure, Mapping):
        for key, value in structure.items():
            yield from _plain_lists(value, _key_path(where, key))
    elif isinstance(structure, (tuple, list)):
        if next(tensors_in(structure, where, _ARRAYS), None) is None:
            yield where, structure
        else:
            for i, value in enumerate(structure):
                yield from _plain_lists(value, f"{where}[{i}]")


# ----------------------------------------------------------------------------- causal language models
def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face causal language model (its loss shifts the labels).

    Decided from ``transformers``' own table of causal-LM classes; a model
    that is not a ``transformers`` model is never one (``transformers`` is
    not imported for it).

    >>> is_causal_lm(torch.nn.Linear(2, 2))
    False
    """
    transformers = sys.modules.get("transformers")
    if transformers is None:
        return False
    pretrained = getattr(transformers, "PreTrainedModel", None)
    if pretrained is None or not isinstance(model, pretrained):
        return False
    from transformers.models.auto import modeling_auto

    names: set[str] = set()
    for value in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return type(model).__name__ in names


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Next-token labels: position ``t`` gets the label of ``t + 1``; the last position is ignored.

    >>> shift_labels(torch.tensor([[5, 6, 7]])).tolist()
    [[6, 7, -100]]
    """
    if labels.ndim < 2:
        raise InvalidInputError(
            f"shifting labels for next-token prediction needs labels [batch, length]; got {tuple(labels.shape)}"
        )
    pad = labels.new_full((*labels.shape[:-1], 1), ignore_index)
    return torch.cat([labels[..., 1:], pad], dim=-1)


# ----------------------------------------------------------------------------- the reader
@dataclass
class Batch:
    """One batch as the operators see it (on the operator's device, floats in its dtype)."""

    index: int  #: position among this process's batches
    inputs: Any  #: what the model is called with
    target: Any
    count: int  #: what the batch weighs in a mean (samples, or counted tokens)
    weight: float  #: ``w_b``: ``count / total count`` (mean reduction) or 1 (sum)
    offset: int  #: index of the batch's first sample in the whole dataset (over all ranks)
    num_rows: int  #: samples in the batch


@dataclass(frozen=True)
class BatchReader:
    """Where a batch's target is, how the model is called, how its output is read, what a batch counts.

    ``target``
        a dict key (default ``"labels"``), a tuple index (a tuple's default:
        its last element), or a function ``batch -> target``.
    ``inputs``
        a function ``batch -> what the model takes``; default: the batch
        without its target (a dict's other keys, a tuple's other elements).
    ``forward``
        a function ``(model, inputs) -> output``; default ``model(**inputs)``
        for a dict, ``model(*inputs)`` for a tuple's other elements, else
        ``model(inputs)``.
    ``output``
        an attribute or key name, or a function ``output -> tensor``;
        default: ``output.logits`` (or ``output["logits"]``) where there is
        one, else the output itself, which must then be a tensor.
    ``units``
        a function ``(inputs, target) -> number`` of units the batch holds,
        for the batch weights; default: the loss's count of the target
        (samples, or tokens that are not ``ignore_index``).
    ``shift_labels``
        shift the labels by one for next-token prediction; ``None``
        (default): exactly for Hugging Face causal language models.

    An operator binds its reader to the model and loss (:meth:`bind`) before
    use, and weighs its batches by :meth:`counts`.

    >>> reader = BatchReader(target="y", output="prediction")
    >>> reader.split({"x": torch.zeros(2, 3), "y": torch.ones(2)})[1].tolist()
    [1.0, 1.0]
    """

    target: TargetSpec | None = None
    inputs: Callable[[Any], Any] | None = None
    forward: Callable[[Any, Any], Any] | None = None
    output: str | Callable[[Any], torch.Tensor] | None = None
    units: Callable[[Any, Any], int] | None = None
    shift_labels: bool | None = None
    loss: Loss | None = field(default=None, compare=False, repr=False)  #: set by :meth:`bind`

    # ---------------------------------------------------------------- set-up
    def bind(self, model: nn.Module, loss: Loss) -> "BatchReader":
        """This reader for ``model`` and ``loss``: ``shift_labels`` decided, the loss known for counts."""
        shift = is_causal_lm(model) if self.shift_labels is None else self.shift_labels
        return replace(self, shift_labels=shift, loss=loss)

    def settings(self) -> dict[str, Any]:
        """The reader's settings, for a result's provenance."""
        def name(value: Any) -> Any:
            return value if value is None or isinstance(value, (str, int)) else getattr(value, "__name__", "custom")

        return {"target": name(self.target), "inputs": name(self.inputs), "forward": name(self.forward),
                "output": name(self.output), "units": name(self.units), "shift_labels": self.shift_labels}

    # ---------------------------------------------------------------- one batch
    def split(self, raw: Any) -> tuple[Any, Any]:
        """``(inputs, target)`` of one batch as the data source yields it (labels shifted if asked)."""
        inputs, target = self._split(raw)
        if self.shift_labels:
            if not isinstance(target, torch.Tensor) or target.is_floating_point():
                raise InvalidInputError("shift_labels=True needs integer label tensors [batch, length]")
            target = shift_labels(target, getattr(self.loss, "ignore_index", None) or IGNORE_INDEX)
        return inputs, target

    def _split(self, raw: Any) -> tuple[Any, Any]:
        if callable(self.target) and not isinstance(self.target, (str, int)):
            return (self.inputs(raw) if self.inputs is not None else raw), self.target(raw)
        if isinstance(raw, Mapping):
            key = HUGGING_FACE_LABELS if self.target is None else self.target
            if key not in raw:
                raise InvalidInputError(
                    f"the dict batch has no target {key!r} (its keys: {', '.join(map(str, raw))}); put the target "
                    f"under {HUGGING_FACE_LABELS!r} (the Hugging Face convention) or name its key with "
                    "spectra.batches.BatchReader(target=...)"
                )
            inputs = {k: v for k, v in raw.items() if k != key}
            return (self.inputs(raw) if self.inputs is not None else inputs), raw[key]
        if isinstance(raw, (tuple, list)):
            if len(raw) < 2:
                raise InvalidInputError(f"a tuple batch needs its inputs and a target, (X, y); got {len(raw)} element(s)")
            index = -1 if self.target is None else self.target
            if not isinstance(index, int):
                raise InvalidInputError(f"the batch is a {type(raw).__name__}: target={index!r} must be an index")
            index %= len(raw)
            rest = tuple(v for i, v in enumerate(raw) if i != index)
            inputs = rest[0] if len(rest) == 1 else _Positional(rest)
            return (self.inputs(raw) if self.inputs is not None else inputs), raw[index]
        raise InvalidInputError(
            f"a batch must be a tuple (X, y), a dict (Hugging Face: model(**inputs), target under 'labels') or a "
            f"structure that BatchReader(target=..., inputs=...) can read; got a {type(raw).__name__}"
        )

    def to(self, inputs: Any, target: Any, device: torch.device | str | None,
           dtype: torch.dtype | None) -> tuple[Any, Any]:
        """Both moved to ``device``; floating-point tensors converted to ``dtype``."""
        return to_device(inputs, device, dtype), to_device(target, device, dtype)

    def call(self, model: Callable[..., Any], inputs: Any) -> torch.Tensor:
        """The model's output on ``inputs``, read as the tensor the loss takes (``model`` may be functional)."""
        if self.forward is not None:
            raw = self.forward(model, inputs)
        elif isinstance(inputs, _Positional):
            raw = model(*inputs)
        elif isinstance(inputs, Mapping):
            raw = model(**inputs)
        else:
            raw = model(inputs)
        return self.read_output(raw)

    def read_output(self, raw: Any) -> torch.Tensor:
        """The tensor the loss takes, read from the model's raw output."""
        if isinstance(self.output, str):
            value = raw[self.output] if isinstance(raw, Mapping) and self.output in raw else \
                getattr(raw, self.output, None)
            if value is None:
                raise InvalidInputError(f"the model's output ({type(raw).__name__}) has no {self.output!r}")
            raw = value
        elif self.output is not None:
            raw = self.output(raw)
        elif not isinstance(raw, torch.Tensor):
            logits = getattr(raw, "logits", None)
            if logits is None and isinstance(raw, Mapping):
                logits = raw.get("logits")
            if logits is not None:
                raw = logits
        if not isinstance(raw, torch.Tensor):
            raise InvalidInputError(
                f"the model must return a tensor or an output with .logits; it returned a {type(raw).__name__} "
                "(say which part is the prediction: BatchReader(output=...), e.g. output=lambda out: out[0])"
            )
        return raw

    def count(self, inputs: Any, target: Any) -> int:
        """How much the batch weighs in a mean: its units (samples, or counted tokens)."""
        if self.units is not None:
            units = self.units(inputs, target)
        elif self.loss is not None:
            units = self.loss.count(target)
        else:
            units = self.num_rows(inputs, target)
        if isinstance(units, torch.Tensor) and units.numel() == 1:
            units = int(units)
        if isinstance(units, bool) or not isinstance(units, int):
            raise InvalidInputError(f"units(inputs, target) must return an integer; got a {type(units).__name__}")
        if units < 0:
            raise InvalidInputError(f"units(inputs, target) must not be negative; got {units}")
        return units

    def counts(self, source: Any) -> tuple[list[int], list[int]]:
        """``(counts, rows)``: what each batch of ``source`` weighs in a mean, and its number of samples.

        A loss that weighs samples (a plain callable) takes the sizes the source
        counted when it validated the batches (no pass over the data); the
        built-in losses (ignored labels, tokens) and ``units`` read the batches.
        """
        rows = list(source.batch_sizes)
        if self.units is None and (self.loss is None or type(self.loss) is Loss) and not self.shift_labels:
            return rows, rows
        return [self.count(*self.split(raw)) for raw in source], rows

    def unit(self, source: Any) -> str:
        """What the counts count: ``"sample"``, ``"token"``, or ``"unit"`` (a custom ``units``)."""
        if self.units is not None:
            return "unit"
        if self.loss is None:
            return "sample"
        return self.loss.unit(self.split(next(iter(source)))[1])

    def num_rows(self, inputs: Any, target: Any) -> int:
        """Number of samples (rows) in the batch: the target's first axis, else the inputs'."""
        rows = leading_size(target)
        rows = leading_size(inputs) if rows is None else rows
        return 0 if rows is None else rows

    def describe(self, inputs: Any) -> str:
        """A short description of the inputs for error messages."""
        if isinstance(inputs, torch.Tensor):
            return f"inputs of shape {tuple(inputs.shape)} ({inputs.dtype})"
        shapes = ", ".join(f"{path.removeprefix('inputs')} {tuple(t.shape)}" for path, t in tensors_in(inputs, "inputs"))
        return f"inputs {type(inputs).__name__} ({shapes})" if shapes else f"inputs of type {type(inputs).__name__}"


class _Positional(tuple):
    """A tuple batch's inputs when there are several: passed to the model as positional arguments."""
