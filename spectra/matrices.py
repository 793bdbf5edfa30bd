"""Curvature matrices by registry name: ``spectra.matrices.get("ggn")`` is the operator class.

``analyze(matrix=...)`` and ``spectra analyze --matrix`` take these names; the
built-ins are ``hessian``, ``ggn`` (alias ``gauss_newton``), ``residual``,
``empirical_fisher`` and ``mc_fisher`` (alias ``fisher``), and plugins add more
through the hook ``spectra_register_matrices``.

>>> import spectra
>>> spectra.matrices.get("GGN").__name__
'GGNOperator'
>>> [m["name"] for m in spectra.matrices.list_matrices()]
['empirical_fisher', 'ggn', 'hessian', 'mc_fisher', 'residual']
"""

from __future__ import annotations

from typing import Any

from . import plugins
from .errors import PluginError


def get(name: str) -> type:
    """The operator class registered as ``name`` (any case, or an alias).

    Raises :class:`~spectra.errors.UnknownNameError` listing the known matrices.
    """
    cls, entry = plugins.call_factory("matrices", name, {})
    from .operators.base import SpectralOperator

    if not (isinstance(cls, type) and issubclass(cls, SpectralOperator)):
        raise PluginError(f"matrix {entry.name!r} from plugin {entry.plugin!r} returned {cls!r}, "
                          "not a SpectralOperator subclass")
    return cls


def list_matrices() -> list[dict[str, Any]]:
    """``[{"name", "description", "parameters", "plugin", "aliases"}, ...]`` sorted by name."""
    return plugins.list_entries("matrices")


def taking(option: str) -> list[str]:
    """The names of the matrices that take ``option`` of their own (their class's ``extra_options``).

    >>> taking("mc_samples")
    ['mc_fisher']
    """
    return [m["name"] for m in list_matrices() if option in getattr(get(m["name"]), "extra_options", ())]


__all__ = ["get", "list_matrices", "taking"]
