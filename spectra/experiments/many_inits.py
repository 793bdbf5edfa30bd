"""Figure 8: the top Hessian eigenvalue over many random initialisations.

Same data, same net, same algorithm (GD with a constant step to
``||grad|| < grad_tol``); only the initial point changes, drawn on the sphere
of the default radius (:func:`spectra.train.default_radius`).  The paper
used 5000 inits.  All inits of a chunk are trained and analysed together
(:mod:`spectra.experiments._batched`); every finished chunk is saved, so
``resume=True`` continues an interrupted run, and init ``i`` always gets the
seed ``init_seed(seed, i)`` whatever the chunking.  A few inits are redone
one at a time with :func:`spectra.train` + autograd Hessians as a check.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ._common import Context, run_record, spectrum_numbers, training_summary
from ._report import Claim, markdown_table

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"threads": 1, "hidden": 2, "n": 60, "std": 0.4, "lr": 0.5, "grad_tol": 1e-3, "max_steps": 3000,
             "num_inits": 8, "chunk": 4, "check_loop": 2},
    "quick": {"threads": 1, "hidden": 6, "n": 200, "std": 0.4, "lr": 0.5, "grad_tol": 1e-4, "max_steps": 20000,
              "num_inits": 64, "chunk": 64, "check_loop": 2},
    # n=200 blob points (the paper gives no count): GD cost is linear in n, and
    # with n=1000 the 5000 runs would not fit in an hour on 2 cores (bench/).
    "paper": {"threads": 1, "hidden": 6, "n": 200, "std": 0.4, "lr": 0.5, "grad_tol": 1e-4, "max_steps": 100000,
              "num_inits": 5000, "chunk": 1000, "check_loop": 3},
}


class _Progress:
    """``on_step`` for batched_gd: a log line about every 30 seconds."""

    def __init__(self, ctx: Context, label: str, every: float = 30.0):
        self.ctx, self.label, self.every, self.last = ctx, label, every, time.monotonic()

    def __call__(self, step: int, active: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self.ctx.log(f"{self.label}: GD step {step}, {active} inits still training")


def run_inits(ctx: Context, key: str, *, hidden: int, n: int, std: float, lr: float, grad_tol: float,
              max_steps: int, num_inits: int, chunk: int, loss: str = "cross_entropy", activation: str = "relu",
              radius_scale: float = 1.0, weight_decay: float = 0.0, polish: bool = False,
              first_init: int = 0) -> dict[str, np.ndarray]:
    """Train ``num_inits`` 2-h-h-2 nets on blobs from sphere inits in chunks; return stacked per-init arrays.

    Init ``i`` (counted from ``first_init``) starts at ``init_seed(seed, i)`` on
    the sphere of ``radius_scale`` times the default radius.  GD uses
    :func:`~spectra.experiments._batched.batched_gd`'s backtracking with the
    largest step ``lr``; ``weight_decay`` adds ``weight_decay/2 |w|^2`` to the
    loss and ``polish`` finishes with Newton steps
    (:func:`~spectra.experiments._polish.newton_polish`; for ReLU nets the
    continuation of :func:`~spectra.experiments._kinks.kink_polish`, whose
    convergence is certified on the ReLU loss's one-sided gradients).  The eigenvalues are
    those of the loss Hessian (without the decay term).

    Chunk ``c`` is the progress unit ``{key}_c{c:05d}``; finished chunks are loaded, not recomputed.
    While a chunk trains, its GD state is saved about every minute
    (``{key}_c{c:05d}_gdstate``), so an interrupted chunk resumes mid-training.
    """
    from ..datasets import load
    from ..models import create
    from ..training import default_radius
    from ._batched import StackedNet, batched_gd, batched_hessian_eigvals, init_seed, init_thetas
    from ._common import kink_distance

    signature = (str(ctx.rd.root), ctx.seed, hidden, n, std, lr, grad_tol, max_steps, num_inits, loss, activation,
                 radius_scale, weight_decay, polish, first_init)
    if signature in _RUNS and not ctx.rd.has_unit(f"{key}_c00000"):
        ctx.log(f"{key}: reused from an earlier figure of this process")
        return _RUNS[signature]
    data = load("blobs", n=n, std=std, seed=ctx.seed, dtype="float64")
    template = create("mlp", sizes=[2, hidden, hidden, 2], activation=activation, dtype="float64")
    stack = StackedNet(template, loss=loss)
    radius = radius_scale * default_radius(stack.template)
    parts: list[dict[str, np.ndarray]] = []
    work_seconds, done_now = 0.0, 0  # chunk seconds (time before an interruption included) and inits
    num_chunks = -(-num_inits // chunk)
    for c in range(num_chunks):
        unit = f"{key}_c{c:05d}"
        if ctx.rd.has_unit(unit):
            parts.append(ctx.rd.load_unit(unit)[0])
            continue
        idx = np.arange(first_init + c * chunk, first_init + min(num_inits, (c + 1) * chunk))
        thetas = init_thetas(stack.num_params, [init_seed(ctx.seed, int(i)) for i in idx], radius)
        state_unit = f"{unit}_gdstate"
        state, spent = None, 0.0
        if ctx.rd.has_unit(state_unit):
            state, smeta = ctx.rd.load_unit(state_unit)
            spent = float(smeta.get("gd_seconds", 0.0))
            ctx.log(f"{key}: chunk {c + 1}/{num_chunks} resumes GD at iteration {int(state['step'])}")
        t0 = time.perf_counter()
        progress = _Progress(ctx, f"{key}: chunk {c + 1}/{num_chunks}")

        def save_state(st: dict[str, Any]) -> None:
            ctx.rd.save_unit(state_unit, {k: v.numpy() for k, v in st.items()},
                             {"step": int(st["step"]), "gd_seconds": spent + time.perf_counter() - t0})

        out = batched_gd(stack, thetas, data.X, data.y, lr=lr, grad_tol=grad_tol, max_steps=max_steps,
                         weight_decay=weight_decay, state=state, checkpoint=save_state, checkpoint_seconds=60.0,
                         on_step=progress)
        extra: dict[str, np.ndarray] = {}
        if polish:
            from ._kinks import has_relu, kink_polish
            from ._polish import newton_polish

            # ReLU nets have their minima on kinks: Newton continuation through softplus, certified on the ReLU loss
            finish = kink_polish if has_relu(stack.template) else newton_polish
            pol = finish(stack, out["theta"], data.X, data.y, weight_decay=weight_decay, grad_tol=grad_tol)
            extra = {"gd_converged": out["converged"].numpy(), "gd_grad_norm": out["grad_norm"].numpy(),
                     "gd_loss": out["loss"].numpy(),
                     "polish_iterations": pol["iterations"].numpy(), "min_eigenvalue": pol["min_eigenvalue"].numpy(),
                     "polish_distance": (pol["theta"] - out["theta"]).norm(dim=1).numpy(),
                     **({"piece_grad_norm": pol["piece_grad_norm"].numpy()} if "piece_grad_norm" in pol else {})}
            out = {**out, **{k: pol[k] for k in ("theta", "grad_norm", "loss", "converged")}}
            with torch.no_grad():
                logits = stack.batched_forward(out["theta"], data.X.to(stack.dtype))
                out["accuracy"] = (logits.argmax(dim=-1) == data.y).to(torch.float64).mean(dim=1)
        t1 = time.perf_counter()
        t0 -= spent  # GD time of this chunk includes the time before an interruption
        eigs = batched_hessian_eigvals(stack, out["theta"], data.X, data.y)
        t2 = time.perf_counter()
        kinks = [kink_distance(stack.to_model(t), (data.X, data.y)) for t in out["theta"]]
        arrays = {"index": idx, "eigs": eigs.numpy(), "steps": out["steps"].numpy(),
                  "grad_norm": out["grad_norm"].numpy(), "loss": out["loss"].numpy(),
                  "accuracy": out["accuracy"].numpy(), "converged": out["converged"].numpy(),
                  "weight_norm": out["theta"].norm(dim=1).numpy(), "theta": out["theta"].numpy(),
                  "last_lr": out["last_lr"].numpy(), "halvings": out["halvings"].numpy(),
                  "kink_distance": np.array([np.nan if k is None else k for k in kinks]),
                  "seconds": np.array([t1 - t0, t2 - t1]), **extra}
        ctx.rd.save_unit(unit, arrays, {"chunk": c, "inits": [int(idx[0]), int(idx[-1])],
                                        "gd_seconds": t1 - t0, "hessian_seconds": t2 - t1})
        parts.append(arrays)
        done_now += len(idx)
        work_seconds += t2 - t0  # t0 was moved back by the GD time spent before a resume
        rate = work_seconds / done_now
        left = num_inits - sum(len(p["index"]) for p in parts)
        ctx.log(f"{key}: chunk {c + 1}/{num_chunks} ({len(idx)} inits, GD {t1 - t0:.1f}s, Hessians "
                f"{t2 - t1:.1f}s, converged {float(np.mean(arrays['converged'])):.0%}); "
                f"about {rate * left / 60:.1f} min left")
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "seconds"}
    merged["gd_seconds"] = np.array([float(p["seconds"][0]) for p in parts])
    merged["hessian_seconds"] = np.array([float(p["seconds"][1]) for p in parts])
    merged["radius"] = np.array(radius)
    merged["lambda1_times_last_lr"] = merged["eigs"][:, -1] * merged["last_lr"]
    _RUNS[signature] = merged
    return merged


# Finished inits of this process by output root and everything that determines them, so `reproduce all` trains
# fig 4's nets once for figs 4 and 6 (another output folder trains its own).
_RUNS: dict[tuple, dict[str, np.ndarray]] = {}


def loop_check(ctx: Context, r: dict[str, np.ndarray], count: int, *, hidden: int, n: int, std: float,
               lr: float, grad_tol: float, max_steps: int) -> dict[str, Any]:
    """Redo the first ``count`` inits one at a time (spectra.train + autograd Hessian) and compare."""
    from ..datasets import load
    from ..models import create
    from ._batched import StackedNet, init_seed, init_thetas, looped_reference

    if count <= 0:
        return {}
    data = load("blobs", n=n, std=std, seed=ctx.seed, dtype="float64")
    stack = StackedNet(create("blobnet", hidden=hidden, dtype="float64"))
    thetas = init_thetas(stack.num_params, [init_seed(ctx.seed, i) for i in range(count)], float(r["radius"]))
    t0 = time.perf_counter()
    ref = looped_reference(stack, thetas, data.X, data.y, lr=lr, grad_tol=grad_tol, max_steps=max_steps)
    seconds = time.perf_counter() - t0
    top_vec, top_ref = r["eigs"][:count, -1], ref["eigvals"][:, -1]
    vec_seconds = float(np.sum(r["gd_seconds"]) + np.sum(r["hessian_seconds"])) / len(r["index"])
    return {"count": count,
            "max_abs_diff_top": float(np.max(np.abs(top_vec - top_ref))),
            "max_rel_diff_top": float(np.max(np.abs(top_vec - top_ref) / np.abs(top_ref))),
            "max_abs_diff_all_eigs": float(np.max(np.abs(r["eigs"][:count] - ref["eigvals"]))),
            "same_steps": bool(np.array_equal(r["steps"][:count], ref["steps"])),
            "loop_seconds_per_init": seconds / count,
            "vectorised_seconds_per_init": vec_seconds,
            "in_run_speedup": (seconds / count) / vec_seconds if vec_seconds > 0 else None}


def run_fig8(ctx: Context) -> dict[str, Any]:
    from ..plotting import top_eigenvalue_histogram
    from ._common import ZERO_TOL_REL

    cfg = ctx.cfg
    kw = {k: cfg[k] for k in ("hidden", "n", "std", "lr", "grad_tol", "max_steps")}
    r = run_inits(ctx, "inits", num_inits=cfg["num_inits"], chunk=cfg["chunk"], **kw)
    check = loop_check(ctx, r, min(cfg["check_loop"], cfg["num_inits"]), **kw)
    top = r["eigs"][:, -1]
    second = r["eigs"][:, -2]
    P = r["eigs"].shape[1]
    big = np.abs(r["eigs"]).max(axis=1, keepdims=True)
    zero_frac = np.mean(np.abs(r["eigs"]) < ZERO_TOL_REL * big, axis=1)
    conv = r["converged"].astype(bool)
    ctx.rd.save_arrays({k: v for k, v in r.items()})

    q = np.quantile(top, [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0])
    # A few inits end with every ReLU dead: constant output, loss log(2), a
    # zero gradient, and lambda_1 = 0.5 from the last bias alone.  They are
    # real GD outcomes but a different population; report the rest apart.
    dead = np.abs(r["loss"] - np.log(2.0)) < 1e-4
    alive = top[~dead]
    ctx.rd.save_figure(top_eigenvalue_histogram(
        alive if alive.size else top,
        title=f"Top eigenvalue over {alive.size} of {len(top)} inits, blobnet h={cfg['hidden']} ({P} params)"
              + (f"; {int(dead.sum())} dead-network runs (λ1 = 0.5) left out" if dead.any() else "")),
        "fig8_top_eigenvalue.png")
    measured = {
        "num_inits": int(len(top)), "num_params": int(P), "radius": float(r["radius"]),
        "top_eigenvalue": {"mean": float(top.mean()), "std": float(top.std()),
                           "cv": float(top.std() / top.mean()), "quantiles_0_5_25_50_75_95_100": q.tolist()},
        "second_eigenvalue": {"mean": float(second.mean()), "std": float(second.std())},
        "dead_network_runs": int(dead.sum()),
        "top_eigenvalue_without_dead_runs": {
            "count": int(alive.size), "mean": float(alive.mean()) if alive.size else None,
            "std": float(alive.std()) if alive.size else None,
            "cv": float(alive.std() / alive.mean()) if alive.size else None,
            "quantiles_5_50_95": np.quantile(alive, [0.05, 0.5, 0.95]).tolist() if alive.size else None},
        "converged_fraction": float(conv.mean()),
        "steps": {"median": float(np.median(r["steps"])), "max": int(r["steps"].max())},
        "final_grad_norm_max": float(r["grad_norm"].max()),
        "final_loss": {"mean": float(r["loss"].mean()), "std": float(r["loss"].std())},
        "accuracy_mean": float(np.nanmean(r["accuracy"])),
        "zero_fraction_mean": float(zero_frac.mean()),
        "num_negative_mean": float(np.mean([spectrum_numbers(e)["num_negative"] for e in r["eigs"][:200]])),
        "last_step_times_lambda1_max": float(np.max(r["lambda1_times_last_lr"])),
        "inits_at_edge_of_stability": int(np.sum(r["lambda1_times_last_lr"] > 0.9 * 2.0)),
        "gd_seconds_total": float(r["gd_seconds"].sum()), "hessian_seconds_total": float(r["hessian_seconds"].sum()),
        "loop_check": check,
    }
    boot = np.random.default_rng(ctx.seed)
    sample = alive[conv[~dead]] if alive.size else top
    cvs = [float(np.std(x) / np.mean(x)) for x in (sample[boot.integers(0, sample.size, sample.size)]
                                                  for _ in range(1000))] if sample.size > 1 else [np.nan]
    claims = [
        Claim("top eigenvalue over inits", "fluctuates over 5000 runs with different initial points (figure 8)",
              f"{len(top)} inits: median {q[3]:.4g}, 5-95% [{q[1]:.4g}, {q[5]:.4g}], mean {top.mean():.4g}, std "
              f"{top.std():.3g}; {int(dead.sum())} runs ended with all ReLUs dead (loss log 2, λ1 = 0.5); without "
              f"them mean {alive.mean():.4g}, std {alive.std():.3g} (cv {alive.std() / alive.mean():.2f})"
              if alive.size else f"{len(top)} inits, all dead", None,
              "the paper shows the histogram without numbers",
              effect=f"cv of λ1 (converged, alive runs) {np.std(sample) / np.mean(sample):.3g}",
              seeds=int(sample.size), test=f"bootstrap 95% interval of the cv [{np.quantile(cvs, 0.025):.3g}, "
                                           f"{np.quantile(cvs, 0.975):.3g}]", runs="converged only"),
        Claim("every run converges", "same algorithm, stopped at a small gradient",
              f"{conv.mean():.1%} reached ||grad|| < {cfg['grad_tol']:g} within {cfg['max_steps']} steps "
              f"(median {np.median(r['steps']):.0f} steps); last step·λ1 below 2 for "
              f"{int(np.sum(r['lambda1_times_last_lr'] < 2))}/{len(top)} inits (edge of stability, per init)",
              bool(conv.mean() >= 0.9), seeds=len(top), test="count", runs="all runs"),
    ]
    if check:
        claims.append(Claim("vectorised = looped", "(our check, not the paper's)",
                            f"{check['count']} inits redone one at a time: max |Δλ1|/λ1 = "
                            f"{check['max_rel_diff_top']:.1e}, same step counts: {check['same_steps']}",
                            check["max_rel_diff_top"] < 1e-10, seeds=check["count"],
                            test="max relative difference of λ1 below 1e-10, equal step counts",
                            effect=f"max |Δλ1|/λ1 {check['max_rel_diff_top']:.1e}"))
    table = markdown_table(["quantity", "value"], [
        ["inits", len(top)], ["params", P], ["λ1 mean", top.mean()], ["λ1 std", top.std()],
        ["λ1 min", q[0]], ["λ1 median", q[3]], ["λ1 max", q[6]], ["λ2 mean", second.mean()],
        ["converged", f"{conv.mean():.1%}"], ["dead-network runs", int(dead.sum())],
        ["GD seconds", r["gd_seconds"].sum()],
        ["Hessian seconds", r["hessian_seconds"].sum()]])
    notes = [f"blobnet h={cfg['hidden']}, {cfg['n']} blob points with std {cfg['std']:g}, GD lr {cfg['lr']:g} to "
             f"||grad|| < {cfg['grad_tol']:g} (cap {cfg['max_steps']} steps); init i uses seed init_seed(seed, i) "
             "on the sphere of the default radius.",
             "Vectorised: all inits of a chunk in one batched closed-form forward/backward per step, then "
             "closed-form exact Hessians of all inits in small blocks and one batched eigvalsh; "
             "bench/bench_many_inits.py compares it with Python loops (spectra.train + "
             "torch.autograd.functional.hessian per init)."]
    records = [run_record(f"init {int(i)}", c, g, cfg["grad_tol"], k, st) for i, c, g, k, st in
               zip(r["index"], conv, r["grad_norm"], r["kink_distance"], r["steps"])]
    return {"measured": measured, "claims": claims, "tables": [table], "notes": notes,
            "training": training_summary(records)}
