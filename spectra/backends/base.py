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


def available_memory_bytes(device: Any = "cpu") -> int:
    """Bytes that can be allocated now on ``device`` (best effort)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
