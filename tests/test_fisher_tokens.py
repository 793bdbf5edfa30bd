"""Every curvature matrix of a token loss on dict batches with ragged -100 padding, against dense truth.

Truth: :mod:`tests.token_truth` (autograd's Hessian of the token-mean loss written with torch
alone, ``J^T S J`` from ``torch.func``, and the Fishers by a plain loop over the counted tokens).
Tolerance: 1e-10 relative to the largest entry (float64 round-off).  Each row also asserts the
path: the unit counted, how many, the engine, and what the Fisher's outer products run over.
"""

from __future__ import annotations

import pytest
import torch

import spectra
from spectra.batches import BatchReader
from spectra.errors import InvalidInputError
from spectra.losses import Loss
from spectra.matrices import get as operator_class
from spectra.operators.fisher import EmpiricalFisherOperator, MCFisherOperator
from spectra.operators.ggn import GGNOperator
from spectra.operators.sampling import uniforms

from .token_truth import TokenMixer, dense_token_truth, spectra_loss, token_batches

RTOL = 1e-10
MC = {"mc_samples": 2, "seed": 3}
COUNTED = 20  # real tokens of token_batches(): 5 + 3 + 1 + 2 + 4 + 5


def _options(matrix: str) -> dict:
    return dict(MC) if matrix == "mc_fisher" else {}


# (name, matrix, loss kind, logits [N, V, L], shift labels, reduction, engine, tokens counted)
ROWS = [
    ("ef-ce", "empirical_fisher", "cross_entropy", False, False, "mean", "reverse", COUNTED),
    ("ef-ce-forward", "empirical_fisher", "cross_entropy", False, False, "mean", "forward", COUNTED),
    ("ef-ce-classes-first", "empirical_fisher", "cross_entropy", True, False, "mean", "reverse", COUNTED),
    ("ef-ce-sum", "empirical_fisher", "cross_entropy", False, False, "sum", "reverse", COUNTED),
    ("ef-ce-next-token", "empirical_fisher", "cross_entropy", False, True, "mean", "reverse", COUNTED - 6),
    ("ef-mse-one-hot", "empirical_fisher", "mse", False, False, "mean", "reverse", COUNTED),
    ("mc-ce", "mc_fisher", "cross_entropy", False, False, "mean", "reverse", COUNTED),
    ("mc-ce-forward-next-token", "mc_fisher", "cross_entropy", False, True, "mean", "forward", COUNTED - 6),
    ("mc-ce-classes-first-sum", "mc_fisher", "cross_entropy", True, False, "sum", "reverse", COUNTED),
    ("mc-mse-one-hot", "mc_fisher", "mse", False, False, "mean", "reverse", COUNTED),
    ("mc-mse-classes-first", "mc_fisher", "mse", True, False, "mean", "reverse", COUNTED),
    ("hessian-ce", "hessian", "cross_entropy", False, False, "mean", "reverse", COUNTED),
    ("ggn-ce-classes-first", "ggn", "cross_entropy", True, False, "mean", "reverse", COUNTED),
    ("residual-mse", "residual", "mse", False, False, "mean", "reverse", COUNTED),
]


@pytest.mark.parametrize("name,matrix,kind,classes_first,shift,reduction,engine,tokens", ROWS,
                         ids=[r[0] for r in ROWS])
def test_token_loss_matrix_equals_dense_truth(name, matrix, kind, classes_first, shift, reduction, engine, tokens):
    model, batches = TokenMixer(classes_first=classes_first).double(), token_batches()
    op = operator_class(matrix)(model, spectra_loss(kind, classes_first, reduction), batches, mode=engine,
                                reader=BatchReader(shift_labels=shift), **_options(matrix))
    info = op.describe()
    assert info["unit"] == "token" and info["num_samples"] == tokens and info["product_engine"] == engine
    assert info["reduction"] == reduction and info["batch_reader"]["shift_labels"] is shift
    if "fisher" in matrix:
        assert info["outer_products"] == "per token"
        context = op._context(next(op.batches()), op.engine)
        assert context.fisher_layout.units == 5  # a factor per position: the outer products run over tokens
    truth = dense_token_truth(matrix, model, batches, kind, shift=shift, reduction=reduction, **_options(matrix))
    torch.testing.assert_close(op.to_dense(), truth, rtol=0, atol=RTOL * float(truth.abs().max()))


