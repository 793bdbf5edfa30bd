"""``spectra demo [--out DIR] [--force] [--quiet]``: a small real analysis in seconds.

The paper's 2-6-6-2 blob net (74 parameters) on two Gaussian blobs, trained
by gradient descent, then its exact Hessian spectrum, written to ``DIR``
(default ``spectra-demo``) by the same code as ``spectra analyze``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import analyze

DEFAULT_OUT = "spectra-demo"
# The analysis the demo runs, as the options of `spectra analyze` would set it.
SETTINGS = dict(
    model="blobnet", model_arg=["hidden=6"], dataset="blobs", dataset_arg=["n=1000", "std=0.5"],
    loss="cross_entropy", dtype="float64", train="gd", lr=0.5, grad_tol=1e-3, max_steps=2000, batch_size=None,
    method="exact", matrix="hessian", k=10, which="largest", probes=10, steps=80, seed=0, memory_limit=None,
    on_memory="refuse", timeout=None, product_dtype=None,
    # one thread: a 74-parameter net gains nothing from more, and on a busy 2-core machine
    # extra threads made the demo 3.5x slower (16 s vs 58 s measured)
    threads=1,
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="a small real analysis in seconds",
                       description="Train the paper's 2-6-6-2 blob net (74 parameters) on two Gaussian "
                                   "blobs with gradient descent, compute its exact Hessian spectrum, "
                                   "print a summary and save the histogram and result files to --out. "
                                   "A folder that already holds a result is refused: run again with --force "
                                   "to replace it, or choose another --out.")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace a result already in --out (needed to run twice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace) -> int:
    if not args.quiet:
        print("demo: the paper's 2-6-6-2 ReLU net (74 parameters) on two Gaussian blobs, trained by gradient "
              "descent, then its exact Hessian spectrum", file=sys.stderr, flush=True)
    demo = argparse.Namespace(**SETTINGS, out=args.out, force=args.force, quiet=args.quiet,
                              argv=getattr(args, "argv", []), error_report=getattr(args, "error_report", None))
    return analyze.run(demo)
