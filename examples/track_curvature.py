"""Track the top Hessian eigenvalues and the trace while a net trains (warm-started solver).

Trains the paper's blob net (2-10-10-2, 162 parameters) with full-batch GD and
records curvature every ``--every`` steps through a ``spectra.train``
callback.  With ``--compare-cold`` each record also runs cold ARPACK, so the
output reports how many Hessian-vector products the warm starts saved.

    python examples/track_curvature.py --steps 400 --every 50 --compare-cold --out runs/track
"""

from __future__ import annotations

import argparse
import json

import torch

import spectra
from spectra.tracking import CurvatureTracker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=10)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--compare-cold", action="store_true", help="also run cold ARPACK at every record")
    ap.add_argument("--out", default="runs/track-curvature")
    args = ap.parse_args()

    torch.set_num_threads(1)  # a net this small runs faster on one thread
    model = spectra.models.create("blobnet", hidden=args.hidden, dtype="float64")
    data = spectra.datasets.load("blobs", n=args.n, seed=0, dtype="float64")
    tracker = CurvatureTracker(data, k=args.k, every=args.every, out=args.out, trace="hutchpp",
                               trace_matvecs=30, compare_cold=args.compare_cold)
    spectra.train(model, data, lr=args.lr, grad_tol=0, max_steps=args.steps, callbacks=tracker,
                  callback_steps=tracker.schedule(args.steps))
    fig, _ = tracker.plot()
    fig.savefig(f"{args.out}/curvature.png", dpi=120)
    for r in tracker.records:
        print(f"step {r.step:5d}  loss {r.loss:.4f}  top eigenvalues {r.eig.values.round(4).tolist()}  "
              f"trace {r.trace.estimate:.3f} ± {r.trace.stderr:.3f}  products: eig {r.eig.num_matvecs}"
              + (f" (cold ARPACK {r.cold.num_matvecs})" if r.cold is not None else ""))
    print(json.dumps(tracker.matvec_summary(), indent=2))
    print(f"table, arrays and figure in {args.out}/")


if __name__ == "__main__":
    main()
