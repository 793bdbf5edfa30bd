"""Figure 2: the 784-10-10 net on random inputs vs MNIST, at initialisation and after training.

Both datasets start from the *same* initial weights (one sphere draw per
init), so the difference at step 0 is the data alone.  Random inputs are
MNIST-shaped uniform pixels with random labels (the ``random`` dataset).
The trained MNIST nets are figure 1's 10-unit nets (shared within one
``reproduce all``).  Several inits; comparisons are paired by init.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _stats
from ._common import Context, run_record, training_rule, training_summary
from ._report import Claim, markdown_table
from .mnist_width import mnist_unit

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"threads": 1, "n": 100, "k": 1, "seeds": 2, "lr": 4.0, "grad_tol": 1e-3, "max_steps": 1000,
             "exact_max_params": 5000},
    "quick": {"threads": 1, "n": 300, "k": 10, "seeds": 2, "lr": 4.0, "grad_tol": 2e-3, "max_steps": 3000,
              "exact_max_params": 4000, "newton_on_kinks": True},
    "paper": {"threads": None, "n": 1000, "k": 10, "seeds": 2, "lr": 4.0, "grad_tol": 1e-4, "max_steps": 30000,
              "exact_max_params": 20000, "newton_on_kinks": True},
}
# "Very different" spectra: lambda_max differs by more than this factor (and significantly), or the outlier counts differ.
DIFFERENT_FACTOR = 1.5


def run_fig2(ctx: Context) -> dict[str, Any]:
    from ..datasets import load
    from ..plotting import histogram_grid

    cfg = ctx.cfg
    k = cfg["k"]
    datasets = {"mnist": load("mnist", n=cfg["n"], seed=ctx.seed, dtype="float64"),
                "random": load("random", n=cfg["n"], seed=ctx.seed, dtype="float64")}
    order = [("mnist", "init"), ("random", "init"), ("random", "trained"), ("mnist", "trained")]
    measured: dict[str, Any] = {f"{d}_{s}": [] for d, s in order}
    panels, rows, arrays, records = [], [], {}, []
    for i in range(cfg["seeds"]):
        for dname, stage in order:
            u = mnist_unit(ctx, datasets[dname], k, i, steps=0 if stage == "init" else None, dataset=dname)
            num, meta = u["numbers"], u["meta"]
            measured[f"{dname}_{stage}"].append({**num, "converged": meta["converged"] if stage == "trained" else None,
                                                 "final_grad_norm": meta["final_grad_norm"],
                                                 "final_loss": meta["final_loss"],
                                                 "final_accuracy": meta["final_accuracy"], "seed": i})
            if stage == "trained":
                records.append(run_record(f"{dname} init {i}", meta["converged"], meta["final_grad_norm"],
                                          cfg["grad_tol"], meta.get("kink_distance"), meta["steps"]))
            if i == 0 and u["eigs"] is not None:
                panels.append((f"{dname}, {'at initialisation' if stage == 'init' else 'after GD'}", u["eigs"], num))
                arrays[f"eigs_{dname}_{stage}"] = u["eigs"]
            rows.append([dname, stage, i, meta["steps"], meta["final_loss"], meta["final_accuracy"],
                         meta["final_grad_norm"], num["lambda_max"], num["num_outliers"], num["zero_fraction"],
                         num["num_negative"], "estimated" if num.get("estimated") else "exact"])
    ctx.rd.save_arrays(arrays or {"none": np.zeros(0)})
    P = 785 * k + (k + 1) * 10
    if panels:
        ctx.rd.save_figure(histogram_grid(panels, ncols=4, suptitle=f"784-{k}-10 ({P} params): MNIST vs random "
                                                                     "inputs, init 0"), "fig2_histograms.png")
    else:
        _summary_figure(ctx, measured, k, P)
    claims = [_differ(ctx, measured, "init", "initial spectra differ",
                      "initial eigenvalue profiles (MNIST vs random inputs) are very different"),
              _differ(ctx, measured, "trained", "final spectra differ",
                      "after training, random inputs give a profile unlike MNIST's (figure 1)")]
    table = markdown_table(["data", "stage", "init", "steps", "loss", "acc", "|grad|", "λmax", "#λ>0.1λmax",
                            "frac |λ|<1e-3·λmax", "#neg", "spectrum"], rows)
    notes = [f"GD with backtracking from step {cfg['lr']:g} on both datasets (random pixels have larger norms and "
             "need smaller steps: the rule finds them), to ||grad|| < "
             f"{cfg['grad_tol']:g} or {cfg['max_steps']} steps; {cfg['seeds']} inits, the same for both datasets.",
             f"'Very different': λmax differs by more than x{DIFFERENT_FACTOR:g} with a significant paired test, or "
             "the outlier counts (λ > 0.1·λmax) differ for every init.",
             "Nets above exact_max_params: the 20 largest eigenvalues from ARPACK, the rest from SLQ (marked "
             "'estimated')."]
    return {"measured": measured, "claims": claims, "tables": [table], "notes": notes,
            "training": training_summary(records, rule=training_rule(cfg), verdicts="The 'after training' verdict uses converged runs only; "
                                                           "the initial spectra need no training.")}


def _differ(ctx: Context, measured: dict[str, Any], stage: str, topic: str, paper: str) -> Claim:
    mn, rn = measured[f"mnist_{stage}"], measured[f"random_{stage}"]
    keep = [j for j in range(len(mn)) if stage == "init" or (mn[j]["converged"] and rn[j]["converged"])]
    a = [np.log(mn[j]["lambda_max"]) for j in keep]
    b = [np.log(rn[j]["lambda_max"]) for j in keep]
    c = _stats.compare(a, b)
    ratio = float(np.exp(np.mean(b) - np.mean(a))) if keep else np.nan
    # counts decide only with two or more inits, and not when they reach ARPACK's k (censored)
    counts_differ = len(keep) >= 2 and all(mn[j]["num_outliers"] != rn[j]["num_outliers"] and
                                           not mn[j].get("censored") and not rn[j].get("censored") for j in keep)
    big = max(ratio, 1 / ratio) > DIFFERENT_FACTOR if np.isfinite(ratio) else False
    agrees, text = _stats.verdict(big or counts_differ, (big and _stats.significant(c)) or counts_differ, ctx.scale)
    return Claim(topic, paper,
                 "λmax MNIST vs random per init: " + "; ".join(f"{mn[j]['lambda_max']:.3g} vs {rn[j]['lambda_max']:.3g}"
                                                              for j in keep)
                 + "; outliers: " + "; ".join(f"{mn[j]['num_outliers']} vs {rn[j]['num_outliers']}" for j in keep)
                 + "; |λ|<1e-3·λmax: " + "; ".join(f"{mn[j]['zero_fraction']:.3f} vs {rn[j]['zero_fraction']:.3f}"
                                                   for j in keep),
                 agrees, verdict=text, effect=f"λmax random/MNIST x{ratio:.3g} (geometric mean)",
                 seeds=f"{len(keep)} inits" + (" (both runs converged)" if stage == "trained" else ""),
                 test=f"Welch t on log λmax p = {c['p']:.2g}; outlier counts differ for every init: {counts_differ}",
                 runs="converged only" if stage == "trained" else "initial weights")


def _summary_figure(ctx: Context, measured: dict[str, Any], k: int, P: int) -> None:
    """Without exact spectra (quick scale, large net): λmax and zero fraction per dataset and stage."""
    from ..plotting import new_figure

    fig, axes = new_figure(1, 2, size=(4.2, 3.2))
    labels = list(measured)
    for ax, key, name in ((axes[0, 0], "lambda_max", "λmax (log)"), (axes[0, 1], "zero_fraction",
                                                                     "fraction |λ| < 1e-3·λmax")):
        for x, label in enumerate(labels):
            vals = [r[key] for r in measured[label]]
            ax.scatter(np.full(len(vals), x), vals, color="#3465a4")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([lbl.replace("_", "\n") for lbl in labels], fontsize=7)
        ax.set_ylabel(name)
        if key == "lambda_max":
            ax.set_yscale("log")
    fig.suptitle(f"784-{k}-10 ({P} params), estimated spectra (ARPACK top + SLQ), one dot per init")
    ctx.rd.save_figure(fig, "fig2_summary.png")
