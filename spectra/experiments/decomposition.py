"""Beyond the paper: where the outliers come from — spectra of H = G + R side by side.

For a blob net (2 classes) and an MNIST net (10 classes), each trained with
GD, this computes the exact spectra of the Hessian ``H``, its Gauss-Newton
part ``G = J^T H_loss J`` (:class:`~spectra.operators.ggn.GGNOperator`) and
the residual ``R = H - G`` (dense matrices, float64), and measures how many
outliers of ``H`` are explained by ``G``:

* outliers of ``H`` and of ``G``: the eigenvalues above 10 % of
  ``lambda_max`` (:mod:`spectra.counts`' rule, as in every report), with the
  count at other fractions in the summaries;
* for each top eigenpair ``(lambda_i, v_i)`` of ``H``, the share of its
  curvature that ``G`` carries, ``rho_i = v_i^T G v_i / lambda_i``
  (``1 - rho_i`` comes from ``R``); an eigenvalue is *explained by G* when
  ``rho_i >= 0.9``, and ``K_G`` is the largest ``n`` such that all of the top
  ``n`` are;
* the overlap of the top-``n`` eigenspaces of ``H`` and ``G``,
  ``||V_H^T V_G||_F^2 / n`` (1 = the same subspace), for ``n`` = the number of
  outliers of ``H`` and ``n`` = the number of classes.

Those counts are set beside the number of classes ``C`` (and ``C - 1``, the
rank of the softmax cross-entropy's Hessian in the outputs per sample).  With
``stages=["init", "trained"]`` the same is done at the initial weights too,
where the loss (and so ``R``, which is weighted by ``dl/df``) is large.

Run it with ``spectra reproduce decomposition`` (once registered) or
``spectra.experiments.decomposition.run(out, scale="quick")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._common import Context, spectrum_numbers, sub_seed, train_unit, training_numbers
from ._report import Claim, markdown_table

TITLE = "Beyond the paper: Hessian = Gauss-Newton + residual, and which part holds the outliers"
EXPLAINED_SHARE = 0.9
LARGE_FRACTION = 0.1  # second outlier count: eigenvalues above this fraction of lambda_max

CONFIGS: dict[str, dict[str, Any]] = {
    # seconds: for tests and smoke runs
    "tiny": {"threads": 1, "blob_hidden": 6, "blob_n": 200, "blob_std": 1.0, "blob_lr": 0.1,
             "blob_grad_tol": 1e-3, "blob_max_steps": 2000,
             "mnist_sizes": [784, 2, 10], "mnist_n": 100, "mnist_lr": 0.5, "mnist_grad_tol": 1e-3,
             "mnist_max_steps": 300, "stages": ["trained"]},
    # minutes on 2 cores (one thread: these nets are small enough that a second thread costs more than it saves)
    "quick": {"threads": 1, "blob_hidden": 10, "blob_n": 500, "blob_std": 1.0, "blob_lr": 0.1,
              "blob_grad_tol": 1e-4, "blob_max_steps": 10000,
              "mnist_sizes": [784, 3, 10], "mnist_n": 300, "mnist_lr": 0.5, "mnist_grad_tol": 1e-4,
              "mnist_max_steps": 3000, "stages": ["init", "trained"]},
    # the paper's nets: 2-18-18-2 (434 params) and 784-10-10 (7,960 params) on 1000 images
    "paper": {"threads": None, "blob_hidden": 18, "blob_n": 1000, "blob_std": 1.0, "blob_lr": 0.1,
              "blob_grad_tol": 1e-4, "blob_max_steps": 100000,
              "mnist_sizes": [784, 10, 10], "mnist_n": 1000, "mnist_lr": 0.5, "mnist_grad_tol": 1e-4,
              "mnist_max_steps": 20000, "stages": ["init", "trained"]},
}


def _nets(ctx: Context) -> list[dict[str, Any]]:
    from ..datasets import load
    from ..models import create

    cfg = ctx.cfg
    blob_data = load("blobs", n=cfg["blob_n"], std=cfg["blob_std"], seed=ctx.seed, dtype="float64")
    mnist_data = load("mnist", n=cfg["mnist_n"], seed=ctx.seed, dtype="float64")
    h, sizes = cfg["blob_hidden"], list(cfg["mnist_sizes"])
    return [
        {"key": "blobs", "label": f"blobs, 2-{h}-{h}-2", "classes": 2, "data": blob_data,
         "make": lambda: create("blobnet", hidden=h, dtype="float64"),
         "train": {"optimizer": "gd", "lr": cfg["blob_lr"], "grad_tol": cfg["blob_grad_tol"],
                   "max_steps": cfg["blob_max_steps"], "log_every": 10},
         "memo": ("blobs", cfg["blob_n"], cfg["blob_std"], ctx.seed, h)},
        {"key": "mnist", "label": f"MNIST, {'-'.join(map(str, sizes))}", "classes": 10, "data": mnist_data,
         "make": lambda: create("mlp", sizes=sizes, dtype="float64"),
         "train": {"optimizer": "gd", "lr": cfg["mnist_lr"], "grad_tol": cfg["mnist_grad_tol"],
                   "max_steps": cfg["mnist_max_steps"], "log_every": 10},
         "memo": ("mnist", cfg["mnist_n"], ctx.seed, tuple(sizes))},
    ]


def _dense(ctx: Context, key: str, model: Any, data: Any) -> dict[str, np.ndarray]:
    """Eigen-decompositions of H, G and R = H - G (a progress unit, so resume skips it)."""
    from ..operators.ggn import GGNOperator
    from ..operators.hessian import HessianOperator

    unit = f"{key}_decomposition"
    if ctx.rd.has_unit(unit):
        return ctx.rd.load_unit(unit)[0]
    H = HessianOperator(model, "cross_entropy", data).to_dense().double().cpu().numpy()
    G = GGNOperator(model, "cross_entropy", data).to_dense().double().cpu().numpy()
    R = H - G
    lam_h, V_h = np.linalg.eigh(H)
    lam_g, V_g = np.linalg.eigh(G)
    lam_r = np.linalg.eigvalsh(R)
    keep = min(64, H.shape[0])  # the top eigenvectors are all the analysis needs
    arrays = {"eig_H": lam_h, "eig_G": lam_g, "eig_R": lam_r,
              "top_vectors_H": V_h[:, -keep:], "top_vectors_G": V_g[:, -keep:],
              # v_i^T G v_i and v_i^T R v_i for the top eigenvectors of H
              "rayleigh_G_on_H_vectors": np.sum(V_h[:, -keep:] * (G @ V_h[:, -keep:]), axis=0),
              "rayleigh_R_on_H_vectors": np.sum(V_h[:, -keep:] * (R @ V_h[:, -keep:]), axis=0),
              "norms": np.array([np.abs(lam).max() for lam in (lam_h, lam_g, lam_r)])}
    ctx.rd.save_unit(unit, arrays, {"num_params": int(H.shape[0])})
    return arrays


def _overlap(Va: np.ndarray, Vb: np.ndarray, n: int) -> float:
    if n == 0:
        return float("nan")
    A, B = Va[:, -n:], Vb[:, -n:]
    return float(np.sum((A.T @ B) ** 2) / n)


def _analyse(arrays: dict[str, np.ndarray], classes: int) -> dict[str, Any]:
    lam_h, lam_g, lam_r = arrays["eig_H"], arrays["eig_G"], arrays["eig_R"]
    num_h, num_g, num_r = spectrum_numbers(lam_h), spectrum_numbers(lam_g), spectrum_numbers(lam_r)
    n_out = num_h["num_outliers"]
    top_h = lam_h[::-1][:n_out]
    rho = arrays["rayleigh_G_on_H_vectors"][::-1][:n_out] / top_h
    explained = int(np.sum(rho >= EXPLAINED_SHARE))
    rel_gap = np.abs(top_h - lam_g[::-1][:n_out]) / np.abs(top_h)
    VH, VG = arrays["top_vectors_H"], arrays["top_vectors_G"]
    share_all = arrays["rayleigh_G_on_H_vectors"][::-1] / lam_h[::-1][: VH.shape[1]]
    not_explained = np.flatnonzero(share_all < EXPLAINED_SHARE)
    k_g = int(not_explained[0]) if not_explained.size else int(share_all.size)
    n_large = int(np.sum(lam_h >= LARGE_FRACTION * lam_h[-1]))
    return {
        "large_H": n_large,
        "large_G": int(np.sum(lam_g >= LARGE_FRACTION * lam_g[-1])),
        "large_H_explained_by_G": int(np.sum(share_all[:n_large] >= EXPLAINED_SHARE)),
        "K_G_top_explained": k_g,
        "G_share_top": share_all.tolist(),
        "num_classes": classes,
        "H": num_h, "G": num_g, "R": num_r,
        "outliers_H": n_out,
        "outliers_G": num_g["num_outliers"],
        "outliers_H_explained_by_G": explained,
        "G_share_of_outlier_curvature": rho.tolist(),
        "outlier_eigenvalues_H": top_h.tolist(),
        "outlier_eigenvalues_G": lam_g[::-1][:n_out].tolist(),
        "relative_difference_H_vs_G_outliers": rel_gap.tolist(),
        "subspace_overlap_top_outliers": _overlap(VH, VG, n_out),
        "subspace_overlap_top_classes": _overlap(VH, VG, min(classes, VH.shape[1])),
        "subspace_overlap_top_classes_minus_1": _overlap(VH, VG, min(classes - 1, VH.shape[1])),
        "spectral_norms_H_G_R": arrays["norms"].tolist(),
        "G_min_eigenvalue": float(lam_g[0]),
        "R_trace_over_H_trace": float(lam_r.sum() / lam_h.sum()),
    }


def _figure(results: list[tuple[str, dict[str, np.ndarray], dict[str, Any]]]) -> Any:
    from ..plotting import eigenvalue_histogram, new_figure

    fig, axes = new_figure(len(results), 3, size=(4.0, 3.0))
    for row, (label, arrays, m) in enumerate(results):
        lo = min(arrays[k].min() for k in ("eig_H", "eig_G", "eig_R"))
        hi = max(arrays[k].max() for k in ("eig_H", "eig_G", "eig_R"))
        bins = np.linspace(lo, hi, 61)
        for col, (name, key) in enumerate((("H (Hessian)", "eig_H"), ("G (Gauss-Newton)", "eig_G"),
                                           ("R = H − G", "eig_R"))):
            ax = axes[row, col]
            eigenvalue_histogram(ax, arrays[key], bins=bins, title=f"{label}: {name}")
            if key != "eig_R":  # mark the eigenvalues above 10% of lambda_max
                n = m["large_H"] if key == "eig_H" else m["large_G"]
                for lam in arrays[key][::-1][:n]:
                    ax.axvline(lam, color="#cc0000", lw=0.6, alpha=0.7)
        axes[row, 0].text(0.98, 0.95, f"{m['large_H']} eigenvalues > 10% λmax, top {m['K_G_top_explained']} "
                          f"explained by G\n{m['num_classes']} classes", transform=axes[row, 0].transAxes,
                          ha="right", va="top", fontsize=7)
    return fig


def _share_figure(results: list[tuple[str, dict[str, np.ndarray], dict[str, Any]]]) -> Any:
    from ..plotting import new_figure

    fig, axes = new_figure(1, len(results), size=(4.2, 3.0))
    for ax, (label, arrays, m) in zip(axes.flat, results):
        k = min(max(m["large_H"], m["num_classes"]) + 5, arrays["top_vectors_H"].shape[1])
        lam = arrays["eig_H"][::-1][:k]
        share = arrays["rayleigh_G_on_H_vectors"][::-1][:k] / lam
        ax.bar(np.arange(1, k + 1), share, color=["#cc0000" if i < m["large_H"] else "#3465a4" for i in range(k)])
        ax.axhline(EXPLAINED_SHARE, color="k", lw=0.6, ls="--")
        ax.axvline(m["num_classes"] + 0.5, color="#4e9a06", lw=0.8, ls=":")
        ax.set_xlabel("rank of H's eigenvalue (red: > 10% λmax; green: C)")
        ax.set_ylabel("v^T G v / λ  (share from G)")
        ax.set_title(label, fontsize=9)
    return fig


def _model_at(ctx: Context, net: dict[str, Any], stage: str) -> Any:
    """The net at its initial weights or after GD (training is a resumable progress unit)."""
    from ..training import init_on_sphere
    from ._common import set_flat_params

    seed = sub_seed(ctx.seed, "decomposition", net["key"])
    model = net["make"]()
    if stage == "init":
        init_on_sphere(model, seed=seed)  # the start train_unit uses
        return model, None
    unit = train_unit(ctx, f"{net['key']}_train", net["make"], net["data"], loss="cross_entropy",
                      train_kwargs=net["train"], init_seed=seed, spectrum=False)
    set_flat_params(model, unit["params"])
    return model, training_numbers(unit["meta"])


def run_decomposition(ctx: Context) -> dict[str, Any]:
    """Decompose the Hessians of the two nets (at each stage), count outliers explained by G."""
    stages = list(ctx.cfg.get("stages", ["trained"]))
    measured, rows, figs, arrays_out = {}, [], [], {}
    for net in _nets(ctx):
        for stage in stages:
            key = f"{net['key']}_{stage}"
            model, training = _model_at(ctx, net, stage)
            arrays = _dense(ctx, key, model, net["data"])
            label = f"{net['label']} ({stage})"
            m = {**_analyse(arrays, net["classes"]), "training": training, "label": label, "stage": stage}
            measured[key] = m
            figs.append((label, arrays, m))
            for k in ("eig_H", "eig_G", "eig_R"):
                arrays_out[f"{key}_{k}"] = arrays[k]
            arrays_out[f"{key}_G_share_top"] = np.asarray(m["G_share_top"])
            rows.append([label, m["H"]["num_params"], net["classes"], m["outliers_H"], m["outliers_G"],
                         m["outliers_H_explained_by_G"], m["large_H"], m["large_H_explained_by_G"], m["large_G"],
                         m["K_G_top_explained"], m["subspace_overlap_top_classes"], m["H"]["lambda_max"],
                         m["R"]["lambda_max"], m["R"]["lambda_min"], m["R_trace_over_H_trace"],
                         m["H"]["num_negative"], m["G"]["num_negative"]])
            ctx.log(f"{label}: outliers of H {m['outliers_H']} (above 0.1·λmax); "
                    f"top {m['K_G_top_explained']} eigenvalues explained by G; {net['classes']} classes")
    ctx.rd.save_arrays(arrays_out)
    ctx.rd.save_figure(_figure(figs), "decomposition_spectra.png")
    ctx.rd.save_figure(_share_figure(figs), "decomposition_outlier_shares.png")
    table = markdown_table(["net", "params", "classes", "outliers H", "outliers G",
                            "explained by G", "H > 10% λmax", "explained by G", "G > 10% λmax",
                            "top-n all explained", "overlap top-C", "λmax H", "λmax R", "λmin R",
                            "tr R / tr H", "#neg H", "#neg G"], rows)
    claims = []
    for key, m in measured.items():
        C = m["num_classes"]
        claims.append(Claim(
            f"{m['label']}: outliers",
            "two isolated eigenvalues for the 2-class blobs (section 3)" if key.startswith("blobs")
            else "the isolated top eigenvalues depend on the data (section 2)",
            f"{m['outliers_H']} outliers of H above 0.1·λmax ({m['outliers_H_explained_by_G']} explained by G; "
            f"count at 0.03..0.3·λmax: {' '.join(str(v) for v in m['H']['outlier_sweep'].values())}); "
            f"the top {m['K_G_top_explained']} eigenvalues all carry >= {EXPLAINED_SHARE:.0%} in G; "
            f"C = {C} classes",
            (m["outliers_H"] == 2) if key == "blobs_trained" else None,
            "beyond the paper: the paper does not split H into G + R; one net, so no test",
            seeds=1, test="count on one net", runs="one trained net" if key.endswith("trained") else "initial weights"))
    notes = [
        "G = sum_b (n_b/N) J_b^T H_loss,b J_b is positive semi-definite for cross-entropy; its smallest computed "
        "eigenvalues: " + ", ".join(f"{m['label']}: {m['G_min_eigenvalue']:.1e}" for m in measured.values()),
        "Negative eigenvalues of H come from R (G is PSD): R's most negative eigenvalue: "
        + ", ".join(f"{m['label']}: {m['R']['lambda_min']:.2e}" for m in measured.values()),
        f"'Explained by G' means v_i^T G v_i / lambda_i >= {EXPLAINED_SHARE} for the eigenvector v_i of H; "
        "'top-n all explained' is the largest n such that the top n eigenvalues of H all are.",
        "Outliers: eigenvalues above 0.1·λmax (spectra.counts); the counts at 0.03, 0.05, 0.2 and 0.3·λmax are in "
        "results.json (outlier_sweep), so a count that depends on the threshold shows.",
    ]
    return {"measured": measured, "claims": claims, "tables": [table], "notes": notes}


# How spectra.experiments registers this module (see the report to the experiments' owner):
#   Experiment("decomposition", TITLE, "decomposition", "run_decomposition")


def run(out: str | Path, scale: str = "quick", seed: int = 0, **options: Any) -> dict[str, Any]:
    """Run this experiment into ``out/decomposition/`` (same options as :func:`spectra.experiments.run`)."""
    from . import EXPERIMENTS, Experiment
    from . import run as run_experiment

    if "decomposition" not in EXPERIMENTS:  # until the registry lists it
        EXPERIMENTS["decomposition"] = Experiment("decomposition", TITLE, "decomposition", "run_decomposition")
    return run_experiment("decomposition", out, scale, seed, **options)
