"""The built-in losses against torch's own functions, their unit counts, reductions and refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spectra.errors import InvalidInputError, UnknownNameError
from spectra.losses import (
    BUILTIN_LOSSES,
    CrossEntropy,
    Loss,
    MeanSquaredError,
    cross_entropy,
    is_default_builtin,
    mse,
    resolve_loss,
)

G = torch.Generator().manual_seed(0)
LOGITS_NC = torch.randn(6, 4, generator=G, dtype=torch.float64)
LABELS_N = torch.tensor([0, 3, 1, -100, 2, 2])
LOGITS_NLV = torch.randn(3, 5, 7, generator=G, dtype=torch.float64)
# ragged padding: rows of 5, 3 and 1 real tokens
LABELS_NL = torch.tensor([[1, 6, 0, 2, 3], [4, 4, 5, -100, -100], [0, -100, -100, -100, -100]])
FLOAT_NLD = torch.randn(3, 5, 2, generator=G, dtype=torch.float64)
TARGET_NLD = torch.randn(3, 5, 2, generator=G, dtype=torch.float64)


def _masked_one_hot_mse(logits: torch.Tensor, labels: torch.Tensor, reduction: str) -> torch.Tensor:
    keep = labels != -100
    onehot = F.one_hot(labels.clamp(min=0), logits.shape[-1]).to(logits.dtype)
    per_token = 0.5 * ((logits - onehot) ** 2).sum(-1) * keep
    return per_token.sum() / (keep.sum() if reduction == "mean" else 1)


# (name, loss, output, target, reference value, units, unit name)
VALUE_CASES = [
    ("ce-samples-mean", "cross_entropy", LOGITS_NC, LABELS_N,
     F.cross_entropy(LOGITS_NC, LABELS_N), 5, "sample"),
    ("ce-samples-sum", resolve_loss("cross_entropy", "sum"), LOGITS_NC, LABELS_N,
     F.cross_entropy(LOGITS_NC, LABELS_N, reduction="sum"), 5, "sample"),
    # torch's own [N, C, L] layout is an independent reference for the Hugging Face [N, L, V] one
    ("ce-tokens-NLV-mean", "cross_entropy", LOGITS_NLV, LABELS_NL,
     F.cross_entropy(LOGITS_NLV.transpose(1, 2), LABELS_NL), 9, "token"),
    ("ce-tokens-NLV-sum", cross_entropy(reduction="sum"), LOGITS_NLV, LABELS_NL,
     F.cross_entropy(LOGITS_NLV.transpose(1, 2), LABELS_NL, reduction="sum"), 9, "token"),
    ("ce-tokens-NCL", "cross_entropy", LOGITS_NLV.transpose(1, 2), LABELS_NL,
     F.cross_entropy(LOGITS_NLV.transpose(1, 2), LABELS_NL), 9, "token"),
    ("ce-no-ignore", cross_entropy(ignore_index=None), LOGITS_NC, LABELS_N.clamp(min=0),
     F.cross_entropy(LOGITS_NC, LABELS_N.clamp(min=0)), 6, "sample"),
    ("mse-float-samples", "mse", LOGITS_NC, LOGITS_NC.flip(0),
     0.5 * ((LOGITS_NC - LOGITS_NC.flip(0)) ** 2).sum() / 6, 6, "sample"),
    ("mse-float-sequence-per-sample", "mse", FLOAT_NLD, TARGET_NLD,
     0.5 * ((FLOAT_NLD - TARGET_NLD) ** 2).sum() / 3, 3, "sample"),
    ("mse-float-sequence-per-position", mse(unit_dims=2), FLOAT_NLD, TARGET_NLD,
     0.5 * ((FLOAT_NLD - TARGET_NLD) ** 2).sum() / 15, 15, "token"),
    ("mse-labels-tokens-mean", "mse", LOGITS_NLV, LABELS_NL,
     _masked_one_hot_mse(LOGITS_NLV, LABELS_NL, "mean"), 9, "token"),
    ("mse-labels-tokens-sum", mse(reduction="sum"), LOGITS_NLV, LABELS_NL,
     _masked_one_hot_mse(LOGITS_NLV, LABELS_NL, "sum"), 9, "token"),
    ("mse-labels-samples", "mse", LOGITS_NC, LABELS_N,
     _masked_one_hot_mse(LOGITS_NC, LABELS_N, "mean"), 5, "sample"),
]


@pytest.mark.parametrize("name,loss,output,target,reference,units,unit", VALUE_CASES,
                         ids=[c[0] for c in VALUE_CASES])
def test_value_count_and_unit(name, loss, output, target, reference, units, unit):
    loss = resolve_loss(loss)
    loss.check_target(output, target)
    assert float(loss(output, target)) == pytest.approx(float(reference), rel=1e-13)
    assert loss.count(target) == units
    assert loss.unit(target) == unit


def test_gradients_match_torch_with_padding():
    """The token loss differentiates like torch's (padding gets exactly zero gradient)."""
    out = LOGITS_NLV.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(resolve_loss("cross_entropy")(out, LABELS_NL), out)
    ref_out = LOGITS_NLV.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(F.cross_entropy(ref_out.transpose(1, 2), LABELS_NL), ref_out)
    assert torch.allclose(g, ref, rtol=1e-13, atol=1e-16)
    assert bool((g[LABELS_NL == -100] == 0).all())


