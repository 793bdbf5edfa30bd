"""Figure 7: the exact spectrum at checkpoints during GD training of a blob net.

Checkpoints are log-spaced steps (plus the final step).  Each one's spectrum
and parameters are saved as a progress unit when reached; a resumed run
restarts GD from the last saved checkpoint's parameters with
``train(..., start_step=..., resume_lr=...)``, which continues the very same
iterates (GD keeps no other state than its last step), so the result equals
an uninterrupted run.  Several inits are trained; the verdict follows the
bulk *relative to the outliers* (``q_0.9(|lambda|) / lambda_max``), because
the whole spectrum shrinks with the loss.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from . import _stats
from ._common import (Context, exact_eigenvalues, flat_params, kink_distance, run_record, set_flat_params,
                      spectrum_numbers, sub_seed, training_summary)
from ._report import Claim, markdown_table

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"threads": 1, "hidden": 2, "n": 60, "std": 0.4, "lr": 0.5, "grad_tol": 1e-3, "max_steps": 2000,
             "per_decade": 2, "seeds": 2},
    "quick": {"threads": 1, "hidden": 10, "n": 200, "std": 0.4, "lr": 0.5, "grad_tol": 1e-4, "max_steps": 20000,
              "per_decade": 3, "seeds": 3},
    "paper": {"threads": 1, "hidden": 10, "n": 1000, "std": 0.4, "lr": 0.5, "grad_tol": 1e-4, "max_steps": 200000,
              "per_decade": 5, "seeds": 6},
}
# The bulk's scale: this quantile of |lambda| (the bulk is nearly all of the spectrum; the outliers are a few).
BULK_QUANTILE = 0.9


def checkpoint_steps(max_steps: int, per_decade: int) -> list[int]:
    """0 and log-spaced steps up to ``max_steps`` (``per_decade`` per factor of 10).

    >>> checkpoint_steps(100, 2)
    [0, 1, 3, 10, 32, 100]
    """
    if max_steps <= 0:
        return [0]
    exps = np.arange(0, np.log10(max_steps) + 1e-9, 1.0 / per_decade)
    steps = sorted({0, *(int(round(10 ** e)) for e in exps), int(max_steps)})
    return [s for s in steps if s <= max_steps]


def _train_seed(ctx: Context, data: Any, ckpts: list[int], seed_index: int) -> None:
    """Train seed ``seed_index`` with exact spectra at the checkpoints (progress units ``s{i}_...``)."""
    from ..models import create
    from ..training import NotConvergedWarning, init_on_sphere, train

    cfg, rd = ctx.cfg, ctx.rd
    prefix = f"s{seed_index}_"

    def unit(step: int) -> str:
        return f"{prefix}ckpt_{step:09d}"

    if rd.has_unit(prefix + "final"):
        return
    model = create("blobnet", hidden=cfg["hidden"], dtype="float64")
    init_on_sphere(model, seed=sub_seed(ctx.seed, "fig7", seed_index) if seed_index else sub_seed(ctx.seed, "fig7"))
    saved = [s for s in ckpts if rd.has_unit(unit(s))]
    start, resume_lr = (max(saved), None) if saved else (0, None)
    if saved:
        arrays, meta = rd.load_unit(unit(start))
        set_flat_params(model, arrays["params"])
        resume_lr = meta.get("lr")
        ctx.log(f"seed {seed_index}: resuming from checkpoint step {start}")

    def record(m: Any, info: dict[str, Any]) -> None:
        step = info["step"]
        meta = {"step": step, "loss": info["loss"], "grad_norm": info["grad_norm"], "lr": info["lr"],
                "accuracy": info["accuracy"], "final": bool(info["final"])}
        need_ckpt = step in ckpts and not rd.has_unit(unit(step))
        if not (need_ckpt or info["final"]):
            return
        eigs = exact_eigenvalues(m, data, "cross_entropy")
        arrays = {"params": flat_params(m), "eigs": eigs}
        if need_ckpt:
            rd.save_unit(unit(step), arrays, meta)
            ctx.log(f"seed {seed_index} step {step}: loss {info['loss']:.4g}, |grad| {info['grad_norm']:.2e}, "
                    f"λmax {eigs[-1]:.4g}")
        if info["final"]:
            meta["converged"] = bool(info["grad_norm"] < cfg["grad_tol"])
            meta["kink_distance"] = kink_distance(m, data)
            rd.save_unit(prefix + "final", arrays, meta)

    with warnings.catch_warnings():  # recorded in the final unit
        warnings.simplefilter("ignore", NotConvergedWarning)
        train(model, data, loss="cross_entropy", optimizer="gd", lr=cfg["lr"], grad_tol=cfg["grad_tol"],
              max_steps=cfg["max_steps"] - start, start_step=start, callbacks=[record], resume_lr=resume_lr,
              callback_steps=[s for s in ckpts if s >= start], log_every=1000, progress=False)


def bulk_ratio(eigs: np.ndarray) -> float:
    """The bulk's scale relative to the top outlier: ``quantile_0.9(|lambda|) / lambda_max``."""
    return float(np.quantile(np.abs(eigs), BULK_QUANTILE) / np.max(eigs))


