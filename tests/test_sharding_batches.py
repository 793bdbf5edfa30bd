"""spectra.sharding.shard on batches of every structure: dicts, nested containers, lists of batches.

Each case checks that the ranks' shards, put back together in rank order, are the data
exactly (every tensor, every key, the containers' types), that shard sizes differ by at most
one sample, and the path: whole batches per rank, or samples cut out of the batches.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
import torch

from spectra.batches import sample_count, slice_samples, tensors_in
from spectra.errors import InvalidInputError
from spectra.sharding import shard

Pair = namedtuple("Pair", "inputs target")
G = torch.Generator().manual_seed(0)


def _hf(n: int, length: int = 4) -> dict:
    ids = torch.randint(1, 9, (n, length), generator=G)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.masked_fill(ids > 6, -100)}


def _nested(n: int) -> tuple:
    return ({"x": torch.randn(n, 2, generator=G), "extra": [torch.arange(n), (torch.zeros(n, 3),)], "flag": True},
            torch.arange(n))


# (name, data, world, whole batches per rank?)
CASES = [
    ("dict", _hf(7), 3, False),
    ("nested-tuple-with-a-flag", _nested(5), 2, False),
    ("named-tuple", Pair(torch.randn(6, 2, generator=G), torch.arange(6)), 4, False),
    ("numpy-leaves", {"x": np.arange(10.0).reshape(5, 2), "labels": np.arange(5)}, 2, False),
    ("list-of-dicts-whole", [_hf(3), _hf(1), _hf(4), _hf(2)], 2, True),
    ("list-of-nested-whole", [_nested(2), _nested(3), _nested(2)], 3, True),
    ("list-of-dicts-cut", [_hf(5), _hf(2)], 3, False),
]


def _leaves(data) -> list:
    return [torch.as_tensor(t) for _, t in tensors_in(data, kinds=(torch.Tensor, np.ndarray))]


@pytest.mark.parametrize("name,data,world,whole", CASES, ids=[c[0] for c in CASES])
def test_shards_put_back_together_are_the_data(name, data, world, whole):
    parts = [shard(data, r, world) for r in range(world)]
    batches = data if isinstance(data, list) else [data]
    pieces = [p for part in parts for p in part] if isinstance(data, list) else parts
    rows = [sum(sample_count(p) for p in part) if isinstance(data, list) else sample_count(part) for part in parts]
    assert min(rows) >= 1 and sum(rows) == sum(sample_count(b) for b in batches)
    if whole:  # whole batches, untouched and in order
        assert [p is b for p, b in zip(pieces, batches)] == [True] * len(batches) and len(pieces) == len(batches)
    else:  # a contiguous range of samples per rank, sizes within one sample
        assert max(rows) - min(rows) <= 1
        assert all(type(p) is (dict if isinstance(b, dict) else type(b)) for p in pieces for b in batches[:1])
    # every leaf, concatenated in rank order, is the original's
    joined = [torch.cat(column) for column in zip(*(_leaves(p) for p in pieces))]
    original = [torch.cat(column) for column in zip(*(_leaves(b) for b in batches))]
    assert len(joined) == len(original) and all(torch.equal(a, b) for a, b in zip(joined, original))
    if name == "nested-tuple-with-a-flag":
        assert all(p[0]["flag"] is True for p in parts)  # a value that is not per sample is kept


# (name, data, fragment of the message)
REFUSALS = [
    ("scalar-tensor", {"input_ids": torch.zeros(4, 3), "temperature": torch.tensor(1.0)},
     'batch["temperature"] has shape ()'),
    ("shared-position-ids", {"input_ids": torch.zeros(4, 3), "position_ids": torch.arange(3)[None]},
     'batch["position_ids"] has shape (1, 3), but batch["input_ids"] has 4 samples'),
    ("per-sample-strings", {"input_ids": torch.zeros(3, 2), "text": ["a", "b", "c"]},
     'batch["text"] is a list of 3 values that are not tensors'),
    ("a-bad-batch-in-a-list", [_hf(2), {"x": torch.zeros(2, 1), "labels": torch.zeros(3)}],
     'batch 1["labels"] has shape (3,)'),
    ("no-tensor", {"labels": [1, 2]}, "holds no tensor"),
]


@pytest.mark.parametrize("name,data,match", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_batches_that_cannot_be_cut_are_refused(name, data, match):
    with pytest.raises(InvalidInputError, match="cannot cut|holds no tensor") as info:
        shard(data, 0, 2)
    assert match in str(info.value)


def test_plain_values_that_are_not_per_sample_are_kept():
    batch = {"input_ids": torch.zeros(4, 2), "names": ["tokens", "mask"]}  # 2 values, 4 samples
    assert [shard(batch, r, 2)["names"] for r in range(2)] == [["tokens", "mask"]] * 2
    assert slice_samples(batch, 1, 3)["input_ids"].shape == (2, 2)
