"""Figure 9: the top two eigenvalues as the blobs merge (growing standard deviation).

Two arms, the same inits for every std, every run trained to a minimum:

* **relu**: the paper's 2-6-6-2 ReLU net and cross-entropy, plus a small
  weight decay (``weight_decay / 2 |w|^2``).  Without the decay the loss has
  no minimum to converge to where the blobs overlap: GD (backtracking) stops
  on ReLU kinks with |g| about 1e-2, and Newton continuation from there
  drives the training loss below the Bayes classifier's while the weights
  grow.  With it, GD then the kink-aware Newton continuation of
  :mod:`spectra.experiments._kinks` reach a minimum, which lies on kinks;
  convergence is certified on the ReLU loss's one-sided gradients.
* **smooth**: the same architecture with tanh units and the same decay; GD,
  then Newton steps (:mod:`spectra.experiments._polish`) to a gradient norm of
  1e-8; every final point is a strict local minimum.

The verdicts are computed for each arm: the top two eigenvalues of the loss
Hessian (without the decay term) against std, with per-init values, paired
comparisons between neighbouring stds (the same inits), and per-init checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _stats
from ._common import KINK_RELATIVE, NEWTON_ON_KINKS_TEXT, RULE_TEXT, Context, run_record, training_summary
from ._kinks import KINK_BAND, SMOOTHING_BETAS
from ._report import Claim, markdown_table
from .many_inits import run_inits

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"threads": 1, "hidden": 2, "n": 100, "stds": [0.4, 1.2], "lr": 0.5, "grad_tol": 1e-4,
             "max_steps": 500, "num_inits": 4, "smooth_activation": "tanh", "weight_decay": 1e-3,
             "smooth_grad_tol": 1e-8, "smooth_gd_steps": 500},
    "quick": {"threads": 1, "hidden": 6, "n": 200, "stds": [0.4, 0.8, 1.2, 1.6], "lr": 0.5, "grad_tol": 1e-4,
              "max_steps": 2000, "num_inits": 8, "smooth_activation": "tanh", "weight_decay": 1e-3,
              "smooth_grad_tol": 1e-8, "smooth_gd_steps": 2000},
    "paper": {"threads": 1, "hidden": 6, "n": 200, "stds": [0.4, 0.8, 1.2, 1.6, 2.0], "lr": 0.5, "grad_tol": 1e-4,
              "max_steps": 5000, "num_inits": 100, "smooth_activation": "tanh", "weight_decay": 1e-3,
              "smooth_grad_tol": 1e-8, "smooth_gd_steps": 5000},
}
# "grad_tol"/"max_steps": the ReLU arm (the paper's tolerance; the certificate of _kinks cannot go much below
# 1e-6, the distance between the last softplus and ReLU); "smooth_*": the tanh arm.
ARMS = ("relu", "smooth")
ARM_LABELS = {"relu": "ReLU (the paper's units)", "smooth": "tanh"}
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


def _setting(cfg: dict[str, Any], arm: str, name: str) -> Any:
    """An arm's value of ``grad_tol`` or ``max_steps`` (the tanh arm's are ``smooth_grad_tol``, ``smooth_gd_steps``)."""
    return cfg[name] if arm == "relu" else cfg[{"grad_tol": "smooth_grad_tol", "max_steps": "smooth_gd_steps"}[name]]


def _arm(ctx: Context, arm: str, std: float) -> dict[str, np.ndarray]:
    cfg = ctx.cfg
    return run_inits(ctx, f"{arm}_std{std:g}".replace(".", "p"), hidden=cfg["hidden"], n=cfg["n"], std=std,
                     lr=cfg["lr"], grad_tol=_setting(cfg, arm, "grad_tol"), max_steps=_setting(cfg, arm, "max_steps"),
                     num_inits=cfg["num_inits"], chunk=cfg["num_inits"],
                     activation="relu" if arm == "relu" else cfg["smooth_activation"],
                     weight_decay=cfg["weight_decay"], polish=True)


def run_fig9(ctx: Context) -> dict[str, Any]:
    from ..datasets import load
    from ..plotting import std_sweep_figure

    cfg = ctx.cfg
    stds = [float(s) for s in cfg["stds"]]
    arms = {arm: [_arm(ctx, arm, s) for s in stds] for arm in ARMS}
    measured: dict[str, Any] = {"stds": stds, "arms": {}}
    records, rows = [], []
    bayes = []
    for std in stds:
        d = load("blobs", n=cfg["n"], std=std, seed=ctx.seed, dtype="float64")
        bayes.append(bayes_loss(d.X.numpy(), d.y.numpy(), std))
    for arm, results in arms.items():
        per_std = {}
        tol = _setting(cfg, arm, "grad_tol")
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
                "min_eigenvalue_regularised": r["min_eigenvalue"].tolist(),
                "newton_iterations": r["polish_iterations"].tolist(),
                "gd_converged_before_newton": r["gd_converged"].tolist(),
                "gd_grad_norm": r["gd_grad_norm"].tolist(), "gd_loss": r["gd_loss"].tolist(),
                "newton_distance": r["polish_distance"].tolist(),
                **({"piece_grad_norm": r["piece_grad_norm"].tolist()} if "piece_grad_norm" in r else {})}
            records += [run_record(f"{arm} std {std:g} init {int(i)}", c, g, tol, k, s)
                        for i, c, g, k, s in zip(r["index"], conv, r["grad_norm"], kinks, r["steps"])]
            rows.append([ARM_LABELS[arm], std, f"{conv.sum()}/{conv.size}", np.median(r["grad_norm"]),
                         f"{np.sum(r['gd_converged'])}/{conv.size}", np.median(r["gd_loss"]),
                         int(np.sum(kinks < KINK_RELATIVE)) if arm == "relu" else "-", int(edge.sum()),
                         np.median(r["eigs"][:, -1]), np.median(r["eigs"][:, -2]), np.mean(r["weight_norm"]),
                         np.mean(r["loss"]), bl, np.mean(1 - r["accuracy"]), be])
        measured["arms"][arm] = per_std
    ctx.rd.save_arrays({"stds": np.array(stds),
                        **{f"{arm}_{k}": np.array([r[k2] for r in res]) for arm, res in arms.items()
                           for k, k2 in (("eigs", "eigs"), ("converged", "converged"), ("weight_norm", "weight_norm"),
                                         ("loss", "loss"))}})
    relu, smooth = arms["relu"], arms["smooth"]
    ctx.rd.save_figure(std_sweep_figure(np.array(stds), np.array([r["eigs"][:, -1] for r in relu]),
                                        np.array([r["eigs"][:, -2] for r in relu]),
                                        np.array([r["weight_norm"] for r in relu]),
                                        converged=np.array([r["converged"] for r in relu]),
                                        other_top1=np.array([r["eigs"][:, -1] for r in smooth]),
                                        other_label=f"λ1, the same net with {cfg['smooth_activation']} units",
                                        title=f"2-{cfg['hidden']}-{cfg['hidden']}-2 ReLU, weight decay "
                                              f"{cfg['weight_decay']:g}, {cfg['num_inits']} inits per std, each "
                                              f"at a minimum (grey: {cfg['smooth_activation']} units)"),
                       "fig9_std_sweep.png")
    claims = [c for arm in ARMS for c in _claims(ctx, stds, arm, arms[arm], bayes)]
    claims.append(_gd_without_decay_claim(arms["relu"], bayes, stds))
    table = markdown_table(["arm", "std", "converged", "median |g|", "GD alone converged", "median loss after GD",
                            "on a ReLU kink", "at edge of stability", "median λ1", "median λ2", "mean |w|",
                            "mean loss", "Bayes loss", "mean error", "Bayes error"], rows)
    notes = [f"Both arms: loss + {cfg['weight_decay']:g}/2·|w|² (the decay makes a minimum exist), GD with "
             f"backtracking from step {cfg['lr']:g}, then Newton steps. The eigenvalues shown are the loss "
             "Hessian's (without the decay term); 'mean loss' includes the decay term.",
             f"ReLU arm: at most {cfg['max_steps']} GD steps, then Newton (Levenberg-Marquardt) continuation "
             f"through softplus(βz)/β for β = {', '.join(f'{b:g}' for b in SMOOTHING_BETAS)}. Its minima lie on "
             f"kinks ('on a ReLU kink': a sample within {KINK_RELATIVE:g} (relative) of a unit's switching "
             "surface), where the gradient autograd reports stays large; '|g|' is instead the norm of a convex "
             "combination of the one-sided gradients of the entries within "
             f"{KINK_BAND:g} of their surface, the stationarity measure of a non-smooth loss, against "
             f"tolerance {cfg['grad_tol']:g}.",
             f"tanh arm: {cfg['smooth_gd_steps']} GD steps, then Newton steps to |g| < {cfg['smooth_grad_tol']:g}; "
             "every final point is a strict local minimum (smallest eigenvalue of the regularised Hessian > 0, "
             "in results.json).",
             "'GD alone converged' / 'median loss after GD': where GD by itself stopped, before the Newton steps.",
             "Same inits (same seeds, same sphere radius) for every std: comparisons between stds are paired.",
             "Bayes loss/error: the optimal classifier of the two blobs, sigmoid(2(x1+x2)/std²), on the same sample."]
    return {"measured": measured, "claims": claims, "tables": [table], "notes": notes,
            "training": training_summary(records, rule=f"{RULE_TEXT} Every run then takes Newton steps to a minimum; "
                                         f"for the ReLU arm: {NEWTON_ON_KINKS_TEXT}",
                                         verdicts="Verdicts use the converged runs only (inits converged at "
                                                  "every std, for the paired tests).")}


def _claims(ctx: Context, stds: list[float], arm: str, runs: list[dict[str, np.ndarray]],
            bayes: list[tuple[float, float]]) -> list[Claim]:
    label = ARM_LABELS[arm]
    conv = [r["converged"].astype(bool) for r in runs]
    both = np.all(np.array(conv), axis=0)  # inits converged at every std: the paired comparisons use these
    n = int(both.sum())
    where = f"{label} arm"
    claims = []
    for which, col in (("λ1", -1), ("λ2", -2)):
        vals = [r["eigs"][both, col] for r in runs]
        pairs = [_stats.compare(a, b, paired=True) for a, b in zip(vals, vals[1:])]
        levels = np.repeat(stds, n)
        t = _stats.trend(levels, np.concatenate(vals)) if n else {"rho": np.nan, "p": np.nan}
        sd_init = float(np.mean([np.std(v) for v in vals])) if n else np.nan
        growth = float(np.mean(vals[-1]) - np.mean(vals[0])) if n else np.nan
        up = sum(1 for p in pairs if _stats.significant(p) and p["ratio"] > 1)
        down = sum(1 for p in pairs if _stats.significant(p) and p["ratio"] < 1)
        agrees, text = _stats.verdict(t.get("rho", 0) > 0 and up >= down, _stats.significant(t), ctx.scale)
        claims.append(Claim(
            f"{which} grows with std ({label})", "the top two eigenvalues grow significantly, beyond the "
            "fluctuations due to initialisation",
            f"median {which} per std " + ", ".join(f"{s:g}: {np.median(v):.3g}" for s, v in zip(stds, vals))
            + "; neighbouring stds: " + "; ".join(f"{a:g}->{b:g} x{p['ratio']:.2g} (p {p['p']:.2g})"
                                                  for a, b, p in zip(stds, stds[1:], pairs)),
            agrees, verdict=text,
            effect=f"mean change {stds[0]:g}->{stds[-1]:g} = {growth:.3g}, {growth / sd_init:.2g} x the "
                   f"init-to-init sd ({sd_init:.3g})" if n else "",
            seeds=f"{n} inits converged at every std", runs=where,
            test=f"{_stats.describe_trend(t)}; neighbouring pairs (Wilcoxon, same inits): {up} up, {down} down "
                 f"of {len(pairs)} at p < 0.05" if n else "none"))
    norms = [r["weight_norm"][both] for r in runs]
    lam1 = [r["eigs"][both, -1] for r in runs]
    if n:
        norm_ratio = float(max(map(np.mean, norms)) / min(map(np.mean, norms)))
        lam_ratio = float(max(map(np.mean, lam1)) / min(map(np.mean, lam1)))
        t = _stats.trend(np.repeat(stds, n), np.concatenate(norms))
        similar = norm_ratio < 1.5 and norm_ratio < lam_ratio
        claims.append(Claim(f"weight norms ({label})", "the norms of the weights are similar for all cases, so "
                            "they do not explain the growth",
                            "mean |w| per std: " + ", ".join(f"{np.mean(v):.3g}" for v in norms),
                            bool(similar), effect=f"mean |w| varies x{norm_ratio:.2f} across stds against "
                                                  f"x{lam_ratio:.2f} for λ1",
                            seeds=f"{n} inits", test=_stats.describe_trend(t), runs=where))
    low = []
    for r, c, (bl, _) in zip(runs, conv, bayes):
        low.append(float(np.median(r["loss"][c] - bl)) if c.any() else np.nan)
    excess = _stats.mean_ci(np.concatenate([r["loss"][c] - bl for r, c, (bl, _) in zip(runs, conv, bayes)]))
    claims.append(Claim(f"GD still converges to a low cost ({label})",
                        "gradient descent still converges to a low-cost value as the blobs merge",
                        "median training loss (with the decay term) minus the Bayes classifier's, per std: "
                        + ", ".join(f"{s:g}: {v:+.3g}" for s, v in zip(stds, low))
                        + "; converged: " + ", ".join(f"{int(c.sum())}/{c.size}" for c in conv),
                        bool(np.nanmax(low) <= LOW_EXCESS) if np.isfinite(low).any() else None,
                        effect=f"excess loss at most {np.nanmax(low):.3g} nats (mean {excess['mean']:.3g}, 95% "
                               f"[{excess['ci'][0]:.3g}, {excess['ci'][1]:.3g}])",
                        seeds=f"{int(sum(c.sum() for c in conv))} converged runs",
                        test=f"excess over the Bayes-optimal loss on the same sample ≤ {LOW_EXCESS:g} nats counts "
                             "as low; convergence counted per run", runs=where,
                        note="GD alone does not converge where the blobs overlap; the Newton steps finish"
                        if arm == "relu" else ""))
    errs = [1.0 - r["accuracy"][both] for r in runs]
    if n:
        t = _stats.trend(np.repeat(stds, n), np.concatenate(errs))
        agrees, text = _stats.verdict(t["rho"] > 0, _stats.significant(t), ctx.scale)
        claims.append(Claim(f"higher error as blobs merge ({label})",
                            "the error is higher, and GD cannot separate them perfectly",
                            "mean training error per std: " + ", ".join(f"{np.mean(e):.3f}" for e in errs)
                            + "; Bayes error: " + ", ".join(f"{be:.3f}" for _, be in bayes),
                            agrees, verdict=text, effect=f"error {np.mean(errs[0]):.3f} -> {np.mean(errs[-1]):.3f}",
                            seeds=f"{n} inits", test=_stats.describe_trend(t), runs=where))
    edge = [int(np.sum(r["lambda1_times_last_lr"] > EDGE_FRACTION * 2.0)) for r in runs]
    claims.append(Claim(f"edge of stability ({label}; our check, per init)", "(not in the paper)",
                        "inits whose last GD step·λ1 > 1.8, per std: "
                        + ", ".join(f"{s:g}: {e}/{r['converged'].size}" for s, e, r in zip(stds, edge, runs)),
                        None, "backtracking keeps every step a descent step; λ1 then measures the data, not 2/lr",
                        seeds=f"{runs[0]['converged'].size} inits per std", test="count per init", runs=where))
    return claims


def _gd_without_decay_claim(relu: list[dict[str, np.ndarray]], bayes: list[tuple[float, float]],
                            stds: list[float]) -> Claim:
    """Where GD alone stops on the ReLU net, against the minimum the Newton steps then reach."""
    gd_conv = [r["gd_converged"].astype(bool) for r in relu]
    drop = [float(np.median(r["gd_loss"] - r["loss"])) for r in relu]
    return Claim("GD alone reaches the minimum (ReLU; our check)", "(not in the paper: its runs are plain GD)",
                 "GD converged by itself, per std: "
                 + ", ".join(f"{s:g}: {int(c.sum())}/{c.size}" for s, c in zip(stds, gd_conv))
                 + "; median loss GD left for the Newton steps: " + ", ".join(f"{d:.3g}" for d in drop),
                 None, "where the blobs overlap GD stalls on ReLU kinks above the minimum; the paper's runs would "
                       "have stopped there", seeds=f"{relu[0]['converged'].size} inits per std",
                 test="per run: GD's own convergence test, then the loss difference", runs="ReLU arm")
