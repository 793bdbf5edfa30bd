"""spectra's built-in plugins: they register through the same hooks as anyone's.

Each module below implements hooks of :mod:`spectra.hookspecs` for one kind
of entry; :mod:`spectra.plugins` registers them before the third-party
plugins, so the built-ins keep their names.  Importing them is cheap: heavy
libraries are imported inside the factories.

A new built-in is one file (its code) plus one ``registry.register(...)`` line
in the module of its kind; a new module of hooks is one line in
:data:`DEFAULT_PLUGINS`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

DEFAULT_PLUGINS: tuple[str, ...] = tuple(
    f"{__name__}.{kind}"
    for kind in ("models", "datasets", "backends", "matrices", "losses", "experiments", "commands")
)


def lazy(module: str, name: str, *, call: bool = True) -> Callable[..., Any]:
    """A factory that imports ``module`` only when it is called.

    ``call=True``: it calls ``module.name`` with its own arguments (a backend
    class, a command's ``add_parser``); ``call=False``: it returns
    ``module.name`` itself (a matrix's operator class).

    >>> lazy("fractions", "Fraction")(3, 6)
    Fraction(1, 2)
    >>> lazy("fractions", "Fraction", call=False).__name__
    'Fraction'
    """
    def factory(*args: Any) -> Any:
        target = getattr(importlib.import_module(module), name)
        return target(*args) if call else target

    factory.__name__ = factory.__qualname__ = name
    return factory
