"""The ``spectra`` command (also ``python -m spectra``): thin commands over library functions.

Sub-commands come from the ``commands`` registry (the hook
``spectra_register_commands``), so plugins can add more; the built-ins are
``list`` (:mod:`.listing`), ``analyze`` (:mod:`.analyze`, over
:func:`spectra.pipeline.run`), ``show`` (:mod:`.show`), ``demo``
(:mod:`.demo`) and ``reproduce`` (:mod:`spectra.experiments.cli`)::

    spectra list [models|datasets|backends|matrices|losses|experiments|commands|plugins] [--json]
    spectra analyze --model NAME [--model-arg k=v ...] --dataset NAME [--dataset-arg k=v ...] [--matrix NAME]
                    [--loss NAME] [--train gd|sgd ...] [--method NAME] [--out DIR [--force]] [--quiet] ...
    torchrun --nproc-per-node N -m spectra analyze ...   (data-parallel; rank 0 prints and writes)
    spectra show DIR [--plots OUT]
    spectra demo [--out DIR] [--force]

User errors print one line ``spectra: error: ...`` on stderr and exit with
status 2, without a traceback.

>>> main(["list", "matrices"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import PluginError, SpectraError, describe_exception
from ..pipeline import KNOWN_OUTPUTS, SPECTRUM_PNG, TRAINING_JSON, TRAINING_PNG
from . import analyze, demo, listing, show  # the built-in commands (registered by spectra.default_plugins.commands)
from .parsing import Parser, UsageError, collect_pairs, one_line, parse_key_value, parse_size

EXIT_OK, EXIT_BUG, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser: one sub-command per entry of the ``commands`` registry."""
    from .. import __version__, plugins

    parser = Parser(prog="spectra", description="Eigenvalues of neural-network loss Hessians, exact and approximate.")
    parser.add_argument("--version", action="version", version=f"spectra {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for entry in plugins.registry("commands"):
        try:
            entry.factory(sub)
            added = sub.choices.get(entry.name)
            if added is None or added.get_default("handler") is None:
                raise PluginError(f"it did not add a sub-command {entry.name!r} with a handler")
        except Exception as exc:  # noqa: BLE001 - one broken command must not take the others down
            warnings.warn(f"spectra: command {entry.name!r} from plugin {entry.plugin!r} is not available: "
                          f"{describe_exception(exc)}", plugins.PluginWarning, stacklevel=2)
    return parser


@dataclass
class ErrorReport:
    """How :func:`main` reports a failure: one line, tagged with the rank under torchrun.

    A command that runs as one rank of a torchrun launch calls :meth:`join`;
    after printing, :attr:`farewell` waits briefly for the other ranks to
    print theirs (torchrun kills every rank as soon as one exits).
    """

    tag: str = ""
    farewell: Callable[[], None] = field(default=lambda: None)
    ranked: bool = False  # under torchrun a bug's traceback is printed now, before torchrun kills this rank

    def join(self, ranks: Any) -> None:
        if ranks.active:
            self.tag, self.farewell, self.ranked = f"rank {ranks.rank}: ", ranks.farewell, True

    def error(self, text: str) -> int:
        text = one_line(text.strip().replace("\n", " "))
        tag = "" if text.startswith("rank ") else self.tag  # a DistributedError names its rank already
        sys.stderr.write(f"spectra: error: {tag}{text}\n")  # one write per line: the ranks share this stream
        sys.stderr.flush()
        self.farewell()
        return EXIT_USER_ERROR


def _one_line_warnings(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                       line: Any = None) -> None:
    text = str(message).removeprefix("spectra: ")
    print(f"spectra: warning: {one_line(text)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    report = ErrorReport()
    saved_showwarning: Callable[..., Any] = warnings.showwarning
    warnings.showwarning = _one_line_warnings
    try:
        try:
            args = build_parser().parse_args(argv)
        except UsageError as exc:
            print(f"spectra: error: {one_line(str(exc))}", file=sys.stderr)
            return EXIT_USER_ERROR
        args.argv, args.error_report = argv, report
        return int(args.handler(args) or EXIT_OK)
    except SpectraError as exc:
        return report.error(str(exc))
    except KeyboardInterrupt:
        print("spectra: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `spectra list | head`
        return EXIT_OK
    except OSError as exc:  # a folder that cannot be written, a full disk: one line, not a traceback
        return report.error(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
    except Exception:
        if not report.ranked:
            raise  # a bug: the traceback, as usual
        # under torchrun, print it now, before the other ranks' exit makes torchrun kill this one
        sys.stderr.write(f"spectra: error: {report.tag}unexpected failure:\n{traceback.format_exc()}")
        sys.stderr.flush()
        report.farewell()
        return EXIT_BUG
    finally:
        warnings.showwarning = saved_showwarning


__all__ = ["ErrorReport", "KNOWN_OUTPUTS", "analyze", "demo", "listing", "show", "SPECTRUM_PNG", "TRAINING_JSON", "TRAINING_PNG", "build_parser",
           "collect_pairs", "main", "parse_key_value", "parse_size"]
