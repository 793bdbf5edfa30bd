"""A saved curvature track: ``curvature.npz`` (the snapshot) and its two views, written and read back.

The snapshot holds the settings, the whole table and the last eigenvectors (the
warm-start state); ``curvature.csv`` and ``curvature.json`` are views of it,
written after it.  Reading checks that the three agree: a view one record
behind the snapshot is what a kill between the writes leaves (it is repaired
on resume); anything else is refused as not one run's files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_save_npz, atomic_write_json, atomic_write_text, read_json_object, to_json
from ..errors import ResultFormatError
from ..backends.top_eigenpairs import Eigenpairs
from .record import CurvatureRecord
from .table import BUILTIN_QUANTITIES, TABLE_COLUMNS, record_rows, tidy_csv

TRACK_FORMAT = "spectra-curvature-track"
# 2: curvature.npz holds the whole state (settings, table, last eigenvectors), so a track can be resumed
TRACK_FORMAT_VERSION = 2
NPZ, CSV, JSON = "curvature.npz", "curvature.csv", "curvature.json"
TRACK_FILES = (NPZ, CSV, JSON)  # the order they are written in: the npz is the snapshot, the others its views


def snapshot_arrays(records: list[CurvatureRecord], settings: dict[str, Any]) -> dict[str, np.ndarray]:
    """Everything a resume needs, as arrays (strings as unicode arrays: no pickle)."""
    numbered = [(i, row) for i, r in enumerate(records) for row in record_rows(r)]
    arrays: dict[str, np.ndarray] = {
        "format": np.array(TRACK_FORMAT),
        "format_version": np.array(TRACK_FORMAT_VERSION, dtype=np.int64),
        "settings": np.array(json.dumps(settings, sort_keys=True)),
        "records": np.array(len(records), dtype=np.int64),
        "step": np.array([r.step for r in records], dtype=np.int64),
        "table_record": np.array([i for i, _ in numbered], dtype=np.int64),
        "table_step": np.array([row["step"] for _, row in numbered], dtype=np.int64),
        "table_quantity": np.array([row["quantity"] for _, row in numbered], dtype=str),
        "table_index": np.array([row["index"] for _, row in numbered], dtype=np.int64),
        "table_value": np.array([row["value"] for _, row in numbered], dtype=np.float64),
        "table_stderr": np.array([row["stderr"] for _, row in numbered], dtype=np.float64),
        # what the table does not hold about each solve
        "eig_solver": np.array([r.eig.solver if r.eig is not None else "" for r in records], dtype=str),
        "eig_converged": np.array([bool(r.eig is not None and r.eig.converged) for r in records]),
        "eig_steps": np.array([r.eig.steps if r.eig is not None else 0 for r in records], dtype=np.int64),
    }
    eigs = [r.eig.values for r in records if r.eig is not None]
    if eigs:
        arrays["eigenvalues"] = np.array(eigs)
    last = records[-1].eig if records else None
    if last is not None and last.vectors is not None:
        # the warm-start state: the next record starts from these, resumed or not
        arrays["last_eigenvectors"] = last.vectors.detach().to("cpu", torch.float64).numpy()
    dens = [r.density for r in records if r.density is not None]
    if dens and len(dens) == len(records) and all(d.nodes is not None for d in dens):
        arrays["density_nodes"] = np.stack([d.nodes for d in dens])
        arrays["density_weights"] = np.stack([d.weights for d in dens])
    return arrays


def write_views(out: Path, records: list[CurvatureRecord], settings: dict[str, Any], options: dict[str, Any],
                matvecs: dict[str, Any]) -> None:
    """Write the two views of the snapshot: ``curvature.csv`` (the table) and ``curvature.json``."""
    rows = [row for r in records for row in record_rows(r)]
    atomic_write_text(out / CSV, tidy_csv(rows, TABLE_COLUMNS))
    atomic_write_json(out / JSON, {
        "format": TRACK_FORMAT, "format_version": TRACK_FORMAT_VERSION, "snapshot": NPZ,
        "records": len(records), "last_step": records[-1].step if records else None, "k": settings["k"],
        "loss": settings["loss"],
        "options": {k: v for k, v in options.items() if isinstance(v, (int, float, str, bool, type(None)))},
        "settings": settings, "matvecs": matvecs, "columns": list(TABLE_COLUMNS), "rows": rows,
    })


def write_track(out: Path, records: list[CurvatureRecord], settings: dict[str, Any], options: dict[str, Any],
                matvecs: dict[str, Any]) -> None:
    """Write ``curvature.npz`` (the snapshot), then its views; each file atomically."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(out / NPZ, **snapshot_arrays(records, settings))
    write_views(out, records, settings, options, matvecs)


# ------------------------------------------------------------------ reading a saved track


def plain(obj: Any) -> Any:
    """JSON-ready copy (what a comparison with settings read back from a file needs)."""
    return json.loads(to_json(obj))


