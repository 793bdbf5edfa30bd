"""Figure 8's workload: vectorised (all inits at once) vs a Python loop over inits.

Both paths train the same blobnet from the same sphere inits for the same
number of full-batch GD steps (grad_tol=0, so no init stops early) and then
take every init's exact Hessian spectrum.  Loops:

* "loop/spectra.train": ``spectra.train`` + ``torch.autograd.functional.hessian`` per init
  (what a user would write with the library; the fig-8 reference path);
* "loop/lean": a bare autograd GD loop (no history, no checks) + the same Hessian;
  the fairest baseline for the speed-up;
* "loop/lean + vectorize=True": the same, with ``hessian(..., vectorize=True)``
  (vmap inside autograd; not torch's default, shown for completeness).

GD, Hessian and total speed-ups are reported apart, from wall-clock medians
and, in a second line, from CPU-time medians (less sensitive to other jobs
on a shared machine; each path runs on one thread).

The loops are timed on a subset of the inits and scaled per init; the
results of the subset are compared with the vectorised ones.  Then the
5000-init paper run is estimated from a real chunk of the paper
configuration (true stopping rule), or run in full with ``--full``.

The machine may be shared: the load average is printed with the numbers,
and each timing is the median of ``--repeats`` runs.

    python bench/bench_many_inits.py                 # ~minutes
    python bench/bench_many_inits.py --quick         # smaller, for a smoke run
    python bench/bench_many_inits.py --full --out runs/fig8-paper   # the real 5000-init run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table  # noqa: E402


def _median(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=6)
    ap.add_argument("--n", type=int, default=200, help="blob samples (fig 8's paper config uses 200)")
    ap.add_argument("--inits", type=int, default=250, help="inits in the vectorised batch")
    ap.add_argument("--loop-inits", type=int, default=6, help="inits timed in the Python loops")
    ap.add_argument("--steps", type=int, default=300, help="GD steps per init")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--no-estimate", action="store_true", help="skip the 5000-init estimate")
    ap.add_argument("--estimate-inits", type=int, default=250,
                    help="inits trained to convergence (paper config) for the 5000-init estimate")
    ap.add_argument("--full", action="store_true", help="run the real 5000-init paper configuration")
    ap.add_argument("--out", default="runs/fig8-paper", help="output folder for --full")
    args = ap.parse_args()
    if args.quick:
        args.n, args.inits, args.loop_inits, args.steps, args.repeats = 200, 64, 3, 100, 1
    torch.set_num_threads(args.threads)

    import spectra
    from spectra.experiments._batched import (StackedNet, batched_gd, batched_hessian_eigvals, init_seed,
                                              init_thetas, looped_reference)
    from spectra.training import default_radius

    from spectra.experiments import config

    fig8 = config("fig8", "paper")
    load0 = os.getloadavg()[0]
    data = spectra.datasets.load("blobs", n=args.n, std=fig8["std"], seed=0, dtype="float64")
    X, y = data.X, data.y
    stack = StackedNet(spectra.models.create("blobnet", hidden=args.hidden, dtype="float64"))
    radius = default_radius(stack.template)
    thetas = init_thetas(stack.num_params, [init_seed(0, i) for i in range(args.inits)], radius)
    lr = fig8["lr"]
    print(f"config: blobnet h={args.hidden} ({stack.num_params} params), n={args.n}, std {fig8['std']}, lr {lr}, "
          f"float64, cross-entropy, {args.steps} GD steps per init (grad_tol 0), {args.inits} inits vectorised, "
          f"{args.loop_inits} looped, {args.repeats} repeats; torch {torch.__version__}, {args.threads} thread(s), "
          f"{os.cpu_count()} cores; load average at start {load0:.2f}", flush=True)

    L = args.loop_inits
    sub = thetas[:L]

    def vec_gd_run():
        return batched_gd(stack, thetas, X, y, lr=lr, grad_tol=0.0, max_steps=args.steps)

    def loop_gd_run():  # the reference path's GD: spectra.train per init
        finals = []
        for th in sub:
            model = stack.to_model(th)
            spectra.train(model, (X, y), lr=lr, grad_tol=0.0, max_steps=args.steps, log_every=args.steps)
            finals.append(stack.from_model(model))
        return torch.stack(finals)

    def lean_gd_run():  # the least a Python loop can do per step
        finals = []
        for th in sub:
            model = stack.to_model(th)
            params = list(model.parameters())
            for _ in range(args.steps):
                loss = torch.nn.functional.cross_entropy(model(X), y)
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    for p, g in zip(params, grads):
                        p.sub_(g, alpha=lr)
            finals.append(stack.from_model(model))
        return torch.stack(finals)

    # Interleave the paths, repeat, take medians: on a shared machine the load
    # changes from minute to minute, and interleaving spreads it evenly.
    # Wall and CPU (process) time are both kept.
    keys = ("vec_gd", "loop_gd", "lean_gd", "vec_h", "loop_h", "loop_hv")
    wall: dict[str, list[float]] = {k: [] for k in keys}
    cpu: dict[str, list[float]] = {k: [] for k in keys}
    out = lean_thetas = eigs = None
    _autograd_hessians(stack, thetas[:1], X, y, vectorize=True)  # warm-up: vmap's first call is slow
    for _ in range(args.repeats):
        for key, fn, count in (
                ("vec_gd", vec_gd_run, args.inits), ("loop_gd", loop_gd_run, L), ("lean_gd", lean_gd_run, L),
                ("vec_h", lambda: batched_hessian_eigvals(stack, out["theta"], X, y), args.inits),
                ("loop_h", lambda: _autograd_hessians(stack, out["theta"][:L], X, y), L),
                ("loop_hv", lambda: _autograd_hessians(stack, out["theta"][:L], X, y, vectorize=True), L)):
            w0, c0 = time.perf_counter(), time.process_time()
            res = fn()
            wall[key].append((time.perf_counter() - w0) / count)
            cpu[key].append((time.process_time() - c0) / count)
            if key == "vec_gd":
                out = res
            elif key == "lean_gd":
                lean_thetas = res
            elif key == "vec_h":
                eigs = res
    med = {k: statistics.median(v) for k, v in wall.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    ref = looped_reference(stack, sub, X, y, lr=lr, grad_tol=0.0, max_steps=args.steps)

    def row(name, m, gd, h):
        vec_total = m["vec_gd"] + m["vec_h"]
        return {"path": name, "GD s/init": m[gd], "Hessian s/init": m[h], "total s/init": m[gd] + m[h],
                "GD speed-up": m[gd] / m["vec_gd"], "Hessian speed-up": m[h] / m["vec_h"],
                "total speed-up": (m[gd] + m[h]) / vec_total}

    paths = [("vectorised (closed-form batched GD + Hessians)", "vec_gd", "vec_h"),
             ("loop/spectra.train + autograd hessian", "loop_gd", "loop_h"),
             ("loop/lean autograd GD + autograd hessian", "lean_gd", "loop_h"),
             ("loop/lean + hessian(vectorize=True)", "lean_gd", "loop_hv")]
    cols = ["path", "GD s/init", "Hessian s/init", "total s/init", "GD speed-up", "Hessian speed-up",
            "total speed-up"]
    print(f"wall-clock medians of {args.repeats} interleaved repeats:")
    print(markdown_table([row(n, med, g, h) for n, g, h in paths], cols))
    print(f"CPU-time medians of the same runs:")
    print(markdown_table([row(n, cmed, g, h) for n, g, h in paths], cols))

    top_vec = eigs[:L, -1].numpy()
    rel = float(np.max(np.abs(top_vec - ref["eigvals"][:, -1]) / np.abs(ref["eigvals"][:, -1])))
    theta_diff = float((lean_thetas - out["theta"][:L]).abs().max())
    print(f"same inits, same {args.steps} steps: max |Δλ1|/λ1 vectorised vs loop = {rel:.2e}; "
          f"max |Δθ| vectorised vs lean loop = {theta_diff:.2e}")
    vec_gd, loop_gd, lean_gd, loop_h = med["vec_gd"], med["loop_gd"], med["lean_gd"], med["loop_h"]
    print(f"per init-step (wall): vectorised {vec_gd / args.steps * 1e6:.1f} us, loop/spectra.train "
          f"{loop_gd / args.steps * 1e6:.1f} us, loop/lean {lean_gd / args.steps * 1e6:.1f} us")

    if args.full:
        from spectra.experiments import run

        t0, c0 = time.perf_counter(), time.process_time()
        res = run("fig8", args.out, scale="paper", resume=True, threads=args.threads)
        print(f"full paper run: {res['measured']['num_inits']} inits in {time.perf_counter() - t0:.0f} s wall "
              f"({time.process_time() - c0:.0f} s CPU); λ1 mean {res['measured']['top_eigenvalue']['mean']:.4g}")
    elif not args.no_estimate:
        est = _estimate(stack, X, y, radius, args)
        if est is not None:
            per_vec, steps = est
            loop_proj = float(np.mean(steps)) * loop_gd / args.steps + loop_h
            lean_proj = float(np.mean(steps)) * lean_gd / args.steps + loop_h
            print(f"with the real stopping rule (mean {np.mean(steps):.0f} steps per init): vectorised "
                  f"{per_vec:.3f} s/init measured; loops projected from their per-step cost: spectra.train "
                  f"{loop_proj:.3f} s/init ({loop_proj / per_vec:.1f}x), lean {lean_proj:.3f} s/init "
                  f"({lean_proj / per_vec:.1f}x)")
    print(f"load average at end {os.getloadavg()[0]:.2f}")


def _autograd_hessians(stack, thetas, X, y, vectorize=False):
    import warnings

    out = []
    for th in thetas:
        with warnings.catch_warnings():  # vectorize=True: torch's own jit.script deprecation notice
            warnings.simplefilter("ignore", DeprecationWarning)
            H = torch.autograd.functional.hessian(lambda v: stack.loss_obj(stack.forward(v, X), y), th,
                                                  vectorize=vectorize)
        out.append(np.linalg.eigvalsh(H.numpy()))
    return out


def _estimate(stack, X, y, radius, args):
    """Time one real chunk of the paper's fig-8 configuration and scale it to 5000 inits."""
    from spectra.experiments import config
    from spectra.experiments._batched import batched_gd, batched_hessian_eigvals, init_seed, init_thetas

    cfg = config("fig8", "paper")
    if (cfg["hidden"], cfg["n"]) != (args.hidden, args.n):
        print(f"(estimate skipped: the paper config uses h={cfg['hidden']}, n={cfg['n']})")
        return None
    chunk = 50 if args.quick else args.estimate_inits
    th = init_thetas(stack.num_params, [init_seed(0, i) for i in range(chunk)], radius)
    t0, c0 = time.perf_counter(), time.process_time()
    out = batched_gd(stack, th, X, y, lr=cfg["lr"], grad_tol=cfg["grad_tol"], max_steps=cfg["max_steps"])
    t1 = time.perf_counter()
    batched_hessian_eigvals(stack, out["theta"], X, y)
    t2, c2 = time.perf_counter(), time.process_time()
    per = (t2 - t0) / chunk
    steps = out["steps"].numpy()
    print(f"paper config chunk of {chunk} inits (true stopping rule, grad_tol {cfg['grad_tol']:g}): "
          f"GD {t1 - t0:.1f} s, "
          f"Hessians {t2 - t1:.1f} s, CPU {c2 - c0:.1f} s; steps median {np.median(steps):.0f}, max {steps.max()}, "
          f"converged {out['converged'].float().mean():.0%}")
    print(f"estimate for {cfg['num_inits']} inits: {per * cfg['num_inits'] / 60:.1f} min wall at this load "
          f"({(c2 - c0) / chunk * cfg['num_inits'] / 60:.1f} CPU-min)")
    return per, steps


if __name__ == "__main__":
    main()
