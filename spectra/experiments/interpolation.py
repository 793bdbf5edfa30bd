"""Figure 10: the loss along straight lines between two training runs.

(A) From one random init, train with GD and with SGD; at each checkpoint
``t`` evaluate the full-data loss at ``(1 - alpha) a_t + alpha b_t`` for a
grid of ``alpha``, and the distance ``||a_t - b_t||``.
(B) The same for two SGD runs from two different random inits (nearly
orthogonal in parameter space) with different data shuffles.

The paths are compared at equal update counts, as the paper does, with a
constant step (SGD with one does not converge).  Each run's end point is
then finished by full-batch GD with backtracking to the gradient tolerance;
that is the run's recorded convergence, and the segments between the
finished end points are measured as well.

Flatness is measured by the *barrier* ``max_alpha L - max(L(0), L(1))``
(0 for a segment that never rises above its ends), also relative to
``max(L(0), L(1))``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._common import Context, flat_params, run_record, set_flat_params, sub_seed, training_summary
from ._report import CANNOT_SHOW, Claim, markdown_table

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"threads": 1, "n": 100, "k": 2, "lr": 0.1, "steps": 60, "checkpoints": 4, "batch_size": 20, "alphas": 11,
             "grad_tol": 1e-2, "finish_lr": 4.0, "finish_steps": 500},
    "quick": {"threads": 1, "n": 500, "k": 10, "lr": 0.1, "steps": 400, "checkpoints": 8, "batch_size": 50,
              "alphas": 21, "grad_tol": 2e-3, "finish_lr": 4.0, "finish_steps": 3000},
    "paper": {"n": 1000, "k": 10, "lr": 0.1, "steps": 3000, "checkpoints": 15, "batch_size": 50, "alphas": 41,
              "grad_tol": 1e-4, "finish_lr": 4.0, "finish_steps": 30000},
}
# "Completely flat": the loss on the segment never rises above the larger end loss by more than this share of it.
FLAT_BARRIER = 0.01


def flat_verdict(max_relative_barrier: float, distance_grows: bool, scale: str) -> tuple[bool | None, str]:
    """``(agrees, verdict)`` for "the line between GD and SGD stays completely flat while they drift apart".

    A barrier above :data:`FLAT_BARRIER` of the end loss differs at any
    scale.  No barrier agrees only at paper scale: a short run without one
    says nothing about a long one, since barriers can appear late in training.

    >>> flat_verdict(0.0, True, "paper"), flat_verdict(0.02, True, "quick")
    ((True, 'agrees'), (False, 'differs'))
    >>> flat_verdict(0.0, True, "quick")
    (None, 'quick scale cannot show this')
    """
    if max_relative_barrier >= FLAT_BARRIER or not distance_grows:
        return False, "differs"
    if scale != "paper":
        return None, CANNOT_SHOW
    return True, "agrees"


def _net(cfg: dict[str, Any]) -> torch.nn.Module:
    """The figure's 784-k-10 ReLU net (float64)."""
    from ..models import create

    return create("mlp", sizes=[784, cfg["k"], 10], dtype="float64")


def _ckpts(cfg: dict[str, Any]) -> list[int]:
    return sorted({int(round(s)) for s in np.linspace(0, cfg["steps"], cfg["checkpoints"] + 1)})


