"""Figure 7: the exact spectrum at checkpoints during GD training of a blob net.

Checkpoints are log-spaced steps (plus the final step).  Each one's spectrum
and parameters are saved as a progress unit when reached; a resumed run
restarts GD from the last saved checkpoint's parameters with
``train(..., start_step=...)``, which continues the very same iterates (GD
keeps no other state), so the result equals an uninterrupted run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import Context, exact_eigenvalues, flat_params, set_flat_params, spectrum_numbers, sub_seed
from ._report import Claim, markdown_table

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"threads": 1, "hidden": 2, "n": 60, "std": 0.4, "lr": 0.5, "grad_tol": 1e-3, "max_steps": 1000,
             "per_decade": 2},
    "quick": {"threads": 1, "hidden": 10, "n": 200, "std": 0.4, "lr": 0.5, "grad_tol": 1e-4, "max_steps": 10000,
              "per_decade": 3},
    "paper": {"threads": 1, "hidden": 10, "n": 1000, "std": 0.4, "lr": 0.5, "grad_tol": 1e-4, "max_steps": 200000,
              "per_decade": 5},
}


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


def run_fig7(ctx: Context) -> dict[str, Any]:
    from ..datasets import load
    from ..models import create
    from ..plotting import evolution_figure
    from ..training import init_on_sphere, train

    cfg = ctx.cfg
    loss = "cross_entropy"
    data = load("blobs", n=cfg["n"], std=cfg["std"], seed=ctx.seed, dtype="float64")
    model = create("blobnet", hidden=cfg["hidden"], dtype="float64")
    init_on_sphere(model, seed=sub_seed(ctx.seed, "fig7"))
    ckpts = checkpoint_steps(cfg["max_steps"], cfg["per_decade"])
    rd = ctx.rd

    def unit(step: int) -> str:
        return f"ckpt_{step:09d}"

    if not rd.has_unit("final"):
        saved = [s for s in ckpts if rd.has_unit(unit(s))]
        start = max(saved) if saved else 0
        if saved:
            set_flat_params(model, rd.load_unit(unit(start))[0]["params"])
            ctx.log(f"resuming from checkpoint step {start}")

        def record(m: Any, info: dict[str, Any]) -> None:
            step = info["step"]
            meta = {"step": step, "loss": info["loss"], "grad_norm": info["grad_norm"],
                    "accuracy": info["accuracy"], "final": bool(info["final"])}
            need_ckpt = step in ckpts and not rd.has_unit(unit(step))
            if not (need_ckpt or info["final"]):
                return
            eigs = exact_eigenvalues(m, data, loss)
            arrays = {"params": flat_params(m), "eigs": eigs}
            if need_ckpt:
                rd.save_unit(unit(step), arrays, meta)
                ctx.log(f"step {step}: loss {info['loss']:.4g}, |grad| {info['grad_norm']:.2e}, "
                        f"λmax {eigs[-1]:.4g}")
            if info["final"]:
                rd.save_unit("final", arrays, meta)

        train(model, data, loss=loss, optimizer="gd", lr=cfg["lr"], grad_tol=cfg["grad_tol"],
              max_steps=cfg["max_steps"] - start, start_step=start, callbacks=[record],
              callback_steps=[s for s in ckpts if s >= start], log_every=1000)

    final_arrays, final_meta = rd.load_unit("final")
    steps, spectra, losses, gnorms, rows, per = [], [], [], [], [], {}
    for s in ckpts:
        if s > final_meta["step"] or not rd.has_unit(unit(s)):
            continue
        arrays, meta = rd.load_unit(unit(s))
        steps.append(s)
        spectra.append(arrays["eigs"])
        losses.append(meta["loss"])
        gnorms.append(meta["grad_norm"])
    if not steps or steps[-1] != final_meta["step"]:
        steps.append(final_meta["step"])
        spectra.append(final_arrays["eigs"])
        losses.append(final_meta["loss"])
        gnorms.append(final_meta["grad_norm"])
    for s, lam, lo, g in zip(steps, spectra, losses, gnorms):
        num = spectrum_numbers(lam)
        per[str(s)] = {"loss": lo, "grad_norm": g, **num}
        rows.append([s, lo, g, num["lambda_max"], num["num_outliers"], num["zero_fraction"], num["num_negative"],
                     num["lambda_min"]])
    ctx.rd.save_arrays({"steps": np.array(steps), "eigs": np.array(spectra), "loss": np.array(losses),
                        "grad_norm": np.array(gnorms)})
    P = len(spectra[0])
    ctx.rd.save_figure(evolution_figure(steps, spectra, losses=losses,
                                        title=f"blobnet h={cfg['hidden']} ({P} params), GD lr {cfg['lr']}"),
                       "fig7_evolution.png")
    z0, z1 = per[str(steps[0])]["zero_fraction"], per[str(steps[-1])]["zero_fraction"]
    measured = {"num_params": P, "checkpoints": per, "final_step": final_meta["step"],
                "converged": final_meta["grad_norm"] < cfg["grad_tol"], "zero_fraction_init": z0,
                "zero_fraction_final": z1}
    claims = [Claim("training concentrates eigenvalues at zero",
                    "training acts like a process by which the eigenvalues concentrate at zero",
                    f"fraction |λ| < 1e-3·λmax: {z0:.3f} at step 0 -> {z1:.3f} at step {steps[-1]} "
                    f"(|grad| {final_meta['grad_norm']:.1e})", bool(z1 > z0))]
    table = markdown_table(["step", "loss", "|grad|", "λmax", "#λ>0.1λmax", "frac |λ|<1e-3·λmax", "#neg", "min λ"],
                           rows)
    notes = [f"blobnet h={cfg['hidden']}, {cfg['n']} blob points with std {cfg['std']:g}, GD lr {cfg['lr']:g} to "
             f"||grad|| < {cfg['grad_tol']:g} (cap {cfg['max_steps']}); exact spectra at log-spaced steps.",
             "'zero' is relative: |λ| < 1e-3·max|λ| at that checkpoint."]
    return {"measured": measured, "claims": claims, "tables": [table], "notes": notes}
