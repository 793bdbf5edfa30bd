"""Checkers that validate operators and backends against exact answers.

Ship-with-the-library versions of the checks spectra's own tests run, so a
plugin backend or operator can be validated the same way:

* :func:`reference_hessian` — dense float64 Hessian from
  ``torch.autograd.functional.hessian`` (independent of spectra's HVPs);
* :func:`assert_operator_matches` — ``op @ V`` equals ``dense @ V``;
* :func:`assert_extremes_match` — a backend's top/bottom eigenvalues equal
  the ends of ``numpy.linalg.eigvalsh``;
* :func:`assert_quadrature_moments` — SLQ nodes/weights reproduce
  ``v^T H^j v / v^T v`` for ``j < 2m``;
* :func:`density_distance` — L1 distance between a result's broadened density
  and the broadened exact spectrum;
* :func:`gradient_difference` — the central finite difference of the
  gradient along a direction, ``(g(θ + εv) - g(θ - εv)) / 2ε``: a check of
  ``H v`` that needs only first derivatives (its error shrinks as ``ε²``).

>>> import torch
>>> from spectra.operators.base import DenseOperator
>>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
>>> assert_operator_matches(DenseOperator(A), A)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .density import default_grid, default_sigma, gaussian_density, l1_distance
from .losses import resolve_loss


def reference_hessian(model: torch.nn.Module, loss: Any, X: torch.Tensor, y: torch.Tensor,
                      param_names: list[str] | None = None) -> torch.Tensor:
    """Dense Hessian of ``loss(model(X), y)`` by ``torch.autograd.functional.hessian``.

    Flattening order follows ``model.named_parameters()`` restricted to
    ``param_names`` (default: all trainable), as HessianOperator does.
    """
    loss_fn = resolve_loss(loss)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if param_names is not None:
        named = [(n, p) for n, p in named if n in set(param_names)]
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in named])
    rest = {n: p.detach() for n, p in model.named_parameters() if n not in set(names)}
    rest.update(dict(model.named_buffers()))

    def f(flat: torch.Tensor) -> torch.Tensor:
        pieces = [t.view(s) for t, s in zip(torch.split(flat, sizes), shapes)]
        out = torch.func.functional_call(model, {**rest, **dict(zip(names, pieces))}, (X,))
        return loss_fn(out, y)

    was_training = model.training
    model.eval()
    try:
        return torch.autograd.functional.hessian(f, flat0, vectorize=True)
    finally:
        model.train(was_training)


def assert_operator_matches(op: Any, dense: torch.Tensor, num_vectors: int = 3, rtol: float = 1e-10,
                            seed: int = 0) -> None:
    """Assert ``op.matmat(V)`` equals ``dense @ V`` (relative to ``||dense @ V||``)."""
    gen = torch.Generator().manual_seed(seed)
    V = torch.randn(dense.shape[0], num_vectors, generator=gen, dtype=torch.float64)
    expected = dense.to(torch.float64) @ V
    got = op.matmat(V.to(op.dtype)).to(torch.float64).cpu()
    err = float((got - expected).norm() / max(float(expected.norm()), 1e-300))
    assert err <= rtol, f"operator product differs from the dense reference: rel error {err:.3e} > {rtol:.1e}"


def assert_extremes_match(result: Any, exact_eigenvalues: np.ndarray, rtol: float = 1e-6) -> None:
    """Assert each computed eigenvalue equals the exact one at the same rank from its end."""
    exact = np.sort(np.asarray(exact_eigenvalues))
    got = np.sort(np.asarray(result.eigenvalues))
    which = result.provenance.get("which", "largest")
    scale = max(np.abs(exact).max(), 1e-300)
    if which == "largest":
        expected = exact[-got.size:]
    elif which == "smallest":
        expected = exact[: got.size]
    else:
        half = got.size // 2
        expected = np.concatenate([exact[:half], exact[-(got.size - half):]])
    err = np.abs(got - expected) / scale
    assert err.max() <= rtol, f"extreme eigenvalues differ: max rel error {err.max():.3e} > {rtol:.1e}"


def quadrature_moments(nodes: np.ndarray, weights: np.ndarray, orders: int) -> np.ndarray:
    """``[num_probes, orders]`` moments ``sum_i w_i theta_i^j``."""
    return np.stack([(weights * nodes**j).sum(axis=-1) for j in range(orders)], axis=-1)


def krylov_moments(matrix: np.ndarray, probes: np.ndarray, orders: int) -> np.ndarray:
    """``[num_probes, orders]`` moments ``v^T A^j v / v^T v`` computed directly."""
    A = np.asarray(matrix, dtype=np.float64)
    out = np.zeros((probes.shape[1], orders))
    for p in range(probes.shape[1]):
        v = probes[:, p] / np.linalg.norm(probes[:, p])
        w = v.copy()
        for j in range(orders):
            out[p, j] = v @ w
            w = A @ w
    return out


def assert_quadrature_moments(result: Any, matrix: np.ndarray, probes: np.ndarray, rtol: float = 1e-8) -> None:
    """Gauss quadrature exactness: moments ``j < 2m`` agree, relative to ``||A||^j``."""
    m = result.nodes.shape[1]
    got = quadrature_moments(result.nodes, result.weights, 2 * m)
    want = krylov_moments(matrix, probes, 2 * m)
    norm = max(np.abs(np.linalg.eigvalsh(matrix)).max(), 1e-300)
    scale = norm ** np.arange(2 * m)
    err = np.abs(got - want) / scale
    assert err.max() <= rtol, f"quadrature moments differ: max scaled error {err.max():.3e} > {rtol:.1e}"


def density_distance(result: Any, exact_eigenvalues: np.ndarray, sigma: float | None = None,
                     num_points: int = 2001) -> float:
    """L1 distance between the broadened density of ``result`` and of the exact spectrum."""
    exact = np.asarray(exact_eigenvalues, dtype=np.float64)
    lo, hi = float(exact.min()), float(exact.max())
    sigma = default_sigma(lo, hi) if sigma is None else sigma
    grid = default_grid(lo, hi, sigma, num_points)
    rho_exact = gaussian_density(exact, np.full(exact.shape, 1.0 / exact.size), grid, sigma)
    _, rho = result.density(grid=grid, sigma=sigma)
    return l1_distance(rho, rho_exact, grid)


def gradient_difference(build: Callable[[], Any], params: Any, v: torch.Tensor, eps: float) -> torch.Tensor:
    """``(g(θ + εv) - g(θ - εv)) / 2ε``, with ``g = build().gradient`` at the shifted parameters.

    ``params`` are the tensors the operator differentiates (``op.params``), in
    its flattening order; they are shifted in place and restored exactly,
    through ``.data`` so that graphs cached earlier (an operator's) stay usable.
    ``build`` makes a new operator on the same model and data (pass
    ``check_determinism=False``: only its first pass is needed).

    >>> from spectra.operators.hessian import HessianOperator
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    >>> X, y = torch.randn(9, 3, dtype=torch.float64), torch.randint(0, 2, (9,))
    >>> build = lambda: HessianOperator(model, "cross_entropy", (X, y), check_determinism=False)
    >>> H = build()
    >>> v = torch.randn(H.shape[0], dtype=torch.float64)
    >>> fd = gradient_difference(build, H.params, v, 1e-4)
    >>> bool(((fd - H @ v).norm() / (H @ v).norm()) < 1e-6)
    True
    """
    params = list(params)
    pieces = torch.split(v.detach(), [p.numel() for p in params])
    original = [p.detach().clone() for p in params]

    def gradient_at(sign: float) -> torch.Tensor:
        for p, p0, piece in zip(params, original, pieces):
            p.data.copy_(p0 + sign * eps * piece.view_as(p).to(p.dtype))
        return build().gradient.detach().clone()

    try:
        plus, minus = gradient_at(1.0), gradient_at(-1.0)
    finally:
        for p, p0 in zip(params, original):
            p.data.copy_(p0)
    return (plus - minus) / (2 * eps)


def matrix_with_spectrum(eigenvalues: np.ndarray, seed: int = 0) -> np.ndarray:
    """A dense symmetric matrix ``Q diag(eigenvalues) Q^T`` with a seeded random orthogonal ``Q``."""
    rng = np.random.default_rng(seed)
    lam = np.asarray(eigenvalues, dtype=np.float64)
    # torch's QR: several times faster than numpy's on the 2-core machines we test on
    Q = torch.linalg.qr(torch.as_tensor(rng.standard_normal((lam.size, lam.size))))[0].numpy()
    return (Q * lam) @ Q.T


__all__: list[str] = [name for name, obj in globals().items()
                      if callable(obj) and not name.startswith("_") and getattr(obj, "__module__", "") == __name__]
