"""Batch conventions: how a batch is split, how the model is called and read, what a batch counts."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from spectra.batches import (
    BatchReader,
    is_causal_lm,
    leading_size,
    shift_labels,
    tensors_in,
    to_device,
)
from spectra.errors import InvalidInputError
from spectra.losses import resolve_loss

X = torch.arange(12.0).reshape(4, 3)
Y = torch.tensor([0, 1, 1, 0])
IDS = torch.tensor([[3, 1, 4, 0], [1, 5, 0, 0]])
LABELS = torch.tensor([[3, 1, 4, -100], [1, 5, -100, -100]])


class TwoInputs(nn.Module):
    def forward(self, a, b):
        return a + b


class Keywords(nn.Module):
    def forward(self, input_ids, attention_mask=None):
        out = input_ids.double().unsqueeze(-1).expand(-1, -1, 6)
        return out if attention_mask is None else out * attention_mask.unsqueeze(-1)


class HFStyle(nn.Module):
    """Returns an object with .logits, as a Hugging Face model does."""

    def forward(self, input_ids):
        return SimpleNamespace(logits=input_ids.double().unsqueeze(-1).expand(-1, -1, 6), loss=None)


Pair = namedtuple("Pair", "x y")

# (name, reader, model, batch, expected output, expected target, expected units)
CASES = [
    ("tuple-X-y", BatchReader(), nn.Identity(), (X, Y), X, Y, 4),
    ("list-X-y", BatchReader(), nn.Identity(), [X, Y], X, Y, 4),
    ("named-tuple", BatchReader(), nn.Identity(), Pair(X, Y), X, Y, 4),
    ("tuple-three", BatchReader(), TwoInputs(), (X, X, Y), 2 * X, Y, 4),
    ("tuple-target-first", BatchReader(target=0), nn.Identity(), (Y, X), X, Y, 4),
    ("dict-hugging-face", BatchReader(), Keywords(),
     {"input_ids": IDS, "attention_mask": torch.ones_like(IDS), "labels": LABELS},
     IDS.double().unsqueeze(-1).expand(-1, -1, 6), LABELS, 5),
    ("dict-logits-output", BatchReader(), HFStyle(), {"input_ids": IDS, "labels": LABELS},
     IDS.double().unsqueeze(-1).expand(-1, -1, 6), LABELS, 5),
    ("dict-other-key", BatchReader(target="y"), nn.Identity(), {"input": X, "y": Y}, X, Y, 4),
    ("custom-everything", BatchReader(target=lambda b: b["t"], inputs=lambda b: b["x"],
                                      forward=lambda model, x: model(x) * 2, output=lambda out: out + 1,
                                      units=lambda inputs, target: 7),
     nn.Identity(), {"x": X, "t": Y}, 2 * X + 1, Y, 7),
    ("output-by-name", BatchReader(output="pred"), lambda x: {"pred": x}, (X, Y), X, Y, 4),
]


@pytest.mark.parametrize("name,reader,model,batch,output,target,units", CASES, ids=[c[0] for c in CASES])
def test_reader_table(name, reader, model, batch, output, target, units):
    bound = reader.bind(model if isinstance(model, nn.Module) else nn.Identity(), resolve_loss("cross_entropy"))
    inputs, got_target = bound.split(batch)
    assert torch.equal(got_target, target) and bound.count(inputs, got_target) == units
    assert torch.equal(bound.call(model, inputs), output)
    assert bound.num_rows(inputs, got_target) == target.shape[0]


# (name, reader, batch, message)
REFUSALS = [
    ("dict-without-labels", BatchReader(), {"input_ids": IDS}, "has no target 'labels'"),
    ("one-element-tuple", BatchReader(), (X,), "(X, y)"),
    ("string-target-tuple", BatchReader(target="labels"), (X, Y), "must be an index"),
    ("tensor-batch", BatchReader(), X, "a batch must be a tuple"),
    ("negative-count", BatchReader(units=lambda inputs, target: -1), (X, Y), "must not be negative"),
    ("count-not-a-number", BatchReader(units=lambda inputs, target: "7"), (X, Y), "must return an integer"),
    ("shift-float-labels", BatchReader(shift_labels=True), (X, X), "integer label tensors"),
]


@pytest.mark.parametrize("name,reader,batch,message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(name, reader, batch, message):
    bound = reader.bind(nn.Identity(), resolve_loss("cross_entropy"))
    with pytest.raises(InvalidInputError) as info:
        bound.count(*bound.split(batch))
    assert message in str(info.value)


@pytest.mark.parametrize("raw", [(X, X), {"prediction": X}, None], ids=["tuple", "dict-without-logits", "none"])
def test_output_without_logits_refused(raw):
    with pytest.raises(InvalidInputError) as info:
        BatchReader().read_output(raw)
    assert "BatchReader(output=...)" in str(info.value)
    with pytest.raises(InvalidInputError, match="no 'pred'"):
        BatchReader(output="pred").read_output({"logits": X})


def test_shift_labels_for_next_token_prediction():
    shifted = shift_labels(LABELS)
    assert shifted.tolist() == [[1, 4, -100, -100], [5, -100, -100, -100]]
    reader = BatchReader(shift_labels=True).bind(nn.Identity(), resolve_loss("cross_entropy"))
    inputs, target = reader.split({"input_ids": IDS, "labels": LABELS})
    assert torch.equal(target, shifted) and reader.count(inputs, target) == 3
    with pytest.raises(InvalidInputError, match=r"\[batch, length\]"):
        shift_labels(Y)


def test_plain_modules_are_not_causal_lms():
    assert not is_causal_lm(nn.Linear(2, 2))
    loss = resolve_loss("cross_entropy")
    assert BatchReader().bind(nn.Linear(2, 2), loss).shift_labels is False
    assert BatchReader(shift_labels=True).bind(nn.Linear(2, 2), loss).shift_labels is True


def test_to_device_casts_floating_tensors_only():
    batch = {"ids": IDS, "mask": torch.ones(2, 4, dtype=torch.bool), "x": [X.float(), (X.float(), 3)],
             "pair": Pair(X.float(), Y)}
    moved = to_device(batch, "cpu", torch.float64)
    assert moved["ids"].dtype == torch.int64 and moved["mask"].dtype == torch.bool
    assert moved["x"][0].dtype == torch.float64 and moved["x"][1][0].dtype == torch.float64 and moved["x"][1][1] == 3
    assert isinstance(moved["pair"], Pair) and moved["pair"].x.dtype == torch.float64 and moved["pair"].y.dtype == torch.int64
    assert [p for p, _ in tensors_in(moved)] == ['batch["ids"]', 'batch["mask"]', 'batch["x"][0]',
                                                  'batch["x"][1][0]', 'batch["pair"][0]', 'batch["pair"][1]']
    assert leading_size(moved) == 2 and leading_size({"a": 1}) is None


def test_functional_call_through_the_reader():
    """The reader calls a functional version of the model (what forward-mode products pass it)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    reader = BatchReader().bind(model, resolve_loss("mse"))
    inputs, _ = reader.split({"input": X.double(), "labels": Y})
    zeros = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    out = reader.call(lambda *a, **k: torch.func.functional_call(model, zeros, a, k), inputs)
    assert torch.equal(out, torch.zeros(4, 2, dtype=torch.float64))
    assert torch.equal(reader.call(model, inputs), model(X.double()))
    assert "input" in reader.describe(inputs) and "(4, 3)" in reader.describe(inputs)


def test_counts_read_targets_only_when_the_loss_needs_them():
    from spectra.data import as_batch_source

    source = as_batch_source([(X, torch.tensor([0, -100, 1, 1])), (X[:2], torch.tensor([-100, -100]))])
    by_tokens = BatchReader().bind(nn.Identity(), resolve_loss("cross_entropy"))
    assert by_tokens.counts(source) == ([3, 0], [4, 2]) and by_tokens.unit(source) == "sample"
    by_samples = BatchReader().bind(nn.Identity(), resolve_loss(lambda out, target: out.sum()))
    assert by_samples.counts(source) == ([4, 2], [4, 2])
    custom = BatchReader(units=lambda inputs, target: 5).bind(nn.Identity(), resolve_loss("mse"))
    assert custom.counts(source) == ([5, 5], [4, 2]) and custom.unit(source) == "unit"
