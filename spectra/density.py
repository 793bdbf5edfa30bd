"""Spectral densities: Gaussian broadening on a grid, and distances between them.

An exact spectrum is the measure ``(1/P) sum_i delta(t - lambda_i)``; a
stochastic Lanczos quadrature result is ``(1/n_v) sum_v sum_i w_vi delta(t - theta_vi)``.
Broadening both with the same Gaussian puts them on one footing, so they can
be compared and plotted through one interface.

>>> import numpy as np
>>> grid = np.linspace(-1, 1, 201)
>>> rho = gaussian_density(np.array([0.0]), np.array([1.0]), grid, sigma=0.1)
>>> round(float(np.trapezoid(rho, grid)), 6)
1.0
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError


def default_sigma(lo: float, hi: float) -> float:
    """Broadening width: 1/200 of the spectral range (never zero)."""
    span = float(hi - lo)
    scale = max(abs(lo), abs(hi), 1e-12)
    return max(span, 1e-3 * scale) / 200.0


def default_grid(lo: float, hi: float, sigma: float, num_points: int = 1001) -> np.ndarray:
    """Evenly spaced points covering ``[lo - 5 sigma, hi + 5 sigma]``."""
    return np.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points)


def gaussian_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """``sum_i weights_i * N(grid; nodes_i, sigma^2)``, evaluated in chunks of the grid.

    ``nodes`` and ``weights`` may have any matching shape; they are flattened.
    """
    if sigma <= 0:
        raise InvalidInputError(f"sigma must be positive; got {sigma}")
    nodes = np.asarray(nodes, dtype=np.float64).ravel()
    weights = np.asarray(weights, dtype=np.float64).ravel()
    if nodes.shape != weights.shape:
        raise InvalidInputError(f"nodes {nodes.shape} and weights {weights.shape} differ in shape")
    grid = np.asarray(grid, dtype=np.float64)
    out = np.empty_like(grid)
    norm = 1.0 / (sigma * np.sqrt(2 * np.pi))
    step = max(1, 2_000_000 // max(nodes.size, 1))
    for start in range(0, grid.size, step):
        g = grid[start : start + step]
        z = (g[:, None] - nodes[None, :]) / sigma
        out[start : start + step] = norm * (np.exp(-0.5 * z * z) @ weights)
    return out


def l1_distance(rho_a: np.ndarray, rho_b: np.ndarray, grid: np.ndarray) -> float:
    """Integral of ``|rho_a - rho_b|`` over the grid (0 = identical, 2 = disjoint)."""
    return float(np.trapezoid(np.abs(np.asarray(rho_a) - np.asarray(rho_b)), grid))


def moments(nodes: np.ndarray, weights: np.ndarray, orders: int) -> np.ndarray:
    """``sum_i w_i theta_i^j`` for ``j = 0 .. orders-1`` along the last axis."""
    nodes = np.asarray(nodes, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    return np.stack([(weights * nodes**j).sum(axis=-1) for j in range(orders)], axis=-1)
