"""Track the top Hessian eigenvalues and the trace while a net trains (warm-started solver).

Trains the paper's blob net (2-10-10-2, 162 parameters) with full-batch GD and
records curvature every ``--every`` steps through a ``spectra.train``
callback.  With ``--compare-cold`` each record also runs cold ARPACK, so the
output reports how many Hessian-vector products the warm starts saved.

After each record the weights are checkpointed to ``OUT/model.pt`` (after the
tracker has written its table, so the checkpoint is never newer than the
table).  A run that was killed continues with ``--resume``: the weights come
back from the checkpoint, training restarts at its step
(``spectra.train(start_step=...)``), and the tracker skips the steps it has
already recorded, so the finished table equals an uninterrupted run's.

    python examples/track_curvature.py --steps 400 --every 50 --compare-cold --out runs/track
    python examples/track_curvature.py --steps 400 --every 50 --compare-cold --out runs/track --resume
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import torch

import spectra
from spectra._io import atomic_write_bytes
from spectra.tracking import CurvatureTracker

CHECKPOINT = "model.pt"


class Checkpoint:
    """A ``spectra.train`` callback: the weights and the step, written atomically."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, model: torch.nn.Module, info: dict) -> None:
        buf = io.BytesIO()
        torch.save({"step": int(info["step"]), "model": model.state_dict()}, buf)
        atomic_write_bytes(self.path, buf.getvalue())

    def restore(self, model: torch.nn.Module) -> int:
        """Load the saved weights into ``model``; return their step (0 when there is no checkpoint)."""
        if not self.path.exists():
            return 0
        saved = torch.load(self.path, weights_only=True)
        model.load_state_dict(saved["model"])
        return int(saved["step"])


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
    again = ap.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the track (and training) in --out")
    again.add_argument("--force", action="store_true", help="replace a track already in --out")
    args = ap.parse_args()

    torch.set_num_threads(1)  # a net this small runs faster on one thread
    out = Path(args.out)
    model = spectra.models.create("blobnet", hidden=args.hidden, dtype="float64")
    data = spectra.datasets.load("blobs", n=args.n, seed=0, dtype="float64")
    tracker = CurvatureTracker(data, k=args.k, every=args.every, out=out, trace="hutchpp", trace_matvecs=30,
                               compare_cold=args.compare_cold, resume=args.resume, force=args.force)
    checkpoint = Checkpoint(out / CHECKPOINT)
    if args.force and checkpoint.path.exists():
        checkpoint.path.unlink()
    start = checkpoint.restore(model) if args.resume else 0
    if tracker.resumed:
        print(f"resumed: {tracker.resumed} records up to step {tracker.last_step}; training restarts at step {start}"
              + (f" (views rewritten: {', '.join(tracker.repaired)})" if tracker.repaired else ""))
    spectra.train(model, data, lr=args.lr, grad_tol=0, start_step=start, max_steps=max(args.steps - start, 0),
                  callbacks=[tracker, checkpoint], callback_steps=tracker.schedule(args.steps))
    fig, _ = tracker.plot()
    fig.savefig(out / "curvature.png", dpi=120)
    for r in tracker.records:
        print(f"step {r.step:5d}  loss {r.loss:.4f}  top eigenvalues {r.eig.values.round(4).tolist()}  "
              f"trace {r.trace.estimate:.3f} ± {r.trace.stderr:.3f}  products: eig {r.eig.num_matvecs}"
              + (f" (cold ARPACK {r.cold.num_matvecs})" if r.cold is not None else ""))
    print(json.dumps(tracker.matvec_summary(), indent=2))
    print(f"table, arrays and figure in {out}/")


if __name__ == "__main__":
    main()
