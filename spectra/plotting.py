"""Figures for Hessian spectra, as the paper draws them.

matplotlib is imported inside each function, and figures are built as
``matplotlib.figure.Figure`` objects (no pyplot, no global backend change),
so they render to files with the Agg canvas anywhere, including headless
machines, and never pop up windows.  Every function returns the figure; save
it with ``fig.savefig("x.png")``.

>>> import numpy as np
>>> fig = histogram_grid([("random", np.random.default_rng(0).normal(size=50))])
>>> len(fig.axes)
1
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = [
    "new_figure", "eigenvalue_histogram", "histogram_grid", "hessian_heatmap", "heatmap_grid",
    "evolution_figure", "blobs_scatter", "top_eigenvalue_histogram", "std_sweep_figure",
    "interpolation_3d", "interpolation_2d",
]


def new_figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (4.0, 3.2), **kw: Any):
    """A ``Figure`` with an ``nrows x ncols`` grid of axes (each ``size`` inches); returns (fig, axes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def eigenvalue_histogram(ax: Any, eigenvalues: np.ndarray, *, bins: int = 60, title: str | None = None,
                         log: bool = True, zero_tol: float | None = None) -> Any:
    """Histogram of eigenvalues on ``ax`` (log counts, as in the paper), with the zero line.

    ``zero_tol`` shades the band ``|lambda| < zero_tol`` counted as "zero".
    """
    lam = np.asarray(eigenvalues, dtype=float)
    ax.hist(lam, bins=bins, color="#3465a4", edgecolor="none", log=log)
    ax.axvline(0.0, color="k", lw=0.6, alpha=0.6)
    if zero_tol:
        ax.axvspan(-zero_tol, zero_tol, color="#f57900", alpha=0.25, lw=0)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("count (log)" if log else "count")
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def histogram_grid(panels: Sequence[tuple[str, np.ndarray]], *, ncols: int | None = None, bins: int = 60,
                   suptitle: str | None = None, zero_tols: Sequence[float | None] | None = None):
    """One eigenvalue histogram per ``(title, eigenvalues)`` panel."""
    n = len(panels)
    ncols = ncols or min(n, 5)
    nrows = -(-n // ncols)
    fig, axes = new_figure(nrows, ncols)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        title, lam = panels[i]
        tol = zero_tols[i] if zero_tols else None
        eigenvalue_histogram(ax, lam, bins=bins, title=title, zero_tol=tol)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def hessian_heatmap(ax: Any, H: np.ndarray, *, title: str | None = None, rotate: bool = True) -> Any:
    """The Hessian matrix as an image; symmetric-log colours so small entries show.

    ``rotate=True`` turns it 90 degrees counter-clockwise, as the paper's figure 6 does.
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
    ax.figure.colorbar(im, ax=ax, shrink=0.8)
    return ax


def heatmap_grid(panels: Sequence[tuple[str, np.ndarray]], *, rotate: bool = True, suptitle: str | None = None):
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
    collapses onto zero, outliers separate).  Right: histograms of a few
    checkpoints overlaid, early to late.
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
    ax.set_yscale("symlog", linthresh=top * 1e-4)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("GD step (step 0 drawn at 0.5)")
    ax.set_ylabel("eigenvalue (symlog)")
    if losses is not None:
        axl = ax.twinx()
        axl.plot([max(s, 0.5) for s in steps], losses, color="#cc0000", lw=1)
        axl.set_yscale("log")
        axl.set_ylabel("loss", color="#cc0000")
    pick = sorted(set(np.linspace(0, len(steps) - 1, min(5, len(steps))).round().astype(int)))
    lo = min(float(np.min(spectra[i])) for i in pick)
    hi = max(float(np.max(spectra[i])) for i in pick)
    bins = np.linspace(lo, hi, 60)
    for i in pick:
        ax2.hist(spectra[i], bins=bins, histtype="step", log=True, color=cmap(i / span), label=f"step {steps[i]}")
    ax2.set_xlabel("eigenvalue")
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
                     *, title: str | None = None):
    """Top two eigenvalues (mean +- std over inits) and the weight norm against the blob std.

    ``top1``, ``top2``, ``norms`` are ``[num_stds, num_inits]``.
    """
    stds = np.asarray(stds, dtype=float)
    fig, axes = new_figure(1, 2, size=(4.4, 3.4))
    ax, axn = axes[0]
    for arr, label, colour in ((top1, "λ1", "#cc0000"), (top2, "λ2", "#3465a4")):
        arr = np.asarray(arr, dtype=float)
        ax.errorbar(stds, arr.mean(1), yerr=arr.std(1), marker="o", capsize=3, color=colour, label=label)
        ax.scatter(np.repeat(stds, arr.shape[1]), arr.ravel(), s=4, color=colour, alpha=0.25, lw=0)
    ax.set_xlabel("blob standard deviation")
    ax.set_ylabel("eigenvalue (mean ± std over inits)")
    ax.legend(fontsize=8)
    norms = np.asarray(norms, dtype=float)
    axn.errorbar(stds, norms.mean(1), yerr=norms.std(1), marker="s", capsize=3, color="#4e9a06")
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
