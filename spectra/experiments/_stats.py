"""The statistics behind the verdicts: effect sizes, tests and confidence intervals, one function each.

Every verdict of a report names its effect size, its number of seeds and a
test or interval; these helpers compute them and phrase them the same way
everywhere.  Tests are two-sided unless named otherwise, at ``ALPHA`` = 0.05.

* :func:`compare` -- two groups of runs: ratio of means, Cohen's d, Welch's t
  test and a bootstrap 95 % interval of the ratio (independent groups), or the
  Wilcoxon signed-rank test when the runs are paired (the same inits);
* :func:`trend` -- a quantity against an ordered factor (width, std): Spearman's
  rank correlation over all runs and its p-value, plus the ratio last/first;
* :func:`mean_ci` -- a mean with its t interval.

>>> r = compare([1.0, 1.1, 0.9, 1.0], [2.0, 2.2, 1.9, 2.1])
>>> r["ratio"] > 1.9 and r["p"] < 0.001 and r["n"] == (4, 4)
True
>>> t = trend([1, 1, 2, 2, 3, 3], [0.1, 0.2, 0.3, 0.35, 0.5, 0.6])
>>> round(t["rho"], 3), t["p"] < 0.01
(0.956, True)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

ALPHA = 0.05
BOOTSTRAP_DRAWS = 2000


def _clean(x: Sequence[float]) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def mean_ci(x: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean, standard deviation and the t interval of the mean (``n`` finite values)."""
    from scipy import stats

    a = _clean(x)
    n = int(a.size)
    if n == 0:
        return {"mean": math.nan, "sd": math.nan, "ci": [math.nan, math.nan], "n": 0}
    mean = float(a.mean())
    sd = float(a.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": mean, "sd": sd, "ci": [mean - half, mean + half], "n": n}


def compare(a: Sequence[float], b: Sequence[float], *, paired: bool = False, seed: int = 0) -> dict[str, Any]:
    """Group ``b`` against group ``a``: effect sizes and a test.

    Returns ``ratio`` (mean b / mean a), ``ratio_ci`` (bootstrap 95 %,
    resampling each group; for paired runs the pairs), ``d`` (Cohen's d,
    pooled sd), ``test`` (its name), ``p`` and ``n``.
    """
    from scipy import stats

    x, y = _clean(a), _clean(b)
    if paired:
        a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        keep = np.isfinite(a_arr) & np.isfinite(b_arr)
        x, y = a_arr[keep], b_arr[keep]
    out: dict[str, Any] = {"n": (int(x.size), int(y.size)), "mean_a": float(x.mean()) if x.size else math.nan,
                           "mean_b": float(y.mean()) if y.size else math.nan}
    out["ratio"] = out["mean_b"] / out["mean_a"] if out["mean_a"] not in (0.0,) and x.size else math.nan
    pooled = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2) if x.size > 1 and y.size > 1 else math.nan
    out["d"] = (out["mean_b"] - out["mean_a"]) / pooled if pooled and math.isfinite(pooled) else math.nan
    if x.size < 2 or y.size < 2:
        out.update(test="none (fewer than 2 runs in a group)", p=math.nan, ratio_ci=[math.nan, math.nan])
        return out
    if paired:
        diff = y - x
        if np.all(diff == 0):
            out.update(test="Wilcoxon signed-rank (paired)", p=1.0)
        else:
            out.update(test="Wilcoxon signed-rank (paired)", p=float(stats.wilcoxon(y, x).pvalue))
    else:
        out.update(test="Welch t", p=float(stats.ttest_ind(y, x, equal_var=False).pvalue))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(BOOTSTRAP_DRAWS):
        if paired:
            i = rng.integers(0, x.size, x.size)
            xa, yb = x[i], y[i]
        else:
            xa, yb = x[rng.integers(0, x.size, x.size)], y[rng.integers(0, y.size, y.size)]
        if xa.mean() != 0:
            draws.append(yb.mean() / xa.mean())
    out["ratio_ci"] = np.quantile(draws, [ALPHA / 2, 1 - ALPHA / 2]).tolist() if draws else [math.nan, math.nan]
    return out


def trend(levels: Sequence[float], values: Sequence[float]) -> dict[str, Any]:
    """Monotone trend of ``values`` in ``levels`` (one entry per run): Spearman's rho and p.

    Also ``ratio``: mean at the highest level over mean at the lowest.
    """
    from scipy import stats

    lv, vv = np.asarray(levels, dtype=np.float64), np.asarray(values, dtype=np.float64)
    keep = np.isfinite(lv) & np.isfinite(vv)
    lv, vv = lv[keep], vv[keep]
    out: dict[str, Any] = {"n": int(lv.size), "levels": int(np.unique(lv).size), "test": "Spearman rank correlation"}
    if np.unique(lv).size < 2 or np.unique(vv).size < 2:
        out.update(rho=math.nan, p=math.nan, ratio=math.nan)
        return out
    res = stats.spearmanr(lv, vv)
    lo, hi = vv[lv == lv.min()].mean(), vv[lv == lv.max()].mean()
    out.update(rho=float(res.statistic), p=float(res.pvalue), ratio=float(hi / lo) if lo != 0 else math.nan)
    return out


def significant(result: dict[str, Any]) -> bool:
    """``p < ALPHA`` (False when no test could be made)."""
    p = result.get("p", math.nan)
    return bool(math.isfinite(p) and p < ALPHA)


def describe_compare(r: dict[str, Any], what: str = "ratio") -> str:
    """``"x2.10 [1.9, 2.3], d = 4.1, Welch t p = 3e-05, n = 4+4"``."""
    ci = r.get("ratio_ci", [math.nan, math.nan])
    return (f"{what} x{r['ratio']:.3g} [{ci[0]:.3g}, {ci[1]:.3g}], d = {r['d']:.2g}, {r['test']} p = {r['p']:.2g}, "
            f"n = {r['n'][0]}+{r['n'][1]}")


def describe_trend(r: dict[str, Any]) -> str:
    """``"Spearman rho = 0.95, p = 1e-04, n = 15 runs over 5 levels; last/first x3.2"``."""
    return (f"Spearman ρ = {r['rho']:.2f}, p = {r['p']:.2g}, n = {r['n']} runs over {r['levels']} levels; "
            f"last/first x{r['ratio']:.3g}")


__all__ = ["ALPHA", "mean_ci", "compare", "trend", "significant", "describe_compare", "describe_trend"]


def verdict(direction_as_paper: bool, significant_result: bool, scale: str) -> tuple[bool | None, str]:
    """``(agrees, verdict text)`` from a test's outcome.

    A significant effect in the paper's direction agrees; a significant
    effect against it differs.  Without significance: at paper scale the
    claimed effect was not found (differs); at smaller scales the runs may
    be too few to show it (:data:`~spectra.experiments._report.CANNOT_SHOW`).

    >>> verdict(True, True, "quick"), verdict(True, False, "paper")[0]
    ((True, 'agrees'), False)
    """
    from ._report import CANNOT_SHOW

    if significant_result:
        return (True, "agrees") if direction_as_paper else (False, "differs")
    if scale == "paper":
        return False, "differs (no significant effect)"
    return None, CANNOT_SHOW
