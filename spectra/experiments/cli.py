"""``spectra reproduce figN|all --out DIR [--scale quick|paper] [--seed S] [--resume] [--force] [--quiet]``.

:func:`add_reproduce_parser` adds the sub-command to the ``spectra`` command's
sub-parsers; the parsed namespace's ``func`` runs it and returns the exit code.

>>> import argparse
>>> parser = argparse.ArgumentParser(prog="spectra")
>>> _ = add_reproduce_parser(parser.add_subparsers(dest="command"))
>>> ns = parser.parse_args(["reproduce", "fig4", "--out", "runs", "--scale", "paper"])
>>> ns.figure, ns.out, ns.scale, ns.seed, ns.resume
('fig4', 'runs', 'paper', 0, False)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable


def _int_at_least(minimum: int, expected: str) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= minimum``, else the error ``"<expected>; got '<text>'"``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{expected}; got {text!r}")
        return value

    return parse


_seed = _int_at_least(0, "seed must be a non-negative integer")
_positive = _int_at_least(1, "must be a positive integer")


def add_reproduce_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``reproduce`` to ``subparsers`` (from ``ArgumentParser.add_subparsers``); return its parser."""
    from .. import plugins
    from . import SCALES

    names = plugins.registry("experiments").names() + ["all"]
    p = subparsers.add_parser(
        "reproduce",
        help="run one of the paper's experiments (figures, arrays, results.json, report.md)",
        description="Reproduce a figure of Sagun, Bottou & LeCun (2016). Writes OUT/<figure>/ with PNG "
                    "figures, raw arrays, results.json and report.md (the paper's claims beside ours).",
    )
    p.add_argument("figure", choices=names, metavar="FIGURE", help=f"one of {', '.join(names)}")
    p.add_argument("--out", required=True, help="output folder (each figure writes OUT/<figure>/)")
    p.add_argument("--scale", choices=SCALES, default="quick",
                   help="quick (default: minutes for all figures), paper (the paper's sizes), tiny (smoke test)")
    p.add_argument("--seed", type=_seed, default=0, help="master seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the same folder")
    p.add_argument("--force", action="store_true", help="replace an earlier run in the output folder")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch threads for the run (default: 1 for the tiny blob nets, else torch's setting)")
    p.set_defaults(func=run_reproduce, handler=run_reproduce)
    return p


def run_reproduce(args: argparse.Namespace) -> int:
    """Run the parsed ``reproduce`` command; print where the reports are; return 0.

    Spectra errors propagate to the caller (the ``spectra`` command turns them
    into one line on stderr and exit status 2).
    """
    from . import run

    results = run(args.figure, args.out, scale=args.scale, seed=args.seed, resume=args.resume,
                  quiet=args.quiet, force=args.force, threads=args.threads)
    if not args.quiet:
        items = results.items() if args.figure == "all" else [(args.figure, results)]
        for name, r in items:
            differ = [c["topic"] for c in r["claims"] if c["agrees"] is False]
            extra = f"; differs from the paper on: {', '.join(differ)}" if differ else ""
            print(f"{name}: {r['wall_time_s']:.1f}s -> {args.out}/{name}/report.md{extra}", file=sys.stdout)
        if args.figure == "all":
            print(f"summary: {args.out}/README.md", file=sys.stdout)
    return 0

