"""Built-in curvature matrices: ``hessian``, ``ggn`` and ``residual``.

A matrix entry's factory returns the operator *class* (a
:class:`spectra.operators.base.SpectralOperator` built as
``cls(model, loss, data, params=..., **options)``); the class's module is
imported only when the matrix is asked for.  A new matrix is its module plus
one line below.
"""

from __future__ import annotations

from typing import Any

from spectra.hookspecs import hookimpl

from . import lazy


@hookimpl
def spectra_register_matrices(registry: Any) -> None:
    registry.register("hessian", lazy("spectra.operators.hessian", "HessianOperator", call=False),
                      "the Hessian H of the loss (default)")
    registry.register("ggn", lazy("spectra.operators.ggn", "GGNOperator", call=False),
                      "the Gauss-Newton part G = J^T H_loss J (positive semi-definite for convex losses)",
                      aliases=("gauss_newton",))
    registry.register("residual", lazy("spectra.operators.residual", "ResidualOperator", call=False),
                      "the residual R = H - G (the part from the network's own curvature)")
