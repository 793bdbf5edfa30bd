"""The protocol every eigen-solver backend follows, and how spectra calls one.

A backend is an object with

``name``      the string users pass as ``method=`` (``"exact"``, ``"arpack"``, ...);
``is_exact``  whether it returns every eigenvalue to machine precision (results
              take their ``is_exact`` from it);
``run(op, ...) -> SpectrumResult``
              computes on a :class:`spectra.operators.base.SpectralOperator`;
``expected_products(num_params, **arguments) -> int | None`` (optional)
              how many products ``run`` will take, for a progress bar.

:func:`spectra.analyze` gives ``run`` the :data:`COMMON_ARGUMENTS` its
signature names (a backend that has no use for ``k`` does not name it and
does not get it) and the user's other options; an option ``run`` does not
name is refused before anything runs, with the closest name suggested.

Plugins register backends through the ``spectra_register_backends`` hook; the
checkers in :mod:`spectra.testing` validate a new backend against the exact one.

>>> from spectra.backends.exact import ExactBackend
>>> isinstance(ExactBackend(), Backend)
True
>>> sorted(backend_arguments(ExactBackend(), {"k": 5, "seed": 0, "memory_limit": None}, {}))
['memory_limit']
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

from .._memory import available_memory_bytes, format_bytes  # re-exported: what backends check memory with
from ..errors import InvalidInputError, close_matches, did_you_mean

# The arguments of spectra.analyze that a backend receives when its run() names them.
COMMON_ARGUMENTS = ("k", "which", "seed", "num_probes", "num_steps", "return_eigenvectors", "memory_limit")


@runtime_checkable
class Backend(Protocol):
    name: str
    is_exact: bool

    def run(self, op: Any, **options: Any) -> Any:  # -> SpectrumResult
        ...


def expected_products(backend: Any, num_params: int, arguments: dict[str, Any]) -> int | None:
    """The backend's own estimate of its products (``None`` when it gives none, or cannot)."""
    estimate = getattr(backend, "expected_products", None)
    if estimate is None:
        return None
    try:
        return int(estimate(num_params, **arguments))
    except (TypeError, ValueError):  # a plugin's estimate that does not take these arguments
        return None


def run_parameters(backend: Any) -> tuple[list[str], bool]:
    """``(keyword names run() takes, whether it also takes **kwargs)``, read from its signature."""
    from ..plugins import accepted_keywords

    names, takes_any = accepted_keywords(backend.run)
    return [n for n in names if n != "op"], takes_any


def check_options(backend: str, options: Iterable[str], accepted: Iterable[str],
                  also_suggest: Iterable[str] = ()) -> None:
    """Refuse options a backend does not take, naming the ones it does and the closest."""
    accepted = sorted(accepted)
    unknown = [o for o in options if o not in accepted]
    if unknown:
        hints = "".join(did_you_mean(close_matches(o, [*accepted, *also_suggest])) for o in unknown[:1])
        raise InvalidInputError(
            f"the {backend} backend does not take option(s) {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(accepted) or '(none)'}{hints}"
        )


def refuses_unknown_options(run: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a backend's ``run`` so a direct call with an option it does not name raises
    :class:`InvalidInputError` (with a suggestion) instead of a ``TypeError``.

    The signature seen by :func:`inspect.signature` stays ``run``'s own, so
    :func:`backend_arguments` still reads the options from it.
    """
    from ..plugins import accepted_keywords

    names = [n for n in accepted_keywords(run)[0] if n not in ("self", "op")]

    @functools.wraps(run)
    def checked(self: Any, op: Any, **options: Any) -> Any:
        check_options(self.name, options, names)
        return run(self, op, **options)

    return checked


def backend_arguments(backend: Any, common: dict[str, Any], options: dict[str, Any],
                      also_suggest: Iterable[str] = ()) -> dict[str, Any]:
    """The keyword arguments spectra passes to ``backend.run``: the common arguments its
    signature names, plus ``options`` (refused here when ``run`` names neither them nor ``**kwargs``).
    """
    names, takes_any = run_parameters(backend)
    if not takes_any:
        check_options(getattr(backend, "name", type(backend).__name__), options, names,
                      also_suggest=[*also_suggest, *COMMON_ARGUMENTS])
    return {**{k: v for k, v in common.items() if k in names}, **options}


__all__ = ["Backend", "COMMON_ARGUMENTS", "available_memory_bytes", "backend_arguments", "check_options",
           "expected_products",
           "format_bytes", "refuses_unknown_options", "run_parameters"]