def settings_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"<setting> differs (saved .., now ..)"`` for each setting that defines the table and differs."""
    missing = object()
    out = []
    for key in ("k", "loss", "loss_reduction", "steps", "every"):
        if saved.get(key, missing) != now.get(key, missing):
            out.append(f"{key} differs (saved {saved.get(key)!r}, now {now.get(key)!r})")
    old, new = saved.get("options") or {}, now.get("options") or {}
    for key in sorted(set(old) | set(new)):
        if old.get(key, missing) != new.get(key, missing):
            out.append(f"{key} differs (saved {old.get(key)!r}, now {new.get(key)!r})")
    return out


@dataclass
class SavedTrack:
    settings: dict[str, Any]
    records: list[CurvatureRecord]
    stale: list[str]  # views a kill left one record behind the snapshot (or never wrote)


def read_track(out: Path) -> SavedTrack:
    """Read and check the track in ``out``: the snapshot, then its two views."""
    path = out / NPZ
    if not path.is_file():
        raise ResultFormatError(f"{path} is missing: it holds the track's state (curvature.csv and "
                                "curvature.json alone cannot be resumed); use force=True to start over")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except Exception as exc:  # a damaged zip raises one of several types (BadZipFile, OSError, ValueError, ...)
        raise ResultFormatError(f"{path} cannot be read as an npz archive ({type(exc).__name__}: {exc}); "
                                "it is damaged or not a curvature track") from exc
    fmt = arrays.get("format")
    if fmt is None or fmt.shape != () or str(fmt) != TRACK_FORMAT:
        if "format" not in arrays and _json_format_version(out / JSON) == 1:
            raise ResultFormatError(f"{path} was written by an older spectra (curvature track format 1), which "
                                    "saved no resume state (no eigenvectors); use force=True to start over")
        raise ResultFormatError(f"{path} is not a spectra curvature track (no 'format' entry {TRACK_FORMAT!r})")
    try:
        version = int(arrays["format_version"])
        if version > TRACK_FORMAT_VERSION:
            raise ResultFormatError(f"{path} has curvature track format version {version}; this spectra reads "
                                    f"up to {TRACK_FORMAT_VERSION} (it was written by a newer spectra)")
        settings = json.loads(str(arrays["settings"]))
        if not isinstance(settings, dict) or not isinstance(settings.get("options"), dict) or \
                not {"k", "loss", "steps", "every"} <= set(settings):
            raise ResultFormatError(f"{path}: its 'settings' entry is not a tracker's settings")
        records = _records_from_arrays(arrays, settings, path)
    except ResultFormatError:
        raise
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise ResultFormatError(f"{path} is damaged ({type(exc).__name__}: {exc})") from exc
    stale = [name for name in (CSV, JSON) if not _view_in_step(out / name, records)]
    return SavedTrack(settings=settings, records=records, stale=stale)


def _json_format_version(path: Path) -> Any:
    try:
        return read_json_object(path).get("format_version")
    except (OSError, ResultFormatError):
        return None


def _records_from_arrays(arrays: dict[str, np.ndarray], settings: dict[str, Any], path: Path) -> list[CurvatureRecord]:
    """Rebuild the records from the snapshot's table; check that they give the same table back."""
    from ..result import SpectrumResult
    from ..trace import TraceEstimate

    n = int(arrays["records"])
    steps = arrays["step"]
    rec_of = arrays["table_record"]
    table = [arrays[f"table_{c}"] for c in ("step", "quantity", "index", "value", "stderr")]
    if steps.shape != (n,) or any(t.shape != rec_of.shape for t in table) or \
            any(arrays[m].shape != (n,) for m in ("eig_solver", "eig_converged", "eig_steps")):
        raise ResultFormatError(f"{path}: its arrays disagree in length ({n} records)")
    if rec_of.size and (np.any(np.diff(rec_of) < 0) or rec_of[0] < 0 or rec_of[-1] >= n):
        raise ResultFormatError(f"{path}: its table's record numbers are out of order")
    if n > 1 and np.any(np.diff(steps) <= 0):
        raise ResultFormatError(f"{path}: its steps do not increase")
    t_step, t_quantity, t_index, t_value, t_stderr = table
    nodes, weights = arrays.get("density_nodes"), arrays.get("density_weights")
    records = []
    for i in range(n):
        rows = np.flatnonzero(rec_of == i)
        if not rows.size or np.any(t_step[rows] != steps[i]):
            raise ResultFormatError(f"{path}: record {i} (step {int(steps[i])}) has no rows or rows of another step")
        scalar: dict[str, float] = {}
        extra: dict[str, float] = {}
        ranked: dict[str, dict[int, float]] = {"eigenvalue": {}, "eigen_residual": {}, "eigenvalue_cold": {}}
        trace_stderr = math.nan
        for j in rows:
            q, v = str(t_quantity[j]), float(t_value[j])
            if q in ranked:
                ranked[q][int(t_index[j])] = v
            elif q in BUILTIN_QUANTITIES:
                scalar[q] = v
                if q == "trace":
                    trace_stderr = float(t_stderr[j])
            else:
                extra[q] = v
        eig = cold = cold_lz = trace = density = None
        if ranked["eigenvalue"]:
            ranks = sorted(ranked["eigenvalue"])
            eig = Eigenpairs(values=np.array([ranked["eigenvalue"][r] for r in ranks]), vectors=None,
                             residuals=np.array([ranked["eigen_residual"].get(r, math.nan) for r in ranks]),
                             num_matvecs=int(scalar["eig_matvecs"]), converged=bool(arrays["eig_converged"][i]),
                             solver=str(arrays["eig_solver"][i]), warm=bool(scalar["eig_warm"]),
                             steps=int(arrays["eig_steps"][i]))
        if ranked["eigenvalue_cold"]:
            values = np.array([ranked["eigenvalue_cold"][r] for r in sorted(ranked["eigenvalue_cold"])])
            cold = Eigenpairs(values=values, vectors=None, residuals=np.full(values.size, math.nan),
                              num_matvecs=int(scalar["eig_matvecs_cold"]), converged=True, solver="arpack",
                              warm=False)
        if "eig_matvecs_cold_lanczos" in scalar:
            # only its cost is in the table
            cold_lz = Eigenpairs(values=np.full(0, math.nan), vectors=None, residuals=np.full(0, math.nan),
                                 num_matvecs=int(scalar["eig_matvecs_cold_lanczos"]), converged=True,
                                 solver="lanczos", warm=False)
        if "trace" in scalar:
            trace = TraceEstimate(estimate=scalar["trace"], stderr=trace_stderr,
                                  method=str(settings["options"].get("trace")),
                                  num_matvecs=int(scalar["trace_matvecs"]))
        if "density_matvecs" in scalar:
            density = SpectrumResult(method="lanczos", num_matvecs=int(scalar["density_matvecs"]),
                                     nodes=None if nodes is None else nodes[i],
                                     weights=None if weights is None else weights[i])
        records.append(CurvatureRecord(step=int(steps[i]), loss=scalar["loss"], grad_norm=scalar["grad_norm"],
                                       eig=eig, trace=trace, density=density, cold=cold, cold_lanczos=cold_lz,
                                       seconds=scalar["seconds"], extra=extra))
    if records and records[-1].eig is not None:
        vectors = arrays.get("last_eigenvectors")
        k = records[-1].eig.values.size
        if vectors is None or vectors.ndim != 2 or vectors.shape[1] != k or not np.all(np.isfinite(vectors)):
            raise ResultFormatError(f"{path} lacks the last record's {k} eigenvectors (the warm-start state)")
        records[-1].eig.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float64))
    # The records must give back the saved table, value for value: anything else is not our file.
    rebuilt = [row for r in records for row in record_rows(r)]
    same = len(rebuilt) == rec_of.size and all(
        row["step"] == t_step[j] and row["quantity"] == t_quantity[j] and row["index"] == t_index[j]
        for j, row in enumerate(rebuilt)) and \
        np.array_equal([row["value"] for row in rebuilt], t_value.astype(np.float64), equal_nan=True) and \
        np.array_equal([row["stderr"] for row in rebuilt], t_stderr.astype(np.float64), equal_nan=True)
    if not same:
        raise ResultFormatError(f"{path}: its table does not rebuild from its records (damaged, or not written "
                                "by a CurvatureTracker)")
    return records


