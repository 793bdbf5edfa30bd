"""Built-in sub-commands of ``spectra``: list, analyze, show, demo and reproduce.

Each entry's factory adds its sub-command to argparse's sub-parsers; the
module that defines it is imported only when the command line is built.
"""

from __future__ import annotations

from typing import Any

from spectra.hookspecs import hookimpl

from . import lazy


@hookimpl
def spectra_register_commands(registry: Any) -> None:
    registry.register("list", lazy("spectra.cli.listing", "add_parser"),
                      "list models, datasets, backends, matrices, losses, experiments, commands or plugins")
    registry.register("analyze", lazy("spectra.cli.analyze", "add_parser"), "compute a Hessian spectrum and save it")
    registry.register("show", lazy("spectra.cli.show", "add_parser"), "print the summary of a saved result")
    registry.register("demo", lazy("spectra.cli.demo", "add_parser"), "a small real analysis in seconds")
    registry.register("reproduce", lazy("spectra.experiments.cli", "add_reproduce_parser"),
                      "run one of the paper's experiments")
