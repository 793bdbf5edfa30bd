"""The protocol every eigen-solver backend follows.

A backend is an object with

``name``      the string users pass as ``method=`` (``"exact"``, ``"arpack"``, ...);
``is_exact``  whether it returns every eigenvalue to machine precision;
``run(op, **options) -> SpectrumResult``
              computes on a :class:`spectra.operators.base.SpectralOperator`.
              Options it does not know must raise ``InvalidInputError``.

Plugins register backends through the ``spectra_register_backends`` hook; the
checkers in :mod:`spectra.testing` validate a new backend against the exact one.

>>> from spectra.backends.exact import ExactBackend
>>> isinstance(ExactBackend(), Backend)
True
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .._memory import available_memory_bytes, format_bytes  # re-exported: what backends check memory with
from ..errors import InvalidInputError


@runtime_checkable
class Backend(Protocol):
    name: str
    is_exact: bool

    def run(self, op: Any, **options: Any) -> Any:  # -> SpectrumResult
        ...


def check_options(backend: str, options: dict[str, Any], allowed: set[str]) -> None:
    """Refuse options a backend does not understand, naming the ones it does."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InvalidInputError(
            f"the {backend} backend does not take option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(sorted(allowed)) or '(none)'}"
        )


__all__ = ["Backend", "available_memory_bytes", "check_options", "format_bytes"]
