"""Outlier count against the number of classes: MNIST subsets with C = 2, 5, 10.

The paper ties the isolated eigenvalues to the data; later work (Papyan
2019-20) counts them: with cross-entropy, C or C - 1 outliers from the
Gauss-Newton part's class means.  Here one-hidden-layer ReLU nets 49-k-C are
trained on the digits 0..C-1 (7x7-pooled MNIST, :mod:`._small_data`), with
cross-entropy and with MSE, several widths and inits, to a small gradient;
every run's exact spectrum gives its outlier count (eigenvalues above
0.1·lambda_max, with the sweep), set against C.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from . import _stats
from ._common import Context, run_record, sub_seed, train_unit, training_rule, training_summary
from ._report import Claim, markdown_table
from ._small_data import mnist_small

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"threads": 1, "classes": [2, 5], "per_class": 8, "widths": [8], "losses": ["cross_entropy", "mse"],
             "seeds": 1, "lr": 4.0, "grad_tol": 1e-3, "max_steps": 1000},
    "quick": {"threads": 1, "classes": [2, 5, 10], "per_class": 30, "widths": [16, 32],
              "losses": ["cross_entropy", "mse"], "seeds": 2, "lr": 4.0, "grad_tol": 1e-3, "max_steps": 10000,
              "newton_on_kinks": True},
    "paper": {"threads": 1, "classes": [2, 5, 10], "per_class": 100, "widths": [16, 32, 64],
              "losses": ["cross_entropy", "mse"], "seeds": 2, "lr": 4.0, "grad_tol": 1e-4, "max_steps": 30000,
              "newton_on_kinks": True},
}


def run_classes(ctx: Context) -> dict[str, Any]:
    from ..models import create
    from ..plotting import new_figure

    cfg = ctx.cfg
    runs, rows, records, arrays = [], [], [], {}
    for C, k, loss, s in itertools.product(cfg["classes"], cfg["widths"], cfg["losses"], range(cfg["seeds"])):
        data = mnist_small(list(range(C)), cfg["per_class"], ctx.seed)
        u = train_unit(ctx, f"C{C}_k{k}_{loss}_s{s}", lambda C=C, k=k: create("mlp", sizes=[49, k, C], dtype="float64"),
                       data, loss=loss, train_kwargs={"optimizer": "gd", "lr": cfg["lr"], "grad_tol": cfg["grad_tol"],
                                                      "max_steps": cfg["max_steps"], "log_every": 50},
                       init_seed=sub_seed(ctx.seed, "classes", C, k, s),
                       newton_on_kinks=bool(cfg.get("newton_on_kinks")))
        num, meta = u["numbers"], u["meta"]
        arrays[f"eigs_C{C}_k{k}_{loss}_s{s}"] = u["eigs"]
        runs.append({"C": C, "width": k, "loss": loss, "seed": s, "converged": meta["converged"],
                     "final_grad_norm": meta["final_grad_norm"], "num_params": num["num_params"],
                     "outliers": num["num_outliers"], "sweep": num["outlier_sweep"],
                     "top8_over_lambda_max": num["top8_over_lambda_max"], "lambda_max": num["lambda_max"],
                     "cut_ratio": num["outlier_cut_ratio"]})
        records.append(run_record(f"C={C} k={k} {loss} init {s}", meta["converged"], meta["final_grad_norm"],
                                  cfg["grad_tol"], meta.get("kink_distance"), meta["steps"]))
        rows.append([C, k, loss, s, num["num_params"], meta["converged"], meta["final_grad_norm"], num["lambda_max"],
                     num["num_outliers"], " ".join(str(v) for v in num["outlier_sweep"].values()),
                     num["outlier_cut_ratio"]])
    claims = []
    for loss in cfg["losses"]:
        conv = [r for r in runs if r["loss"] == loss and r["converged"]]
        t = _stats.trend([r["C"] for r in conv], [r["outliers"] for r in conv])
        agrees, text = _stats.verdict(t["rho"] > 0, _stats.significant(t), ctx.scale)
        in_set = sum(1 for r in conv if r["outliers"] in (r["C"] - 1, r["C"]))
        per_c = {C: [r["outliers"] for r in conv if r["C"] == C] for C in cfg["classes"]}
        claims.append(Claim(
            f"outliers grow with the classes, {loss}",
            "the isolated eigenvalues depend on the data; later work: C or C−1 of them with cross-entropy",
            "outliers per run by C: " + "; ".join(f"C={C}: {','.join(map(str, v))}" for C, v in per_c.items())
            + f"; runs with C−1 or C outliers: {in_set}/{len(conv)}",
            agrees, verdict=text, effect="median count per C: " + ", ".join(
                f"{C}: {np.median(v):g}" if v else f"{C}: -" for C, v in per_c.items()),
            seeds=f"{len(conv)} converged runs", test=_stats.describe_trend(t) if conv else "none",
            runs="converged only",
            note="count = eigenvalues above 0.1·λmax; the sweep over the threshold is in the table"))
    fig, axes = new_figure(1, len(cfg["losses"]), size=(3.8, 3.2))
    for ax, loss in zip(axes.flat, cfg["losses"]):
        for r in runs:
            if r["loss"] != loss:
                continue
            ax.scatter(r["C"] + 0.15 * (cfg["widths"].index(r["width"]) - 0.5), r["outliers"],
                       marker="o" if r["converged"] else "x", color="#3465a4" if r["converged"] else "#cc0000", s=16)
        cs = np.array(cfg["classes"])
        ax.plot(cs, cs, color="k", lw=0.6, ls="--", label="C")
        ax.plot(cs, cs - 1, color="k", lw=0.6, ls=":", label="C − 1")
        ax.set_xticks(cs)
        ax.set_xlabel("number of classes C")
        ax.set_ylabel("outliers (λ > 0.1·λmax)")
        ax.set_title(loss, fontsize=9)
        ax.legend(fontsize=7)
    ctx.rd.save_figure(fig, "classes_outliers.png")
    ctx.rd.save_arrays(arrays)
    table = markdown_table(["C", "width", "loss", "init", "params", "converged", "|grad|", "λmax", "outliers",
                            "count at 0.03/0.05/0.1/0.2/0.3 λmax", "λn/λn+1 at the cut"], rows)
    notes = [f"Digits 0..C−1 of MNIST, {cfg['per_class']} images each, averaged over 4x4 blocks (49 inputs); nets "
             f"49-k-C with ReLU, k in {cfg['widths']}; GD with backtracking from step {cfg['lr']:g} to ||grad|| < "
             f"{cfg['grad_tol']:g} or {cfg['max_steps']} steps; {cfg['seeds']} inits per cell.",
             "Crosses in the figure: runs that did not converge (left out of the verdicts)."]
    return {"measured": {"runs": runs}, "claims": claims, "tables": [table], "notes": notes,
            "training": training_summary(records, rule=training_rule(cfg))}
