"""Trace of a Hessian: Hutchinson and Hutch++ with standard errors, checked against the exact trace.

Trains a small MNIST net (784-2-10, 1,600 parameters, 200 images), then
compares both estimators at the same number of Hessian-vector products with
the exact trace (1,600 products), and prints per-layer traces.

    python examples/trace_estimates.py --budget 60
"""

from __future__ import annotations

import argparse

import spectra
from spectra import trace as tr
from spectra.operators.hessian import HessianOperator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=60, help="Hessian-vector products per estimate")
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    model = spectra.models.create("mlp", sizes=[784, 2, 10], dtype="float64")
    data = spectra.datasets.load("mnist", n=200, seed=0, dtype="float64")
    spectra.train(model, data, lr=0.5, grad_tol=1e-3, max_steps=500)
    H = HessianOperator(model, "cross_entropy", data)
    exact = tr.exact_trace(H)
    print(f"exact trace {exact.estimate:.5f} ({exact.num_matvecs} products)")
    for method in ("hutchinson", "hutchpp"):
        for seed in range(args.seeds):
            e = tr.estimate_trace(H, method, num_matvecs=args.budget, seed=seed)
            z = (e.estimate - exact.estimate) / e.stderr
            print(f"{method:10s} seed {seed}: {e.estimate:.5f} ± {e.stderr:.5f}  "
                  f"error {e.estimate - exact.estimate:+.5f} = {z:+.2f} s.e.  ({e.num_matvecs} products)")
    exact_layers = tr.exact_layer_traces(H)
    for name, e in tr.layer_traces(H, num_probes=args.budget, seed=0).items():
        print(f"layer {name}: {e.estimate:.5f} ± {e.stderr:.5f}   exact {exact_layers[name].estimate:.5f}")


if __name__ == "__main__":
    main()