def _series(ctx: Context, ckpts: list[int], seed_index: int) -> dict[str, Any]:
    rd, prefix = ctx.rd, f"s{seed_index}_"
    final_arrays, final_meta = rd.load_unit(prefix + "final")
    steps, spectra, losses, gnorms = [], [], [], []
    for s in ckpts:
        if s > final_meta["step"] or not rd.has_unit(f"{prefix}ckpt_{s:09d}"):
            continue
        arrays, meta = rd.load_unit(f"{prefix}ckpt_{s:09d}")
        steps.append(s)
        spectra.append(arrays["eigs"])
        losses.append(meta["loss"])
        gnorms.append(meta["grad_norm"])
    if not steps or steps[-1] != final_meta["step"]:
        steps.append(final_meta["step"])
        spectra.append(final_arrays["eigs"])
        losses.append(final_meta["loss"])
        gnorms.append(final_meta["grad_norm"])
    return {"steps": steps, "spectra": spectra, "losses": losses, "grad_norms": gnorms, "final": final_meta}


def run_fig7(ctx: Context) -> dict[str, Any]:
    from scipy import stats

    from ..datasets import load
    from ..plotting import evolution_figure

    cfg = ctx.cfg
    data = load("blobs", n=cfg["n"], std=cfg["std"], seed=ctx.seed, dtype="float64")
    ckpts = checkpoint_steps(cfg["max_steps"], cfg["per_decade"])
    series = []
    for i in range(cfg["seeds"]):
        _train_seed(ctx, data, ckpts, i)
        series.append(_series(ctx, ckpts, i))
    first = series[0]
    rows, per, records, trends = [], {}, [], []
    for i, ser in enumerate(series):
        ratios = [bulk_ratio(lam) for lam in ser["spectra"]]
        zf = []
        for s, lam, lo, g, q in zip(ser["steps"], ser["spectra"], ser["losses"], ser["grad_norms"], ratios):
            num = spectrum_numbers(lam)
            zf.append(num["zero_fraction"])
            per[f"seed{i}_step{s}"] = {"seed": i, "step": s, "loss": lo, "grad_norm": g, "bulk_ratio": q, **num}
            if i == 0:
                rows.append([s, lo, g, num["lambda_max"], q, num["num_outliers"], num["zero_fraction"],
                             num["num_negative"], num["lambda_min"]])
        steps_after = [s for s in ser["steps"] if s > 0]
        rho = stats.spearmanr(np.log10(steps_after), ratios[1:]) if len(steps_after) > 2 else None
        trends.append({"seed": i, "rho": float(rho.statistic) if rho else np.nan,
                       "p": float(rho.pvalue) if rho else np.nan, "bulk_ratio_start": ratios[0],
                       "bulk_ratio_end": ratios[-1], "zero_fraction_start": zf[0], "zero_fraction_end": zf[-1],
                       "converged": bool(ser["final"].get("converged", ser["final"]["grad_norm"] < cfg["grad_tol"]))})
        records.append(run_record(f"seed {i}", trends[-1]["converged"], ser["final"]["grad_norm"], cfg["grad_tol"],
                                  ser["final"].get("kink_distance"), ser["final"]["step"]))
    ctx.rd.save_arrays({"steps": np.array(first["steps"]), "eigs": np.array(first["spectra"]),
                        "loss": np.array(first["losses"]), "grad_norm": np.array(first["grad_norms"])})
    P = len(first["spectra"][0])
    ctx.rd.save_figure(evolution_figure(first["steps"], first["spectra"], losses=first["losses"],
                                        title=f"blobnet h={cfg['hidden']} ({P} params), GD from step {cfg['lr']}, "
                                              "init 0"),
                       "fig7_evolution.png")
    conv = [t for t in trends if t["converged"]]
    start, end = [t["bulk_ratio_start"] for t in conv], [t["bulk_ratio_end"] for t in conv]
    falling = [t for t in conv if t["rho"] < 0 and t["p"] < 0.05]
    rising = [t for t in conv if t["rho"] > 0 and t["p"] < 0.05]
    paired = _stats.compare(start, end, paired=True) if len(conv) >= 2 else None
    significant = len(falling) == len(conv) > 0 or (paired is not None and _stats.significant(paired))
    agrees, text = _stats.verdict(bool(conv) and len(falling) > len(rising) and np.mean(end) < np.mean(start),
                                  significant, ctx.scale)
    measured = {"num_params": P, "checkpoints": per, "per_seed": trends, "bulk_quantile": BULK_QUANTILE}
    claims = [
        Claim("training concentrates eigenvalues at zero",
              "training acts like a process by which the eigenvalues concentrate at zero",
              "bulk scale / λmax (q_0.9 of |λ| over λmax), step 0 -> end per seed: "
              + "; ".join(f"{t['bulk_ratio_start']:.3g} -> {t['bulk_ratio_end']:.3g}" for t in trends)
              + "; fraction |λ| < 1e-3·λmax: " + "; ".join(f"{t['zero_fraction_start']:.3f} -> "
                                                          f"{t['zero_fraction_end']:.3f}" for t in trends),
              agrees, verdict=text,
              effect=f"bulk/λmax end/start x{np.mean(end) / np.mean(start):.3g} (mean over seeds)" if conv else "",
              seeds=f"{len(conv)} converged runs",
              test=f"Spearman of bulk/λmax against log step, per run: {len(falling)} of {len(conv)} falling at p < "
                   "0.05" + (f"; paired start vs end: {paired['test']} p = {paired['p']:.2g}" if paired else ""),
              runs="converged only",
              note="the bulk is measured relative to the top outlier: the whole spectrum also shrinks with the "
                   "loss, so absolute sizes say nothing"),
    ]
    table = markdown_table(["step", "loss", "|grad|", "λmax", "bulk/λmax", "#λ>0.1λmax", "frac |λ|<1e-3·λmax",
                            "#neg", "min λ"], rows)
    notes = [f"blobnet h={cfg['hidden']}, {cfg['n']} blob points with std {cfg['std']:g}, GD (backtracking from step "
             f"{cfg['lr']:g}) to ||grad|| < {cfg['grad_tol']:g} (cap {cfg['max_steps']}); exact spectra at "
             f"log-spaced steps; {cfg['seeds']} inits. The table and figure show init 0.",
             f"bulk/λmax: the {BULK_QUANTILE:g} quantile of |λ| divided by λmax; 'zero' is relative: "
             "|λ| < 1e-3·max|λ| at that checkpoint."]
    return {"measured": measured, "claims": claims, "tables": [table], "notes": notes,
            "training": training_summary(records)}
