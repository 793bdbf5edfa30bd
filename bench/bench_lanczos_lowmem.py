"""Accuracy of the low-memory Lanczos engine against exact spectra (and against full reorthogonalisation).

For nets where the exact spectrum can be computed here, runs stochastic Lanczos
quadrature with ``engine="linear_operator"`` (full reorthogonalisation, stored
basis: ``steps x P x probes`` numbers) and ``engine="lowmem"`` (three-term
recurrence, ``3 x P x probes`` numbers, no reorthogonalisation), same seeded
probes, and prints a markdown table:

* L1 distance between the Gaussian-broadened SLQ density and the broadened
  exact spectrum, at sigma = range/200 (fine) and range/20 (coarse);
* error of the extreme Ritz values against the exact lambda_max / lambda_min,
  relative to ||H|| = max|lambda|;
* "copies": Ritz values per probe within 1e-6 ||H|| of lambda_max beyond the
  first (ghosts of the converged top eigenvalue, the known failure mode of
  Lanczos without reorthogonalisation);
* seconds and the memory the Lanczos vectors take.

Models are trained briefly with full-batch GD first (a trained net's Hessian
has the large near-zero bulk and the outliers the paper is about).  A float32
run checks ``lanczos_dtype=float64`` (float32 products, float64 recurrence).

    python bench/bench_lanczos_lowmem.py                  # blobnet-18, cnn, mlp 784-10-10, float32 cnn
    python bench/bench_lanczos_lowmem.py --quick          # the two small nets and float32
    python bench/bench_lanczos_lowmem.py --cases mlp      # one case
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import spectra
from spectra.backends.exact import ExactBackend
from spectra.backends.lanczos import LanczosBackend, lanczos_memory_bytes
from spectra.operators.hessian import HessianOperator
from spectra.testing import density_distance


def trained(name: str, model_args: dict, dataset: str, data_args: dict, lr: float, steps: int,
            dtype: str = "float64"):
    model = spectra.models.create(name, dtype=dtype, seed=0, **model_args)
    data = spectra.datasets.load(dataset, seed=0, **data_args)
    data.X = data.X.to(getattr(torch, dtype))
    t0 = time.perf_counter()
    hist = spectra.train(model, data, optimizer="gd", lr=lr, grad_tol=1e-4, max_steps=steps)
    info = hist.to_dict() if hasattr(hist, "to_dict") else {}
    return model, data, {"train_s": time.perf_counter() - t0, "train_steps": info.get("steps_taken"),
                         "loss": info.get("final_loss"), "grad_norm": info.get("final_grad_norm")}


def copies(nodes: np.ndarray, weights: np.ndarray, top: float, tol: float) -> float:
    """Mean number of extra Ritz values per probe sitting on lambda_max (ghosts)."""
    return float(np.mean([(np.abs(n[w > 0] - top) < tol).sum() - 1 if (np.abs(n - top) < tol).any() else 0
                          for n, w in zip(nodes, weights)]))


def away_from_zero_l1(result, lam: np.ndarray) -> float:
    """L1 between the broadened densities (sigma = range/200) on the grid points farther than 5 sigma from 0.

    A trained net's spectrum is ~90 % a spike at zero, which both engines resolve;
    this isolates how well the rest (negative part, bulk, outliers) is resolved.
    Returned relative to the exact density's mass on those points (0 = identical, 2 = disjoint).
    """
    from spectra.density import default_grid, gaussian_density

    sigma = (lam[-1] - lam[0]) / 200
    grid = default_grid(lam[0], lam[-1], sigma, 4001)
    grid = grid[np.abs(grid) > 5 * sigma]
    rho_exact = gaussian_density(lam, np.full(lam.size, 1 / lam.size), grid, sigma)
    _, rho = result.density(grid=grid, sigma=sigma)
    # the grid has a hole around 0: integrate each side separately; relative to the exact mass there
    sides = [m for m in (grid < 0, grid > 0) if m.sum() > 1]
    diff = sum(np.trapezoid(np.abs(rho[m] - rho_exact[m]), grid[m]) for m in sides)
    mass = sum(np.trapezoid(rho_exact[m], grid[m]) for m in sides)
    return float(diff / mass) if mass > 0 else float("nan")


def run_case(label: str, model, data, info: dict, steps_list, probes: int, out: list,
             cache_dir: str | None = None) -> None:
    op = HessianOperator(model, "cross_entropy", data)
    P = op.shape[0]
    t0 = time.perf_counter()
    cache = Path(cache_dir, f"exact-{label.split(',')[0].replace(' ', '_')}-P{P}.npy") if cache_dir else None
    if cache is not None and cache.exists():
        lam = np.load(cache)
    else:
        lam = ExactBackend().run(op).eigenvalues
        if cache is not None:
            np.save(cache, lam)
    exact_s = time.perf_counter() - t0
    scale = float(np.abs(lam).max())
    rng = float(lam[-1] - lam[0])
    print(f"\n### {label}: P={P}, N={op.num_samples}, trained {info['train_steps']} GD steps "
          f"(loss {info['loss']:.4g}, |grad| {info['grad_norm']:.2g}); exact {exact_s:.1f} s; "
          f"lambda in [{lam[0]:.4g}, {lam[-1]:.4g}], {np.mean(np.abs(lam) < 1e-3 * scale):.1%} with "
          f"|lambda| < 1e-3 ||H||\n")
    print("| engine | steps | L1 (sigma=range/200) | rel. L1 away from 0 | L1 (range/20) | lambda_max err | "
          "lambda_min err | copies of lambda_max | seconds | Lanczos vectors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for steps in steps_list:
        if steps > P:
            continue
        for engine in ("linear_operator", "lowmem"):
            t0 = time.perf_counter()
            r = LanczosBackend().run(op, num_probes=probes, num_steps=steps, seed=0, engine=engine)
            secs = time.perf_counter() - t0
            mem = lanczos_memory_bytes(P, probes, steps) if engine == "linear_operator" else 3 * P * probes * 8
            row = {
                "case": label, "engine": engine, "steps": steps, "P": P,
                "l1_fine": density_distance(r, lam), "l1_coarse": density_distance(r, lam, sigma=rng / 20),
                "l1_away": away_from_zero_l1(r, lam),
                "max_err": abs(r.nodes.max() - lam[-1]) / scale, "min_err": abs(r.nodes.min() - lam[0]) / scale,
                "copies": copies(r.nodes, r.weights, lam[-1], 1e-6 * scale), "seconds": secs, "bytes": mem,
            }
            out.append(row)
            print(f"| {engine} | {steps} | {row['l1_fine']:.3f} | {row['l1_away']:.3f} | {row['l1_coarse']:.3f} | "
                  f"{row['max_err']:.1e} | "
                  f"{row['min_err']:.1e} | {row['copies']:.1f} | {secs:.2f} | {mem / 2**20:.1f} MiB |")


def run_float32(steps: int, probes: int, cache_dir: str | None = None) -> None:
    """float32 model: lanczos_dtype float64 vs float32, against the float64 exact spectrum of the same weights."""
    m32, data, info = trained("cnn", {}, "mnist", {"n": 200}, lr=0.1, steps=200, dtype="float32")
    m64 = spectra.models.create("cnn", dtype="float64", seed=0)
    m64.load_state_dict({k: v.double() for k, v in m32.state_dict().items()})
    cache = Path(cache_dir, "exact-float32-cnn.npy") if cache_dir else None
    if cache is not None and cache.exists():
        lam = np.load(cache)
    else:
        lam = ExactBackend().run(HessianOperator(m64, "cross_entropy", (data.X.double(), data.y))).eigenvalues
        if cache is not None:
            np.save(cache, lam)
    scale = float(np.abs(lam).max())
    op = HessianOperator(m32, "cross_entropy", data)
    print(f"\n### float32 cnn (P={op.shape[0]}): products in float32, exact reference in float64\n")
    print("| engine | lanczos_dtype | L1 (range/200) | rel. L1 away from 0 | lambda_max err | lambda_min err | copies | "
          "seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for engine in ("linear_operator", "lowmem"):
        for ld in (torch.float64, torch.float32):
            t0 = time.perf_counter()
            r = LanczosBackend().run(op, num_probes=probes, num_steps=steps, seed=0, engine=engine, lanczos_dtype=ld)
            secs = time.perf_counter() - t0
            print(f"| {engine} | {str(ld)[6:]} | {density_distance(r, lam):.3f} | {away_from_zero_l1(r, lam):.3f} | "
                  f"{abs(r.nodes.max() - lam[-1]) / scale:.1e} | {abs(r.nodes.min() - lam[0]) / scale:.1e} | "
                  f"{copies(r.nodes, r.weights, lam[-1], 1e-6 * scale):.1f} | {secs:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip the 784-10-10 MLP (P=7960, exact takes minutes)")
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument("--cache", default=None, help="folder to keep exact spectra between runs")
    ap.add_argument("--cases", default=None, help="comma list of blobnet,cnn,mlp,float32 (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list = []
    cases = {  # label, model, model args, dataset, dataset args, GD lr, GD steps, Lanczos steps
        "blobnet": ("blobnet 2-18-18-2, blobs n=1000", "blobnet", {"hidden": 18}, "blobs", {"n": 1000}, 0.5, 2000,
                    (30, 80, 150)),
        "cnn": ("cnn (2 conv + linear), MNIST n=200", "cnn", {}, "mnist", {"n": 200}, 0.1, 200, (30, 80)),
        "mlp": ("mlp 784-10-10, MNIST n=1000", "mlp", {"sizes": [784, 10, 10]}, "mnist", {"n": 1000}, 0.1, 300,
                (30, 80, 150)),
    }
    chosen = args.cases.split(",") if args.cases else (["blobnet", "cnn"] if args.quick else list(cases))
    for key in chosen:
        if key == "float32":
            continue
        label, name, margs, dname, dargs, lr, steps, lanczos_steps = cases[key]
        model, data, info = trained(name, margs, dname, dargs, lr, steps)
        run_case(label, model, data, info, lanczos_steps, args.probes, rows, args.cache)
    if not args.cases or "float32" in chosen:
        run_float32(80, args.probes, args.cache)


if __name__ == "__main__":
    main()
