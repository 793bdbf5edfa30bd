"""Eigen-solver backends by registry name: ``spectra.backends.get("lanczos")``.

The built-in backends (``exact``, ``arpack``, ``lanczos``) live in this package,
one module each, and are registered through the plugin hooks like any other;
plugins can add more.  Importing this package is cheap: a backend's module
(and scipy / linear_operator) is imported only when it is asked for.

>>> import spectra
>>> sorted(b["name"] for b in spectra.backends.list_backends())[:3]
['arpack', 'exact', 'lanczos']
"""

from __future__ import annotations

from typing import Any


def get(name: str, **options: Any) -> Any:
    """A new instance of the backend registered as ``name``.

    Raises :class:`~spectra.errors.UnknownNameError` listing the known backends.
    """
    from spectra import plugins
    from spectra.errors import PluginError

    backend, entry = plugins.call_factory("backends", name, options)
    if not callable(getattr(backend, "run", None)):
        raise PluginError(
            f"backend {name!r} from plugin {entry.plugin!r} returned a {type(backend).__name__} "
            "without a run(op, **options) method"
        )
    return backend


def list_backends() -> list[dict[str, Any]]:
    """``[{"name", "description", "parameters", "plugin"}, ...]`` sorted by name."""
    from spectra import plugins

    return plugins.list_entries("backends")


__all__ = ["get", "list_backends"]
