"""Curvature along the straight line between a GD and an SGD solution from the same start.

Trains two copies of the blob net (2-10-10-2) from one initialisation, one
with full-batch GD and one with SGD, then records the loss, the top Hessian
eigenvalue and the trace at 11 points of the segment between them (the
setting of the paper's figure 10, with curvature added).

    python examples/path_curvature.py --out runs/path
"""

from __future__ import annotations

import argparse
import copy

import torch

import spectra
from spectra.path import curvature_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/path-curvature")
    ap.add_argument("--points", type=int, default=11)
    args = ap.parse_args()
    torch.set_num_threads(1)  # a net this small runs faster on one thread
    data = spectra.datasets.load("blobs", n=400, seed=0, dtype="float64")
    start = spectra.models.create("blobnet", hidden=10, dtype="float64", seed=3)
    gd, sgd = copy.deepcopy(start), copy.deepcopy(start)
    spectra.train(gd, data, optimizer="gd", lr=0.2, grad_tol=1e-4, max_steps=3000)
    spectra.train(sgd, data, optimizer="sgd", lr=0.05, batch_size=20, grad_tol=0, max_steps=3000, seed=1)
    res = curvature_path(start, gd, sgd, data, ts=args.points, k=2, trace="hutchpp", trace_matvecs=30,
                         bn="interpolate")
    print(f"distance |θ_SGD − θ_GD| = {res.distance:.3f}; BatchNorm policy: {res.bn_policy}")
    for i, t in enumerate(res.ts):
        print(f"t={t:.2f}  loss {res.loss[i]:.4f}  acc {res.accuracy[i]:.3f}  λ1 {res.eigenvalues[i, 0]:.4f}  "
              f"λ2 {res.eigenvalues[i, 1]:.4f}  trace {res.trace[i]:.3f} ± {res.trace_stderr[i]:.3f}  "
              f"(products: eig {res.eig_matvecs[i]}, trace {res.trace_matvecs[i]})")
    out = res.save(args.out)
    fig, _ = res.plot()
    fig.savefig(out / "path.png", dpi=120)
    print(f"table and figure in {out}/")


if __name__ == "__main__":
    main()
