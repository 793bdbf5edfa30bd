"""Cutting a dataset into contiguous shards, one per rank of a data-parallel job.

The shards of all ranks together are the dataset exactly, in order, and
their sizes differ by at most one sample (:func:`shard_sizes`).  A dataset
loader that can load only its part (the ``shard=(rank, world)`` keyword of
:func:`spectra.datasets.load`) returns what :func:`shard` of the whole dataset
would, with the record :func:`shard_record` writes.

>>> shard((torch.arange(5.0)[:, None], torch.arange(5)), rank=1, world=2)[1].tolist()
[3, 4]
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import torch

from .errors import InvalidInputError

__all__ = ["shard", "shard_record", "shard_sizes"]


def shard_sizes(num: int, world: int) -> list[int]:
    """Sizes of ``world`` contiguous shards of ``num`` items (the first ones one larger).

    >>> shard_sizes(10, 3)
    [4, 3, 3]
    """
    base, extra = divmod(int(num), int(world))
    return [base + (1 if r < extra else 0) for r in range(world)]


def _bounds(sizes: Sequence[int], r: int) -> tuple[int, int]:
    start = sum(sizes[:r])
    return start, start + sizes[r]


def shard_record(num: int, rank: int, world: int) -> dict[str, int]:
    """Where rank ``rank`` of ``world`` cuts ``num`` samples: the ``info["shard"]`` record of :func:`shard`.

    ``{"rank", "world", "start", "stop", "num_samples_total"}``: the rank holds
    samples ``start:stop``.  A dataset loader that loads only its shard (the
    ``shard=(rank, world)`` keyword, see :mod:`spectra.hookspecs`) picks those
    rows and stores this record, so that it returns what ``shard()`` of the
    whole dataset would.  Refuses a rank that would get no samples.

    >>> shard_record(10, 1, 3)
    {'rank': 1, 'world': 3, 'start': 4, 'stop': 7, 'num_samples_total': 10}
    """
    for value, what in ((num, "num"), (rank, "rank"), (world, "world")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputError(f"shard_record needs integers; got {what}={value!r}")
    if world < 1 or not 0 <= rank < world or num < 0:
        raise InvalidInputError(f"shard needs 0 <= rank < world and num >= 0; got rank={rank}, world={world}, "
                                f"num={num}")
    # shard_sizes() arithmetically, without a list of `world` sizes (world may be anything a user typed)
    base, extra = divmod(num, world)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    if stop == start:
        raise InvalidInputError(
            f"rank {rank} of {world} gets no samples: {num} samples cannot be shared by {world} ranks"
        )
    return {"rank": rank, "world": world, "start": start, "stop": stop, "num_samples_total": num}


def shard(data: Any, rank: int | None = None, world: int | None = None) -> Any:
    """This rank's contiguous part of ``data``; ``rank``/``world`` default to the process group's.

    * a :class:`spectra.data.Dataset` or one batch (a tuple ``(X, y)``, a dict
      such as a Hugging Face batch, or any nested structure of tensors): its
      samples split into ``world`` contiguous pieces whose sizes differ by at
      most one, every tensor cut along its first (sample) axis; the same type
      back (a Dataset's ``info`` records the shard);
    * a list of batches: whole consecutive batches per rank, balanced by sample
      count, when there are at least ``world`` batches; otherwise a contiguous
      range of the samples, cut out of the batches it overlaps;
    * a map-style ``torch.utils.data.Dataset``: a contiguous ``Subset``.

    The shards of all ranks together are ``data`` exactly, in order.  A batch
    that cannot be cut into samples (a tensor without the batch's samples on
    its first axis, a list of plain values) is refused, naming the part
    (:func:`spectra.batches.sample_count`).  A DataLoader cannot be split after
    the fact: shard its dataset and build one loader per rank (``shuffle=False``).

    >>> X, y = torch.zeros(7, 2), torch.arange(7)
    >>> [len(shard((X, y), r, 3)[1]) for r in range(3)]
    [3, 2, 2]
    >>> shard({"input_ids": torch.zeros(5, 4), "labels": torch.arange(5)}, 1, 2)["labels"].tolist()
    [3, 4]
    """
    from .batches import sample_count, slice_samples
    from .data import Dataset, is_single_batch, is_structured
    from .parallel.process import rank as process_rank
    from .parallel.process import world_size

    rank = process_rank() if rank is None else int(rank)
    world = world_size() if world is None else int(world)
    if world < 1 or not 0 <= rank < world:
        raise InvalidInputError(f"shard needs 0 <= rank < world; got rank={rank}, world={world}")
    if isinstance(data, Dataset):
        record = shard_record(len(data), rank, world)
        a, b = record["start"], record["stop"]
        return Dataset(data.X[a:b], data.y[a:b], name=data.name, info={**data.info, "shard": record})
    if isinstance(data, torch.utils.data.DataLoader):
        raise InvalidInputError(
            "shard() cannot split a DataLoader; shard its dataset and build one loader per rank: "
            "DataLoader(spectra.sharding.shard(loader.dataset), batch_size=..., shuffle=False)"
        )
    if is_single_batch(data):
        a, b = _sample_bounds(sample_count(data), rank, world)
        return slice_samples(data, a, b)
    if isinstance(data, (list, tuple)) and data and all(is_structured(b) for b in data):
        lengths = [sample_count(batch, f"batch {i}") for i, batch in enumerate(data)]
        if len(data) >= world:
            a, b = _balanced_batch_bounds(lengths, world, rank)
            return list(data[a:b])
        # fewer batches than ranks: this rank's contiguous range of the concatenated
        # samples, cut out of the batches it overlaps
        lo, hi = _sample_bounds(sum(lengths), rank, world)
        pieces, offset = [], 0
        for batch, n in zip(data, lengths):
            a, b = max(lo - offset, 0), min(hi - offset, n)
            if a < b:
                pieces.append(slice_samples(batch, a, b))
            offset += n
        return pieces
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        a, b = _sample_bounds(len(data), rank, world)
        return torch.utils.data.Subset(data, range(a, b))
    raise InvalidInputError(
        "shard() takes a spectra Dataset, a batch ((X, y), a dict or a nested structure of tensors), a list of "
        f"batches or a map-style torch Dataset; got {type(data).__name__}"
    )


def _sample_bounds(total: int, rank: int, world: int) -> tuple[int, int]:
    """Samples ``start:stop`` of rank ``rank``'s contiguous share of ``total``; refuses an empty one."""
    sizes = shard_sizes(total, world)
    _refuse_empty(sizes, rank, world, total)
    return _bounds(sizes, rank)


def _refuse_empty(sizes: list[int], rank: int, world: int, total: int) -> None:
    if sizes[rank] == 0:
        raise InvalidInputError(
            f"rank {rank} of {world} gets no samples: {total} samples cannot be shared by {world} ranks"
        )


def _balanced_batch_bounds(batch_sizes: list[int], world: int, rank: int) -> tuple[int, int]:
    """Cut consecutive batches into ``world`` non-empty groups with about equal sample counts."""
    total = sum(batch_sizes)
    cumulative = list(itertools.accumulate(batch_sizes))
    cuts = [0]
    for r in range(1, world):
        target = total * r / world
        # first batch boundary at or past the target, keeping every group non-empty
        j = next((i + 1 for i, c in enumerate(cumulative) if c >= target), len(batch_sizes))
        j = max(j, cuts[-1] + 1)
        j = min(j, len(batch_sizes) - (world - r))
        cuts.append(j)
    cuts.append(len(batch_sizes))
    return cuts[rank], cuts[rank + 1]
