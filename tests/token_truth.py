"""Dense float64 truth for every curvature matrix of a token loss on dict batches, without spectra's products.

A unit is a target token that is not -100; ``T`` counts them over all batches.
The loss is ``(1/T) sum_tokens loss_t`` (``reduction="sum"``: without ``1/T``),
each token's loss written here with torch alone (cross-entropy, or the half
squared error to the one-hot label):

* Hessian: ``torch.autograd.functional.hessian`` of that loss over all batches at once;
* Gauss-Newton: ``sum_b J_b^T (d^2 loss / d f_b^2) J_b`` from ``torch.func.jacrev`` and
  ``torch.func.hessian``; residual: the difference of the two;
* empirical Fisher: ``(1/T) sum_t g_t g_t^T`` with ``g_t`` the gradient of token ``t``'s own loss,
  one token at a time by a plain loop;
* Monte-Carlo Fisher: the same loop over the targets spectra draws for each sequence
  (:func:`spectra.operators.sampling.draw_targets`, called one sequence at a time with its
  index in the dataset), ``(1/(T M)) sum_t sum_m g_tm g_tm^T``.

The model (:class:`TokenMixer`) takes ``input_ids`` and ``attention_mask`` and returns an
object with ``.logits``, as Hugging Face models do; every position depends on the earlier ones.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spectra.losses import IGNORE_INDEX, cross_entropy, mse
from spectra.operators.sampling import draw_targets

VOCAB, LENGTH, WIDTH = 7, 5, 3


class TokenMixer(nn.Module):
    """Embeddings of the real tokens, a causal running mean, a tanh layer and a vocabulary head.

    ``classes_first``: logits ``[N, V, L]`` (torch's layout) instead of ``[N, L, V]``.
    """

    def __init__(self, seed: int = 0, classes_first: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.mix = nn.Linear(WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB)
        self.classes_first = classes_first

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        e = self.embed(input_ids) * attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
        positions = torch.arange(1, input_ids.shape[1] + 1, dtype=e.dtype)
        logits = self.head(torch.tanh(self.mix(e.cumsum(1) / positions[:, None])))
        return SimpleNamespace(logits=logits.transpose(1, 2) if self.classes_first else logits)


def token_batches(lengths: tuple[tuple[int, ...], ...] = ((5, 3, 1), (2,), (4, 5)), seed: int = 4) -> list[dict]:
    """Dict batches of ragged sequences (one tuple of real lengths per batch): ids 0 and labels -100 on padding."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for batch in lengths:
        ids = torch.randint(1, VOCAB, (len(batch), LENGTH), generator=g)
        mask = torch.zeros_like(ids)
        for row, n in enumerate(batch):
            mask[row, :n] = 1
        out.append({"input_ids": ids * mask, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, IGNORE_INDEX)})
    return out


def spectra_loss(kind: str, classes_first: bool = False, reduction: str = "mean") -> Any:
    """The spectra loss the truth below is of (``class_dim`` set for ``[N, V, L]`` logits)."""
    make = cross_entropy if kind == "cross_entropy" else mse
    return make(reduction=reduction, class_dim=1 if classes_first else -1)


def _labels(batch: dict, shift: bool) -> torch.Tensor:
    labels = batch["labels"]
    if shift:
        labels = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)
    return labels


def _token_loss(kind: str, row: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One token's loss: ``row`` its logits ``[V]``, ``target`` a label or (MSE) a float vector ``[V]``."""
    if kind == "cross_entropy":
        return F.cross_entropy(row[None], target[None])
    if not target.is_floating_point():
        target = F.one_hot(target, row.shape[-1]).to(row.dtype)
    return 0.5 * (row - target).pow(2).sum()


def _summed_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The sum over a batch's counted tokens (``logits`` ``[n, L, V]``), vectorised with torch."""
    vocab = logits.shape[-1]
    if kind == "cross_entropy":
        return F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                               reduction="sum")
    keep = labels != IGNORE_INDEX
    one_hot = F.one_hot(labels.clamp(min=0), vocab).to(logits.dtype)
    return 0.5 * ((logits - one_hot).pow(2).sum(-1) * keep).sum()


