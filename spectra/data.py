"""Datasets and the batch sources spectra iterates over.

A *dataset* for spectra is a finite, ordered, re-iterable collection of
batches.  A batch is a tuple ``(X, y)``, a dict (the Hugging Face convention:
``model(**inputs)`` with the target under ``labels``) or another nested
structure of tensors that a :class:`~spectra.batches.BatchReader` can read.
Accepted forms:

* one batch: a tuple ``(X, y)`` of tensors (or numpy arrays), or a dict;
* a list/tuple of batches (sizes may differ);
* a :class:`torch.utils.data.DataLoader` with a sequential sampler;
* a :class:`Dataset` (what ``spectra.datasets.load`` returns).

>>> import torch
>>> src = as_batch_source((torch.zeros(5, 3), torch.zeros(5, dtype=torch.long)))
>>> src.num_samples, src.num_batches
(5, 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .errors import InvalidInputError, NonDeterministicError, NonFiniteError

Batch = Any  # (X, y), a dict, or a nested structure of tensors (spectra.batches)


@dataclass
class Dataset:
    """Tensors ``X`` (inputs) and ``y`` (targets) plus a description.

    ``info`` records where the data came from (name, seed, indices drawn, ...)
    and is copied into every result computed on it.
    """

    X: torch.Tensor
    y: torch.Tensor
    name: str = "data"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.X = _as_tensor(self.X, "X")
        self.y = _as_tensor(self.y, "y")
        if self.X.shape[0] != self.y.shape[0]:
            raise InvalidInputError(
                f"X and y disagree on the number of samples: X {tuple(self.X.shape)}, y {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def __repr__(self) -> str:
        """Shapes and dtypes, not the tensors; the keys of ``info``, not its long lists.

        >>> Dataset(torch.zeros(3, 2), torch.tensor([0, 1, 0]), name="toy", info={"seed": 0, "indices": [4, 1, 7]})
        Dataset(name='toy', n=3, X=[3, 2] float32, y=[3] int64, info keys: seed, indices)
        """
        def shape(t: torch.Tensor) -> str:
            return f"[{', '.join(map(str, t.shape))}] {str(t.dtype).removeprefix('torch.')}"

        keys = ", ".join(map(str, self.info)) or "(none)"
        return f"Dataset(name={self.name!r}, n={len(self)}, X={shape(self.X)}, y={shape(self.y)}, info keys: {keys})"

    def __iter__(self) -> Iterator[Batch]:
        """Iterate as a single full batch (full-batch analysis is the default)."""
        yield self.X, self.y

    def batches(self, batch_size: int | None = None) -> list[Batch]:
        """Split into consecutive batches of ``batch_size`` (last may be shorter)."""
        if batch_size is None or batch_size >= len(self):
            return [(self.X, self.y)]
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1; got {batch_size}")
        return [
            (self.X[i : i + batch_size], self.y[i : i + batch_size])
            for i in range(0, len(self), batch_size)
        ]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape[1:])

    @property
    def num_classes(self) -> int | None:
        if self.y.is_floating_point() or self.y.numel() == 0:
            return None
        return int(self.info.get("num_classes", int(self.y.max()) + 1))


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    try:
        return torch.as_tensor(value)
    except Exception as exc:  # noqa: BLE001 - re-raised with a clear message
        raise InvalidInputError(f"{what} must be a tensor or array; got {type(value).__name__}") from exc


def is_batch(obj: Any) -> bool:
    """Whether ``obj`` is one ``(X, y)`` batch: a pair of tensors or arrays."""
    return (
        isinstance(obj, (tuple, list))
        and len(obj) == 2
        and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in obj)
    )


def is_structured(obj: Any) -> bool:
    """A batch as a container: a dict, or a tuple/list of at least two parts."""
    return isinstance(obj, Mapping) or (isinstance(obj, (tuple, list)) and len(obj) >= 2)


def is_single_batch(obj: Any) -> bool:
    """One batch rather than a list of batches: a dict, an (X, y) pair, or a tuple with a non-batch part."""
    if isinstance(obj, Mapping) or is_batch(obj):
        return True
    return isinstance(obj, tuple) and len(obj) >= 2 and not all(is_structured(part) for part in obj)


def _tensors_of(batch: Any) -> Any:
    """``batch`` with numpy arrays turned into tensors (containers kept)."""
    from .batches import map_tensors

    return map_tensors(batch, lambda a: torch.from_numpy(np.ascontiguousarray(a)), (np.ndarray,))


class BatchSource:
    """A validated, re-iterable sequence of ``(X, y)`` batches.

    Counts samples once, checks that the batches agree on their feature shape
    and contain only finite inputs, and refuses loaders that shuffle (a
    shuffled loader changes the batches between two passes, so the operator
    would not be one fixed matrix).
    """

    def __init__(self, data: Any):
        self.info: dict[str, Any] = {}
        self._loader = None
        if isinstance(data, BatchSource):
            self._batches, self._loader, self.info = data._batches, data._loader, dict(data.info)
        elif isinstance(data, Dataset):
            self._batches = [(data.X, data.y)]
            self.info = {"name": data.name, **data.info}
        elif is_batch(data):
            self._batches = [(_as_tensor(data[0], "X"), _as_tensor(data[1], "y"))]
        elif is_single_batch(data):
            self._batches = [_tensors_of(data)]
        elif isinstance(data, torch.utils.data.DataLoader):
            _refuse_shuffling(data)
            self._batches = None
            self._loader = data
        elif isinstance(data, (list, tuple)):
            if len(data) == 0:
                raise InvalidInputError("the dataset is empty: got an empty list of batches")
            bad = [i for i, b in enumerate(data) if not is_structured(b)]
            if bad:
                raise InvalidInputError(
                    f"each batch must be a pair (X, y) of tensors, a dict or a tuple of inputs and a target; "
                    f"batch {bad[0]} is {type(data[bad[0]]).__name__}"
                )
            self._batches = [(_as_tensor(b[0], "X"), _as_tensor(b[1], "y")) if is_batch(b) else _tensors_of(b)
                             for b in data]
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
            raise InvalidInputError(
                "data must be (X, y), a dict batch, a list of batches, a DataLoader or a spectra Dataset; "
                f"got a {type(data).__name__} (wrap a one-shot iterator in list(...))"
            )
        else:
            hint = (" (a torch Dataset holds samples, not batches: pass DataLoader(dataset, batch_size=...) "
                    "without shuffling)" if isinstance(data, torch.utils.data.Dataset) else "")
            raise InvalidInputError(
                "data must be (X, y), a dict batch, a list of batches, a DataLoader or a spectra Dataset; "
                f"got {type(data).__name__}{hint}"
            )
        self._validate()

    def __iter__(self) -> Iterator[Batch]:
        # Empty batches carry no samples and no weight; skipping them keeps a
        # mean-reduced batch loss from turning into 0/0.
        batches = self._batches if self._batches is not None else (self._unpack(b) for b in self._loader)
        return (b for b in batches if _rows(b) != 0)

    @staticmethod
    def _unpack(batch: Any) -> Batch:
        if is_batch(batch):
            return _as_tensor(batch[0], "X"), _as_tensor(batch[1], "y")
        if not is_structured(batch):
            raise InvalidInputError(
                f"the DataLoader must yield (X, y) pairs or dict batches; it yielded a {type(batch).__name__}"
            )
        return _tensors_of(batch)

    def _validate(self) -> None:
        from .batches import tensors_in

        sizes, feature_shape, elements = [], None, 0
        for i, batch in enumerate(self):
            if is_batch(batch):
                X, y = batch
                if X.shape[0] != y.shape[0]:
                    raise InvalidInputError(
                        f"batch {i}: X has {X.shape[0]} samples but y has {y.shape[0]} "
                        f"(X {tuple(X.shape)}, y {tuple(y.shape)})"
                    )
                # features of real-valued inputs must agree (token ids may come in sequences of any length)
                if X.is_floating_point():
                    if feature_shape is None:
                        feature_shape = tuple(X.shape[1:])
                    elif tuple(X.shape[1:]) != feature_shape:
                        raise InvalidInputError(
                            f"batches have inconsistent feature shapes: batch 0 has {feature_shape}, "
                            f"batch {i} has {tuple(X.shape[1:])}"
                        )
            for path, t in tensors_in(batch, f"batch {i}"):
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    what = {f"batch {i}[0]": "the inputs X", f"batch {i}[1]": "the targets y"}.get(path, path)
                    raise NonFiniteError(f"batch {i}: {what} contain NaN or Inf")
                elements += t.numel()
            sizes.append(_rows(batch))
        if not sizes or sum(sizes) == 0:
            raise InvalidInputError("the dataset is empty: no samples")
        self.batch_sizes = sizes
        self.feature_shape = feature_shape
        self._elements = elements

    @property
    def num_samples(self) -> int:
        return sum(self.batch_sizes)

    @property
    def num_batches(self) -> int:
        return len(self.batch_sizes)

    @property
    def in_memory(self) -> bool:
        return self._batches is not None

    def numel(self) -> int:
        """Number of tensor elements over all batches (a proxy for memory use)."""
        return self._elements


def _rows(batch: Any) -> int:
    """Samples in a batch: the first axis of its first tensor (None-free: 0 when it has none)."""
    from .batches import leading_size

    rows = leading_size(batch)
    return 0 if rows is None else rows


def _refuse_shuffling(loader: torch.utils.data.DataLoader) -> None:
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    for s in (sampler, inner):
        if isinstance(s, (torch.utils.data.RandomSampler, torch.utils.data.SubsetRandomSampler,
                          torch.utils.data.WeightedRandomSampler)):
            raise NonDeterministicError(
                "the DataLoader shuffles (it has a random sampler), so two passes see different "
                "batches; build it with shuffle=False for Hessian analysis"
            )
    if getattr(loader, "drop_last", False):
        raise InvalidInputError(
            "the DataLoader drops its last batch (drop_last=True), so the Hessian would miss samples; "
            "use drop_last=False"
        )


def as_batch_source(data: Any) -> BatchSource:
    """Validate ``data`` and return a :class:`BatchSource` (idempotent)."""
    return data if isinstance(data, BatchSource) else BatchSource(data)


def accuracy(model: torch.nn.Module, data: Any) -> float:
    """The share of samples whose largest output is their integer label, over every batch of ``data``.

    NaN where that is not defined: float or multi-dimensional targets, or outputs that are not
    ``[batch, classes]``.  The model runs in eval mode, without gradients.

    >>> net = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = net.weight.copy_(torch.eye(2))
    >>> accuracy(net, (torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1])))
    0.6666666666666666
    """
    import math

    from .operators.model_state import model_mode

    correct, total = 0, 0
    dtype = next(model.parameters()).dtype
    with torch.no_grad(), model_mode(model, False):
        for X, y in as_batch_source(data):
            if y.is_floating_point() or y.ndim != 1:
                return math.nan
            out = model(X.to(dtype) if X.is_floating_point() else X)
            if out.ndim != 2:
                return math.nan
            correct += int((out.argmax(1) == y.to(out.device)).sum())
            total += int(y.shape[0])
    return correct / max(total, 1)
