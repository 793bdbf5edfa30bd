"""spectra: eigenvalues of neural-network loss Hessians, exact and approximate.

>>> import spectra                                    # doctest: +SKIP
>>> model = spectra.models.create("blobnet", hidden=2)  # doctest: +SKIP
>>> data = spectra.datasets.load("blobs", n=200)        # doctest: +SKIP
>>> spectra.analyze(model, data, method="exact").summary()  # doctest: +SKIP

Heavy submodules are imported on first attribute access, so ``import spectra``
stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute" (attribute None = the module itself)
_LAZY = {
    "analyze": "spectra.api:analyze",
    "load": "spectra.result:load",
    "SpectrumResult": "spectra.result:SpectrumResult",
    "HessianOperator": "spectra.operators.hessian:HessianOperator",
    "GGNOperator": "spectra.operators.ggn:GGNOperator",
    "ResidualOperator": "spectra.operators.residual:ResidualOperator",
    "EmpiricalFisherOperator": "spectra.operators.fisher:EmpiricalFisherOperator",
    "MCFisherOperator": "spectra.operators.fisher:MCFisherOperator",
    "Dataset": "spectra.data:Dataset",
    "BatchReader": "spectra.batches:BatchReader",
    "train": "spectra.training:train",
    "hookimpl": "spectra.hookspecs:hookimpl",
    "models": "spectra.models:",
    "datasets": "spectra.datasets:",
    "distributed": "spectra.distributed:",
    "backends": "spectra.backends:",
    "matrices": "spectra.matrices:",
    "plugins": "spectra.plugins:",
    "experiments": "spectra.experiments:",
    "errors": "spectra.errors:",
    "testing": "spectra.testing:",
    "SpectraError": "spectra.errors:SpectraError",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'spectra' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    value = getattr(module, attr) if attr else module
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