class _Flat:
    """The model as a function of one flat vector of its trainable parameters (``names``: these only), in order."""

    def __init__(self, model: nn.Module, names: list[str] | None = None):
        self.model = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and (names is None or n in names)]
        self.names, self.shapes = [n for n, _ in named], [p.shape for _, p in named]
        self.fixed = {n: p.detach() for n, p in model.named_parameters() if n not in self.names}
        self.theta = torch.cat([p.detach().reshape(-1) for _, p in named])

    def logits(self, theta: torch.Tensor, batch: dict) -> torch.Tensor:
        """``[n, L, V]`` logits of ``batch`` at ``theta``."""
        pieces = [t.view(s) for t, s in zip(torch.split(theta, [s.numel() for s in self.shapes]), self.shapes)]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = torch.func.functional_call(self.model, {**self.fixed, **dict(zip(self.names, pieces))}, (),
                                         inputs).logits
        return out.transpose(1, 2) if getattr(self.model, "classes_first", False) else out


def dense_token_truth(matrix: str, model: nn.Module, batches: list[dict], kind: str = "cross_entropy", *,
                      shift: bool = False, reduction: str = "mean", mc_samples: int = 1, seed: int = 0,
                      names: list[str] | None = None) -> torch.Tensor:
    """The dense float64 matrix ``matrix`` of the token-mean (or summed) loss over all ``batches``.

    ``shift``: next-token labels (position ``t`` predicts the label of ``t + 1``); ``names``: these
    parameters only.
    """
    flat = _Flat(model.eval(), names)
    labels = [_labels(b, shift) for b in batches]
    T = sum(int((y != IGNORE_INDEX).sum()) for y in labels)
    c = 1.0 / T if reduction == "mean" else 1.0
    if matrix in ("hessian", "residual"):
        H = torch.autograd.functional.hessian(
            lambda theta: c * sum(_summed_loss(kind, flat.logits(theta, b), y) for b, y in zip(batches, labels)),
            flat.theta)
        if matrix == "hessian":
            return H
    if matrix in ("ggn", "residual"):
        G = 0
        for b, y in zip(batches, labels):
            f = flat.logits(flat.theta, b)
            J = torch.func.jacrev(lambda theta: flat.logits(theta, b))(flat.theta).reshape(f.numel(), -1)
            Hf = torch.func.hessian(lambda out: c * _summed_loss(kind, out, y))(f).reshape(f.numel(), f.numel())
            G = G + J.T @ Hf @ J
        return G if matrix == "ggn" else H - G
    if matrix == "empirical_fisher":
        return c * _outer_products(flat, kind, batches, labels, lambda out, i, row, y: [y[row]])
    if matrix == "mc_fisher":
        loss = spectra_loss(kind, getattr(model, "classes_first", False))

        def drawn(out, i, row, y):
            raw = out[row : row + 1].transpose(1, 2) if getattr(model, "classes_first", False) else out[row : row + 1]
            targets = draw_targets(loss, raw.detach(), y[row : row + 1], seed=seed, first_row=i,
                                   mc_samples=mc_samples)[0]
            if targets.is_floating_point() and getattr(model, "classes_first", False):
                targets = targets.transpose(1, 2)  # [M, V, L] -> [M, L, V]
            return list(targets)

        return c / mc_samples * _outer_products(flat, kind, batches, labels, drawn)
    raise ValueError(matrix)


def _outer_products(flat: _Flat, kind: str, batches: list[dict], labels: list[torch.Tensor], targets_of) -> torch.Tensor:
    """``sum over counted tokens t and their targets of g g^T``, ``g`` the gradient of token ``t``'s own loss."""
    P = flat.theta.numel()
    total = torch.zeros(P, P, dtype=torch.float64)
    theta = flat.theta.clone().requires_grad_(True)
    first = 0
    for b, y in zip(batches, labels):
        out = flat.logits(theta, b)
        for row in range(y.shape[0]):
            for target in targets_of(out, first + row, row, y):
                for t in range(y.shape[1]):
                    if int(y[row, t]) == IGNORE_INDEX:
                        continue
                    g = torch.autograd.grad(_token_loss(kind, out[row, t], target[t]), theta, retain_graph=True)[0]
                    total += torch.outer(g, g)
        first += y.shape[0]
    return total
