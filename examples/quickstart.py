"""Quick start: train the paper's 74-parameter blob net and look at its exact Hessian spectrum.

    python examples/quickstart.py [--out runs/quickstart]

Prints the summary (two isolated outliers above a bulk at zero, as in the
paper's figure 4) and writes the histogram and the reloadable result.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")

import spectra  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/quickstart")
    args = parser.parse_args()

    model = spectra.models.create("blobnet", hidden=6, dtype="float64", seed=0)
    data = spectra.datasets.load("blobs", n=1000, std=0.5, seed=0, dtype="float64")
    history = spectra.train(model, data, optimizer="gd", lr=0.5, grad_tol=1e-3, max_steps=5000)
    print(f"trained {history.steps_taken} steps, gradient norm {history.final_grad_norm:.2e}")

    result = spectra.analyze(model, data, method="exact")
    for key, value in result.summary().items():
        print(f"{key:>24}: {value}")
    fig, _ax = result.plot()
    result.save(args.out, overwrite=True)
    fig.savefig(f"{args.out}/spectrum.png", dpi=120)
    print(f"wrote {args.out}/")


if __name__ == "__main__":
    main()
