"""Cost of one Gauss-Newton block product against one Hessian block product.

Prints, per model, the median seconds of ``op.matmat(V)`` for a block of
``--block`` columns (after one warm-up), the mode each operator chose (the
default ``"auto"`` picks the chain products for MLPs) and the ratio to the
Hessian's default products.

    python bench/bench_ggn.py --repeats 5 --block 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import spectra
from spectra.operators.ggn import GGNOperator
from spectra.operators.hessian import HessianOperator


def median_seconds(op, V, repeats):
    op.matmat(V)  # warm-up (builds caches, first-use imports)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        op.matmat(V)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    mnist = spectra.datasets.load("mnist", n=args.n, seed=0, dtype="float64")
    cases = {
        "mlp-784-10-10": (spectra.models.create("mlp", sizes=[784, 10, 10], dtype="float64"), mnist),
        "cnn-default": (spectra.models.create("cnn", dtype="float64"), mnist),
        "blobnet-18": (spectra.models.create("blobnet", hidden=18, dtype="float64"),
                       spectra.datasets.load("blobs", n=args.n, seed=0, dtype="float64")),
    }
    print(f"threads={torch.get_num_threads()} block={args.block} n={args.n} repeats={args.repeats}")
    for name, (model, data) in cases.items():
        ops = {
            "hessian(default)": HessianOperator(model, "cross_entropy", data, check_determinism=False),
            "hessian(reverse,cached)": HessianOperator(model, "cross_entropy", data, check_determinism=False,
                                                       mode="reverse"),
            "ggn(default)": GGNOperator(model, "cross_entropy", data, check_determinism=False),
            "ggn(reverse,cached)": GGNOperator(model, "cross_entropy", data, check_determinism=False,
                                               mode="reverse"),
            "ggn(reverse,uncached)": GGNOperator(model, "cross_entropy", data, check_determinism=False,
                                                 mode="reverse", cache_graph=False),
            "ggn(forward,torch.func)": GGNOperator(model, "cross_entropy", data, check_determinism=False,
                                                   mode="forward"),
        }
        P = next(iter(ops.values())).shape[0]
        V = torch.randn(P, args.block, dtype=torch.float64)
        base = None
        for label, op in ops.items():
            s = median_seconds(op, V, args.repeats)
            base = base or s
            mode = f"[{op.mode}]"
            print(f"{name:15s} P={P:6d} {label:25s} {mode:9s} {s * 1e3:9.1f} ms  ratio to Hessian {s / base:5.2f}")


if __name__ == "__main__":
    main()
