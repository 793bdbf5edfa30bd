"""Datasets and the batch sources spectra iterates over.

A *dataset* for spectra is a finite, ordered, re-iterable collection of
``(X, y)`` batches.  Accepted forms:

* one batch: a tuple ``(X, y)`` of tensors (or numpy arrays);
* a list/tuple of such batches (sizes may differ);
* a :class:`torch.utils.data.DataLoader` with a sequential sampler;
* a :class:`Dataset` (what ``spectra.datasets.load`` returns).

>>> import torch
>>> src = as_batch_source((torch.zeros(5, 3), torch.zeros(5, dtype=torch.long)))
>>> src.num_samples, src.num_batches
(5, 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .errors import InvalidInputError, NonDeterministicError, NonFiniteError

Batch = tuple[torch.Tensor, torch.Tensor]


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
        elif isinstance(data, torch.utils.data.DataLoader):
            _refuse_shuffling(data)
            self._batches = None
            self._loader = data
        elif isinstance(data, (list, tuple)):
            if len(data) == 0:
                raise InvalidInputError("the dataset is empty: got an empty list of batches")
            bad = [i for i, b in enumerate(data) if not is_batch(b)]
            if bad:
                raise InvalidInputError(
                    f"each batch must be a pair (X, y) of tensors; batch {bad[0]} is {type(data[bad[0]]).__name__}"
                )
            self._batches = [(_as_tensor(x, "X"), _as_tensor(y, "y")) for x, y in data]
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, dict)):
            raise InvalidInputError(
                "data must be (X, y), a list of (X, y) batches, a DataLoader or a spectra Dataset; "
                f"got a {type(data).__name__} (wrap a one-shot iterator in list(...))"
            )
        else:
            raise InvalidInputError(
                "data must be (X, y), a list of (X, y) batches, a DataLoader or a spectra Dataset; "
                f"got {type(data).__name__}"
            )
        self._validate()

    def __iter__(self) -> Iterator[Batch]:
        # Empty batches carry no samples and no weight; skipping them keeps a
        # mean-reduced batch loss from turning into 0/0.
        batches = self._batches if self._batches is not None else (self._unpack(b) for b in self._loader)
        return (b for b in batches if b[0].shape[0] > 0)

    @staticmethod
    def _unpack(batch: Any) -> Batch:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise InvalidInputError(
                f"the DataLoader must yield (X, y) pairs; it yielded a {type(batch).__name__}"
            )
        return _as_tensor(batch[0], "X"), _as_tensor(batch[1], "y")

    def _validate(self) -> None:
        sizes, feature_shape = [], None
        for i, (X, y) in enumerate(self):
            if X.shape[0] != y.shape[0]:
                raise InvalidInputError(
                    f"batch {i}: X has {X.shape[0]} samples but y has {y.shape[0]} "
                    f"(X {tuple(X.shape)}, y {tuple(y.shape)})"
                )
            if feature_shape is None:
                feature_shape = tuple(X.shape[1:])
            elif tuple(X.shape[1:]) != feature_shape:
                raise InvalidInputError(
                    f"batches have inconsistent feature shapes: batch 0 has {feature_shape}, "
                    f"batch {i} has {tuple(X.shape[1:])}"
                )
            if X.is_floating_point() and not bool(torch.isfinite(X).all()):
                raise NonFiniteError(f"batch {i}: the inputs X contain NaN or Inf")
            if y.is_floating_point() and not bool(torch.isfinite(y).all()):
                raise NonFiniteError(f"batch {i}: the targets y contain NaN or Inf")
            sizes.append(int(X.shape[0]))
        if not sizes or sum(sizes) == 0:
            raise InvalidInputError("the dataset is empty: no samples")
        self.batch_sizes = sizes
        self.feature_shape = feature_shape

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
        """Number of input elements over all batches (a proxy for memory use)."""
        return self.num_samples * int(np.prod(self.feature_shape or (1,)))


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
