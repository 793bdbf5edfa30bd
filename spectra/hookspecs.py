"""The hooks a spectra plugin implements (pluggy project ``"spectra"``).

Every hook receives a ``registry`` and calls
``registry.register(name, factory, description="", aliases=())`` once per
entry.  Names are looked up without regard to case.  ``docs/plugins.md`` says
what each factory must return, with examples.

>>> import spectra
>>> @spectra.hookimpl
... def spectra_register_datasets(registry):
...     registry.register("zeros", lambda n=4: ..., "n zero inputs")
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("spectra")
hookimpl = pluggy.HookimplMarker("spectra")


@hookspec
def spectra_register_models(registry):  # type: ignore[no-untyped-def]
    """Models: ``factory(**kwargs)`` returns a ``torch.nn.Module``."""


@hookspec
def spectra_register_datasets(registry):  # type: ignore[no-untyped-def]
    """Datasets: ``factory(**kwargs)`` returns a ``spectra.Dataset`` or ``(X, y)``; never downloads.

    A loader with a keyword ``shard`` builds one rank's part itself (see docs/plugins.md).
    """


@hookspec
def spectra_register_backends(registry):  # type: ignore[no-untyped-def]
    """Eigen-solvers: ``factory()`` returns an object with ``name``, ``is_exact`` and ``run(op, ...)``.

    ``run`` receives the common arguments it names in its signature.
    """


@hookspec
def spectra_register_matrices(registry):  # type: ignore[no-untyped-def]
    """Curvature matrices: ``factory()`` returns a ``spectra.operators.curvature.CurvatureOperator``
    subclass (one batch's product in ``_batch_product``), built as ``cls(model, loss, data, **options)``."""


@hookspec
def spectra_register_losses(registry):  # type: ignore[no-untyped-def]
    """Losses: a ``spectra.losses.Loss``, or a callable ``(output, target) -> scalar`` averaged over samples."""


@hookspec
def spectra_register_experiments(registry):  # type: ignore[no-untyped-def]
    """Experiments: an object with ``title`` and ``load() -> (run(ctx) -> dict, configs by scale)``."""


@hookspec
def spectra_register_commands(registry):  # type: ignore[no-untyped-def]
    """Sub-commands of ``spectra``: ``factory(subparsers)`` adds the command ``name`` to argparse's
    sub-parsers and sets ``handler=function(args) -> exit status`` on it."""


__all__ = ["hookimpl", "hookspec", "spectra_register_backends", "spectra_register_commands",
           "spectra_register_datasets", "spectra_register_experiments", "spectra_register_losses",
           "spectra_register_matrices", "spectra_register_models"]
