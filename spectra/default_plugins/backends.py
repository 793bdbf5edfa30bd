"""Built-in eigen-solver backends: ``exact``, ``arpack``, ``topk`` and ``lanczos``.

Each lives in its own module of :mod:`spectra.backends`; :func:`spectra.default_plugins.lazy`
imports it only when the backend is asked for, so listing backends imports
neither scipy nor linear_operator.  A new built-in backend is its module plus
one line below.
"""

from __future__ import annotations

from typing import Any

from spectra.hookspecs import hookimpl

from . import lazy


@hookimpl
def spectra_register_backends(registry: Any) -> None:
    registry.register("exact", lazy("spectra.backends.exact", "ExactBackend"),
                      "dense Hessian + torch.linalg.eigh: every eigenvalue (small nets)")
    registry.register("arpack", lazy("spectra.backends.arpack", "ArpackBackend"),
                      "scipy eigsh: k extreme eigenvalues (largest, smallest or both ends)")
    registry.register("topk", lazy("spectra.backends.topk", "TopkBackend"),
                      "block Krylov-Schur on batched products: k extreme eigenvalues (largest, smallest or both ends)")
    registry.register("lanczos", lazy("spectra.backends.lanczos", "LanczosBackend"),
                      "stochastic Lanczos quadrature: spectral density of large nets")
