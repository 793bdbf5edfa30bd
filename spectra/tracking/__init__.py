"""Curvature during training: top eigenvalues (warm-started), trace and density at chosen steps.

Two ways in:

* :func:`curvature_at` — a plain function for any PyTorch loop: the top-``k``
  Hessian eigenvalues (and, optionally, a trace estimate and an SLQ density)
  at the model's current weights.  Pass the previous call's result as
  ``previous=`` and the eigen-solver starts from its eigenvectors.
* :class:`CurvatureTracker` — keeps that state for you, builds a tidy table
  (one row per step, quantity and index), writes it atomically as CSV and
  JSON (plus an ``.npz`` of arrays) after every record, and plots it.  It is
  also a :func:`spectra.train` callback: ``train(..., callbacks=tracker,
  callback_steps=tracker.schedule(max_steps))``.  A killed run continues with
  ``resume=True`` (same settings; the records and the warm-start state come
  back from ``curvature.npz``, recorded steps are skipped).

Layout: :mod:`.record` (one record, :func:`curvature_at`), :mod:`.table`
(the tidy rows and their CSV), :mod:`.tracker` (:class:`CurvatureTracker`),
:mod:`.store` (the saved track: writing, reading back, resuming).  The
eigen-solver lives with the others, in :mod:`spectra.backends.top_eigenpairs`.

**Warm starts.**  The top eigenpairs come from a Lanczos run with full
reorthogonalisation that stops as soon as the ``k`` largest Ritz pairs have
residuals ``||H x - theta x|| <= tol * max|theta|`` (the residuals come for
free from the tridiagonal matrix).  Cold, it starts from a seeded random
vector; warm, from the sum of the previous eigenvectors plus a small random
part (``mix``) so that no direction is missing from the Krylov space.  Between
nearby training steps the top eigenvectors move little, so the warm run stops
after fewer products.  We compared, on the paper's nets along GD, cold
ARPACK (``eigsh``), ARPACK with ``v0`` from the previous eigenvectors, LOBPCG
(scipy) with the previous eigenvectors as its initial block, and this
early-stopping Lanczos cold and warm: warm LOBPCG needed *more* products than
cold ARPACK (each LOBPCG iteration costs ``k``) and ARPACK's ``v0`` saved
little (it fills ``ncv >= 2k+1`` vectors before it tests convergence), while
warm early-stopping Lanczos needed the fewest.  Most of the saving over ARPACK
comes from stopping early; the warm start itself saves a further few to ten
per cent over the same Lanczos started cold (``docs/beyond.md`` has the
numbers; ``examples/track_curvature.py --compare-cold`` measures them).
Like every Krylov method it can miss an eigenvalue whose direction is nearly
absent from the start vector; ``compare_cold=True`` re-solves cold (ARPACK,
and this Lanczos from a random vector) at each record and logs all three.
"""

from __future__ import annotations

from ..backends.top_eigenpairs import DEFAULT_MIX, Eigenpairs, arpack_top, top_eigenpairs, warm_vector
from .record import CurvatureRecord, curvature_at
from .store import CSV, JSON, NPZ, TRACK_FILES, TRACK_FORMAT, TRACK_FORMAT_VERSION
from .table import BUILTIN_QUANTITIES, TABLE_COLUMNS, record_rows, tidy_csv
from .tracker import CurvatureTracker

__all__ = ["BUILTIN_QUANTITIES", "CSV", "CurvatureRecord", "CurvatureTracker", "DEFAULT_MIX", "Eigenpairs", "JSON",
           "NPZ", "TABLE_COLUMNS", "TRACK_FILES", "TRACK_FORMAT", "TRACK_FORMAT_VERSION", "arpack_top",
           "curvature_at", "record_rows", "tidy_csv", "top_eigenpairs", "warm_vector"]
