"""A Hugging Face GPT-2 built from a small config (nothing downloaded), with dict batches and padding.

Skipped only where the ``transformers`` extra is not installed
(``pip install 'hessian-spectra[transformers]'``); CI installs it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spectra.matrices import get as operator_class
from spectra.operators.hessian import HessianOperator

from .test_user_models import RTOL, dense_hessian
from .token_truth import dense_token_truth

transformers = pytest.importorskip("transformers", reason="the transformers extra is not installed")

VOCAB, LENGTH = 11, 6
ATTENTION = "transformer.h.0.attn"  # the parameters analysed: the block's attention (80 of them)


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=4, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config).double().eval()


def _batches() -> list[dict[str, torch.Tensor]]:
    """Two batches of ragged sequences, right-padded: attention_mask 0 and labels -100 on padding."""
    g = torch.Generator().manual_seed(1)
    out = []
    for lengths in ((6, 3), (4, 5, 2)):
        ids = torch.randint(1, VOCAB, (len(lengths), LENGTH), generator=g)
        mask = torch.zeros_like(ids)
        for row, n in enumerate(lengths):
            mask[row, :n] = 1
        labels = ids.masked_fill(mask == 0, -100)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def _reference_loss(call, batches) -> torch.Tensor:
    """Next-token cross-entropy over every real token of both batches, written with torch alone."""
    logits, labels = [], []
    for b in batches:
        out = call(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        logits.append(out[:, :-1].reshape(-1, VOCAB))
        labels.append(b["labels"][:, 1:].reshape(-1))
    return F.cross_entropy(torch.cat(logits), torch.cat(labels), ignore_index=-100)


def test_loss_is_hugging_faces_own():
    """No glue: spectra reads the dict batch as Hugging Face does (labels out, .logits in, shifted)."""
    model, batches = _gpt2(), _batches()
    op = HessianOperator(model, "cross_entropy", batches[:1], params=ATTENTION)
    assert op.describe()["batch_reader"]["shift_labels"] is True and op.describe()["unit"] == "token"
    with torch.no_grad():
        own = model(**batches[0]).loss  # Hugging Face computes its loss in float32
    assert op.loss_value == pytest.approx(float(own), rel=1e-6)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_eigenvalues_match_dense_autograd(mode):
    model, batches = _gpt2(), _batches()
    op = HessianOperator(model, "cross_entropy", batches, params=ATTENTION, mode=mode)
    assert op.describe()["hvp_mode"] == mode and op.shape[0] == 80
    H = dense_hessian(model, lambda call: _reference_loss(call, batches), names=op.param_names)
    got, want = torch.linalg.eigvalsh(op.to_dense()), torch.linalg.eigvalsh(H)
    assert float((got - want).abs().max()) <= RTOL * float(want.abs().max())


@pytest.mark.parametrize("matrix,options", [("empirical_fisher", {}), ("mc_fisher", {"mc_samples": 2, "seed": 1})])
def test_token_fishers_equal_a_loop_over_the_real_next_tokens(matrix, options):
    """The Fishers of the causal LM: outer products per real next token (labels shifted as Hugging Face does)."""
    model, batches = _gpt2(), _batches()
    op = operator_class(matrix)(model, "cross_entropy", batches, params=ATTENTION, **options)
    info = op.describe()
    assert info["batch_reader"]["shift_labels"] is True and info["outer_products"] == "per token"
    assert info["num_samples"] == 15  # real tokens with a next token: 5 + 2 | 3 + 4 + 1
    truth = dense_token_truth(matrix, model, batches, shift=True, names=op.param_names, **options)
    torch.testing.assert_close(op.to_dense(), truth, rtol=0, atol=1e-10 * float(truth.abs().max()))
