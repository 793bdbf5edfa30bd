"""The examples in docstrings run, and say what they show.

Modules whose doctests run elsewhere (``train``, ``tracking``) are left to
their own tests.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "spectra.plugins", "spectra.hookspecs", "spectra.errors", "spectra.validation", "spectra._memory",
    "spectra._io", "spectra.matrices", "spectra.models", "spectra.datasets", "spectra.api", "spectra.result",
    "spectra.backends", "spectra.backends.base", "spectra.backends.exact", "spectra.backends.arpack",
    "spectra.backends.lanczos", "spectra.default_plugins.models", "spectra.default_plugins.datasets",
    "spectra.default_plugins.mnist", "spectra.default_plugins", "spectra.losses", "spectra.cli",
    "spectra.cli.parsing", "spectra.experiments.cli", "spectra.pipeline", "spectra.progress", "spectra.ranks",
    "spectra.data",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
