"""Does the bulk follow the architecture and the outliers the data?  A data x width design.

The paper's abstract: "the bulk [...] indicating how overparametrized the
system is, and [...] the edges that depend on the input data".  Here four
datasets (7x7 MNIST, 7x7 random inputs with random labels, blobs at two
stds) meet one-hidden-layer ReLU nets of several widths, several inits per
cell, trained to a small gradient.  For every run:

* the bulk: the fraction of eigenvalues with |lambda| < 1e-3 lambda_max
  (how singular), and the bulk's scale relative to lambda_max
  (``q_0.9(|lambda|) / lambda_max``);
* the outliers: their count (above 0.1 lambda_max) and lambda_1.

A two-way analysis of variance per measure splits its variance into data,
width, interaction and residual: the claim holds if the bulk measures are
explained by the width more than by the data, and the outlier measures by
the data more than by the width (eta squared, with F tests).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from . import _stats
from ._common import Context, run_record, sub_seed, train_unit, training_summary
from ._report import Claim, markdown_table
from ._small_data import mnist_small, random_small

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"threads": 1, "datasets": ["mnist", "blobs0.4"], "widths": [4, 8], "seeds": 2, "n": 30, "lr": 4.0,
             "grad_tol": 1e-3, "max_steps": 1000},
    "quick": {"threads": 1, "datasets": ["mnist", "random", "blobs0.4", "blobs0.6"], "widths": [8, 16, 32],
              "seeds": 2, "n": 100, "lr": 4.0, "grad_tol": 1e-3, "max_steps": 10000},
    "paper": {"threads": 1, "datasets": ["mnist", "random", "blobs0.4", "blobs0.6"], "widths": [8, 16, 32, 64],
              "seeds": 4, "n": 300, "lr": 4.0, "grad_tol": 1e-4, "max_steps": 100000},
}
BULK_QUANTILE = 0.9


def _data(name: str, n: int, seed: int):
    from ..datasets import load

    if name == "mnist":
        return mnist_small(list(range(10)), n // 10, seed)
    if name == "random":
        return random_small(10, n, seed)
    if name.startswith("blobs"):
        return load("blobs", n=n, std=float(name[5:]), seed=seed, dtype="float64")
    raise ValueError(f"unknown dataset {name!r}")


def anova2(a: list[Any], b: list[Any], y: list[float]) -> dict[str, Any]:
    """Two-way ANOVA (sequential sums of squares for a balanced design): eta squared and p per factor.

    >>> r = anova2(["x", "x", "y", "y"] * 2, [1, 2, 1, 2] * 2, [1.0, 1.1, 5.0, 5.1, 1.05, 1.1, 5.0, 5.2])
    >>> r["eta2_a"] > 0.9 > r["eta2_b"], r["p_a"] < 0.001
    (True, True)
    """
    from scipy import stats

    y = np.asarray(y, dtype=float)
    A, B = np.asarray(a), np.asarray(b)
    grand = y.mean()
    total = float(((y - grand) ** 2).sum())
    la, lb = sorted(set(A.tolist())), sorted(set(B.tolist()))
    ss_a = sum(float((A == x).sum()) * (y[A == x].mean() - grand) ** 2 for x in la)
    ss_b = sum(float((B == x).sum()) * (y[B == x].mean() - grand) ** 2 for x in lb)
    cells = [(x, z) for x in la for z in lb if ((A == x) & (B == z)).any()]
    ss_cells = sum(float(((A == x) & (B == z)).sum()) * (y[(A == x) & (B == z)].mean() - grand) ** 2 for x, z in cells)
    ss_ab = max(ss_cells - ss_a - ss_b, 0.0)
    ss_e = max(total - ss_cells, 0.0)
    df_a, df_b = len(la) - 1, len(lb) - 1
    df_ab, df_e = df_a * df_b, max(y.size - len(cells), 1)
    ms_e = ss_e / df_e if ss_e > 0 else 1e-300

    def p(ss: float, df: int) -> float:
        return float(stats.f.sf((ss / max(df, 1)) / ms_e, max(df, 1), df_e)) if df > 0 else float("nan")

    return {"eta2_a": float(ss_a / total) if total else 0.0, "eta2_b": float(ss_b / total) if total else 0.0,
            "eta2_ab": float(ss_ab / total) if total else 0.0, "p_a": p(ss_a, df_a), "p_b": p(ss_b, df_b),
            "p_ab": p(ss_ab, df_ab), "n": int(y.size)}


def run_bulk_outliers(ctx: Context) -> dict[str, Any]:
    from ..models import create
    from ..plotting import new_figure

    cfg = ctx.cfg
    runs, rows, records, arrays = [], [], [], {}
    for name, k, s in itertools.product(cfg["datasets"], cfg["widths"], range(cfg["seeds"])):
        data = _data(name, cfg["n"], ctx.seed)
        d_in, C = int(data.X.shape[1]), int(data.y.max()) + 1
        u = train_unit(ctx, f"{name}_k{k}_s{s}".replace(".", "p"),
                       lambda d_in=d_in, k=k, C=C: create("mlp", sizes=[d_in, k, C], dtype="float64"), data,
                       loss="cross_entropy", train_kwargs={"optimizer": "gd", "lr": cfg["lr"],
                                                           "grad_tol": cfg["grad_tol"],
                                                           "max_steps": cfg["max_steps"], "log_every": 50},
                       init_seed=sub_seed(ctx.seed, "bulk-vs-outliers", name, k, s))
        num, meta, eigs = u["numbers"], u["meta"], u["eigs"]
        arrays[f"eigs_{name}_k{k}_s{s}".replace(".", "p")] = eigs
        bulk = float(np.quantile(np.abs(eigs), BULK_QUANTILE) / eigs.max())
        runs.append({"data": name, "width": k, "seed": s, "num_params": num["num_params"], "classes": C,
                     "converged": meta["converged"], "final_grad_norm": meta["final_grad_norm"],
                     "zero_fraction": num["zero_fraction"], "bulk_ratio": bulk, "outliers": num["num_outliers"],
                     "lambda_max": num["lambda_max"], "sweep": num["outlier_sweep"]})
        records.append(run_record(f"{name} k={k} init {s}", meta["converged"], meta["final_grad_norm"],
                                  cfg["grad_tol"], meta.get("kink_distance"), meta["steps"]))
        rows.append([name, k, s, num["num_params"], meta["converged"], meta["final_grad_norm"], num["zero_fraction"],
                     bulk, num["num_outliers"], num["lambda_max"]])
    conv = [r for r in runs if r["converged"]]
    measures = {"zero_fraction": ("bulk", "fraction |λ| < 1e-3·λmax"), "log_bulk_ratio": ("bulk", "log bulk/λmax"),
                "outliers": ("outliers", "outlier count"), "log_lambda_max": ("outliers", "log λ1")}
    anovas = {}
    for key in measures:
        vals = [np.log(r[key[4:]]) if key.startswith("log_") else r[key] for r in conv]
        anovas[key] = anova2([r["data"] for r in conv], [r["width"] for r in conv], vals) if len(conv) > 4 else None
    claims = []
    for part, keys, want in (("the bulk depends on the architecture", ["zero_fraction", "log_bulk_ratio"], "b"),
                             ("the outliers depend on the data", ["outliers", "log_lambda_max"], "a")):
        res = [(k, anovas[k]) for k in keys if anovas[k]]
        if not res:
            claims.append(Claim(part, "", "too few converged runs", None, seeds=len(conv)))
            continue
        other = "a" if want == "b" else "b"
        direction = all(r[f"eta2_{want}"] > r[f"eta2_{other}"] for _, r in res)
        sig = all(r[f"p_{want}"] < 0.05 for _, r in res)
        agrees, text = _stats.verdict(direction, sig or all(r[f"p_{other}"] < 0.05 for _, r in res), ctx.scale)
        claims.append(Claim(
            part, "the bulk depends on the architecture (how overparametrised), the outliers on the data "
                  "(abstract and conclusion)",
            "; ".join(f"{measures[k][1]}: η² data {r['eta2_a']:.2f} (p {r['p_a']:.2g}), width {r['eta2_b']:.2f} "
                      f"(p {r['p_b']:.2g}), interaction {r['eta2_ab']:.2f}" for k, r in res),
            agrees, verdict=text, effect="η² of the factor the paper names against the other's",
            seeds=f"{len(conv)} converged runs in {len(cfg['datasets'])} x {len(cfg['widths'])} cells",
            test="two-way ANOVA, F tests", runs="converged only"))
    fig, axes = new_figure(1, 2, size=(4.2, 3.4))
    colours = dict(zip(cfg["datasets"], ["#3465a4", "#cc0000", "#4e9a06", "#f57900", "#75507b"]))
    for ax, key, label in ((axes[0, 0], "zero_fraction", "fraction |λ| < 1e-3·λmax (bulk)"),
                           (axes[0, 1], "outliers", "outliers (λ > 0.1·λmax)")):
        for name in cfg["datasets"]:
            pts = [(r["width"], r[key]) for r in conv if r["data"] == name]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(np.array(xs) * (1 + 0.04 * cfg["datasets"].index(name)), ys, color=colours[name], s=14,
                           label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(cfg["widths"])
        ax.set_xticklabels([str(w) for w in cfg["widths"]])
        ax.set_xlabel("hidden width")
        ax.set_ylabel(label)
    axes[0, 1].legend(fontsize=7)
    ctx.rd.save_figure(fig, "bulk_vs_outliers.png")
    ctx.rd.save_arrays(arrays)
    table = markdown_table(["data", "width", "init", "params", "converged", "|grad|", "frac |λ|<1e-3·λmax",
                            "bulk/λmax", "outliers", "λmax"], rows)
    notes = [f"One-hidden-layer ReLU nets d-k-C, k in {cfg['widths']}; data: 7x7 MNIST (10 classes), 7x7 uniform "
             "inputs with random labels (10 classes), blobs (2-D, 2 classes) at two stds; "
             f"{cfg['n']} samples each; cross-entropy; GD with backtracking from step {cfg['lr']:g} to ||grad|| < "
             f"{cfg['grad_tol']:g} or {cfg['max_steps']} steps; {cfg['seeds']} inits per cell.",
             "The data factor also changes the input size and the number of classes (so P): that is part of 'the "
             "data' here, as in the paper's comparisons.",
             "η²: the share of a measure's variance explained by the factor (two-way ANOVA on converged runs)."]
    return {"measured": {"runs": runs, "anova": anovas}, "claims": claims, "tables": [table], "notes": notes,
            "training": training_summary(records)}
