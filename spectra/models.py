"""Create models by registry name: ``spectra.models.create("mlp", sizes=[784, 10, 10])``.

Models come from plugins (:mod:`spectra.hookspecs`); the built-ins are ``mlp``,
``blobnet`` and ``cnn``.  ``spectra list models`` shows them all.

>>> import spectra
>>> net = spectra.models.create("mlp", sizes=[4, 3, 2], dtype="float64")
>>> sum(p.numel() for p in net.parameters())
23
>>> [m["name"] for m in spectra.models.list_models()][:3]
['blobnet', 'cnn', 'mlp']
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import plugins
from .errors import PluginError


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` with keyword arguments ``kwargs``.

    Raises :class:`~spectra.errors.UnknownNameError` (listing the known models)
    for an unknown name, :class:`~spectra.errors.InvalidInputError` for bad
    arguments, :class:`~spectra.errors.PluginError` when the plugin itself fails.
    The model carries ``spectra_spec`` = ``{"name", "kwargs", "plugin"}`` for provenance.
    """
    model, entry = plugins.call_factory("models", name, kwargs)
    if not isinstance(model, nn.Module):
        raise PluginError(
            f"model {name!r} from plugin {entry.plugin!r} returned a {type(model).__name__}, "
            "not a torch.nn.Module"
        )
    try:
        model.spectra_spec = {"name": entry.name, "kwargs": dict(kwargs), "plugin": entry.plugin}
    except Exception:  # noqa: BLE001 - a module that forbids attributes still works
        pass
    return model


def list_models() -> list[dict[str, Any]]:
    """``[{"name", "description", "parameters", "plugin"}, ...]`` sorted by name."""
    return plugins.list_entries("models")


__all__ = ["create", "list_models"]