def _run(ctx: Context, key: str, data: Any, init_seed: int, optimizer: str, shuffle_seed: int) -> np.ndarray:
    """Train one run, returning the parameters at every checkpoint ``[len(ckpts), P]`` (a progress unit)."""
    from ..training import init_on_sphere, train

    if ctx.rd.has_unit(key):
        return ctx.rd.load_unit(key)[0]["params"]
    cfg = ctx.cfg
    ckpts = _ckpts(cfg)
    model = _net(cfg)
    init_on_sphere(model, seed=init_seed)
    snaps: dict[int, np.ndarray] = {}

    def snap(m: Any, info: dict[str, Any]) -> None:
        snaps[info["step"]] = flat_params(m)

    hist = train(model, data, optimizer=optimizer, lr=cfg["lr"], grad_tol=0.0, max_steps=cfg["steps"],
                 step_rule="constant", progress=False,
                 batch_size=cfg["batch_size"] if optimizer == "sgd" else None, seed=shuffle_seed,
                 callbacks=[snap], callback_steps=ckpts, log_every=max(1, cfg["steps"] // 10))
    params = np.stack([snaps[s] for s in ckpts])
    ctx.rd.save_unit(key, {"params": params}, {"final_loss": hist.final_loss, "final_grad_norm": hist.final_grad_norm,
                                               "final_accuracy": hist.final_accuracy, "converged": None,
                                               "grad_tol": 0.0, "steps": hist.steps_taken})
    ctx.log(f"{key}: {optimizer} {cfg['steps']} steps, final loss {hist.final_loss:.4g}")
    return params


def _finish(ctx: Context, key: str, data: Any, start: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Full-batch GD with backtracking from a run's last checkpoint to the tolerance (a progress unit)."""
    import warnings

    from ..training import NotConvergedWarning, train

    unit = f"{key}_finished"
    if ctx.rd.has_unit(unit):
        arrays, meta = ctx.rd.load_unit(unit)
        return arrays["params"], meta
    cfg = ctx.cfg
    model = _net(cfg)
    set_flat_params(model, start)
    with warnings.catch_warnings():  # the outcome is recorded below
        warnings.simplefilter("ignore", NotConvergedWarning)
        hist = train(model, data, optimizer="gd", lr=cfg["finish_lr"], grad_tol=cfg["grad_tol"],
                     max_steps=cfg["finish_steps"], progress=False, log_every=max(1, cfg["finish_steps"] // 10))
    meta = {"converged": hist.converged, "grad_tol": cfg["grad_tol"], "final_grad_norm": hist.final_grad_norm,
            "final_loss": hist.final_loss, "steps": hist.steps_taken}
    params = flat_params(model)
    ctx.rd.save_unit(unit, {"params": params}, meta)
    ctx.log(f"{unit}: GD {hist.steps_taken} steps to |g| {hist.final_grad_norm:.2e}, converged {hist.converged}")
    return params, meta


def segment_losses(model: torch.nn.Module, data: Any, a: np.ndarray, b: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """Full-data cross-entropy at ``(1 - alpha) a + alpha b`` for each alpha."""
    from ..losses import resolve_loss

    loss = resolve_loss("cross_entropy")
    X, y = data.X, data.y
    out = []
    with torch.no_grad():
        for alpha in alphas:
            set_flat_params(model, (1 - alpha) * a + alpha * b)
            out.append(float(loss(model(X), y)))
    return np.array(out)


def _pair(ctx: Context, data: Any, A: np.ndarray, B: np.ndarray, alphas: np.ndarray) -> dict[str, np.ndarray]:
    model = _net(ctx.cfg)
    losses = np.stack([segment_losses(model, data, a, b, alphas) for a, b in zip(A, B)])
    dist = np.linalg.norm(A - B, axis=1)
    ends = np.maximum(losses[:, 0], losses[:, -1])
    barrier = losses.max(axis=1) - ends
    cos0 = float(A[0] @ B[0] / (np.linalg.norm(A[0]) * np.linalg.norm(B[0])))
    return {"losses": losses, "distance": dist, "barrier": barrier, "relative_barrier": barrier / ends,
            "cosine_at_start": np.array(cos0)}


def run_fig10(ctx: Context) -> dict[str, Any]:
    from ..datasets import load
    from ..plotting import interpolation_2d, interpolation_3d, new_figure

    cfg = ctx.cfg
    data = load("mnist", n=cfg["n"], seed=ctx.seed, dtype="float64")
    alphas = np.linspace(0.0, 1.0, cfg["alphas"])
    ckpts = _ckpts(cfg)
    s_init0, s_init1 = sub_seed(ctx.seed, "fig10-init", 0), sub_seed(ctx.seed, "fig10-init", 1)
    s_shuf0, s_shuf1 = sub_seed(ctx.seed, "fig10-shuffle", 0), sub_seed(ctx.seed, "fig10-shuffle", 1)
    gd = _run(ctx, "same_init_gd", data, s_init0, "gd", s_shuf0)
    sgd = _run(ctx, "same_init_sgd", data, s_init0, "sgd", s_shuf0)
    sgd_a = sgd  # run A of pair (B) is the same SGD run: init 0, shuffle 0
    sgd_b = _run(ctx, "two_inits_sgd_b", data, s_init1, "sgd", s_shuf1)
    same = _pair(ctx, data, gd, sgd, alphas)
    two = _pair(ctx, data, sgd_a, sgd_b, alphas)
    finished = {key: _finish(ctx, key, data, run[-1]) for key, run in
                (("same_init_gd", gd), ("same_init_sgd", sgd), ("two_inits_sgd_b", sgd_b))}
    ends_same = _pair(ctx, data, finished["same_init_gd"][0][None], finished["same_init_sgd"][0][None], alphas)
    ends_two = _pair(ctx, data, finished["same_init_sgd"][0][None], finished["two_inits_sgd_b"][0][None], alphas)

    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.6), layout="constrained")
    for i, (pair, title) in enumerate(((same, "(A) same init: GD (α=0) vs SGD (α=1)"),
                                       (two, "(B) two inits, two shuffles: SGD vs SGD"))):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        interpolation_3d(alphas, pair["losses"], pair["distance"], ax=ax, title=title)
    ctx.rd.save_figure(fig, "fig10_interpolation_3d.png")
    fig2, axes = new_figure(2, 2, size=(4.4, 3.2))
    interpolation_2d(alphas, same["losses"], same["distance"], ckpts, axes=axes[0])
    interpolation_2d(alphas, two["losses"], two["distance"], ckpts, axes=axes[1])
    axes[0][0].set_title("(A) same init, GD vs SGD", fontsize=9)
    axes[1][0].set_title("(B) two inits, SGD vs SGD", fontsize=9)
    ctx.rd.save_figure(fig2, "fig10_interpolation_2d.png")
    ctx.rd.save_arrays({"alphas": alphas, "steps": np.array(ckpts),
                        **{f"same_{k}": v for k, v in same.items()}, **{f"two_{k}": v for k, v in two.items()}})

    def summary(p: dict[str, np.ndarray]) -> dict[str, Any]:
        mid = p["losses"][:, len(alphas) // 2]
        return {"distance": p["distance"].tolist(), "barrier": p["barrier"].tolist(),
                "relative_barrier": p["relative_barrier"].tolist(), "midpoint_loss": mid.tolist(),
                "end_losses": p["losses"][:, [0, -1]].tolist(),
                "max_relative_barrier_after_start": float(np.max(p["relative_barrier"][1:])),
                "cosine_at_start": float(p["cosine_at_start"])}

    sa, sb = summary(same), summary(two)
    measured = {"steps": ckpts, "alphas": alphas.tolist(), "same_init": sa, "two_inits": sb}
    rows = [[s, same["distance"][i], same["barrier"][i], same["relative_barrier"][i], two["distance"][i],
             two["barrier"][i], two["relative_barrier"][i], sb["midpoint_loss"][i]] for i, s in enumerate(ckpts)]
    dist_grows = bool(same["distance"][-1] > same["distance"][1])
    flat_agrees, flat_text = flat_verdict(sa["max_relative_barrier_after_start"], dist_grows, ctx.scale)
    short = flat_text == CANNOT_SHOW
    claims = [
        Claim("GD vs SGD from one init: flat", "the interpolated profile is completely flat even when the points "
              "keep diverging",
              f"distance {same['distance'][1]:.3g} -> {same['distance'][-1]:.3g}; largest barrier after step 0: "
              f"{np.max(same['barrier'][1:]):.2e} ({sa['max_relative_barrier_after_start']:.2%} of the end loss)",
              flat_agrees,
              f"flat = barrier below {FLAT_BARRIER:.0%} of the end loss at every checkpoint"
              + (f"; no barrier within {cfg['steps']} updates does not show flatness over a whole training (a "
                 "barrier can appear later): run --scale paper" if short else ""),
              verdict=flat_text,
              effect=f"largest relative barrier {sa['max_relative_barrier_after_start']:.2%}", seeds="1 pair of runs",
              test="threshold: barrier < 1% of the end loss at every checkpoint after step 0", runs="all checkpoints"),
        Claim("two inits: interpolation decreases, less flat",
              "from two random (orthogonal) inits the line loss also decreases, albeit not as flat",
              f"cosine of the two inits {sb['cosine_at_start']:.3f}; midpoint loss {sb['midpoint_loss'][0]:.3g} -> "
              f"{sb['midpoint_loss'][-1]:.3g}; largest relative barrier after step 0 "
              f"{sb['max_relative_barrier_after_start']:.2%}",
              bool(sb["midpoint_loss"][-1] < sb["midpoint_loss"][0]
                   and sb["max_relative_barrier_after_start"] > sa["max_relative_barrier_after_start"]),
              effect=f"midpoint loss x{sb['midpoint_loss'][-1] / sb['midpoint_loss'][0]:.3g}; barrier (B) "
                     f"{sb['max_relative_barrier_after_start']:.2%} vs (A) {sa['max_relative_barrier_after_start']:.2%}",
              seeds="1 pair of runs per case", test="direction of the midpoint loss and order of the barriers",
              runs="all checkpoints"),
    ]
    table = markdown_table(["step", "(A) distance", "(A) barrier", "(A) rel. barrier", "(B) distance",
                            "(B) barrier", "(B) rel. barrier", "(B) midpoint loss"], rows)
    notes = [f"MNIST n={cfg['n']} (seeded draw from the bundled pool), 784-{cfg['k']}-10 ReLU, cross-entropy; GD and "
             f"SGD (batch {cfg['batch_size']}) with the same step {cfg['lr']:g}, compared at equal update counts "
             f"(checkpoints {ckpts}).",
             "Barrier = max over the segment of the loss minus the larger end loss (0 = never above the ends); "
             f"{cfg['alphas']} points on each segment."]
    paths = {key: ctx.rd.load_unit(key)[1] for key in finished}
    measured["runs"] = {key: {"converged": m["converged"], "grad_tol": m["grad_tol"],
                              "final_grad_norm": m["final_grad_norm"], "final_loss": m["final_loss"],
                              "finish_steps": m["steps"], "path_final_grad_norm": paths[key]["final_grad_norm"],
                              "path_final_loss": paths[key]["final_loss"]} for key, (_, m) in finished.items()}
    measured["finished_ends"] = {
        name: {"distance": float(p["distance"][0]), "end_losses": p["losses"][0, [0, -1]].tolist(),
               "barrier": float(p["barrier"][0]), "relative_barrier": float(p["relative_barrier"][0])}
        for name, p in (("same_init", ends_same), ("two_inits", ends_two))}
    notes.append("Between the finished end points (each run continued by GD to ||grad|| < "
                 f"{cfg['grad_tol']:g}): " + "; ".join(
                     f"{'(A)' if name == 'same_init' else '(B)'} distance {e['distance']:.3g}, barrier "
                     f"{e['barrier']:.2e} ({e['relative_barrier']:.2%} of the end loss)"
                     for name, e in measured["finished_ends"].items()) + ".")
    records = [run_record(key, m["converged"], m["final_grad_norm"], m["grad_tol"], steps=m["steps"])
               for key, (_, m) in finished.items()]
    rule = (f"The paths are compared at equal update counts ({cfg['steps']} updates each, GD and SGD with the same "
            f"constant step {cfg['lr']:g}, as the paper does; SGD with a constant step does not converge); each run's "
            f"end point is then continued by full-batch GD with backtracking from step {cfg['finish_lr']:g} to "
            f"||grad|| < {cfg['grad_tol']:g} (at most {cfg['finish_steps']} steps), and that is its convergence. "
            "Gradient norms at the end of the paths: "
            + ", ".join(f"{k} {m['final_grad_norm']:.1e}" for k, m in paths.items()) + ".")
    training = training_summary(records, rule=rule, verdicts="The claims are about the paths.")
    return {"measured": measured, "claims": claims, "tables": [table], "notes": notes, "training": training}
