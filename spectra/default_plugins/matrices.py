"""Built-in curvature matrices: ``hessian``, ``ggn`` and ``residual``.

A matrix entry's factory returns the operator *class* (a
:class:`spectra.operators.base.SpectralOperator` built as
``cls(model, loss, data, params=..., **options)``); the class's module is
imported only when the matrix is asked for.  A new matrix is its module plus
one line below.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from spectra.hookspecs import hookimpl


def lazy_class(module: str, cls: str) -> Callable[[], type]:
    """A factory that imports ``module`` and returns its class ``cls`` when called."""

    def factory() -> type:
        return getattr(importlib.import_module(module), cls)

    factory.__name__ = factory.__qualname__ = cls
    return factory


@hookimpl
def spectra_register_matrices(registry: Any) -> None:
    registry.register("hessian", lazy_class("spectra.operators.hessian", "HessianOperator"),
                      "the Hessian H of the loss (default)")
    registry.register("ggn", lazy_class("spectra.operators.ggn", "GGNOperator"),
                      "the Gauss-Newton part G = J^T H_loss J (positive semi-definite for convex losses)",
                      aliases=("gauss_newton",))
    registry.register("residual", lazy_class("spectra.operators.residual", "ResidualOperator"),
                      "the residual R = H - G (the part from the network's own curvature)")
