"""Load datasets by registry name: ``spectra.datasets.load("mnist", n=1000, seed=0)``.

Datasets come from plugins (:mod:`spectra.hookspecs`); the built-ins are
``blobs``, ``random``, ``mnist`` (offline) and ``digits``.  ``spectra list
datasets`` shows them all.  ``load(name, shard=(rank, world), ...)`` gives one
rank's part of a dataset, loading only that part when the dataset's loader
can (:func:`loads_shards`).

>>> import spectra
>>> data = spectra.datasets.load("blobs", n=8, seed=1)
>>> len(data), data.info["seed"], data.info["plugin"]
(8, 1, 'spectra.default_plugins.datasets')
>>> part = spectra.datasets.load("blobs", n=8, seed=1, shard=(1, 3))
>>> part.info["shard"]["start"], part.info["shard"]["stop"], bool((part.X == data.X[3:6]).all())
(3, 6, True)
"""

from __future__ import annotations

from typing import Any

from . import plugins
from ._io import jsonable
from .data import Dataset
from .errors import InvalidInputError, PluginError, SpectraError

SHARD_PARAMETER = "shard"  # the keyword a dataset loader declares to load one rank's part itself


def load(name: str, *, shard: Any = None, **kwargs: Any) -> Dataset:
    """Load the dataset registered as ``name`` with keyword arguments ``kwargs``.

    A factory may return a :class:`~spectra.data.Dataset` or a pair ``(X, y)``.
    ``info`` gains ``name``, ``plugin`` and ``arguments`` (the keyword arguments
    given) when the plugin did not set them.  Errors as in :func:`spectra.models.create`.

    ``shard=(rank, world)`` returns only rank ``rank``'s part of ``world``:
    exactly ``spectra.sharding.shard(load(name, **kwargs), rank, world)``
    (same rows, same order, the same ``info`` plus its ``"shard"`` record).  A
    loader that takes a ``shard`` keyword (:func:`loads_shards`) builds only
    that part; for any other the whole dataset is loaded, the part copied out
    and the whole let go.
    """
    if shard is None:
        data, _ = _load(name, kwargs, kwargs)
        return data
    rank, world = _check_shard(name, shard)
    if not loads_shards(name):
        from .sharding import shard as cut

        whole, _ = _load(name, kwargs, kwargs)
        try:
            part = cut(whole, rank, world)
        except InvalidInputError as exc:
            raise InvalidInputError(f"dataset {name!r}: {exc}") from exc
        # copies: the slices are views that would keep the whole dataset alive
        return Dataset(part.X.clone(), part.y.clone(), name=part.name, info=part.info)
    data, entry = _load(name, {**kwargs, SHARD_PARAMETER: (rank, world)}, kwargs)
    _check_shard_result(data, name, entry.plugin, rank, world)
    return data


def loads_shards(name: str) -> bool:
    """Whether dataset ``name``'s loader builds one rank's part itself (it declares a ``shard`` keyword).

    >>> loads_shards("mnist")
    True
    """
    sig = plugins.get_entry("datasets", name).signature()
    if sig is None:
        return False
    param = sig.parameters.get(SHARD_PARAMETER)
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def _load(name: str, call_kwargs: dict[str, Any], user_kwargs: dict[str, Any]) -> tuple[Dataset, Any]:
    """Call the factory with ``call_kwargs``; ``info["arguments"]`` records ``user_kwargs`` (no shard)."""
    data, entry = plugins.call_factory("datasets", name, call_kwargs)
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
    name = entry.name  # as registered, whatever the case typed
    data.info.setdefault("name", name)
    data.info.setdefault("plugin", entry.plugin)
    data.info.setdefault("arguments", {k: jsonable(v) for k, v in user_kwargs.items()})
    return data, entry


def _check_shard(name: str, shard: Any) -> tuple[int, int]:
    """``(rank, world)`` as two ints with ``0 <= rank < world``, or :class:`InvalidInputError`."""
    ok = isinstance(shard, (tuple, list)) and len(shard) == 2 and \
        all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
    if not ok or not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise InvalidInputError(f"dataset {name!r}: shard must be (rank, world) with integers "
                                f"0 <= rank < world; got {shard!r}")
    return int(shard[0]), int(shard[1])


def _check_shard_result(data: Dataset, name: str, plugin: str, rank: int, world: int) -> None:
    """A loader asked for a shard must return it with the record ``spectra.sharding.shard`` would write."""
    from .sharding import shard_record

    record = data.info.get("shard")
    total = record.get("num_samples_total") if isinstance(record, dict) else None
    try:
        expected = shard_record(total, rank, world) if isinstance(total, int) else None
    except InvalidInputError:
        expected = None
    if expected is None or record != expected or len(data) != expected["stop"] - expected["start"]:
        raise PluginError(
            f"dataset {name!r} from plugin {plugin!r} was asked for shard ({rank}, {world}) and returned "
            f"{len(data)} samples with info['shard']={record!r}; a loader that takes 'shard' must return "
            "rows start:stop of the whole dataset with info['shard'] = "
            "spectra.sharding.shard_record(num_samples_total, rank, world)"
        )


def list_datasets() -> list[dict[str, Any]]:
    """``[{"name", "description", "parameters", "plugin"}, ...]`` sorted by name."""
    return plugins.list_entries("datasets")


__all__ = ["list_datasets", "load", "loads_shards"]
