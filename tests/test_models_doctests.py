"""The docstring examples of the batch, loss, attention, precision and workload modules run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["spectra.batches", "spectra.attention", "spectra.precision", "spectra.forward_ad", "spectra.testing",
           "spectra.data", "spectra.workloads.text", "spectra.workloads.tiny_gpt", "spectra.workloads.resnet",
           "spectra.workloads.fit"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
