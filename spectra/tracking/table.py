"""The tracker's tidy table: one row per step, quantity and index, and its CSV text.

>>> print(tidy_csv([{"step": 3, "quantity": "trace", "index": 0, "value": 0.1, "stderr": math.nan}],
...                TABLE_COLUMNS), end="")
step,quantity,index,value,stderr
3,trace,0,0.1,
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Iterable, Sequence

from .record import CurvatureRecord

TABLE_COLUMNS = ("step", "quantity", "index", "value", "stderr")


def tidy_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV text of tidy rows: ``value`` and ``stderr`` written exactly (``repr``), a NaN ``stderr`` left empty.

    Shared by the training track (``curvature.csv``) and the path between two
    points (``path.csv``, whose first column is ``t``).

    >>> print(tidy_csv([{"step": 3, "quantity": "trace", "index": 0, "value": 0.1, "stderr": math.nan}],
    ...                TABLE_COLUMNS), end="")
    step,quantity,index,value,stderr
    3,trace,0,0.1,
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "value": repr(row["value"]),
                         "stderr": "" if math.isnan(row["stderr"]) else repr(row["stderr"])})
    return buf.getvalue()


def record_rows(r: CurvatureRecord) -> list[dict[str, Any]]:
    """The tidy rows of one record, in table order (see :meth:`CurvatureTracker.rows`)."""
    out: list[dict[str, Any]] = []

    def add(step: int, quantity: str, value: float, index: int = 0, stderr: float = math.nan) -> None:
        out.append({"step": step, "quantity": quantity, "index": index, "value": float(value),
                    "stderr": float(stderr)})

    add(r.step, "loss", r.loss)
    add(r.step, "grad_norm", r.grad_norm)
    for name, v in r.extra.items():
        add(r.step, name, v)
    if r.eig is not None:
        for i, (lam, res) in enumerate(zip(r.eig.values, r.eig.residuals), start=1):
            add(r.step, "eigenvalue", lam, i)
            add(r.step, "eigen_residual", res, i)
        add(r.step, "eig_matvecs", r.eig.num_matvecs)
        add(r.step, "eig_warm", float(r.eig.warm))
    if r.cold is not None:
        for i, lam in enumerate(r.cold.values, start=1):
            add(r.step, "eigenvalue_cold", lam, i)
        add(r.step, "eig_matvecs_cold", r.cold.num_matvecs)
    if r.cold_lanczos is not None:
        add(r.step, "eig_matvecs_cold_lanczos", r.cold_lanczos.num_matvecs)
    if r.trace is not None:
        add(r.step, "trace", r.trace.estimate, stderr=r.trace.stderr)
        add(r.step, "trace_matvecs", r.trace.num_matvecs)
    if r.density is not None:
        add(r.step, "density_matvecs", r.density.num_matvecs)
    add(r.step, "seconds", r.seconds)
    return out


# Quantities the tracker writes itself; extra values passed to record() may not reuse these names, so a
# saved table can be read back into records without ambiguity.
BUILTIN_QUANTITIES = frozenset({
    "loss", "grad_norm", "eigenvalue", "eigen_residual", "eig_matvecs", "eig_warm", "eigenvalue_cold",
    "eig_matvecs_cold", "eig_matvecs_cold_lanczos", "trace", "trace_matvecs", "density_matvecs", "seconds"})


__all__ = ["BUILTIN_QUANTITIES", "TABLE_COLUMNS", "record_rows", "tidy_csv"]
