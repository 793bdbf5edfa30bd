"""Dense float64 ground truth for every curvature matrix, built without spectra's products.

* Hessian: ``torch.autograd.functional.hessian`` of the whole-dataset loss;
* Gauss-Newton: ``sum_b J_b^T H_b J_b`` from ``torch.func.jacrev`` and ``torch.func.hessian``
  (:func:`tests.test_ggn.dense_ggn`); residual: the difference of the two;
* empirical Fisher: per-sample gradients by a plain loop, ``(1/N) sum_i g_i g_i^T``;
* Monte-Carlo Fisher: the same loop over the labels spectra draws for each sample
  (:func:`spectra.operators.sampling.draw_targets`, called one sample at a time
  with the sample's index), ``(1/(N M)) sum_i sum_m g_im g_im^T``.  Whether the
  draws follow the model's distribution is tested separately (unbiasedness).
"""

from __future__ import annotations

import torch
from torch import nn

from spectra.losses import resolve_loss
from spectra.operators.sampling import draw_targets
from spectra.testing import reference_hessian

from .test_ggn import dense_ggn

MATRICES = ("hessian", "ggn", "residual", "empirical_fisher", "mc_fisher")


def _selected(model: nn.Module, names: list[str] | None) -> list[torch.Tensor]:
    return [p for n, p in model.named_parameters() if p.requires_grad and (names is None or n in names)]


def per_sample_gradients(model: nn.Module, loss: str, X: torch.Tensor, y: torch.Tensor,
                         names: list[str] | None = None) -> torch.Tensor:
    """``[N, P]``: row ``i`` is the gradient of ``loss(model(x_i), y_i)``, one sample at a time."""
    fn, params = resolve_loss(loss), _selected(model, names)
    rows = []
    for i in range(X.shape[0]):
        g = torch.autograd.grad(fn(model(X[i : i + 1]), y[i : i + 1]), params)
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


def mc_fisher_truth(model: nn.Module, loss: str, X: torch.Tensor, y: torch.Tensor, names: list[str] | None, *,
                    mc_samples: int, seed: int) -> torch.Tensor:
    fn, params = resolve_loss(loss), _selected(model, names)
    total = 0
    for i in range(X.shape[0]):
        out = model(X[i : i + 1])
        labels = draw_targets(fn, out.detach(), y[i : i + 1], seed=seed, first_row=i, mc_samples=mc_samples)[0]
        for label in labels:
            g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(fn(out, label[None]), params,
                                                                        retain_graph=True)])
            total = total + torch.outer(g, g)
    return total / (X.shape[0] * mc_samples)


def dense_truth(matrix: str, model: nn.Module, loss: str, X: torch.Tensor, y: torch.Tensor,
                names: list[str] | None = None, *, mc_samples: int = 1, seed: int = 0) -> torch.Tensor:
    """The dense float64 matrix ``matrix`` of the mean loss over all of ``(X, y)``."""
    was_training = model.training
    model.eval()
    try:
        if matrix == "hessian":
            return reference_hessian(model, loss, X, y, param_names=names)
        if matrix == "ggn":
            return dense_ggn(model, loss, [(X, y)], names)
        if matrix == "residual":
            return reference_hessian(model, loss, X, y, param_names=names) - dense_ggn(model, loss, [(X, y)], names)
        if matrix == "empirical_fisher":
            G = per_sample_gradients(model, loss, X, y, names)
            return G.T @ G / X.shape[0]
        if matrix == "mc_fisher":
            return mc_fisher_truth(model, loss, X, y, names, mc_samples=mc_samples, seed=seed)
    finally:
        model.train(was_training)
    raise ValueError(matrix)
