"""Exact vs ARPACK vs stochastic Lanczos quadrature on one net, side by side.

    python examples/compare_backends.py

An untrained 784-16-10 MLP on 500 real MNIST images (P = 12,730): the exact
spectrum is the reference; ARPACK's ends and the SLQ density are compared
with it, with the number of Hessian-vector products each used.
"""

from __future__ import annotations

import numpy as np

import spectra
from spectra.testing import density_distance


def main() -> None:
    model = spectra.models.create("mlp", sizes=[784, 16, 10], dtype="float64", seed=0)
    data = spectra.datasets.load("mnist", n=500, seed=0, dtype="float64")

    exact = spectra.analyze(model, data, method="exact")
    lam = exact.eigenvalues
    print(f"exact: P={exact.num_params}, {exact.num_matvecs} HVPs, "
          f"{exact.provenance['wall_seconds']:.1f} s, λ in [{lam[0]:.4g}, {lam[-1]:.4g}]")

    ends = spectra.analyze(model, data, method="arpack", k=5, which="both")
    expected = np.concatenate([lam[:5], lam[-5:]])
    err = np.abs(ends.eigenvalues - expected).max() / np.abs(lam).max()
    print(f"arpack both ends k=5: {ends.num_matvecs} HVPs, max relative error {err:.1e}, "
          f"max residual {ends.residuals.max():.1e}")

    slq = spectra.analyze(model, data, method="lanczos", num_probes=10, num_steps=80, seed=0)
    sigma = (lam[-1] - lam[0]) / 100
    print(f"lanczos 10x80: {slq.num_matvecs} HVPs, L1 distance of broadened densities "
          f"(sigma = range/100) = {density_distance(slq, lam, sigma=sigma):.3f}, "
          f"extreme Ritz values {slq.provenance['extreme_ritz']}")


if __name__ == "__main__":
    main()