def _view_in_step(path: Path, records: list[CurvatureRecord]) -> bool:
    """True if the view at ``path`` matches the snapshot's records; False if it is missing or one record behind.

    A view that is neither (another run's, edited, damaged) raises: it is never silently overwritten.
    """
    if not path.exists():
        return False
    n = len(records)

    def rows(m: int) -> list[dict[str, Any]]:
        return [row for r in records[:m] for row in record_rows(r)]

    if path.name == CSV:
        text = path.read_text(encoding="utf-8", errors="replace")
        if text == tidy_csv(rows(n), TABLE_COLUMNS):
            return True
        if n and text == tidy_csv(rows(n - 1), TABLE_COLUMNS):
            return False
        raise ResultFormatError(f"{path} does not match {NPZ} (it is neither the snapshot's table nor the table "
                                "one record before it): the files are not from one run; use force=True to start over")
    view = read_json_object(path)
    if view.get("format") != TRACK_FORMAT:
        raise ResultFormatError(f"{path} is not a spectra curvature track (format {TRACK_FORMAT!r} expected)")
    if view.get("records") == n and view.get("rows") == plain(rows(n)):
        return True
    if n and view.get("records") == n - 1 and view.get("rows") == plain(rows(n - 1)):
        return False
    raise ResultFormatError(f"{path} does not match {NPZ} ({view.get('records')!r} records there, {n} in the "
                            "snapshot): the files are not from one run; use force=True to start over")


__all__ = ["CSV", "JSON", "NPZ", "SavedTrack", "TRACK_FILES", "TRACK_FORMAT", "TRACK_FORMAT_VERSION", "plain",
           "read_track", "settings_differences", "snapshot_arrays", "write_track", "write_views"]
