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
    # std 0.4: the blobs are separable, so GD (with backtracking, the default) reaches a small gradient
    data = spectra.datasets.load("blobs", n=300, std=0.4, seed=0, dtype="float64")
    hist = spectra.train(model, data, lr=8.0, grad_tol=1e-4, max_steps=5000)
    print(f"trained: converged {hist.converged} ({hist.stop_reason} after {hist.steps_taken} steps), "
          f"loss {hist.final_loss:.3g}, |grad| {hist.final_grad_norm:.1e}")

    results = {m: spectra.analyze(model, data, method="exact", matrix=m, return_eigenvectors=(m == "hessian"))
               for m in ("hessian", "ggn", "residual")}
    for name, r in results.items():
        s = r.summary()
        # negatives count only below -negative_tol (rounding of the float64 eigh); the raw count is shown beside
        print(f"{name:9s} top-4 {np.round(r.eigenvalues[::-1][:4] / r.eigenvalues[-1], 4).tolist()} x λmax "
              f"{r.eigenvalues[-1]:.3g}  min {r.eigenvalues[0]:+.2e}  #negative {s['num_negative']} "
              f"(below -{s['negative_tol']:.1e}; {s['num_negative_raw']} below 0)  outliers {s['num_outliers']} "
              f"(counts at 0.03..0.3 λmax: {list(s['outlier_sweep'].values())})")

    # Share of each top Hessian eigenvalue that comes from G: v^T G v / lambda.
    H = results["hessian"]
    G = GGNOperator(model, "cross_entropy", data)
    V = torch.as_tensor(H.eigenvectors[:, ::-1][:, :4].copy())
    share = (V * G.matmat(V)).sum(0).numpy() / H.eigenvalues[::-1][:4]
    print("share of the top-4 Hessian eigenvalues carried by G:", np.round(share, 4).tolist())


if __name__ == "__main__":
    main()
