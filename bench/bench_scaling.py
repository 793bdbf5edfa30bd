"""Scaling curve: seconds per Hessian product and top-10 wall time against P (MLPs, CNNs) and N.

Workloads: MLPs and CNNs (spectra's registry models, float64, seed 0, at
initialisation) on real MNIST images (``spectra.datasets.load("mnist", n=N,
seed=0)``; N = 1000 for the MLPs, 200 for the CNNs), cross-entropy (mean).  For
each: the median time of a gradient, of a block of 10 products (per vector), and
one ``topk`` top-10 run as :func:`spectra.analyze` runs it (a float32 search on a float32 twin of
the model, one vector at a time, then a float64 finish; products, time, error estimate), and
the time of one float32 product of a single vector (the search's product).  Times are the
process's CPU seconds (and wall seconds): on a machine shared with other jobs
CPU time moves far less with the load.  The growth exponents are least-squares
slopes in log-log of the CPU times.

    python bench/bench_scaling.py --threads 1                  # P sweep (MLP, CNN) and N sweep
    python bench/bench_scaling.py --quick                       # the smallest configurations only
    python bench/bench_scaling.py --parts mlp --json /tmp/mlp.json      # one sweep; rows saved as they come
    python bench/bench_scaling.py --combine /tmp/mlp.json /tmp/cnn.json --plot docs/images/scaling.png

MLP products are the chain engine (Pearlmutter's R-operator written out); CNN
products are reverse-over-reverse autograd.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

MLPS = [[784, 1, 10], [784, 4, 10], [784, 16, 10], [784, 64, 64, 10], [784, 256, 256, 10],
        [784, 512, 512, 10], [784, 1024, 256, 10]]
CNNS = [[4, 8], [16, 32], [32, 64], [64, 128]]
NS = [250, 500, 1000, 2000, 4000]
N_DEFAULT = 1000
N_CNN = 200  # float64 convolutions take CPU's slow path: the CNN curve uses fewer images


def build(kind: str, spec: list[int], n: int):
    import spectra

    if kind == "mlp":
        model = spectra.models.create("mlp", sizes=spec, dtype="float64", seed=0)
    else:
        model = spectra.models.create("cnn", channels=spec, dtype="float64", seed=0)
    data = spectra.datasets.load("mnist", n=n, seed=0)
    X = data.X.to(torch.float64)
    X = X.reshape(n, -1) if kind == "mlp" else X.reshape(n, 1, 28, 28)
    if kind == "mlp":
        model = torch.nn.Sequential(*[m for m in model if not isinstance(m, torch.nn.Flatten)])
    return model, (X, data.y)


def median_time(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds of this process (the latter less sensitive to other jobs)."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def measure(kind: str, spec: list[int], n: int, repeats: int, top10: bool) -> dict[str, Any]:
    from spectra.api import low_precision_twin
    from spectra.backends.topk import TopkBackend
    from spectra.operators.hessian import HessianOperator

    model, (X, y) = build(kind, spec, n)
    params = list(model.parameters())
    P = sum(p.numel() for p in params)

    def grad() -> None:
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(X), y), params)

    op = HessianOperator(model, "cross_entropy", (X, y))
    V = torch.randn(P, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grad_s, grad_cpu = median_time(grad, repeats)
    product_s, product_cpu = median_time(lambda: op.matmat(V), repeats)
    twin = low_precision_twin(op, HessianOperator, model, "cross_entropy", (X, y), None, {})
    op32 = twin()
    v32 = V[:, :1].float()
    single32_s, single32_cpu = median_time(lambda: op32.matmat(v32), repeats)
    row: dict[str, Any] = {"kind": kind, "spec": spec, "P": P, "N": n, "mode": getattr(op, "mode", None),
                           "gradient_s": grad_s, "gradient_cpu_s": grad_cpu,
                           "product_s": product_s / 10, "product_cpu_s": product_cpu / 10,
                           "product32_single_s": single32_s, "product32_single_cpu_s": single32_cpu}
    if top10:
        t0, c0 = time.perf_counter(), time.process_time()
        r = TopkBackend().run(op, k=10, low_precision=twin)  # what spectra.analyze(method="topk") runs
        row.update(top10_s=time.perf_counter() - t0, top10_cpu_s=time.process_time() - c0,
                   top10_products=r.num_matvecs + r.provenance["residual_matvecs"],
                   top10_products32=r.provenance.get("low_precision_matvecs", 0),
                   top10_path=r.provenance["path"],
                   top10_max_estimate=max(r.provenance["eigenvalue_error_estimates"]) / abs(r.eigenvalues).max(),
                   lambda_1=float(r.eigenvalues.max()))
    row["load"] = os.getloadavg()[0]
    print(json.dumps(row), flush=True)
    return row


def slope(x: list[float], y: list[float]) -> float:
    """Least-squares exponent of ``y ~ x**a``."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for kind, marker in (("mlp", "o"), ("cnn", "s")):
        sweep = [r for r in rows if r["kind"] == kind and r.get("sweep") != "N"]
        if not sweep:
            continue
        P = [r["P"] for r in sweep]
        axes[0].loglog(P, [r["product_cpu_s"] for r in sweep], marker=marker,
                       label=f"{kind}: product (per vector, block 10)")
        axes[0].loglog(P, [r["gradient_cpu_s"] for r in sweep], marker=marker, linestyle=":", label=f"{kind}: gradient")
        single = [r for r in sweep if "product32_single_cpu_s" in r]
        if single:
            axes[0].loglog([r["P"] for r in single], [r["product32_single_cpu_s"] for r in single], marker=marker,
                           linestyle="--", label=f"{kind}: float32 product (one vector)")
        done = [r for r in sweep if "top10_cpu_s" in r]
        if done:
            axes[1].loglog([r["P"] for r in done], [r["top10_cpu_s"] for r in done], marker=marker, label=kind)
    ns = [r for r in rows if r.get("sweep") == "N"]
    if ns:
        axes[2].loglog([r["N"] for r in ns], [r["product_cpu_s"] for r in ns], marker="o", label="product (per vector)")
        done = [r for r in ns if "top10_cpu_s" in r]
        axes[2].loglog([r["N"] for r in done], [r["top10_cpu_s"] for r in done], marker="^", label="top-10")
        axes[2].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes[2].set_xticks([r["N"] for r in ns], [str(r["N"]) for r in ns])
    axes[0].set(xlabel="parameters P", ylabel="CPU seconds", title="one Hessian product")
    axes[1].set(xlabel="parameters P", ylabel="CPU seconds", title="top-10 (topk default, 1e-10)")
    axes[2].set(xlabel="samples N (MLP 784-64-64-10)", ylabel="CPU seconds", title="against N")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def fit_exponents(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Least-squares growth exponents of the CPU times (and top-10 products) against P and N."""
    fits: dict[str, dict[str, float]] = {}
    for kind in ("mlp", "cnn"):
        sweep = [r for r in rows if r["kind"] == kind and r.get("sweep") != "N"]
        if len(sweep) >= 2:
            P = [r["P"] for r in sweep]
            fits[kind] = {"product_vs_P": slope(P, [r["product_cpu_s"] for r in sweep]),
                          "gradient_vs_P": slope(P, [r["gradient_cpu_s"] for r in sweep])}
            done = [r for r in sweep if "top10_cpu_s" in r]
            if len(done) >= 2:
                fits[kind].update(top10_vs_P=slope([r["P"] for r in done], [r["top10_cpu_s"] for r in done]),
                                  top10_products_vs_P=slope([r["P"] for r in done],
                                                            [r["top10_products"] + r.get("top10_products32", 0)
                                                             for r in done]))
    ns_rows = [r for r in rows if r.get("sweep") == "N"]
    if len(ns_rows) >= 2:
        N = [r["N"] for r in ns_rows]
        fits["N"] = {"product_vs_N": slope(N, [r["product_cpu_s"] for r in ns_rows])}
        done = [r for r in ns_rows if "top10_cpu_s" in r]
        if len(done) >= 2:
            fits["N"]["top10_vs_N"] = slope([r["N"] for r in done], [r["top10_cpu_s"] for r in done])
    return fits


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | P | N | gradient, CPU s | float64 product per vector (block 10), CPU s | product / gradient "
             "| float32 product (one vector), CPU s | top-10, CPU s | top-10, wall s "
             "| top-10 products (float64 + float32) | top-10 error estimate | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"{r['kind']} {'-'.join(map(str, r['spec']))}"
        top = (f"{r['top10_cpu_s']:.2f} | {r['top10_s']:.2f} | {r['top10_products']} + {r.get('top10_products32', 0)} "
               f"| {r['top10_max_estimate']:.0e}" if "top10_cpu_s" in r else "- | - | - | -")
        single = f"{r['product32_single_cpu_s']:.4f}" if "product32_single_cpu_s" in r else "-"
        lines.append(f"| {name} | {r['P']:,} | {r['N']} | {r['gradient_cpu_s']:.4f} | {r['product_cpu_s']:.4f} | "
                     f"{r['product_cpu_s'] / r['gradient_cpu_s']:.2f} | {single} | {top} | {r['load']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="only the smallest configurations")
    ap.add_argument("--parts", default="mlp,cnn,n", help="which sweeps to run: mlp (P), cnn (P), n (N)")
    ap.add_argument("--max-params", type=int, default=2_000_000, help="skip configurations above this P")
    ap.add_argument("--max-top10-params", type=int, default=2_000_000, help="skip top-10 above this P")
    ap.add_argument("--combine", nargs="*", default=None,
                    help="measure nothing: fit, tabulate and plot the rows of these --json files "
                         "(a configuration in several files: the last file's row)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    if args.combine is not None:  # a configuration measured in several files keeps its row from the last one
        latest: dict[tuple, dict[str, Any]] = {}
        for name in args.combine:
            for row in json.loads(Path(name).read_text())["rows"]:
                latest[(row["kind"], tuple(row["spec"]), row["N"], row.get("sweep"))] = row
        rows = list(latest.values())
    else:
        print(f"# scaling, {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}", flush=True)
        parts = set(args.parts.split(","))
        mlps, cnns, ns = (MLPS[:3], CNNS[:2], NS[:2]) if args.quick else (MLPS, CNNS, NS)
        plan = ([("mlp", spec, N_DEFAULT, None) for spec in mlps] * ("mlp" in parts)
                + [("cnn", spec, N_CNN, None) for spec in cnns] * ("cnn" in parts)
                + [("mlp", [784, 64, 64, 10], n, "N") for n in ns] * ("n" in parts))
        for kind, spec, n, sweep in plan:
            if parameter_count(kind, spec) > args.max_params:
                print(f"skipped {kind} {spec}: P above --max-params", flush=True)
                continue
            row = measure(kind, spec, n, args.repeats, parameter_count(kind, spec) <= args.max_top10_params)
            if sweep:
                row["sweep"] = sweep
            rows.append(row)
            if args.json:  # after every row: an interrupted run keeps what it measured
                from spectra._io import atomic_write_text

                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(args.json, json.dumps({"rows": rows, "threads": args.threads,
                                                         "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1))
    fits = fit_exponents(rows)
    print("fits:", json.dumps(fits))
    print()
    print(table(rows))
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")


def parameter_count(kind: str, spec: list[int]) -> int:
    """P of a configuration without building it."""
    if kind == "mlp":
        return sum(a * b + b for a, b in zip(spec[:-1], spec[1:]))
    side, count, prev = 28, 0, 1
    for c in spec:
        side = (side - 5 + 1) // 2
        count += prev * c * 25 + c
        prev = c
    return count + prev * side * side * 10 + 10


if __name__ == "__main__":
    main()
