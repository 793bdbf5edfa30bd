"""Batch conventions: how a batch is split, how the model is called and read, what a batch counts."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from spectra.batches import (
    BatchConvention,
    CalledModel,
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

# (name, convention, model, batch, expected output, expected target, expected units)
CASES = [
    ("tuple-X-y", BatchConvention(), nn.Identity(), (X, Y), X, Y, 4),
    ("list-X-y", BatchConvention(), nn.Identity(), [X, Y], X, Y, 4),
    ("named-tuple", BatchConvention(), nn.Identity(), Pair(X, Y), X, Y, 4),
    ("tuple-three", BatchConvention(), TwoInputs(), (X, X, Y), 2 * X, Y, 4),
    ("tuple-target-first", BatchConvention(target=0), nn.Identity(), (Y, X), X, Y, 4),
    ("dict-hugging-face", BatchConvention(), Keywords(),
     {"input_ids": IDS, "attention_mask": torch.ones_like(IDS), "labels": LABELS},
     IDS.double().unsqueeze(-1).expand(-1, -1, 6), LABELS, 5),
    ("dict-logits-output", BatchConvention(), HFStyle(), {"input_ids": IDS, "labels": LABELS},
     IDS.double().unsqueeze(-1).expand(-1, -1, 6), LABELS, 5),
    ("dict-other-key", BatchConvention(target="y"), nn.Identity(), {"input": X, "y": Y}, X, Y, 4),
    ("custom-everything", BatchConvention(target=lambda b: b["t"], inputs=lambda b: b["x"],
                                         call=lambda model, x: model(x) * 2, output=lambda out: out + 1,
                                         count=lambda b: 7),
     nn.Identity(), {"x": X, "t": Y}, 2 * X + 1, Y, 7),
    ("output-by-name", BatchConvention(output="pred"), lambda x: {"pred": x}, (X, Y), X, Y, 4),
]


@pytest.mark.parametrize("name,convention,model,batch,output,target,units", CASES, ids=[c[0] for c in CASES])
def test_convention_table(name, convention, model, batch, output, target, units):
    prepared = convention.for_model(model if isinstance(model, nn.Module) else nn.Identity()).prepare(
        batch, resolve_loss("cross_entropy"))
    assert torch.equal(prepared.target, target) and prepared.units == units
    assert torch.equal(convention.run(model, prepared.inputs), output)


# (name, convention, batch or output, message)
REFUSALS = [
    ("dict-without-labels", BatchConvention(), {"input_ids": IDS}, "has no target 'labels'"),
    ("one-element-tuple", BatchConvention(), (X,), "(X, y)"),
    ("string-target-tuple", BatchConvention(target="labels"), (X, Y), "must be an index"),
    ("tensor-batch", BatchConvention(), X, "a batch must be a tuple"),
    ("negative-count", BatchConvention(count=lambda b: -1), (X, Y), "must not be negative"),
    ("shift-float-labels", BatchConvention(shift_labels=True), (X, X), "integer label tensors"),
]


@pytest.mark.parametrize("name,convention,batch,message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(name, convention, batch, message):
    with pytest.raises(InvalidInputError) as info:
        convention.prepare(batch, resolve_loss("cross_entropy"))
    assert message in str(info.value)


@pytest.mark.parametrize("raw", [(X, X), {"prediction": X}, None], ids=["tuple", "dict-without-logits", "none"])
def test_output_without_logits_refused(raw):
    with pytest.raises(InvalidInputError) as info:
        BatchConvention().read_output(raw)
    assert "BatchConvention(output=...)" in str(info.value)
    with pytest.raises(InvalidInputError, match="no 'pred'"):
        BatchConvention(output="pred").read_output({"logits": X})


def test_shift_labels_for_next_token_prediction():
    shifted = shift_labels(LABELS)
    assert shifted.tolist() == [[1, 4, -100, -100], [5, -100, -100, -100]]
    prepared = BatchConvention(shift_labels=True).prepare({"input_ids": IDS, "labels": LABELS},
                                                          resolve_loss("cross_entropy"))
    assert torch.equal(prepared.target, shifted) and prepared.units == 3
    with pytest.raises(InvalidInputError, match=r"\[batch, length\]"):
        shift_labels(Y)


def test_plain_modules_are_not_causal_lms():
    assert not is_causal_lm(nn.Linear(2, 2))
    assert BatchConvention().for_model(nn.Linear(2, 2)).shift_labels is False
    assert BatchConvention(shift_labels=True).for_model(nn.Linear(2, 2)).shift_labels is True


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


def test_called_model_under_functional_call():
    """The convention's call can be evaluated at other parameters (what forward-mode products need)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    convention = BatchConvention(target="labels")
    wrapped = CalledModel(model, convention)
    inputs = {"input": X.double()}
    new = {f"model.{n}": torch.zeros_like(p) for n, p in model.named_parameters()}
    out = torch.func.functional_call(wrapped, new, (inputs,))
    assert torch.equal(out, torch.zeros(4, 2, dtype=torch.float64))
    assert torch.equal(wrapped(inputs), model(X.double()))
