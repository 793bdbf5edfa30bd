"""Built-in experiments: the paper's figures and the analyses beyond it.

The list itself is :data:`spectra.experiments.EXPERIMENTS` (one line per
experiment); this plugin registers each of them.
"""

from __future__ import annotations

from typing import Any

from spectra.hookspecs import hookimpl


@hookimpl
def spectra_register_experiments(registry: Any) -> None:
    from spectra.experiments import EXPERIMENTS

    for experiment in EXPERIMENTS.values():
        registry.register(experiment.name, experiment, experiment.title)
