"""How the curvature operators read one batch: the seam between data and model.

Every place an operator touches a batch goes through one :class:`BatchReader`:
it splits a batch into what the model is called with and the target, moves
both to the operator's device and dtype, calls the model (or a functional
version of it), and says how much the batch weighs in a mean.  Over a dataset
of batches ``b`` the operators compute the curvature of
``sum_b w_b * loss_b`` with ``w_b = count_b / sum_b' count_b'`` for a
mean-reduced loss (``1`` for a summed one).

The default reader takes ``(X, y)`` pairs, calls ``model(X)`` and counts
samples (``len(y)``).  Another batch convention (dict batches called as
``model(**inputs)``, a count of tokens for token losses) is another reader:
override :meth:`BatchReader.split`, :meth:`BatchReader.call`,
:meth:`BatchReader.counts` and :meth:`BatchReader.describe`.

>>> import torch
>>> from spectra.data import as_batch_source
>>> reader = BatchReader()
>>> batches = [(torch.zeros(4, 3), torch.tensor([0, 1, 1, 0])), (torch.zeros(1, 3), torch.tensor([1]))]
>>> reader.counts(as_batch_source(batches))
([4, 1], [4, 1])
>>> inputs, target = reader.split(batches[0])
>>> reader.call(torch.nn.Linear(3, 2), inputs).shape
torch.Size([4, 2])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:
    from .data import BatchSource

__all__ = ["Batch", "BatchReader"]


@dataclass
class Batch:
    """One batch as the operators see it (on the operator's device, floats in its dtype)."""

    index: int  #: position among this process's batches
    inputs: Any  #: what the model is called with
    target: torch.Tensor
    count: int  #: what the batch weighs in a mean (samples)
    weight: float  #: ``w_b``: ``count / total count`` (mean reduction) or 1 (sum)
    offset: int  #: index of the batch's first sample in the whole dataset (over all ranks)
    num_rows: int  #: samples in the batch


class BatchReader:
    """The default batch convention: ``(X, y)`` pairs, ``model(X)``, weight by sample count."""

    def split(self, raw: Any) -> tuple[Any, torch.Tensor]:
        """``(inputs, target)`` of one batch as the data source yields it."""
        X, y = raw
        return X, y

    def to(self, inputs: Any, target: torch.Tensor, device: torch.device,
           dtype: torch.dtype) -> tuple[Any, torch.Tensor]:
        """Both moved to ``device``; floating-point tensors converted to ``dtype``."""
        return _moved(inputs, device, dtype), _moved(target, device, dtype)

    def call(self, model: Callable[..., Any], inputs: Any) -> Any:
        """The model's output on ``inputs`` (``model`` may be a functional version of the module)."""
        return model(inputs)

    def counts(self, source: "BatchSource") -> tuple[list[int], list[int]]:
        """``(counts, rows)``: what each batch of ``source`` weighs in a mean, and its number of samples.

        The default weighs a batch by its samples, which the source counted when
        it validated the batches (no pass over the data).  A reader that counts
        something else (tokens) reads the batches here.
        """
        return list(source.batch_sizes), list(source.batch_sizes)

    def describe(self, inputs: Any) -> str:
        """A short description of the inputs for error messages."""
        if isinstance(inputs, torch.Tensor):
            return f"inputs of shape {tuple(inputs.shape)} ({inputs.dtype})"
        return f"inputs of type {type(inputs).__name__}"


def _moved(t: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if not isinstance(t, torch.Tensor):
        return t
    t = t.to(device)
    return t.to(dtype) if t.is_floating_point() else t
