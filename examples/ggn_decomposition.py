"""Split a trained net's Hessian into its Gauss-Newton part and the residual: H = G + R.

Trains the paper's blob net (2-6-6-2, 74 parameters) with GD, computes the
exact spectra of H, G and R with ``spectra.analyze(..., matrix=...)``, and
shows how much of each top eigenvalue of H the Gauss-Newton part carries.

    python examples/ggn_decomposition.py
"""

from __future__ import annotations

import numpy as np
import torch

import spectra
from spectra.operators.ggn import GGNOperator


def main() -> None:
    torch.set_num_threads(1)  # a 74-parameter net: one thread beats two (thread hand-offs cost more)
    model = spectra.models.create("blobnet", hidden=6, dtype="float64")
    data = spectra.datasets.load("blobs", n=300, seed=0, dtype="float64")
    hist = spectra.train(model, data, lr=0.5, grad_tol=1e-3, max_steps=3000)
    print(f"trained: {hist.stop_reason} after {hist.steps_taken} steps, loss {hist.final_loss:.4f}")

    results = {m: spectra.analyze(model, data, method="exact", matrix=m, return_eigenvectors=(m == "hessian"))
               for m in ("hessian", "ggn", "residual")}
    for name, r in results.items():
        s = r.summary()
        print(f"{name:9s} top-4 {np.round(r.eigenvalues[::-1][:4], 4).tolist()}  "
              f"min {r.eigenvalues[0]:+.2e}  #negative {s['num_negative']}  outliers {s['num_outliers']}")

    # Share of each top Hessian eigenvalue that comes from G: v^T G v / lambda.
    H = results["hessian"]
    G = GGNOperator(model, "cross_entropy", data)
    V = torch.as_tensor(H.eigenvectors[:, ::-1][:, :4].copy())
    share = (V * G.matmat(V)).sum(0).numpy() / H.eigenvalues[::-1][:4]
    print("share of the top-4 Hessian eigenvalues carried by G:", np.round(share, 4).tolist())


if __name__ == "__main__":
    main()
