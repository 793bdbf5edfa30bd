"""Figure 9: the top two eigenvalues as the blobs merge (growing standard deviation).

For each std the same net is trained from several sphere inits (the same
inits for every std), with :func:`~spectra.experiments.many_inits.run_inits`.
We report the top two eigenvalues (mean and spread over inits) and the weight
norms, to see whether the eigenvalues grow beyond the init-to-init
fluctuation and whether the weight norms can explain the growth.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import Context
from ._report import Claim, markdown_table
from .many_inits import run_inits

CONFIGS: dict[str, dict[str, Any]] = {
    # lr 0.1: overlapping blobs give sharper minima than separable ones; at
    # lr 0.5 GD sits at the edge of stability (lambda_max ~ 2/lr) and never
    # reaches a small gradient.
    "tiny": {"threads": 1, "hidden": 2, "n": 100, "stds": [0.4, 1.2], "lr": 0.1, "grad_tol": 1e-3,
             "max_steps": 1500, "num_inits": 4},
    "quick": {"threads": 1, "hidden": 6, "n": 200, "stds": [0.4, 0.8, 1.2, 1.6], "lr": 0.1, "grad_tol": 1e-4,
              "max_steps": 5000, "num_inits": 8},
    "paper": {"threads": 1, "hidden": 6, "n": 200, "stds": [0.4, 0.8, 1.2, 1.6, 2.0], "lr": 0.1,
              "grad_tol": 1e-4, "max_steps": 20000, "num_inits": 100},
}


def run_fig9(ctx: Context) -> dict[str, Any]:
    from ..plotting import std_sweep_figure

    cfg = ctx.cfg
    stds = [float(s) for s in cfg["stds"]]
    top1, top2, norms, rows, measured = [], [], [], [], {"per_std": {}}
    for std in stds:
        r = run_inits(ctx, f"std{std:g}".replace(".", "p"), hidden=cfg["hidden"], n=cfg["n"], std=std,
                      lr=cfg["lr"], grad_tol=cfg["grad_tol"], max_steps=cfg["max_steps"],
                      num_inits=cfg["num_inits"], chunk=cfg["num_inits"])
        l1, l2, wn = r["eigs"][:, -1], r["eigs"][:, -2], r["weight_norm"]
        top1.append(l1)
        top2.append(l2)
        norms.append(wn)
        measured["per_std"][f"{std:g}"] = {
            "lambda1_mean": float(l1.mean()), "lambda1_std": float(l1.std()),
            "lambda2_mean": float(l2.mean()), "lambda2_std": float(l2.std()),
            "weight_norm_mean": float(wn.mean()), "weight_norm_std": float(wn.std()),
            "loss_mean": float(r["loss"].mean()), "accuracy_mean": float(np.nanmean(r["accuracy"])),
            "converged_fraction": float(r["converged"].mean()), "max_grad_norm": float(r["grad_norm"].max()),
        }
        rows.append([std, l1.mean(), l1.std(), l2.mean(), l2.std(), wn.mean(), wn.std(), r["loss"].mean(),
                     np.nanmean(r["accuracy"]), f"{r['converged'].mean():.0%}"])
    top1, top2, norms = np.array(top1), np.array(top2), np.array(norms)
    ctx.rd.save_arrays({"stds": np.array(stds), "lambda1": top1, "lambda2": top2, "weight_norm": norms})
    ctx.rd.save_figure(std_sweep_figure(np.array(stds), top1, top2, norms,
                                        title=f"blobnet h={cfg['hidden']}, {cfg['num_inits']} inits per std"),
                       "fig9_std_sweep.png")
    # Growth beyond init noise: Welch's t statistic between the smallest and the
    # largest std, and (the inits are the same for every std) the fraction of
    # inits whose eigenvalue grew.
    def welch(a: np.ndarray, b: np.ndarray) -> float:
        return float((b.mean() - a.mean()) / max(np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size), 1e-300))

    growth1, growth2 = welch(top1[0], top1[-1]), welch(top2[0], top2[-1])
    paired1, paired2 = float(np.mean(top1[-1] > top1[0])), float(np.mean(top2[-1] > top2[0]))
    ratio1 = top1[-1].mean() / top1[0].mean()
    ratio2 = top2[-1].mean() / top2[0].mean()
    norm_ratio = norms.mean(1).max() / norms.mean(1).min()
    monotone1 = bool(np.all(np.diff(top1.mean(1)) > 0))
    measured.update(lambda1_growth_welch_t=growth1, lambda2_growth_welch_t=growth2,
                    lambda1_grew_fraction_of_inits=paired1, lambda2_grew_fraction_of_inits=paired2,
                    lambda1_ratio_last_first=float(ratio1), lambda2_ratio_last_first=float(ratio2),
                    weight_norm_ratio_max_min=float(norm_ratio), lambda1_monotone=monotone1)
    claims = [
        Claim("top eigenvalues grow with std", "the top two eigenvalues grow significantly, beyond the "
              "fluctuations due to initialisation",
              f"std {stds[0]:g} -> {stds[-1]:g}: λ1 x{ratio1:.3g} (Welch t {growth1:.1f}, grew for {paired1:.0%} of "
              f"inits), λ2 x{ratio2:.3g} (t {growth2:.1f}, {paired2:.0%}); λ1 mean monotone in std: {monotone1}",
              bool(growth1 > 3 and growth2 > 3 and paired1 == 1.0 and paired2 == 1.0)),
        Claim("weight norms", "the norms of the weights are similar for all cases, so they do not explain the growth",
              f"mean weight norm ranges over x{norm_ratio:.2f} across stds (eigenvalue ratio x{ratio1:.2f})",
              bool(norm_ratio < 1.5 and norm_ratio < ratio1)),
        Claim("higher error as blobs merge", "GD still converges to a low cost, but the error is higher",
              "accuracy " + ", ".join(f"{measured['per_std'][f'{s:g}']['accuracy_mean']:.3f}" for s in stds)
              + "; loss " + ", ".join(f"{measured['per_std'][f'{s:g}']['loss_mean']:.3g}" for s in stds), None),
    ]
    table = markdown_table(["std", "λ1 mean", "λ1 sd", "λ2 mean", "λ2 sd", "|w| mean", "|w| sd", "loss",
                            "accuracy", "converged"], rows)
    edge = 2.0 / cfg["lr"]
    at_edge = [f"{s:g}" for s, l1 in zip(stds, top1) if l1.mean() > 0.8 * edge]
    measured["edge_of_stability"] = {"two_over_lr": edge, "stds_with_lambda1_above_80pct_of_it": at_edge}
    notes = [f"The same {cfg['num_inits']} sphere inits for every std; GD lr {cfg['lr']:g} to ||grad|| < "
             f"{cfg['grad_tol']:g} or {cfg['max_steps']} steps (overlapping blobs converge slowly: see the "
             "converged column).",
             "Growth beyond init noise: Welch's t between the smallest and largest std (> 3 counts as significant), "
             "and the fraction of inits (the same for every std) whose eigenvalue grew."]
    if at_edge:
        notes.append(f"Caution: for std {', '.join(at_edge)} the mean λ1 is above 80% of 2/lr = {edge:g}, the largest "
                     "curvature GD with this step can sit in (edge of stability); there λ1 reflects the step size as "
                     "much as the data, and GD did not converge.")
    return {"measured": measured, "claims": claims, "tables": [table], "notes": notes}
