"""The docstring examples of the operators, the engines and the parallel package run, and say what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "spectra.operators.base", "spectra.operators.parameters", "spectra.operators.model_state",
    "spectra.operators.layer_chain", "spectra.operators.curvature", "spectra.operators.hessian",
    "spectra.operators.ggn", "spectra.operators.residual", "spectra.operators.fisher", "spectra.operators.sampling",
    "spectra.operators._activations", "spectra.operators._fold", "spectra.operators.engines",
    "spectra.operators.engines.base", "spectra.operators.engines.reverse", "spectra.operators.engines.forward",
    "spectra.operators.engines.chain", "spectra.parallel", "spectra.parallel.process", "spectra.parallel.failstop",
    "spectra.parallel.reducer", "spectra.sharding", "spectra.batches", "spectra.distributed",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
    assert result.attempted > 0, f"{name} shows no example"
