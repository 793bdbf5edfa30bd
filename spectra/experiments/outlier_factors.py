"""When do the paper's "two isolated eigenvalues" (figure 4) appear?  A factorial study.

The blob net 2-6-6-2 (74 parameters, the paper's) is trained from several
inits in every cell of loss (cross-entropy, MSE) x init scale (x0.5, x1, x2
the default radius) x blob std, and its exact spectrum is taken where GD
first gets below each stop tolerance (1e-2, 1e-3, 1e-4: where training
stops).  For every run it measures

* the top of the spectrum: ``lambda_2 / lambda_1``, ``lambda_3 / lambda_1``,
  the gap ``lambda_2 / lambda_3`` (how far the second stands above the rest)
  and the outlier count of :mod:`spectra.counts` with its sweep;
* the split ``H = G + R``: the share of ``lambda_1`` and ``lambda_2`` carried
  by the Gauss-Newton part (``v^T G v / lambda`` for H's eigenvectors) and
  G's own outlier count;
* the class-mean explanation (Papyan 2019-20): G is a sum over samples of
  ``u u^T`` (cross-entropy with two classes: ``u = sqrt(p0 p1) d(f0 - f1)/dw``,
  one vector per sample because the two-class softmax depends on one logit
  difference; MSE: ``u_k = df_k/dw`` for each output k).  The between-class
  part ``M = sum_c pi_c sum_k m_ck m_ck^T`` (``m_ck`` the class-c mean of
  ``u_k``) has rank at most C (cross-entropy) or C x K = 4 (MSE), and the
  explanation says G's outliers are M's eigenvalues: C or C - 1 of them.
  Measured: M's eigenvalues against G's top ones and the overlap of their
  eigenspaces.

The same inits in every cell (seeds paired across cells).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from . import _stats
from ._common import Context, run_record, spectrum_numbers, training_rule, training_summary
from ._report import Claim, markdown_table

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"threads": 1, "hidden": 6, "n": 100, "losses": ["cross_entropy", "mse"], "init_scales": [1.0],
             "stds": [0.4], "stops": [1e-2, 1e-3], "seeds": 2, "lr": 0.5, "max_steps": 5000},
    # stds 0.3 and 0.5: both separable (where the blobs overlap GD stops on ReLU kinks, see fig9)
    "quick": {"threads": 1, "hidden": 6, "n": 200, "losses": ["cross_entropy", "mse"], "init_scales": [0.5, 1.0, 2.0],
              "stds": [0.3, 0.5], "stops": [1e-2, 1e-3, 1e-4], "seeds": 3, "lr": 0.5, "max_steps": 10000,
              "newton_on_kinks": True},
    "paper": {"threads": 1, "hidden": 6, "n": 1000, "losses": ["cross_entropy", "mse"],
              "init_scales": [0.5, 1.0, 2.0], "stds": [0.3, 0.5], "stops": [1e-2, 1e-3, 1e-4], "seeds": 8,
              "lr": 0.5, "max_steps": 100000, "newton_on_kinks": True},
}
EXPLAINED_SHARE = 0.9  # an eigenvalue of H is "carried by G" when v^T G v / lambda >= this
RANK_REL = 1e-8  # eigenvalues of M above this fraction of its largest count towards its rank


def _cell_key(loss: str, scale: float, std: float) -> str:
    return f"{'ce' if loss == 'cross_entropy' else 'mse'}_r{scale:g}_std{std:g}".replace(".", "p")


def _train_cell(ctx: Context, loss: str, scale: float, std: float) -> list[dict[str, np.ndarray]]:
    """GD from the same inits to each stop tolerance in turn; one progress unit per stop."""
    from ..datasets import load
    from ..models import create
    from ..training import default_radius
    from ._batched import StackedNet, batched_gd, init_seed, init_thetas

    cfg = ctx.cfg
    data = load("blobs", n=cfg["n"], std=std, seed=ctx.seed, dtype="float64")
    stack = StackedNet(create("blobnet", hidden=cfg["hidden"], dtype="float64"), loss=loss)
    theta = init_thetas(stack.num_params, [init_seed(ctx.seed, i) for i in range(cfg["seeds"])],
                        scale * default_radius(stack.template))
    out, done = [], 0
    for tol in cfg["stops"]:
        unit = f"{_cell_key(loss, scale, std)}_tol{tol:g}"
        if ctx.rd.has_unit(unit):
            arrays = ctx.rd.load_unit(unit)[0]
        else:
            res = batched_gd(stack, theta, data.X, data.y, lr=cfg["lr"], grad_tol=tol, max_steps=cfg["max_steps"])
            newton = torch.zeros_like(res["converged"])
            if cfg.get("newton_on_kinks") and not bool(res["converged"].all()):
                # GD stalls on the ReLU kinks where these minima lie: Newton continuation finishes (see _kinks)
                from ._kinks import kink_polish

                newton = ~res["converged"]
                pol = kink_polish(stack, res["theta"][newton], data.X, data.y, weight_decay=0.0, grad_tol=tol)
                for k in ("theta", "converged", "grad_norm"):
                    res[k][newton] = pol[k].to(res[k].dtype)
            arrays = {"theta": res["theta"].numpy(), "converged": res["converged"].numpy(),
                      "grad_norm": res["grad_norm"].numpy(), "steps": res["steps"].numpy() + done,
                      "newton_on_kinks": newton.numpy(), **_analyse(stack, res["theta"], data.X, data.y, loss)}
            ctx.rd.save_unit(unit, arrays, {"tol": tol})
        theta = torch.as_tensor(arrays["theta"])
        done = arrays["steps"]
        out.append(arrays)
    ctx.log(f"{_cell_key(loss, scale, std)}: converged at the last stop "
            f"{int(out[-1]['converged'].sum())}/{len(out[-1]['converged'])}")
    return out


def _analyse(stack: Any, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, loss: str) -> dict[str, np.ndarray]:
    """Eigenvalues of H and G, G's share of H's top two, and the between-class matrix M, for every init."""
    from ._batched_mlp import chain_hessian, output_tangents

    X = X.to(stack.dtype)
    H = chain_hessian(stack.chain, theta, X, y, loss)
    G = chain_hessian(stack.chain, theta, X, y, loss, gauss_newton_only=True)
    H, G = 0.5 * (H + H.transpose(1, 2)), 0.5 * (G + G.transpose(1, 2))
    lam_h, V = torch.linalg.eigh(H)
    lam_g, W = torch.linalg.eigh(G)
    top = V[:, :, -2:]  # H's top two eigenvectors
    share = torch.einsum("bpi,bpq,bqi->bi", top, G, top) / lam_h[:, -2:]
    f, dh, _ = output_tangents(stack.chain, theta, X)
    N = X.shape[0]
    if loss == "cross_entropy":
        p = torch.softmax(f, dim=1)
        u = ((dh[:, 0] - dh[:, 1]) * (p[:, 0] * p[:, 1]).sqrt().unsqueeze(1)).unsqueeze(1)  # [B, 1, P, N]
    else:
        u = dh  # [B, K, P, N]
    M = torch.zeros_like(G)
    for c in (0, 1):
        sel = y == c
        m = u[..., sel].mean(-1)  # [B, K, P]
        M += float(sel.sum()) / N * torch.einsum("bkp,bkq->bpq", m, m)
    lam_m, U = torch.linalg.eigh(0.5 * (M + M.transpose(1, 2)))
    rank = (lam_m > RANK_REL * lam_m[:, -1:]).sum(1)
    overlap = []
    for b in range(theta.shape[0]):
        r = int(rank[b])
        A, B = U[b, :, -r:], W[b, :, -r:]
        overlap.append(float((A.T @ B).pow(2).sum() / r) if r else float("nan"))
    return {"eig_H": lam_h.numpy(), "eig_G": lam_g.numpy(), "eig_M": lam_m.numpy(), "rank_M": rank.numpy(),
            "G_share_top2": share.numpy()[:, ::-1].copy(), "overlap_M_G": np.array(overlap)}


def _run_numbers(a: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    h, g, m = a["eig_H"][i], a["eig_G"][i], a["eig_M"][i]
    nh, ng = spectrum_numbers(h), spectrum_numbers(g)
    top, gt, mt = h[::-1], g[::-1], m[::-1]
    r = int(a["rank_M"][i])
    return {"converged": bool(a["converged"][i]), "grad_norm": float(a["grad_norm"][i]), "steps": int(a["steps"][i]),
            "newton_on_kinks": bool(a["newton_on_kinks"][i]) if "newton_on_kinks" in a else False,
            "lambda1": float(top[0]), "l2_over_l1": float(top[1] / top[0]), "l3_over_l1": float(top[2] / top[0]),
            "gap_l2_over_l3": float(top[1] / top[2]) if top[2] > 0 else float("inf"),
            "outliers_H": nh["num_outliers"], "sweep_H": nh["outlier_sweep"], "outliers_G": ng["num_outliers"],
            "G_share_l1": float(a["G_share_top2"][i][0]), "G_share_l2": float(a["G_share_top2"][i][1]),
            "rank_M": r, "M_over_G_top": [float(mt[j] / gt[j]) for j in range(min(r, 4))],
            "overlap_M_G": float(a["overlap_M_G"][i]), "num_negative_G": ng["num_negative"]}


def run_outlier_factors(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg
    cells = list(itertools.product(cfg["losses"], cfg["init_scales"], cfg["stds"]))
    results: dict[str, Any] = {}
    rows, records, arrays = [], [], {}
    for loss, scale, std in cells:
        stages = _train_cell(ctx, loss, scale, std)
        for tol, a in zip(cfg["stops"], stages):
            for name in ("eig_H", "eig_G", "eig_M"):
                arrays[f"{_cell_key(loss, scale, std)}_tol{tol:g}_{name}"] = a[name]
        key = _cell_key(loss, scale, std)
        results[key] = {"loss": loss, "init_scale": scale, "std": std, "stops": {}}
        for tol, a in zip(cfg["stops"], stages):
            runs = [_run_numbers(a, i) for i in range(len(a["converged"]))]
            results[key]["stops"][f"{tol:g}"] = runs
            conv = [r for r in runs if r["converged"]]
            rows.append([loss, scale, std, f"{tol:g}", f"{len(conv)}/{len(runs)}",
                         _mean(conv, "lambda1"), _mean(conv, "l2_over_l1"), _mean(conv, "l3_over_l1"),
                         _mean(conv, "gap_l2_over_l3"), ",".join(str(r["outliers_H"]) for r in conv),
                         ",".join(str(r["outliers_G"]) for r in conv), _mean(conv, "G_share_l2"),
                         ",".join(str(r["rank_M"]) for r in conv),
                         np.mean([r["M_over_G_top"][0] for r in conv]) if conv else np.nan,
                         _mean(conv, "overlap_M_G")])
        last = results[key]["stops"][f"{cfg['stops'][-1]:g}"]
        records += [run_record(f"{key} init {i}", r["converged"], r["grad_norm"], cfg["stops"][-1], None, r["steps"])
                    for i, r in enumerate(last)]
    ctx.rd.save_arrays(arrays)
    ctx.rd.save_figure(_figure(results, cfg), "fig4_outliers_factors.png")
    claims = _claims(ctx, results, cfg)
    table = markdown_table(["loss", "init scale", "std", "stop |g|<", "converged", "mean λ1", "mean λ2/λ1",
                            "mean λ3/λ1", "mean λ2/λ3", "outliers of H per run", "outliers of G per run",
                            "mean G share of λ2", "rank of M per run", "mean λ1(M)/λ1(G)", "mean overlap M-G"], rows)
    notes = [f"blobnet h={cfg['hidden']} (74 parameters), {cfg['n']} blob points; {cfg['seeds']} inits per cell, "
             "the same in every cell; GD with backtracking from step "
             f"{cfg['lr']:g}, continued from one stop tolerance to the next (at most {cfg['max_steps']} steps each).",
             "Outliers: λ > 0.1·λmax (spectra.counts). λ2/λ3 is how far λ2 stands above the next eigenvalue.",
             "M: the between-class part of G (class means of G's per-sample vectors); rank ≤ 2 for two-class "
             "cross-entropy, ≤ 4 for MSE with two outputs. overlap M-G: ||U_M^T U_G||²/r for their top r = rank(M) "
             "eigenvectors (1: the same subspace).",
             "Only runs converged at each stop tolerance enter the means and the verdicts."]
    if cfg.get("newton_on_kinks"):
        finished = [f"{k} init {i} (stop {tol})" for k, res in results.items() for tol, runs in res["stops"].items()
                    for i, r in enumerate(runs) if r["newton_on_kinks"]]
        notes.append("Runs GD left short of a stop tolerance were finished by Newton continuation to their minimum "
                     "(so they stop below that tolerance, at the minimum): " + (", ".join(finished) or "none") + ".")
    return {"measured": results, "claims": claims, "tables": [table], "notes": notes,
            "training": training_summary(records, rule=training_rule(cfg))}


def _mean(runs: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in runs if np.isfinite(r[key])]
    return float(np.mean(vals)) if vals else float("nan")


def _final_runs(results: dict[str, Any], cfg: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    last = f"{cfg['stops'][-1]:g}"
    out = []
    for cell in results.values():
        if all(cell[k] == v for k, v in match.items()):
            out += [r for r in cell["stops"][last] if r["converged"]]
    return out


def _claims(ctx: Context, results: dict[str, Any], cfg: dict[str, Any]) -> list[Claim]:
    claims = []
    ce, mse = _final_runs(results, cfg, loss="cross_entropy"), _final_runs(results, cfg, loss="mse")
    for name, runs in (("cross-entropy", ce), ("MSE", mse)):
        if not runs:
            continue
        counts = [r["outliers_H"] for r in runs]
        twos = sum(1 for c in counts if c == 2)
        where = [f"{cell['init_scale']:g}x/std {cell['std']:g}: "
                 + ",".join(str(r["outliers_H"]) for r in cell["stops"][f"{cfg['stops'][-1]:g}"] if r["converged"])
                 for cell in results.values() if cell["loss"] == ("cross_entropy" if name == "cross-entropy" else "mse")]
        l2 = _stats.mean_ci([r["l2_over_l1"] for r in runs])
        gap = _stats.mean_ci([r["gap_l2_over_l3"] for r in runs])
        claims.append(Claim(f"two isolated eigenvalues, {name}", "two eigenvalues isolated from the bulk (figure 4, "
                            "by eye)" if name == "cross-entropy" else "the same discrete part with MSE (figure 5)",
                            "outliers of H per run, by init scale/std, at the last stop: " + "; ".join(where),
                            None, "a factorial description, not a test of one claim: see the table for each cell",
                            effect=f"λ2/λ1 = {l2['mean']:.3g} [{l2['ci'][0]:.3g}, {l2['ci'][1]:.3g}], λ2/λ3 = "
                                   f"{gap['mean']:.3g} [{gap['ci'][0]:.3g}, {gap['ci'][1]:.3g}]",
                            seeds=f"{len(runs)} converged runs", test=f"exactly two: {twos}/{len(runs)}",
                            runs="converged at the last stop"))
    stops = [f"{t:g}" for t in cfg["stops"]]
    by_stop = {s: [r for cell in results.values() if cell["loss"] == "cross_entropy"
                   for r in cell["stops"][s] if r["converged"]] for s in stops}
    if all(by_stop.values()) and len(stops) > 1:
        levels = np.concatenate([np.full(len(by_stop[s]), -np.log10(float(s))) for s in stops])
        vals = np.concatenate([[r["l2_over_l1"] for r in by_stop[s]] for s in stops])
        t = _stats.trend(levels, vals)
        claims.append(Claim("where training stops (cross-entropy)", "(not in the paper: the stop is 'order 1e-4')",
                            "mean λ2/λ1 at stop " + ", ".join(f"{s}: {np.mean([r['l2_over_l1'] for r in by_stop[s]]):.3g}"
                                                              for s in stops), None,
                            "how the top of the spectrum moves as training goes on", effect=f"last/first x{t['ratio']:.3g}",
                            seeds=f"{len(vals)} runs", test=_stats.describe_trend(t), runs="converged at each stop"))
    for name, runs, C, K in (("cross-entropy", ce, 2, 1), ("MSE", mse, 2, 2)):
        if not runs:
            continue
        allowed = {C - 1, C} if name == "cross-entropy" else set(range(1, C * K + 1))
        inside = sum(1 for r in runs if r["outliers_G"] in allowed)
        share = _stats.mean_ci([r["G_share_l1"] for r in runs])
        share2 = _stats.mean_ci([r["G_share_l2"] for r in runs])
        ratio = _stats.mean_ci([r["M_over_G_top"][0] for r in runs if r["M_over_G_top"]])
        ov = _stats.mean_ci([r["overlap_M_G"] for r in runs])
        ranks = sorted({r["rank_M"] for r in runs})
        explained = ratio["mean"] > 0.5 and ov["mean"] > 0.5
        claims.append(Claim(
            f"outliers from G's class means, {name}",
            f"(later work) the outliers come from the Gauss-Newton part's class means: C or C−1 = {C} or {C - 1} with "
            "cross-entropy" if name == "cross-entropy" else f"(later work) up to C·K = {C * K} class-mean directions "
            "with MSE",
            f"G's outlier count within {sorted(allowed)}: {inside}/{len(runs)}; G carries {share['mean']:.3f} of λ1 and "
            f"{share2['mean']:.3f} of λ2; rank of M: {ranks}; λ1(M)/λ1(G) = {ratio['mean']:.3g}; overlap of M's and "
            f"G's top eigenspaces {ov['mean']:.3g}",
            bool(explained and inside >= 0.9 * len(runs)), "beyond the paper (Papyan 2019-20)",
            effect=f"λ1(M)/λ1(G) = {ratio['mean']:.3g} [{ratio['ci'][0]:.3g}, {ratio['ci'][1]:.3g}], overlap "
                   f"{ov['mean']:.3g} [{ov['ci'][0]:.3g}, {ov['ci'][1]:.3g}]",
            seeds=f"{len(runs)} converged runs", test="95% t intervals over runs; count within the predicted set",
            runs="converged at the last stop"))
    return claims


def _figure(results: dict[str, Any], cfg: dict[str, Any]) -> Any:
    from ..plotting import new_figure

    fig, axes = new_figure(1, 2, size=(5.2, 3.6))
    ax, ax2 = axes[0]
    stops = [f"{t:g}" for t in cfg["stops"]]
    for j, (key, cell) in enumerate(results.items()):
        colour = "#cc0000" if cell["loss"] == "cross_entropy" else "#3465a4"
        ls = {0.5: ":", 1.0: "-", 2.0: "--"}.get(cell["init_scale"], "-")
        marker = "o" if cell["std"] == cfg["stds"][0] else "s"
        means = [_mean([r for r in cell["stops"][s] if r["converged"]], "l2_over_l1") for s in stops]
        ax.plot(range(len(stops)), means, color=colour, ls=ls, marker=marker, lw=1, ms=4,
                label=f"{'CE' if cell['loss'] == 'cross_entropy' else 'MSE'} x{cell['init_scale']:g} "
                      f"std {cell['std']:g}")
        last = [r for r in cell["stops"][stops[-1]] if r["converged"]]
        counts = [r["outliers_H"] for r in last]
        ax2.scatter(np.full(len(counts), j) + np.linspace(-0.15, 0.15, len(counts)), counts, color=colour, s=12,
                    marker=marker)
    ax.set_xticks(range(len(stops)))
    ax.set_xticklabels([f"|g| < {s}" for s in stops])
    ax.set_yscale("log")
    ax.set_ylabel("λ2 / λ1 (mean over converged inits)")
    ax.legend(fontsize=5, ncol=2)
    ax2.set_xticks(range(len(results)))
    ax2.set_xticklabels([k.replace("_", "\n") for k in results], fontsize=5)
    ax2.axhline(2, color="k", lw=0.6, ls="--")
    ax2.set_ylabel(f"outliers of H (λ > 0.1·λmax) at |g| < {stops[-1]}")
    fig.suptitle("When do two isolated eigenvalues appear? (red: cross-entropy, blue: MSE)")
    return fig
