"""Load datasets by registry name: ``spectra.datasets.load("mnist", n=1000, seed=0)``.

Datasets come from plugins (:mod:`spectra.hookspecs`); the built-ins are
``blobs``, ``random``, ``mnist`` (offline) and ``digits``.  ``spectra list
datasets`` shows them all.

>>> import spectra
>>> data = spectra.datasets.load("blobs", n=8, seed=1)
>>> len(data), data.info["seed"], data.info["plugin"]
(8, 1, 'spectra_builtins.datasets')
"""

from __future__ import annotations

from typing import Any

from . import plugins
from .data import Dataset
from .errors import PluginError, SpectraError


def load(name: str, **kwargs: Any) -> Dataset:
    """Load the dataset registered as ``name`` with keyword arguments ``kwargs``.

    A factory may return a :class:`~spectra.data.Dataset` or a pair ``(X, y)``.
    ``info`` gains ``name``, ``plugin`` and ``arguments`` (the keyword arguments
    given) when the plugin did not set them.  Errors as in :func:`spectra.models.create`.
    """
    data, entry = plugins.call_factory("datasets", name, kwargs)
    if isinstance(data, tuple) and len(data) == 2:
        try:
            data = Dataset(data[0], data[1], name=name)
        except SpectraError as exc:
            raise PluginError(f"dataset {name!r} from plugin {entry.plugin!r} returned bad (X, y): {exc}") from exc
    if not isinstance(data, Dataset):
        raise PluginError(
            f"dataset {name!r} from plugin {entry.plugin!r} returned a {type(data).__name__}, "
            "not a spectra.data.Dataset or (X, y)"
        )
    if len(data) == 0:
        raise PluginError(f"dataset {name!r} from plugin {entry.plugin!r} returned no samples")
    data.info.setdefault("name", name)
    data.info.setdefault("plugin", entry.plugin)
    data.info.setdefault("arguments", {k: _jsonable(v) for k, v in kwargs.items()})
    return data


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def list_datasets() -> list[dict[str, Any]]:
    """``[{"name", "description", "parameters", "plugin"}, ...]`` sorted by name."""
    return plugins.list_entries("datasets")


__all__ = ["list_datasets", "load"]
