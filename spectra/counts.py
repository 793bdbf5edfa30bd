"""What the counts of a spectrum mean: the rounding tolerance and the outlier rule.

Two questions every report of a Hessian spectrum answers, each with one rule:

* **Is this eigenvalue negative (or zero), or is it rounding?**  An eigenvalue
  counts as negative only below ``-negative_tol`` and as numerically zero
  within ``±negative_tol``, where

      negative_tol = ROUNDING_SAFETY * ||H|| * (P * eps_64 + sqrt(P) * eps_products)

  ``P * eps_64 * ||H||`` is the backward error of a float64 ``eigh`` of a
  ``P x P`` matrix (Householder tridiagonalisation; Golub & Van Loan 8.3), and
  ``sqrt(P) * eps_products * ||H||`` bounds the error of a matrix assembled
  from ``P`` products each accurate to ``eps_products`` relative (float32
  products: ``eps`` = 1.2e-7).  By Weyl's inequality no eigenvalue moves by
  more than the matrix error, so nothing inside the band can be told from 0.
  ``ROUNDING_SAFETY`` = 10: measured here, the rounding noise of a float64
  exact spectrum reaches about ``P * eps_64 * ||H||`` (a 434-parameter blob
  net: noise up to 1e-13 ||H||, real negatives from 1e-10 ||H||).  The
  float32 term assumes products accurate relative to ``||H||``; a confident
  softmax loses more (``1 - p`` rounds in float32: a trained, separable blob
  net's float32 spectrum moved by 1e-5 ||H||), so count near-zero
  eigenvalues of trained nets from float64 products.
* **How many outliers stand above the bulk?**  One rule: the eigenvalues above
  ``OUTLIER_FRACTION * lambda_max`` (0.1).  It is stable (a small change of the
  spectrum moves the count only by the eigenvalues that cross the threshold),
  unlike the largest-ratio-gap rule, which jumps between gaps of similar size.
  Because every threshold is a choice, the count under
  ``OUTLIER_SWEEP`` = 0.03, 0.05, 0.1, 0.2, 0.3 of ``lambda_max`` is reported
  beside it, with the ratio ``lambda_n / lambda_(n+1)`` at the cut, so a
  count that flips with the threshold is visible.

>>> lam = np.array([-1e-15, 0.0, 1e-14, 0.02, 0.3, 1.0])
>>> tol = negative_tolerance(lam.size, 1.0)
>>> bool(tol > 1e-15), count_negative(lam, tol)
(True, 0)
>>> outlier_counts(lam)["num_outliers"], outlier_counts(lam)["sweep"]["0.3"]
(2, 1)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ROUNDING_SAFETY = 10.0
OUTLIER_FRACTION = 0.1
OUTLIER_SWEEP = (0.03, 0.05, 0.1, 0.2, 0.3)
RULE_TEXT = "λ > 0.1·λmax"

_EPS = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps),
        "bfloat16": 2.0 ** -7, "float16": float(np.finfo(np.float16).eps)}


def machine_epsilon(dtype: Any) -> float:
    """Machine epsilon of a dtype given as a torch/numpy dtype or its name (``"float32"``).

    >>> machine_epsilon("float32") > machine_epsilon("float64")
    True
    """
    name = str(dtype).replace("torch.", "")
    if name not in _EPS:
        raise ValueError(f"no machine epsilon known for dtype {dtype!r}; known: {', '.join(_EPS)}")
    return _EPS[name]


def negative_tolerance(num_params: int, spectral_norm: float, product_dtype: Any = "float64") -> float:
    """``ROUNDING_SAFETY * ||H|| * (P eps_64 + sqrt(P) eps_products)``: see the module docstring.

    >>> negative_tolerance(100, 2.0) == 10 * 2.0 * (100 + 10) * machine_epsilon("float64")
    True
    """
    P = max(int(num_params), 1)
    norm = abs(float(spectral_norm))
    eps_products = machine_epsilon(product_dtype)
    return ROUNDING_SAFETY * norm * (P * machine_epsilon("float64") + math.sqrt(P) * eps_products)


def tolerance_rule(product_dtype: Any = "float64") -> str:
    """The formula behind :func:`negative_tolerance`, as reports print it."""
    name = str(product_dtype).replace("torch.", "")
    return f"{ROUNDING_SAFETY:g}·‖H‖·(P·ε64 + √P·ε_{name}) (eigh backward error + {name} products)"


def count_negative(eigenvalues: np.ndarray, tol: float) -> int:
    """How many eigenvalues lie below ``-tol``."""
    return int(np.sum(np.asarray(eigenvalues) < -tol))


def outlier_counts(eigenvalues: np.ndarray, fraction: float = OUTLIER_FRACTION,
                   sweep: tuple[float, ...] = OUTLIER_SWEEP) -> dict[str, Any]:
    """The outlier rule on a whole (exact) spectrum: count, sweep, cut and isolation.

    Returns ``num_outliers`` (eigenvalues above ``fraction * lambda_max``),
    ``sweep`` (the count at each fraction of ``sweep``, keys as text),
    ``bulk_edge`` (the largest eigenvalue below the cut), ``cut_ratio``
    (``lambda_n / lambda_(n+1)``: how far the last outlier stands from the next
    eigenvalue; near 1 means the cut splits a continuum) and ``outliers``.
    A spectrum with no positive eigenvalue has no outliers.

    >>> r = outlier_counts(np.array([0.0, 0.01, 0.09, 0.12, 1.0]))
    >>> r["num_outliers"], round(r["cut_ratio"], 3), r["sweep"]["0.05"]
    (2, 1.333, 3)
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    top = float(lam[0]) if lam.size else 0.0
    if top <= 0:
        return {"num_outliers": 0, "rule": RULE_TEXT, "sweep": {f"{f:g}": 0 for f in sweep},
                "bulk_edge": top, "cut_ratio": None, "outliers": []}
    n = int(np.sum(lam > fraction * top))
    nxt = float(lam[n]) if n < lam.size else None
    return {"num_outliers": n, "rule": RULE_TEXT,
            "sweep": {f"{f:g}": int(np.sum(lam > f * top)) for f in sweep},
            "bulk_edge": nxt if nxt is not None else 0.0,
            "cut_ratio": float(lam[n - 1] / nxt) if nxt is not None and nxt > 0 else None,
            "outliers": lam[:n].tolist()}


def sweep_text(sweep: dict[str, int]) -> str:
    """``"0.03:4 0.05:3 0.1:3 0.2:1 0.3:1"``: the sweep as one short cell of a table."""
    return " ".join(f"{k}:{v}" for k, v in sweep.items())


__all__ = ["ROUNDING_SAFETY", "OUTLIER_FRACTION", "OUTLIER_SWEEP", "machine_epsilon", "negative_tolerance",
           "tolerance_rule", "count_negative", "outlier_counts", "sweep_text"]
