"""SLQ settings: density error against time, to choose the defaults.

Workloads as the peers benchmark (MLPs 784-10-10 and 784-64-64-10 at
initialisation, float64, 1000 MNIST images, cross-entropy).  For each setting
(probes x steps, Lanczos engine, product dtype) and each of ``--seeds`` probe
seeds: the wall time and the L1 distance of the density (both measures
broadened with a Gaussian of sigma = 1 % of the reference range, as in
BENCHMARKS.md) to

* the exact spectrum on 784-10-10 (``eigvalsh`` of the dense Hessian), and
* on 784-64-64-10, where no exact spectrum is at hand, a float64 reference run
  with many probes (``--ref-probes`` x ``--ref-steps``, default engine).

and, to isolate what the engine and the product dtype change, to the density
of the first setting (10 x 80, ``reorth``, float64 products) with the same
probes.  The spread between seeds of one setting is the error SLQ's randomness
leaves; differences between settings below it are not resolvable.  Seconds are
medians over the seeds; ratios are to the first setting run back to back with
each run (paired), of wall time and of the process's CPU time (which moves far
less when other jobs share the machine).

    python bench/bench_slq_defaults.py --threads 2 --seeds 3
    python bench/bench_slq_defaults.py --settings 4 --exact-cache /tmp/exact_small.npy   # engines x dtypes only
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
from bench_peers import NETS, workload  # noqa: E402

SIGMA_FRACTION = 1 / 100
# (probes, steps, engine, product dtype)
SETTINGS = [
    (10, 80, "reorth", "float64"),
    (10, 80, "lowmem", "float64"),
    (10, 80, "reorth", "float32"),
    (10, 80, "lowmem", "float32"),
    (10, 100, "lowmem", "float32"),
    (5, 80, "lowmem", "float32"),
    (20, 40, "lowmem", "float32"),
    (10, 50, "lowmem", "float32"),
]


def l1(nodes: np.ndarray, weights: np.ndarray, ref_atoms: np.ndarray, ref_mass: np.ndarray) -> float:
    from spectra.density import gaussian_density, l1_distance

    lo, hi = float(ref_atoms.min()), float(ref_atoms.max())
    sigma = SIGMA_FRACTION * (hi - lo)
    grid = np.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 4001)
    w = np.asarray(weights, float).ravel()
    rho = gaussian_density(np.asarray(nodes, float).ravel(), w / w.sum(), grid, sigma)
    rho_ref = gaussian_density(ref_atoms, ref_mass / ref_mass.sum(), grid, sigma)
    return l1_distance(rho, rho_ref, grid)


def run(ops: dict[str, object], setting: tuple, seed: int):
    from spectra.backends.lanczos import LanczosBackend

    probes, steps, engine, dtype = setting
    t0, c0 = time.perf_counter(), time.process_time()
    r = LanczosBackend().run(ops[dtype], num_probes=probes, num_steps=steps, seed=seed, engine=engine)
    return r.nodes, r.weights, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    from spectra.operators.hessian import HessianOperator

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--nets", default="small,big")
    ap.add_argument("--ref-probes", type=int, default=40)
    ap.add_argument("--ref-steps", type=int, default=150)
    ap.add_argument("--settings", type=int, default=len(SETTINGS), help="run only the first this many settings")
    ap.add_argument("--exact-cache", default=None, help=".npy file with the exact 784-10-10 spectrum")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# SLQ settings, {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")
    for net in args.nets.split(","):
        model, X, y = workload(NETS[net])
        ops = {"float64": HessianOperator(model, "cross_entropy", (X, y)),
               "float32": HessianOperator(copy.deepcopy(model).float(), "cross_entropy", (X.float(), y))}
        if net == "small":
            if args.exact_cache and os.path.exists(args.exact_cache):
                ref_atoms = np.load(args.exact_cache)
            else:
                ref_atoms = np.linalg.eigvalsh(ops["float64"].to_dense().numpy())
                if args.exact_cache:
                    np.save(args.exact_cache, ref_atoms)
            ref_mass = np.full(ref_atoms.size, 1.0)
            what = "exact spectrum"
        else:
            from spectra.backends.lanczos import LanczosBackend

            r = LanczosBackend().run(ops["float64"], num_probes=args.ref_probes, num_steps=args.ref_steps, seed=999)
            ref_atoms, ref_mass = r.nodes.ravel(), r.weights.ravel()
            what = f"float64 SLQ {args.ref_probes} x {args.ref_steps} (seed 999)"
        print(f"\n## MLP {'-'.join(map(str, NETS[net]))}: L1 to the {what}\n")
        print("| probes x steps | engine, products | products | median seconds | x first setting, wall (paired) "
              "| x first setting, CPU (paired) | L1 to reference, per seed | L1 to the first setting, same probes "
              "| L1 between seeds |")
        print("|---|---|---|---|---|---|---|---|---|")
        base = {seed: run(ops, SETTINGS[0], seed) for seed in range(args.seeds)}
        for setting in SETTINGS[: args.settings]:
            errs, secs, ratios, cpu_ratios, same, densities = [], [], [], [], [], []
            for seed in range(args.seeds):
                nodes, weights, s, cpu = run(ops, setting, seed)
                b = run(ops, SETTINGS[0], seed) if setting != SETTINGS[0] else base[seed]
                errs.append(l1(nodes, weights, ref_atoms, ref_mass))
                same.append(l1(nodes, weights, base[seed][0].ravel(), base[seed][1].ravel()))
                secs.append(s)
                ratios.append(s / b[2])
                cpu_ratios.append(cpu / b[3])
                densities.append((nodes, weights))
            between = [l1(*densities[i], densities[j][0].ravel(), densities[j][1].ravel())
                       for i in range(len(densities)) for j in range(i + 1, len(densities))]
            probes, steps, engine, dtype = setting
            print(f"| {probes} x {steps} | {engine}, {dtype} | {probes * steps} | "
                  f"{statistics.median(secs):.2f} | {statistics.median(ratios):.2f} | "
                  f"{statistics.median(cpu_ratios):.2f} | {', '.join(f'{e:.4f}' for e in errs)} | "
                  f"{max(same):.1e} | {max(between) if between else float('nan'):.4f} |", flush=True)
        print(f"\nload at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
