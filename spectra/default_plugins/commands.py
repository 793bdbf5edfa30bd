"""Built-in sub-commands of ``spectra``: list, analyze, show, demo and reproduce.

Each entry's factory adds its sub-command to argparse's sub-parsers; the
module that defines it is imported only when the command line is built.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from spectra.hookspecs import hookimpl


def lazy_adder(module: str, function: str) -> Callable[[Any], Any]:
    """A factory that imports ``module`` and calls ``module.function(subparsers)``."""

    def add(subparsers: Any) -> Any:
        return getattr(importlib.import_module(module), function)(subparsers)

    add.__name__ = add.__qualname__ = function
    return add


@hookimpl
def spectra_register_commands(registry: Any) -> None:
    registry.register("list", lazy_adder("spectra.cli", "add_list_command"),
                      "list models, datasets, backends, matrices, losses, experiments, commands or plugins")
    registry.register("analyze", lazy_adder("spectra.cli", "add_analyze_command"),
                      "compute a Hessian spectrum and save it")
    registry.register("show", lazy_adder("spectra.cli", "add_show_command"), "print the summary of a saved result")
    registry.register("demo", lazy_adder("spectra.cli", "add_demo_command"), "a small real analysis in seconds")
    registry.register("reproduce", lazy_adder("spectra.experiments.cli", "add_reproduce_parser"),
                      "run one of the paper's experiments")