def test_no_counted_unit_gives_zero_not_nan():
    labels = torch.full((2, 5), -100)
    ce = resolve_loss("cross_entropy")
    assert ce.count(labels) == 0 and float(ce(LOGITS_NLV[:2], labels)) == 0.0


# (name, call, error, message)
REFUSALS = [
    ("ambiguous-layout", lambda: resolve_loss("ce")(torch.zeros(2, 3, 3), torch.zeros(2, 3, dtype=torch.long)),
     InvalidInputError, "ambiguous"),
    ("float-labels-ce", lambda: resolve_loss("ce").check_target(LOGITS_NC, LABELS_N.double()),
     InvalidInputError, "integer class labels"),
    ("labels-out-of-range", lambda: resolve_loss("ce").check_target(LOGITS_NC, torch.full((6,), 4)),
     InvalidInputError, "labels out of range"),
    ("negative-not-ignore", lambda: resolve_loss("ce").check_target(LOGITS_NC, torch.full((6,), -1)),
     InvalidInputError, "(or -100, ignored)"),
    ("one-label-per-sample", lambda: resolve_loss("ce").check_target(LOGITS_NC, LABELS_N[:3]),
     InvalidInputError, "one label per sample"),
    ("token-shape", lambda: resolve_loss("ce").check_target(LOGITS_NLV, LABELS_NL[:, :3]),
     InvalidInputError, "[N, L] labels"),
    ("class-dim-mismatch", lambda: cross_entropy(class_dim=1).check_target(LOGITS_NLV, LABELS_NL),
     InvalidInputError, "class_dim=1"),
    ("class-dim-batch", lambda: cross_entropy(class_dim=0).check_target(LOGITS_NLV, LABELS_NL),
     InvalidInputError, "batch axis"),
    ("mse-shape", lambda: resolve_loss("mse").check_target(FLOAT_NLD, TARGET_NLD[:, :2]),
     InvalidInputError, "shaped like the outputs"),
    ("bad-reduction-name", lambda: resolve_loss("mse", "none"), InvalidInputError, "'mean' or 'sum'"),
    ("bad-reduction-class", lambda: CrossEntropy(reduction="avg"), InvalidInputError, "'mean' or 'sum'"),
    ("bad-unit-dims", lambda: mse(unit_dims=3), InvalidInputError, "unit_dims"),
    ("conflicting-reduction", lambda: resolve_loss(mse(reduction="sum"), "mean"), InvalidInputError, "conflicts"),
    ("unknown-name", lambda: resolve_loss("hinge"), UnknownNameError, "cross_entropy"),
    ("not-a-loss", lambda: resolve_loss(3), InvalidInputError, "callable"),
    ("uncountable-target", lambda: resolve_loss(lambda o, t: o.sum()).count({"a": 1}), InvalidInputError,
     "BatchReader(units=...)"),
]


@pytest.mark.parametrize("name,call,error,message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(name, call, error, message):
    with pytest.raises(error, match=None) as info:
        call()
    assert message in str(info.value)


def test_reduction_is_honoured_never_dropped():
    summed = resolve_loss("cross_entropy", "sum")
    assert summed.reduction == "sum" and summed.describe()["reduction"] == "sum"
    assert resolve_loss("cross_entropy", "mean") is BUILTIN_LOSSES["cross_entropy"]
    assert resolve_loss(summed) is summed and resolve_loss(summed, "sum") is summed
    callable_sum = resolve_loss(lambda o, t: F.mse_loss(o, t, reduction="sum"), "sum")
    assert type(callable_sum) is Loss and callable_sum.reduction == "sum"


def test_default_builtin_recognised_by_settings():
    assert is_default_builtin(cross_entropy()) == "cross_entropy"
    assert is_default_builtin(MeanSquaredError()) == "mse"
    for other in (cross_entropy(reduction="sum"), cross_entropy(class_dim=1), mse(unit_dims=2),
                  resolve_loss(lambda o, t: o.sum())):
        assert is_default_builtin(other) is None
