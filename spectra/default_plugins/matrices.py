"""Built-in curvature matrices: ``hessian``, ``ggn``, ``residual``, ``empirical_fisher`` and ``mc_fisher``.

A matrix entry's factory returns the operator *class* (a
:class:`spectra.operators.curvature.CurvatureOperator` subclass built as
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
    registry.register("empirical_fisher", lazy("spectra.operators.fisher", "EmpiricalFisherOperator", call=False),
                      "the empirical Fisher: the mean over samples (or tokens) u of g_u g_u^T, g_u the gradient of u's own loss")
    registry.register("mc_fisher", lazy("spectra.operators.fisher", "MCFisherOperator", call=False),
                      "the Fisher with targets drawn from the model (mc_samples per sample or token, seeded)",
                      aliases=("fisher",))
