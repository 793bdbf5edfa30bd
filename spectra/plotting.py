"""Figures for Hessian spectra, as the paper draws them.

matplotlib is imported inside each function, and figures are built as
``matplotlib.figure.Figure`` objects (no pyplot, no global backend change),
so they render to files with the Agg canvas anywhere, including headless
machines, and never pop up windows.  Every function returns the figure; save
it with ``fig.savefig("x.png")``.  The one exception is :func:`axes_or_new`,
which the ``plot()`` methods of results use: without axes of the caller's, it
makes a pyplot figure so that a notebook shows it.

>>> import numpy as np
>>> fig = histogram_grid([("random", np.random.default_rng(0).normal(size=50))])
>>> len(fig.axes)
1
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = [
    "new_figure", "axes_or_new", "eigenvalue_histogram", "histogram_grid", "symlog_edges", "symlog_ticks", "density_plot", "hessian_heatmap", "heatmap_grid",
    "evolution_figure", "blobs_scatter", "top_eigenvalue_histogram", "std_sweep_figure",
    "interpolation_3d", "interpolation_2d",
]


def new_figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (4.0, 3.2), **kw: Any):
    """A ``Figure`` with an ``nrows x ncols`` grid of axes (each ``size`` inches); returns (fig, axes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def axes_or_new(axes: Any, ncols: int = 1, *, size: tuple[float, float] = (6.0, 4.0)) -> tuple[Any, Any]:
    """The caller's axes (one, or a sequence of ``ncols``) with their figure, or a new pyplot figure.

    A method such as ``result.plot()`` uses pyplot when it makes the figure, so that a
    notebook shows it, and draws into the user's own axes otherwise.

    >>> from matplotlib.figure import Figure
    >>> ax = Figure().subplots()
    >>> axes_or_new(ax)[1] is ax
    True
    """
    if axes is None:
        import matplotlib.pyplot as plt

        return plt.subplots(1, ncols, figsize=size)
    first = axes if ncols == 1 else axes[0]
    return first.figure, axes


def symlog_edges(lam: np.ndarray, linthresh: float, bins: int) -> np.ndarray:
    """Bin edges even on a symmetric-log axis: linear within ``±linthresh``, logarithmic outside.

    >>> e = symlog_edges(np.array([-1.0, 0.0, 100.0]), 1.0, 12)
    >>> bool(e[0] <= -1.0 and e[-1] >= 100.0 and np.all(np.diff(e) > 0))
    True
    """
    def fwd(x: np.ndarray) -> np.ndarray:
        return np.sign(x) * np.log10(1.0 + np.abs(x) / linthresh)

    def inv(t: np.ndarray) -> np.ndarray:
        return np.sign(t) * linthresh * (10.0 ** np.abs(t) - 1.0)

    lo, hi = float(fwd(np.array([lam.min()]))[0]), float(fwd(np.array([lam.max()]))[0])
    if hi - lo <= 0:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 1e-9 * (hi - lo)
    return inv(np.linspace(lo - pad, hi + pad, bins + 1))


def symlog_ticks(ax: Any, axis: str, linthresh: float, lo: float, hi: float, max_ticks: int = 7) -> None:
    """At most ``max_ticks`` readable ticks on a symlog axis: 0 and powers of ten on each side, decades thinned."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ticks = [0.0]
    for sign, end in ((1.0, hi), (-1.0, lo)):
        if sign * end <= linthresh:
            continue
        first, last = math.ceil(math.log10(linthresh)), math.floor(math.log10(abs(end)))
        decades = list(range(first, last + 1))
        keep = max(1, (max_ticks - 1) // 2)
        step = max(1, math.ceil(len(decades) / keep))
        ticks += [sign * 10.0 ** d for d in decades[::-1][::step]]
    axis_obj = ax.xaxis if axis == "x" else ax.yaxis
    axis_obj.set_major_locator(FixedLocator(sorted(ticks)))
    axis_obj.set_minor_locator(NullLocator())
    axis_obj.set_major_formatter(FuncFormatter(lambda v, _: "0" if v == 0 else f"{v:.0e}".replace("e+0", "e")
                                               .replace("e-0", "e-")))


def eigenvalue_histogram(ax: Any, eigenvalues: np.ndarray, *, bins: Any = 60, title: str | None = None,
                         log: bool = True, zero_tol: float | None = None, counts: dict[str, Any] | None = None,
                         symlog: bool = True) -> Any:
    """Histogram of eigenvalues on ``ax`` (log counts, as in the paper).

    ``symlog`` (default): the eigenvalue axis is symmetric-log, linear within
    the zero band ``±zero_tol`` (default ``1e-3 max|lambda|``, shaded) and
    logarithmic outside, with bins even on that axis, so negative
    eigenvalues and the outliers show on one picture instead of vanishing
    into the bin at zero.  ``counts`` (a summary dict: ``num_negative``,
    ``negative_tol``, ``num_outliers``) is written on the panel: the same
    counts the reports use.  ``bins``: a count, or explicit edges (then the
    axis is linear: edges shared between panels).
    """
    lam = np.asarray(eigenvalues, dtype=float)
    big = float(np.max(np.abs(lam))) or 1.0
    band = zero_tol if zero_tol else 1e-3 * big
    symlog = symlog and np.ndim(bins) == 0
    if symlog:
        edges = symlog_edges(lam, band, bins)
        ax.hist(lam, bins=edges, color="#3465a4", edgecolor="none", log=log)
        ax.set_xscale("symlog", linthresh=band, linscale=0.6)
        symlog_ticks(ax, "x", band, float(edges[0]), float(edges[-1]), max_ticks=5)
    else:
        ax.hist(lam, bins=bins, color="#3465a4", edgecolor="none", log=log)
    ax.axvline(0.0, color="k", lw=0.6, alpha=0.6)
    ax.axvspan(-band, band, color="#f57900", alpha=0.2, lw=0)
    if counts:
        text = (f"{counts.get('num_negative', 0)} negative beyond rounding\n"
                f"{counts.get('num_outliers', 0)} above 0.1·λmax")
        ax.text(0.98, 0.97, text, transform=ax.transAxes, ha="right", va="top", fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.7, "lw": 0})
    ax.set_xlabel("eigenvalue (symlog; shaded: |λ| < 1e-3·λmax)" if symlog else "eigenvalue")
    ax.set_ylabel("count (log)" if log else "count")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def histogram_grid(panels: Sequence[tuple], *, ncols: int | None = None, bins: int = 60,
                   suptitle: str | None = None, zero_tols: Sequence[float | None] | None = None):
    """One eigenvalue histogram per ``(title, eigenvalues)`` or ``(title, eigenvalues, counts)`` panel.

    ``counts``: the panel's summary numbers (``spectrum_numbers`` or
    ``SpectrumResult.summary()``), written on it.
    """
    n = len(panels)
    ncols = ncols or min(n, 5)
    nrows = -(-n // ncols)
    fig, axes = new_figure(nrows, ncols)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        title, lam = panels[i][0], panels[i][1]
        counts = panels[i][2] if len(panels[i]) > 2 else None
        tol = zero_tols[i] if zero_tols else None
        eigenvalue_histogram(ax, lam, bins=bins, title=title, zero_tol=tol, counts=counts)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def density_plot(ax: Any, grid: np.ndarray, rho: np.ndarray, *, log: bool = True, num_params: int | None = None,
                 sigma: float | None = None, title: str | None = None) -> Any:
    """A broadened spectral density; on a log axis only where it is resolvable.

    A density below that of *one* eigenvalue spread over the broadening,
    ``1 / (P sigma sqrt(2 pi))``, holds less than one eigenvalue's mass within
    ``sigma``: there a stochastic Lanczos estimate is Gaussian tails and
    quadrature ringing, not structure.  With ``log`` that region is left
    blank and the level is drawn as a dashed line, instead of a flat floor
    that reads as data.
    """
    rho = np.asarray(rho, dtype=float)
    floor = 1.0 / (num_params * sigma * math.sqrt(2 * math.pi)) if log and num_params and sigma else None
    shown = np.where(rho >= floor, rho, np.nan) if floor else rho
    if log:
        shown = np.where(shown > 0, shown, np.nan)
    ax.plot(grid, shown, color="tab:blue")
    if log:
        ax.set_yscale("log")
    if floor:
        ax.axhline(floor, color="0.5", lw=0.8, ls="--", label="one eigenvalue per σ (below: not resolved)")
        ax.legend(fontsize=7)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def hessian_heatmap(ax: Any, H: np.ndarray, *, title: str | None = None, rotate: bool = False) -> Any:
    """The Hessian matrix as an image; symmetric-log colours so small entries show.

    ``rotate=True`` turns it 90 degrees counter-clockwise, as the paper's
    figure 6 does (say so in the title: callers add it).  The colour bar
    carries at most seven ticks (0 and thinned powers of ten).
    """
    from matplotlib.colors import SymLogNorm

    M = np.asarray(H, dtype=float)
    if rotate:
        M = np.rot90(M)
    vmax = float(np.max(np.abs(M))) or 1.0
    norm = SymLogNorm(linthresh=max(vmax * 1e-4, 1e-300), vmin=-vmax, vmax=vmax, base=10)
    im = ax.imshow(M, cmap="RdBu_r", norm=norm, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    bar = ax.figure.colorbar(im, ax=ax, shrink=0.8)
    symlog_ticks(bar.ax, "y", max(vmax * 1e-4, 1e-300), -vmax, vmax, max_ticks=7)
    return ax


def heatmap_grid(panels: Sequence[tuple[str, np.ndarray]], *, rotate: bool = False, suptitle: str | None = None):
    """One :func:`hessian_heatmap` per ``(title, matrix)``."""
    fig, axes = new_figure(1, len(panels), size=(4.2, 3.8))
    for ax, (title, H) in zip(axes.flat, panels):
        hessian_heatmap(ax, H, title=title, rotate=rotate)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def evolution_figure(steps: Sequence[int], spectra: Sequence[np.ndarray], *, losses: Sequence[float] | None = None,
                     title: str | None = None):
    """The spectrum during training: every eigenvalue against the step (symlog), plus histograms.

    Left: each checkpoint's eigenvalues as a column of dots (the bulk
    collapses onto zero, outliers separate), on a symlog axis whose linear
    band is 1e-4 of the largest |lambda| and whose ticks are thinned powers
    of ten.  Right: histograms of a few checkpoints, early to late, of
    ``lambda / lambda_max`` at that checkpoint, each with its own bins (even on
    a symlog axis over its own range), so a late, shrunken spectrum is not
    squeezed into one bin of the first checkpoint's.
    """
    import matplotlib

    steps = list(steps)
    fig, axes = new_figure(1, 2, size=(5.0, 3.6))
    ax, ax2 = axes[0]
    cmap = matplotlib.colormaps["viridis"]
    span = max(len(steps) - 1, 1)
    for i, (s, lam) in enumerate(zip(steps, spectra)):
        ax.scatter(np.full(len(lam), max(s, 0.5)), lam, s=3, color=cmap(i / span), alpha=0.6, lw=0)
    ax.set_xscale("log")
    top = max(float(np.max(np.abs(lam))) for lam in spectra) or 1.0
    lo = min(float(np.min(lam)) for lam in spectra)
    ax.set_yscale("symlog", linthresh=top * 1e-4, linscale=0.5)
    symlog_ticks(ax, "y", top * 1e-4, lo, top, max_ticks=7)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("GD step (step 0 drawn at 0.5)")
    ax.set_ylabel("eigenvalue (symlog)")
    if losses is not None:
        axl = ax.twinx()
        axl.plot([max(s, 0.5) for s in steps], losses, color="#cc0000", lw=1)
        axl.set_yscale("log")
        axl.set_ylabel("loss", color="#cc0000")
    pick = sorted(set(np.linspace(0, len(steps) - 1, min(5, len(steps))).round().astype(int)))
    for i in pick:
        rel = np.asarray(spectra[i], dtype=float) / float(np.max(spectra[i]))
        edges = symlog_edges(rel, 1e-3, 40)
        ax2.hist(rel, bins=edges, histtype="step", log=True, color=cmap(i / span), label=f"step {steps[i]}")
    ax2.set_xscale("symlog", linthresh=1e-3, linscale=0.5)
    symlog_ticks(ax2, "x", 1e-3, -1.0, 1.0, max_ticks=5)
    ax2.set_xlabel("λ / λmax at that step (symlog)")
    ax2.set_ylabel("count (log)")
    ax2.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def blobs_scatter(datasets: Sequence[tuple[str, np.ndarray, np.ndarray]]):
    """Scatter plots of 2-D two-class data, one panel per ``(title, X, y)``."""
    fig, axes = new_figure(1, len(datasets), size=(3.2, 3.2))
    for ax, (title, X, y) in zip(axes.flat, datasets):
        X, y = np.asarray(X), np.asarray(y)
        for label, colour in ((0, "#3465a4"), (1, "#cc0000")):
            sel = y == label
            ax.scatter(X[sel, 0], X[sel, 1], s=4, color=colour, alpha=0.6, lw=0, label=f"class {label}")
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
    axes.flat[0].legend(fontsize=7, loc="upper left")
    return fig


def top_eigenvalue_histogram(top: np.ndarray, *, bins: int = 50, title: str | None = None):
    """Histogram of the top eigenvalue over many initialisations, with mean and +-1 std."""
    top = np.asarray(top, dtype=float)
    fig, axes = new_figure(1, 1, size=(5.0, 3.6))
    ax = axes[0, 0]
    ax.hist(top, bins=bins, color="#3465a4", edgecolor="none")
    mu, sd = float(np.mean(top)), float(np.std(top))
    ax.axvline(mu, color="k", lw=1, label=f"mean {mu:.4g}")
    ax.axvspan(mu - sd, mu + sd, color="#f57900", alpha=0.2, label=f"±1 std ({sd:.3g})")
    ax.set_xlabel("top Hessian eigenvalue after training")
    ax.set_ylabel("number of initialisations")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def std_sweep_figure(stds: np.ndarray, top1: np.ndarray, top2: np.ndarray, norms: np.ndarray,
                     *, converged: np.ndarray | None = None, other_top1: np.ndarray | None = None,
                     other_label: str = "λ1, another arm", title: str | None = None):
    """Top two eigenvalues per init against the blob std (log scale), and the weight norms.

    ``top1``, ``top2``, ``norms`` (and ``converged``, ``other_top1``) are
    ``[num_stds, num_inits]``.  Every init is a thin line across the stds (the
    same init at every std, so the comparisons are paired); the medians are
    the thick lines; runs that did not converge are drawn as crosses;
    ``other_top1`` (λ1 of another arm, labelled ``other_label``) as grey circles.
    """
    stds = np.asarray(stds, dtype=float)
    fig, axes = new_figure(1, 2, size=(4.6, 3.6))
    ax, axn = axes[0]
    conv = np.ones_like(np.asarray(top1), dtype=bool) if converged is None else np.asarray(converged, dtype=bool)
    if other_top1 is not None:
        other = np.asarray(other_top1, dtype=float)
        ax.scatter(np.repeat(stds, other.shape[1]) * 1.02, other.ravel(), s=10, facecolors="none",
                   edgecolors="#888888", lw=0.6, label=other_label)
    for arr, label, colour in ((top1, "λ1", "#cc0000"), (top2, "λ2", "#3465a4")):
        arr = np.asarray(arr, dtype=float)
        for j in range(arr.shape[1]):
            ax.plot(stds, arr[:, j], color=colour, lw=0.6, alpha=0.5)
        ax.scatter(np.repeat(stds, arr.shape[1])[conv.ravel()], arr.ravel()[conv.ravel()], s=6, color=colour,
                   lw=0)
        if (~conv).any():
            ax.scatter(np.repeat(stds, arr.shape[1])[~conv.ravel()], arr.ravel()[~conv.ravel()], s=14,
                       color=colour, marker="x", lw=0.8)
        ax.plot(stds, np.median(arr, axis=1), color=colour, lw=2.2, marker="o", label=f"{label} (median)")
    ax.set_yscale("log")
    ax.set_xticks(stds)
    ax.set_xlabel("blob standard deviation")
    ax.set_ylabel("eigenvalue (one line per init)")
    ax.legend(fontsize=7)
    norms = np.asarray(norms, dtype=float)
    for j in range(norms.shape[1]):
        axn.plot(stds, norms[:, j], color="#4e9a06", lw=0.4, alpha=0.35)
    axn.plot(stds, np.median(norms, axis=1), color="#4e9a06", lw=2.2, marker="s")
    axn.set_xticks(stds)
    axn.set_xlabel("blob standard deviation")
    axn.set_ylabel("weight norm after training")
    if title:
        fig.suptitle(title)
    return fig


def interpolation_3d(alphas: np.ndarray, losses: np.ndarray, distances: np.ndarray, *, ax: Any = None,
                     title: str | None = None, max_curves: int = 11):
    """The paper's figure 10: loss along the segment between two runs, as curves in 3-D.

    ``losses[t, j]`` is the loss at ``(1 - alphas[j]) a_t + alphas[j] b_t`` for
    checkpoint ``t``; ``distances[t] = ||a_t - b_t||``.  Each drawn curve
    follows one interpolation position ``alpha`` through training: x = alpha,
    y = loss, z = distance.  The ``alpha = 0`` and ``alpha = 1`` curves are the
    two actual training profiles; the ones between are interpolations only.
    """
    import matplotlib

    alphas = np.asarray(alphas, float)
    losses = np.asarray(losses, float)
    distances = np.asarray(distances, float)
    if ax is None:
        fig, _ = new_figure(1, 1, size=(5.5, 4.5))
        fig.clear()
        ax = fig.add_subplot(projection="3d")
    fig = ax.figure
    cols = sorted(set(np.linspace(0, len(alphas) - 1, min(max_curves, len(alphas))).round().astype(int)))
    cmap = matplotlib.colormaps["coolwarm"]
    for j in cols:
        edge = j in (0, len(alphas) - 1)
        ax.plot(np.full(len(distances), alphas[j]), losses[:, j], distances, color=cmap(alphas[j]),
                lw=2.0 if edge else 0.9, alpha=1.0 if edge else 0.8)
    ax.set_xlabel("α (0: run A, 1: run B)")
    ax.set_ylabel("loss")
    ax.set_zlabel("distance ||a_t - b_t||")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def interpolation_2d(alphas: np.ndarray, losses: np.ndarray, distances: np.ndarray, steps: Sequence[int], *,
                     axes: Any = None, title: str | None = None):
    """Flat version of :func:`interpolation_3d`: loss against alpha at each checkpoint, and the barrier.

    Left: one curve per checkpoint (colour = training step).  Right: the
    barrier ``max_alpha L - max(L(0), L(1))`` against the distance between the two points.
    """
    import matplotlib

    alphas = np.asarray(alphas, float)
    losses = np.asarray(losses, float)
    if axes is None:
        fig, axs = new_figure(1, 2, size=(4.4, 3.4))
        axes = axs[0]
    ax, axb = axes
    fig = ax.figure
    cmap = matplotlib.colormaps["viridis"]
    span = max(len(steps) - 1, 1)
    for t, s in enumerate(steps):
        ax.plot(alphas, losses[t], color=cmap(t / span), lw=1, label=f"step {s}" if t in (0, len(steps) - 1) else None)
    ax.set_yscale("log")
    ax.set_xlabel("α")
    ax.set_ylabel("loss on the segment (log)")
    ax.legend(fontsize=7)
    barrier = losses.max(axis=1) - np.maximum(losses[:, 0], losses[:, -1])
    axb.plot(distances, barrier, marker="o", ms=3)
    axb.set_xlabel("distance ||a_t - b_t||")
    axb.set_ylabel("barrier: max L - max(L(0), L(1))")
    if title:
        fig.suptitle(title)
    return fig
