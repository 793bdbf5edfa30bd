"""spectra's built-in plugins: they register through the same hooks as anyone's.

Each module below implements hooks of :mod:`spectra.hookspecs` for one kind
of entry; :mod:`spectra.plugins` registers them before the third-party
plugins, so the built-ins keep their names.  Importing them is cheap: heavy
libraries are imported inside the factories.

A new built-in is one file (its code) plus one ``registry.register(...)`` line
in the module of its kind; a new module of hooks is one line in
:data:`DEFAULT_PLUGINS`.
"""

DEFAULT_PLUGINS: tuple[str, ...] = tuple(
    f"{__name__}.{kind}"
    for kind in ("models", "datasets", "backends", "matrices", "losses", "experiments", "commands")
)
