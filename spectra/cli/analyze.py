"""``spectra analyze``: build, optionally train, analyse and save, through :func:`spectra.pipeline.run`.

Under ``torchrun --nproc-per-node N -m spectra analyze ...`` each process is
one rank of a data-parallel analysis; rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from .. import pipeline, plugins
from ..progress import stderr_logger, wanted
from ..ranks import Ranks
from ..result import format_summary
from .parsing import collect_pairs, parse_size

DTYPES = ("float64", "float32")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("analyze", help="compute a Hessian spectrum and save it",
                       description="Build a model and a dataset by name, optionally train, compute the spectrum "
                                   "of a curvature matrix, print a summary and save result + plots to --out.")
    add_analysis_options(p)
    p.set_defaults(handler=run)
    return p


def add_analysis_options(p: argparse.ArgumentParser) -> None:
    """The options of ``analyze``: model and data, training, analysis, output."""
    def names(kind: str) -> str:
        return ", ".join(plugins.registry(kind).names())

    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, metavar="NAME", help="registered model ('spectra list models')")
    g.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="model argument, JSON value (e.g. sizes=[784,10,10], hidden=6); repeatable")
    g.add_argument("--dataset", required=True, metavar="NAME", help="registered dataset ('spectra list datasets')")
    g.add_argument("--dataset-arg", action="append", metavar="KEY=VALUE",
                   help="dataset argument, JSON value (e.g. n=1000, std=0.5); repeatable")
    g.add_argument("--loss", default="cross_entropy", metavar="NAME",
                   help=f"{names('losses')}, or an alias ('spectra list losses'; default: %(default)s)")
    g.add_argument("--dtype", default="float64", choices=DTYPES,
                   help="dtype of weights and inputs (default: %(default)s, for accurate spectra)")
    g = p.add_argument_group("training (optional, before the analysis)")
    g.add_argument("--train", choices=("gd", "sgd"), help="train first: full-batch GD or minibatch SGD")
    g.add_argument("--lr", type=float, default=0.1, help="step size (default: %(default)s)")
    g.add_argument("--grad-tol", type=float, default=1e-4,
                   help="stop when the gradient norm is below this (default: %(default)s)")
    g.add_argument("--max-steps", type=int, default=10_000, help="most updates (default: %(default)s)")
    g.add_argument("--batch-size", type=int, help="SGD minibatch size (needed with --train sgd)")
    g = p.add_argument_group("analysis")
    g.add_argument("--method", default="auto", metavar="NAME",
                   help=f"auto, or a backend: {names('backends')} (default: %(default)s)")
    g.add_argument("--matrix", default="hessian", metavar="NAME",
                   help=f"the curvature matrix: {names('matrices')} (default: %(default)s)")
    g.add_argument("--mc-samples", type=int, metavar="M",
                   help="--matrix mc_fisher (or fisher): targets drawn per sample or token, seeded by --seed "
                        "(default: 1)")
    g.add_argument("--k", type=int, help="topk/arpack: eigenvalues per end (default: 10); "
                                         "without --method: topk or arpack, as analyze picks (docs: Backends)")
    g.add_argument("--which", choices=("largest", "smallest", "both"),
                   help="topk/arpack: which end(s) (default: largest); without --method: topk or arpack, "
                        "as analyze picks (docs: Backends)")
    g.add_argument("--probes", type=int, default=10, help="lanczos: random probes (default: %(default)s)")
    g.add_argument("--steps", type=int, default=80, help="lanczos: steps per probe (default: %(default)s)")
    g.add_argument("--product-dtype", choices=DTYPES,
                   help="run the Hessian products in this dtype on a copy of the model (float32: about 2x "
                        "faster on CPU, 1e-7 relative error per product; default: the model's dtype)")
    g.add_argument("--memory-limit", type=parse_size, metavar="SIZE",
                   help="most memory the dense Hessian (exact) or the Lanczos basis may take, e.g. 2GiB, "
                        "500MB (default: the memory free now)")
    g.add_argument("--on-memory", choices=("refuse", "lanczos"), default="refuse",
                   help="when exact or the Lanczos basis does not fit: refuse (default), or fall back to "
                        "lanczos / its low-memory engine (recorded in the result)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: torch's choice; 1 is fastest for small nets on a busy machine)")
    g.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="under torchrun: most seconds a rank waits for the others at one synchronisation "
                        "point before all ranks stop (default: torch's process-group timeout, 30 min)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of probes and SGD order, and the default 'seed' of the model and dataset "
                        "factories (default: %(default)s)")
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", help="folder for result.json, arrays.npz and PNG plots")
    g.add_argument("--force", action="store_true", help="replace a result already in --out")
    g.add_argument("--quiet", action="store_true", help="no progress bars or status lines")


def run(args: argparse.Namespace, ranks: Ranks | None = None) -> int:
    """Run the parsed command: the pipeline, then the summary on stdout (rank 0 only under torchrun)."""
    owns_ranks = ranks is None
    ranks = Ranks(getattr(args, "timeout", None)) if ranks is None else ranks
    report = getattr(args, "error_report", None)
    if report is not None:
        report.join(ranks)
    if ranks.active and not ranks.main:  # rank 0 speaks for all: no progress, status lines or warnings twice
        args.quiet = True
        warnings.simplefilter("ignore")
    try:
        done = pipeline.run(
            args.model, args.dataset, model_args=collect_pairs(args.model_arg, "--model-arg"),
            dataset_args=collect_pairs(args.dataset_arg, "--dataset-arg"), loss=args.loss, dtype=args.dtype,
            train=args.train, lr=args.lr, grad_tol=args.grad_tol, max_steps=args.max_steps,
            batch_size=args.batch_size, method=args.method, matrix=getattr(args, "matrix", "hessian"),
            mc_samples=getattr(args, "mc_samples", None), k=args.k,
            which=args.which, num_probes=args.probes, num_steps=args.steps, seed=args.seed,
            memory_limit=args.memory_limit, on_memory=args.on_memory, product_dtype=getattr(args, "product_dtype", None),
            threads=args.threads, out=args.out, force=args.force, progress=progress_enabled(args),
            log=stderr_logger(args.quiet), command=["spectra", *getattr(args, "argv", [])], ranks=ranks, wording="cli")
    finally:
        if owns_ranks:
            ranks.close()
    if done.main:
        result = done.result
        print(f"{args.model} on {args.dataset}: P={result.num_params}, N={result.num_samples}, method={result.method}")
        print(format_summary(result.summary()))
        if done.out is not None:
            print(f"wrote {done.out}/ ({', '.join(done.written)})")
    return 0


def progress_enabled(args: argparse.Namespace) -> bool:
    """Progress bars only for a person watching: not with --quiet, not into a pipe or a log file."""
    return not getattr(args, "quiet", False) and wanted(None)
