"""spectra's built-in plugins: models, datasets and backends.

They register through the same hooks as third-party plugins
(:mod:`spectra.hookspecs`); spectra imports ``spectra_builtins.models``,
``spectra_builtins.datasets`` and ``spectra_builtins.backends`` directly, so a
source checkout works without installed entry points.  Importing this package
is cheap: heavy libraries are imported inside the factories.
"""
