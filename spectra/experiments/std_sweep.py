"""Figure 9: the top two eigenvalues as the blobs merge (growing standard deviation).

Two arms, the same inits for every std:

* **paper**: the paper's 2-6-6-2 ReLU net, cross-entropy, GD (backtracking)
  for a fixed budget.  Where the blobs overlap, GD cannot converge: the
  cross-entropy has no minimum it can reach and GD ends on ReLU kinks (a
  sample on a unit's switching surface), where the loss is not differentiable
  and the gradient norm stays near the jump (about 1e-2), far above 1e-4.
  These runs are reported, with their kink distances, and left out of the
  verdicts.
* **converged**: the same architecture with tanh units and a small weight
  decay (``weight_decay / 2 |w|^2``), so the loss is smooth and has minima;
  GD, then Newton steps (:mod:`spectra.experiments._polish`) to a gradient
  norm of 1e-8.  Every verdict uses this arm: the top two eigenvalues of the
  loss Hessian (without the decay term) at a true minimum, against std, with
  per-init values, paired comparisons between neighbouring stds (the same
  inits), and per-init checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _stats
from ._common import Context, run_record, training_summary
from ._report import Claim, markdown_table
from .many_inits import run_inits

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"threads": 1, "hidden": 2, "n": 100, "stds": [0.4, 1.2], "lr": 0.5, "grad_tol": 1e-3,
             "max_steps": 1500, "num_inits": 4, "smooth_activation": "tanh", "weight_decay": 1e-3,
             "smooth_grad_tol": 1e-8, "smooth_gd_steps": 500},
    "quick": {"threads": 1, "hidden": 6, "n": 200, "stds": [0.4, 0.8, 1.2, 1.6], "lr": 0.5, "grad_tol": 1e-4,
              "max_steps": 5000, "num_inits": 8, "smooth_activation": "tanh", "weight_decay": 1e-3,
              "smooth_grad_tol": 1e-8, "smooth_gd_steps": 2000},
    "paper": {"threads": 1, "hidden": 6, "n": 200, "stds": [0.4, 0.8, 1.2, 1.6, 2.0], "lr": 0.5, "grad_tol": 1e-4,
              "max_steps": 20000, "num_inits": 100, "smooth_activation": "tanh", "weight_decay": 1e-3,
              "smooth_grad_tol": 1e-8, "smooth_gd_steps": 5000},
}
# "Low cost": training cross-entropy within this many nats of the Bayes classifier's on the same sample.
LOW_EXCESS = 0.05
EDGE_FRACTION = 0.9  # an init is "at the edge of stability" when its last step times lambda_1 exceeds 0.9 * 2


def bayes_loss(X: np.ndarray, y: np.ndarray, std: float) -> tuple[float, float]:
    """Cross-entropy and error of the Bayes classifier of the two blobs on this sample.

    The blobs are isotropic with centres (1, 1) and (-1, -1) and equal priors,
    so the posterior of class 0 is ``sigmoid(2 (x1 + x2) / std^2)``.

    >>> X = np.array([[1.0, 1.0], [-1.0, -1.0]]); y = np.array([0, 1])
    >>> loss, err = bayes_loss(X, y, 1.0)
    >>> round(loss, 4), err
    (0.0181, 0.0)
    """
    z = 2.0 * X.sum(1) / std**2
    logit = np.where(y == 0, z, -z)
    return float(np.mean(np.logaddexp(0.0, -logit))), float(np.mean(logit < 0))


def _arm(ctx: Context, arm: str, std: float) -> dict[str, np.ndarray]:
    cfg = ctx.cfg
    key = f"{arm}_std{std:g}".replace(".", "p")
    if arm == "paper":
        return run_inits(ctx, key, hidden=cfg["hidden"], n=cfg["n"], std=std, lr=cfg["lr"],
                         grad_tol=cfg["grad_tol"], max_steps=cfg["max_steps"], num_inits=cfg["num_inits"],
                         chunk=cfg["num_inits"])
    return run_inits(ctx, key, hidden=cfg["hidden"], n=cfg["n"], std=std, lr=cfg["lr"],
                     grad_tol=cfg["smooth_grad_tol"], max_steps=cfg["smooth_gd_steps"], num_inits=cfg["num_inits"],
                     chunk=cfg["num_inits"], activation=cfg["smooth_activation"],
                     weight_decay=cfg["weight_decay"], polish=True)


def run_fig9(ctx: Context) -> dict[str, Any]:
    from ..datasets import load
    from ..plotting import std_sweep_figure

    cfg = ctx.cfg
    stds = [float(s) for s in cfg["stds"]]
    arms = {arm: [_arm(ctx, arm, s) for s in stds] for arm in ("paper", "smooth")}
    measured: dict[str, Any] = {"stds": stds, "arms": {}}
    records, rows = [], []
    bayes = []
    for std in stds:
        d = load("blobs", n=cfg["n"], std=std, seed=ctx.seed, dtype="float64")
        bayes.append(bayes_loss(d.X.numpy(), d.y.numpy(), std))
    for arm, results in arms.items():
        per_std = {}
        tol = cfg["grad_tol"] if arm == "paper" else cfg["smooth_grad_tol"]
        for std, r, (bl, be) in zip(stds, results, bayes):
            conv = r["converged"].astype(bool)
            kinks = r["kink_distance"]
            edge = r["lambda1_times_last_lr"] > EDGE_FRACTION * 2.0
            per_std[f"{std:g}"] = {
                "lambda1": r["eigs"][:, -1].tolist(), "lambda2": r["eigs"][:, -2].tolist(),
                "converged": conv.tolist(), "grad_norm": r["grad_norm"].tolist(), "loss": r["loss"].tolist(),
                "error": (1.0 - r["accuracy"]).tolist(), "weight_norm": r["weight_norm"].tolist(),
                "kink_distance": kinks.tolist(), "last_step_times_lambda1": r["lambda1_times_last_lr"].tolist(),
                "inits_at_edge_of_stability": int(edge.sum()), "bayes_loss": bl, "bayes_error": be,
                **({"min_eigenvalue_regularised": r["min_eigenvalue"].tolist(),
                    "newton_iterations": r["polish_iterations"].tolist(),
                    "gd_converged_before_newton": r["gd_converged"].tolist(),
                    "newton_distance": r["polish_distance"].tolist()} if arm == "smooth" else {})}
            records += [run_record(f"{arm} std {std:g} init {int(i)}", c, g, tol, k, s)
                        for i, c, g, k, s in zip(r["index"], conv, r["grad_norm"], kinks, r["steps"])]
            rows.append([arm, std, f"{conv.sum()}/{conv.size}", np.median(r["grad_norm"]),
                         int(np.sum(kinks < 1e-6)) if arm == "paper" else "-", int(edge.sum()),
                         np.median(r["eigs"][:, -1]), np.median(r["eigs"][:, -2]), np.mean(r["weight_norm"]),
                         np.mean(r["loss"]), bl, np.mean(1 - r["accuracy"]), be])
        measured["arms"][arm] = per_std
    ctx.rd.save_arrays({"stds": np.array(stds),
                        **{f"{arm}_{k}": np.array([r[k2] for r in res]) for arm, res in arms.items()
                           for k, k2 in (("eigs", "eigs"), ("converged", "converged"), ("weight_norm", "weight_norm"),
                                         ("loss", "loss"))}})
    smooth = arms["smooth"]
    ctx.rd.save_figure(std_sweep_figure(np.array(stds), np.array([r["eigs"][:, -1] for r in smooth]),
                                        np.array([r["eigs"][:, -2] for r in smooth]),
                                        np.array([r["weight_norm"] for r in smooth]),
                                        converged=np.array([r["converged"] for r in smooth]),
                                        paper_top1=np.array([r["eigs"][:, -1] for r in arms["paper"]]),
                                        title=f"converged arm: 2-{cfg['hidden']}-{cfg['hidden']}-2 "
                                              f"{cfg['smooth_activation']}, weight decay {cfg['weight_decay']:g}, "
                                              f"{cfg['num_inits']} inits per std (grey: the paper's ReLU net)"),
                       "fig9_std_sweep.png")
    claims = _claims(ctx, stds, arms, bayes, measured)
    table = markdown_table(["arm", "std", "converged", "median |g|", "on a ReLU kink", "at edge of stability",
                            "median λ1", "median λ2", "mean |w|", "mean loss", "Bayes loss", "mean error",
                            "Bayes error"], rows)
    notes = [f"paper arm: ReLU, cross-entropy, GD with backtracking from step {cfg['lr']:g} for at most "
             f"{cfg['max_steps']} steps, tolerance {cfg['grad_tol']:g}. 'on a ReLU kink': a sample within 1e-6 "
             "(relative) of a unit's switching surface at the end, where no gradient step decreases the loss.",
             f"converged arm: {cfg['smooth_activation']} units, loss + {cfg['weight_decay']:g}/2·|w|², "
             f"{cfg['smooth_gd_steps']} GD steps then Newton (Levenberg-Marquardt) steps to |g| < "
             f"{cfg['smooth_grad_tol']:g}; every final point is a strict local minimum (smallest eigenvalue of the "
             "regularised Hessian > 0, in results.json). The eigenvalues shown are the loss Hessian's.",
             "Same inits (same seeds, same sphere radius) for every std: comparisons between stds are paired.",
             "Bayes loss/error: the optimal classifier of the two blobs, sigmoid(2(x1+x2)/std²), on the same sample."]
    return {"measured": measured, "claims": claims, "tables": [table], "notes": notes,
            "training": training_summary(records, verdicts="Verdicts use the converged arm only; the paper arm's "
                                                            "runs that did not converge are shown, not used.")}


def _claims(ctx: Context, stds: list[float], arms: dict[str, list[dict[str, np.ndarray]]],
            bayes: list[tuple[float, float]], measured: dict[str, Any]) -> list[Claim]:
    smooth = arms["smooth"]
    conv = [r["converged"].astype(bool) for r in smooth]
    both = np.all(np.array(conv), axis=0)  # inits converged at every std: the paired comparisons use these
    n = int(both.sum())
    claims = []
    for which, col in (("λ1", -1), ("λ2", -2)):
        vals = [r["eigs"][both, col] for r in smooth]
        pairs = [_stats.compare(a, b, paired=True) for a, b in zip(vals, vals[1:])]
        levels = np.repeat(stds, n)
        t = _stats.trend(levels, np.concatenate(vals)) if n else {"rho": np.nan, "p": np.nan}
        sd_init = float(np.mean([np.std(v) for v in vals])) if n else np.nan
        growth = float(np.mean(vals[-1]) - np.mean(vals[0])) if n else np.nan
        up = sum(1 for p in pairs if _stats.significant(p) and p["ratio"] > 1)
        down = sum(1 for p in pairs if _stats.significant(p) and p["ratio"] < 1)
        agrees, text = _stats.verdict(t.get("rho", 0) > 0 and up >= down, _stats.significant(t), ctx.scale)
        claims.append(Claim(
            f"{which} grows with std", "the top two eigenvalues grow significantly, beyond the fluctuations due to "
            "initialisation",
            f"median {which} per std " + ", ".join(f"{s:g}: {np.median(v):.3g}" for s, v in zip(stds, vals))
            + "; neighbouring stds: " + "; ".join(f"{a:g}->{b:g} x{p['ratio']:.2g} (p {p['p']:.2g})"
                                                  for a, b, p in zip(stds, stds[1:], pairs)),
            agrees, verdict=text,
            effect=f"mean change {stds[0]:g}->{stds[-1]:g} = {growth:.3g}, {growth / sd_init:.2g} x the "
                   f"init-to-init sd ({sd_init:.3g})" if n else "",
            seeds=f"{n} inits converged at every std", runs="converged arm only",
            test=f"{_stats.describe_trend(t)}; neighbouring pairs (Wilcoxon, same inits): {up} up, {down} down "
                 f"of {len(pairs)} at p < 0.05" if n else "none"))
    norms = [r["weight_norm"][both] for r in smooth]
    lam1 = [r["eigs"][both, -1] for r in smooth]
    if n:
        norm_ratio = float(max(map(np.mean, norms)) / min(map(np.mean, norms)))
        lam_ratio = float(max(map(np.mean, lam1)) / min(map(np.mean, lam1)))
        t = _stats.trend(np.repeat(stds, n), np.concatenate(norms))
        similar = norm_ratio < 1.5 and norm_ratio < lam_ratio
        claims.append(Claim("weight norms", "the norms of the weights are similar for all cases, so they do not "
                            "explain the growth",
                            "mean |w| per std: " + ", ".join(f"{np.mean(v):.3g}" for v in norms),
                            bool(similar), effect=f"mean |w| varies x{norm_ratio:.2f} across stds against "
                                                  f"x{lam_ratio:.2f} for λ1",
                            seeds=f"{n} inits", test=_stats.describe_trend(t), runs="converged arm only"))
    low = []
    for r, (bl, _) in zip(smooth, bayes):
        c = r["converged"].astype(bool)
        low.append(float(np.median(r["loss"][c] - bl)) if c.any() else np.nan)
    paper_low = [float(np.median(r["loss"] - bl)) for r, (bl, _) in zip(arms["paper"], bayes)]
    excess = _stats.mean_ci(np.concatenate([r["loss"][c] - bl for r, c, (bl, _) in zip(smooth, conv, bayes)]))
    claims.append(Claim("GD still converges to a low cost",
                        "gradient descent still converges to a low-cost value as the blobs merge",
                        "median training loss minus the Bayes classifier's, per std, converged arm: "
                        + ", ".join(f"{s:g}: {v:+.3g}" for s, v in zip(stds, low))
                        + "; paper arm (not converged): " + ", ".join(f"{v:+.3g}" for v in paper_low)
                        + "; paper arm converged: " + ", ".join(f"{int(r['converged'].sum())}/{r['converged'].size}"
                                                                for r in arms["paper"]),
                        bool(np.nanmax(low) <= LOW_EXCESS) if np.isfinite(low).any() else None,
                        effect=f"excess loss at most {np.nanmax(low):.3g} nats (mean {excess['mean']:.3g}, 95% "
                               f"[{excess['ci'][0]:.3g}, {excess['ci'][1]:.3g}])",
                        seeds=f"{n} inits", test=f"excess over the Bayes-optimal loss on the same sample ≤ "
                                                 f"{LOW_EXCESS:g} nats counts as low; convergence counted per run",
                        runs="converged arm for the loss; the paper arm does not converge where blobs overlap",
                        note="'converges' holds only for the smooth net: the ReLU net ends on kinks"))
    errs = [1.0 - r["accuracy"][both] for r in smooth]
    if n:
        t = _stats.trend(np.repeat(stds, n), np.concatenate(errs))
        agrees, text = _stats.verdict(t["rho"] > 0, _stats.significant(t), ctx.scale)
        claims.append(Claim("higher error as blobs merge", "the error is higher, and GD cannot separate them perfectly",
                            "mean training error per std: " + ", ".join(f"{np.mean(e):.3f}" for e in errs)
                            + "; Bayes error: " + ", ".join(f"{be:.3f}" for _, be in bayes),
                            agrees, verdict=text, effect=f"error {np.mean(errs[0]):.3f} -> {np.mean(errs[-1]):.3f}",
                            seeds=f"{n} inits", test=_stats.describe_trend(t), runs="converged arm only"))
    paper_edge = [int(np.sum(r["lambda1_times_last_lr"] > EDGE_FRACTION * 2.0)) for r in arms["paper"]]
    measured["edge_of_stability_per_init"] = {f"{s:g}": e for s, e in zip(stds, paper_edge)}
    claims.append(Claim("edge of stability (our check, per init)", "(not in the paper)",
                        "paper arm, inits whose last step·λ1 > 1.8, per std: "
                        + ", ".join(f"{s:g}: {e}/{r['converged'].size}" for s, e, r in
                                    zip(stds, paper_edge, arms["paper"])),
                        None, "backtracking keeps every step a descent step; λ1 then measures the data, not 2/lr",
                        seeds=f"{arms['paper'][0]['converged'].size} inits per std", test="count per init"))
    return claims
