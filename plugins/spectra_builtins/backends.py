"""Built-in eigen-solver backends: ``exact``, ``arpack``, ``topk`` and ``lanczos``.

The backend classes live in :mod:`spectra.backends`; they are imported inside
the factories so that loading this plugin imports neither scipy nor
linear_operator.
"""

from __future__ import annotations

from typing import Any

from spectra.hookspecs import hookimpl


def exact() -> Any:
    from spectra.backends.exact import ExactBackend

    return ExactBackend()


def arpack() -> Any:
    from spectra.backends.arpack import ArpackBackend

    return ArpackBackend()


def topk() -> Any:
    from spectra.backends.topk import TopkBackend

    return TopkBackend()


def lanczos() -> Any:
    from spectra.backends.lanczos import LanczosBackend

    return LanczosBackend()


@hookimpl
def spectra_register_backends(registry: Any) -> None:
    registry.register("exact", exact, "dense Hessian + torch.linalg.eigh: every eigenvalue (small nets)")
    registry.register("arpack", arpack, "scipy eigsh: k extreme eigenvalues (largest, smallest or both ends)")
    registry.register("topk", topk, "block Krylov-Schur on batched products: k extreme eigenvalues (recommended)")
    registry.register("lanczos", lanczos, "stochastic Lanczos quadrature: spectral density of large nets")