def test_token_empirical_fisher_mean_gradient_is_the_loss_gradient():
    """F's factors are the counted tokens' own gradients over sqrt(T): (1/T) sum_t g_t is the loss gradient."""
    model, batches = TokenMixer().double(), token_batches()
    F = EmpiricalFisherOperator(model, "cross_entropy", batches, mode="reverse", cache_graph=True)
    gradient = torch.zeros_like(F.gradient)
    for batch, context in zip(batches, F._contexts):
        s = context.fisher_layout.from_units(context.fisher_factors[:, 0]) * COUNTED ** 0.5  # [n, L, V]
        logits = model(batch["input_ids"], batch["attention_mask"]).logits
        gradient += F.flatten(torch.autograd.grad(logits, F.params, s / COUNTED))
    torch.testing.assert_close(gradient, F.gradient, rtol=0, atol=1e-13)


def test_analyze_token_fisher_through_the_api():
    model, batches = TokenMixer().double(), token_batches()
    r = spectra.analyze(model, batches, matrix="empirical_fisher", method="exact")
    truth = torch.linalg.eigvalsh(dense_token_truth("empirical_fisher", model, batches))
    assert r.provenance["outer_products"] == "per token" and r.provenance["unit"] == "token"
    assert float((torch.as_tensor(r.eigenvalues) - truth).abs().max()) <= 1e-9 * float(truth.abs().max())


def test_token_mc_fisher_is_unbiased_for_the_gauss_newton_matrix():
    """Over 24 seeds (16 draws per token each) the mean MC Fisher is the GGN within 6 standard errors."""
    model, batches, seeds = TokenMixer().double(), token_batches(), 24
    G = GGNOperator(model, "cross_entropy", batches).to_dense()
    draws = torch.stack([MCFisherOperator(model, "cross_entropy", batches, mc_samples=16, seed=s, chunk_size=64,
                                          check_determinism=False).to_dense() for s in range(seeds)])
    mean, stderr = draws.mean(0), draws.std(0) / seeds ** 0.5
    noisy = stderr > 1e-12 * float(G.abs().max())
    z = (mean - G)[noisy] / stderr[noisy]
    assert float(z.abs().max()) < 6.0 and 0.3 < float((z ** 2).mean()) < 3.0
    torch.testing.assert_close(mean[~noisy], G[~noisy], rtol=0, atol=1e-12 * float(G.abs().max()))


def test_token_mc_fisher_does_not_depend_on_padding_or_batching():
    """The draws of a token depend on its sequence's index and its position only: re-pad and re-batch, same matrix."""
    model, batches = TokenMixer().double(), token_batches()
    a = MCFisherOperator(model, "cross_entropy", batches, **MC).to_dense()
    wider = []
    for b in batches:  # three more padding positions, and every sequence in its own batch
        pad = {k: torch.nn.functional.pad(v, (0, 3), value=-100 if k == "labels" else 0) for k, v in b.items()}
        wider += [{k: v[i : i + 1] for k, v in pad.items()} for i in range(len(b["labels"]))]
    b = MCFisherOperator(model, "cross_entropy", wider, **MC).to_dense()
    torch.testing.assert_close(b, a, rtol=0, atol=RTOL * float(a.abs().max()))


def test_uniforms_are_counter_based():
    u = uniforms(7, 10, 4, 6)
    assert torch.equal(torch.as_tensor(uniforms(7, 12, 1, 3)), torch.as_tensor(u[2:3, :3]))
    assert 0 < u.min() and u.max() < 1 and not (uniforms(8, 10, 4, 6) == u).any()
    big = uniforms(0, 0, 1000, 100).ravel()  # moments of U(0, 1): mean 1/2, variance 1/12 (5 standard errors)
    assert abs(big.mean() - 0.5) < 5 * (1 / 12 / big.size) ** 0.5
    assert abs(big.var() - 1 / 12) < 5 * (1 / 180 / big.size) ** 0.5


class _TokenCountingLoss(Loss):
    """A plugin-style loss that averages over tokens but does not say what one token's loss is."""

    def count(self, target):
        return int((target != -100).sum())

    def unit(self, target):
        return "token"


@pytest.mark.parametrize("matrix,loss,match", [
    ("empirical_fisher", _TokenCountingLoss("tokens", lambda o, t: torch.nn.functional.cross_entropy(
        o.flatten(0, 1), t.flatten())), "counts tokens, and spectra knows the per-token losses"),
    ("mc_fisher", _TokenCountingLoss("tokens", lambda o, t: o.sum()), "not one of them"),
])
def test_fisher_of_a_token_loss_it_cannot_split_is_refused(matrix, loss, match):
    with pytest.raises(InvalidInputError, match=match):
        operator_class(matrix)(TokenMixer().double(), loss, token_batches())
