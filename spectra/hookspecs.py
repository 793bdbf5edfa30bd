"""Hook specifications for spectra plugins (pluggy project ``"spectra"``).

A plugin is a module (or any object) whose functions are marked with
:data:`hookimpl` and named like the hooks below.  Each hook receives a
*registry* and adds entries to it with
``registry.register(name, factory, description="")``; a factory is called
later with the user's keyword arguments.

>>> import spectra
>>> @spectra.hookimpl
... def spectra_register_datasets(registry):
...     registry.register("zeros", lambda n=4: ..., "n zero inputs")

Third-party packages expose their plugin module through the entry-point group
``spectra`` in their ``pyproject.toml``::

    [project.entry-points.spectra]
    my_plugin = "my_package.spectra_plugin"
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("spectra")
hookimpl = pluggy.HookimplMarker("spectra")


@hookspec
def spectra_register_models(registry):  # type: ignore[no-untyped-def]
    """Register model factories.

    ``registry.register(name, factory, description="")``: ``factory(**kwargs)``
    returns a :class:`torch.nn.Module`.  Its keyword parameters are shown by
    ``spectra list models`` and accepted by ``spectra.models.create(name, **kwargs)``
    and ``spectra analyze --model NAME --model-arg key=value``.
    """


@hookspec
def spectra_register_datasets(registry):  # type: ignore[no-untyped-def]
    """Register dataset loaders.

    ``registry.register(name, factory, description="")``: ``factory(**kwargs)``
    returns a :class:`spectra.data.Dataset` (or a pair ``(X, y)`` of tensors).
    Loaders should be deterministic given their ``seed`` and never download.

    Sharded loading (optional): a loader that declares a keyword parameter
    named ``shard`` (default ``None``) is called with ``shard=(rank, world)``
    when one rank of a data-parallel run needs only its part
    (``spectra.datasets.load(name, shard=(rank, world), ...)``, and
    ``torchrun ... -m spectra analyze`` without ``--train``).  It must then
    return exactly what ``spectra.distributed.shard(whole, rank, world)``
    returns for its whole dataset: rows ``start:stop`` in the same order, the
    same ``info`` plus ``info["shard"] =
    spectra.distributed.shard_record(len(whole), rank, world)`` (which also
    gives ``start`` and ``stop``), as a ``Dataset``.  spectra checks the
    record and the length.  The point is memory: build only those rows where
    the source allows (read them, or draw them from a generator that can skip
    ahead).  Loaders without ``shard`` still work: the whole dataset is loaded
    and cut.  ``shard`` is reserved for this meaning.
    """


@hookspec
def spectra_register_backends(registry):  # type: ignore[no-untyped-def]
    """Register eigen-solver backends.

    ``registry.register(name, factory, description="")``: ``factory()`` (no
    arguments) returns a backend object with ``name``, ``is_exact`` and
    ``run(op, **options) -> SpectrumResult``.  Import heavy dependencies inside
    the factory, not at plugin import time.
    """


__all__ = ["hookimpl", "hookspec", "spectra_register_models", "spectra_register_datasets",
           "spectra_register_backends"]
