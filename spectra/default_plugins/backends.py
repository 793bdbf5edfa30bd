"""Built-in eigen-solver backends: ``exact``, ``arpack`` and ``lanczos``.

Each lives in its own module of :mod:`spectra.backends`; :func:`lazy_instance`
imports it only when the backend is asked for, so listing backends imports
neither scipy nor linear_operator.  A new built-in backend is its module plus
one line below.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from spectra.hookspecs import hookimpl


def lazy_instance(module: str, cls: str) -> Callable[[], Any]:
    """A factory that imports ``module`` and returns ``module.cls()`` when called."""

    def factory() -> Any:
        return getattr(importlib.import_module(module), cls)()

    factory.__name__ = factory.__qualname__ = cls
    return factory


@hookimpl
def spectra_register_backends(registry: Any) -> None:
    registry.register("exact", lazy_instance("spectra.backends.exact", "ExactBackend"),
                      "dense Hessian + torch.linalg.eigh: every eigenvalue (small nets)")
    registry.register("arpack", lazy_instance("spectra.backends.arpack", "ArpackBackend"),
                      "scipy eigsh: k extreme eigenvalues (largest, smallest or both ends)")
    registry.register("lanczos", lazy_instance("spectra.backends.lanczos", "LanczosBackend"),
                      "stochastic Lanczos quadrature: spectral density of large nets")
