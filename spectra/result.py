"""SpectrumResult: the eigenvalues (or quadrature) of one analysis, with provenance.

One class serves all backends, so exact and approximate results compare
through one interface: :meth:`SpectrumResult.density` broadens exact
eigenvalues and Lanczos nodes the same way, :meth:`SpectrumResult.summary`
reports the same keys (estimated where the backend estimates).

Saved as a folder: ``result.json`` (manifest: method, sizes, summary,
provenance, format version) and ``arrays.npz`` (numbers), both written
atomically.  Loading never unpickles.

>>> import numpy as np, tempfile
>>> r = SpectrumResult(method="exact", eigenvalues=np.array([-0.1, 0.0, 0.0, 2.0]), num_params=4)
>>> r.summary()["num_negative"]
1
>>> d = tempfile.mkdtemp() + "/r"
>>> _ = r.save(d)
>>> load(d).eigenvalues.tolist()
[-0.1, 0.0, 0.0, 2.0]
"""

from __future__ import annotations

import math
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import density as _density
from ._io import atomic_save_npz, atomic_write_json, read_json_object
from .errors import InvalidInputError, ResultFormatError

FORMAT_VERSION = 1
MANIFEST = "result.json"
ARRAYS = "arrays.npz"
_ARRAY_FIELDS = ("eigenvalues", "eigenvectors", "nodes", "weights", "residuals")


STEM_GAP = 3  # slots between the two ends of a which="both" stem plot
MAX_STEM_TICKS = 12  # at most about this many rank labels under a stem plot


@dataclass(repr=False)
class SpectrumResult:
    """What one eigen-analysis found.

    ``eigenvalues`` are ascending (all ``P`` for exact, the computed ones for
    arpack).  ``nodes``/``weights`` (shape ``[num_probes, m]``) are the Gauss
    quadrature of stochastic Lanczos.  ``provenance`` records how the numbers
    were obtained: backend options, seeds, loss and reduction, dtype, wall
    time, matvec count, library versions, and why ``method="auto"`` chose.
    """

    method: str
    eigenvalues: np.ndarray | None = None
    eigenvectors: np.ndarray | None = None
    nodes: np.ndarray | None = None
    weights: np.ndarray | None = None
    residuals: np.ndarray | None = None
    num_params: int = 0
    num_samples: int | None = None
    num_matvecs: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    #: every eigenvalue to machine precision; set from the backend's own ``is_exact`` (``None``: a result
    #: made by hand, taken as exact when its method is ``"exact"``)
    is_exact: bool | None = None

    def __post_init__(self) -> None:
        if self.is_exact is None:
            self.is_exact = self.method == "exact"

    # ----------------------------------------------------------------- basics
    @property
    def ritz_values(self) -> np.ndarray | None:
        """Lanczos only: all Ritz values of all probes, ascending."""
        return None if self.nodes is None else np.sort(self.nodes.ravel())

    @property
    def extreme_ritz_values(self) -> tuple[float, float] | None:
        """Lanczos only: the smallest and largest Ritz value over all probes.

        The extreme Ritz values converge first: they approximate ``lambda_min``
        and ``lambda_max`` long before the density in between settles.
        """
        if self.nodes is None:
            return None
        return float(self.nodes.min()), float(self.nodes.max())

    def spectral_measure(self) -> tuple[np.ndarray, np.ndarray]:
        """Atoms and masses ``(atoms, mass)`` of the (estimated) spectral measure, total mass 1.

        An exact result puts mass ``1/P`` on each eigenvalue; a Lanczos result puts each
        probe's Gauss quadrature weights on its Ritz values, averaged over the probes.

        >>> r = SpectrumResult(method="exact", eigenvalues=np.array([0.0, 0.0, 2.0]), num_params=3)
        >>> atoms, mass = r.spectral_measure()
        >>> atoms.tolist(), float(mass.sum())
        ([0.0, 0.0, 2.0], 1.0)
        """
        if self.nodes is not None and self.weights is not None:
            n_probes = self.nodes.shape[0]
            return self.nodes.ravel(), self.weights.ravel() / n_probes
        if self.eigenvalues is not None and self.is_exact:
            lam = self.eigenvalues
            return lam, np.full(lam.shape, 1.0 / max(lam.size, 1))
        raise InvalidInputError(
            f"a {self.method} result holds only {0 if self.eigenvalues is None else self.eigenvalues.size} "
            "eigenvalues, not a whole spectrum; use method='exact' or 'lanczos' for a density"
        )

    def density(self, grid: np.ndarray | None = None, sigma: float | None = None,
                num_points: int = 1001) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian-broadened spectral density ``(grid, rho)``; ``rho`` integrates to ~1.

        Defaults: ``sigma`` = 1/200 of the spectral range, grid over the range
        padded by 5 sigma.
        """
        atoms, mass = self.spectral_measure()
        lo, hi = float(atoms.min()), float(atoms.max())
        sigma = _density.default_sigma(lo, hi) if sigma is None else float(sigma)
        grid = _density.default_grid(lo, hi, sigma, num_points) if grid is None else np.asarray(grid, float)
        return grid, _density.gaussian_density(atoms, mass, grid, sigma)

    # ---------------------------------------------------------------- summary
    def summary(self, zero_tol: float | None = None, negative_tol: float | None = None) -> dict[str, Any]:
        """Key numbers: extremes, negative part, mass near zero, outliers above the bulk.

        For a result that holds only some eigenvalues (``topk``, ``arpack``)
        the ends are ``largest_computed`` and ``smallest_computed``;
        ``lambda_max`` / ``lambda_min`` appear only for the end(s) that were
        asked for (``which``), where they are the spectrum's own.

        Counts ignore rounding (:mod:`spectra.counts`): an eigenvalue is
        negative only below ``-negative_tol`` and numerically zero within
        ``±negative_tol`` (``num_zero``); the default is the eigensolver's
        backward error, ``10·‖H‖·(P·ε64 + √P·ε)`` with ε of the dtype the
        products ran in (``provenance["dtype"]``).  ``zero_tol`` (default
        ``1e-3 * max|lambda|``, never below ``negative_tol``) is the paper's
        looser "near zero" band of ``zero_fraction``.  Outliers: the
        eigenvalues above ``0.1 * lambda_max``, with the count at other
        fractions in ``outlier_sweep``.  For Lanczos results counts are
        estimated from quadrature mass times ``P`` and marked
        ``"estimated": True``.

        >>> lam = np.array([-1e-17, 0.0, 3e-17, 0.5, 2.0])
        >>> s = SpectrumResult(method="exact", eigenvalues=lam, num_params=5).summary()
        >>> s["num_negative"], s["num_negative_raw"], s["num_zero"], s["num_outliers"]
        (0, 1, 3, 2)
        """
        from . import counts as _counts

        out: dict[str, Any] = {"method": self.method, "num_params": self.num_params,
                               "num_matvecs": self.num_matvecs}
        if self.method == "arpack" or (self.eigenvalues is not None and not self.is_exact and self.nodes is None):
            # A few computed eigenvalues: their ends are lambda_max / lambda_min only at the ends asked for
            lam = np.sort(self.eigenvalues)
            which = self.provenance.get("which")
            whole = lam.size == self.num_params
            out.update(largest_computed=float(lam[-1]), smallest_computed=float(lam[0]))
            if whole or which in ("largest", "both"):
                out["lambda_max"] = float(lam[-1])
            if whole or which in ("smallest", "both"):
                out["lambda_min"] = float(lam[0])
            out.update(num_computed=int(lam.size), computed_eigenvalues=lam.tolist(), estimated=False, which=which)
            if self.residuals is not None:
                out["max_residual"] = float(np.max(self.residuals))
            return out
        atoms, mass = self.spectral_measure()
        big = float(np.max(np.abs(atoms))) if atoms.size else 0.0
        P = self.num_params or atoms.size
        dtype = self.provenance.get("dtype", "float64")
        neg_tol = _counts.negative_tolerance(P, big, dtype) if negative_tol is None else float(negative_tol)
        tol = max(1e-3 * big if zero_tol is None else float(zero_tol), neg_tol)
        neg = atoms < -neg_tol
        out.update(
            lambda_max=float(atoms.max()),
            lambda_min=float(atoms.min()),
            negative_tol=neg_tol,
            negative_tol_rule=_counts.tolerance_rule(dtype) if negative_tol is None else "given",
            zero_tol=tol,
            zero_tol_rule=("1e-3 * max|lambda|" if zero_tol is None else "given")
            + (" (raised to negative_tol)" if tol == neg_tol and tol > 0 else ""),
            zero_fraction=float(mass[np.abs(atoms) < tol].sum()),
            negative_fraction=float(mass[neg].sum()),
            trace=float(P * (mass * atoms).sum()),
            estimated=not self.is_exact,
        )
        if self.is_exact:
            lam = atoms
            rule = _counts.outlier_counts(lam)
            out.update(num_negative=int(neg.sum()), num_negative_raw=int((lam < 0).sum()),
                       num_zero=int((np.abs(lam) <= neg_tol).sum()), negative_sum=float(lam[neg].sum()))
        else:
            out["num_negative"] = int(round(P * out["negative_fraction"]))
            out["num_zero"] = int(round(P * float(mass[np.abs(atoms) <= neg_tol].sum())))
            out["negative_sum"] = float(P * (mass[neg] * atoms[neg]).sum())
            # Converged extreme Ritz values (weight ~ 1/P each) carry the outliers: count quadrature
            # mass above each threshold, times P.
            extremes = np.sort(self.nodes.max(axis=1))[::-1]
            rule = _counts.outlier_counts(np.unique(np.round(self.nodes.ravel(), 10)))
            top = float(atoms.max())
            rule["sweep"] = {f"{f:g}": int(round(P * float(mass[atoms > f * top].sum())))
                             for f in _counts.OUTLIER_SWEEP} if top > 0 else rule["sweep"]
            rule["num_outliers"] = rule["sweep"][f"{_counts.OUTLIER_FRACTION:g}"]
            out.update(top_ritz_values=extremes[:5].tolist(), num_probes=int(self.nodes.shape[0]),
                       num_steps=int(self.nodes.shape[1]))
        out.update(num_outliers=rule["num_outliers"], outlier_rule=rule["rule"], outlier_sweep=rule["sweep"],
                   outlier_cut_ratio=rule["cut_ratio"], bulk_edge=rule["bulk_edge"])
        if self.is_exact:
            out["outliers"] = rule["outliers"]
        return out

    # ------------------------------------------------------------------ plots
    def plot(self, ax: Any = None, *, log: bool = True, bins: int = 100, sigma: float | None = None) -> tuple[Any, Any]:
        """Histogram (exact), density (lanczos) or stem plot (arpack); returns ``(fig, ax)``.

        matplotlib is imported only when this is called.
        """
        from .plotting import axes_or_new

        fig, ax = axes_or_new(ax)
        if self.is_exact and self.eigenvalues is not None:
            from .plotting import eigenvalue_histogram

            eigenvalue_histogram(ax, self.eigenvalues, bins=bins, log=log, counts=self.summary(),
                                 title=f"Hessian eigenvalues (exact, P={self.num_params})")
            return fig, ax
        elif self.nodes is not None:
            from .plotting import density_plot

            grid, rho = self.density(sigma=sigma)
            used = sigma if sigma is not None else _density.default_sigma(float(self.nodes.min()),
                                                                          float(self.nodes.max()))
            density_plot(ax, grid, rho, log=log, num_params=self.num_params or None, sigma=used,
                         title=f"Hessian spectral density (SLQ, {self.nodes.shape[0]} probes × "
                               f"{self.nodes.shape[1]} steps)")
        else:
            self._stem_plot(ax)
            return fig, ax
        ax.set_xlabel("eigenvalue")
        return fig, ax

    def _stem_plot(self, ax: Any) -> None:
        """The computed eigenvalues at their rank in the spectrum (1 = smallest).

        With both ends computed the two groups stand apart, with a shaded gap
        for the eigenvalues in between that were not computed.
        """
        lam = np.sort(self.eigenvalues)
        which, P = self.provenance.get("which"), self.num_params or lam.size
        k = lam.size // 2 if which == "both" else lam.size
        if which == "both" and 0 < k < lam.size and P > lam.size:
            x = np.r_[np.arange(k), np.arange(lam.size - k) + k + STEM_GAP]
            ranks = np.r_[np.arange(1, k + 1), np.arange(P - (lam.size - k) + 1, P + 1)]
            ax.axvspan(k - 0.5, k + STEM_GAP - 0.5, color="0.93", zorder=0)
            ax.text(k + (STEM_GAP - 1) / 2, 0.5, f"{P - lam.size} not computed", rotation=90, ha="center",
                    va="center", fontsize=7, color="0.4", transform=ax.get_xaxis_transform())
        else:
            x = np.arange(lam.size)
            first = P - lam.size + 1 if which == "largest" else 1
            ranks = np.arange(first, first + lam.size)
        ax.stem(x, lam)
        step = max(1, lam.size // MAX_STEM_TICKS)
        ax.set_xticks(x[::step], [str(r) for r in ranks[::step]])
        ax.set_xlabel("rank in the spectrum (1 = smallest)")
        ax.set_ylabel("eigenvalue")
        ax.set_title(f"{lam.size} eigenvalues ({self.method}, which={which})")

    # ------------------------------------------------------------ text forms
    def __repr__(self) -> str:
        """One line: what was computed, without the arrays.

        >>> SpectrumResult(method="exact", eigenvalues=np.array([-1.0, 0.5, 2.0]), num_params=3)
        SpectrumResult(method='exact', num_params=3, num_samples=None, eigenvalues=<3 in [-1, 2]>, num_matvecs=0, is_exact=True)
        """
        parts = [f"method={self.method!r}", f"num_params={self.num_params}", f"num_samples={self.num_samples}"]
        if self.eigenvalues is not None and self.eigenvalues.size:
            parts.append(f"eigenvalues=<{self.eigenvalues.size} in [{self.eigenvalues.min():.4g}, "
                         f"{self.eigenvalues.max():.4g}]>")
        if self.nodes is not None:
            parts.append(f"nodes=<{self.nodes.shape[0]} probes x {self.nodes.shape[1]} steps>")
        parts += [f"num_matvecs={self.num_matvecs}", f"is_exact={self.is_exact}"]
        return f"SpectrumResult({', '.join(parts)})"

    def __str__(self) -> str:
        """A header line and the :meth:`summary` table: what ``print(result)`` shows.

        >>> print(SpectrumResult(method="arpack", eigenvalues=np.array([2.0, 3.0]), num_params=10))
        arpack: P=10, N=None, 0 Hessian-vector products
          method                arpack
          num_params            10
          num_matvecs           0
          largest_computed      3
          smallest_computed     2
          num_computed          2
          computed_eigenvalues  [2, 3]
          estimated             False
          which                 None
        """
        header = f"{self.method}: P={self.num_params}, N={self.num_samples}, {self.num_matvecs} Hessian-vector products"
        return f"{header}\n{format_summary(self.summary())}"

    # --------------------------------------------------------------- save/load
    def to_manifest(self) -> dict[str, Any]:
        arrays = {k: getattr(self, k) for k in _ARRAY_FIELDS if getattr(self, k) is not None}
        return {
            "format": "spectra-result",
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "is_exact": bool(self.is_exact),
            "num_params": int(self.num_params),
            "num_samples": self.num_samples,
            "num_matvecs": int(self.num_matvecs),
            "summary": self.summary(),
            "provenance": self.provenance,
            "arrays": sorted(list(arrays) + [f"extra/{k}" for k in self.arrays]),
        }

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write ``path/result.json`` and ``path/arrays.npz`` (atomically).

        Refuses a folder that already holds a result unless ``overwrite=True``.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise InvalidInputError(f"{path} exists and is not a folder")
        if (path / MANIFEST).exists() and not overwrite:
            raise InvalidInputError(
                f"{path} already holds a result ({MANIFEST}); pass overwrite=True (CLI: --force) to replace it"
            )
        path.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(self, k) for k in _ARRAY_FIELDS if getattr(self, k) is not None}
        arrays.update({f"extra__{k}": v for k, v in self.arrays.items()})
        # Arrays first, manifest last: a folder with a manifest is a whole result.
        atomic_save_npz(path / ARRAYS, **arrays)
        atomic_write_json(path / MANIFEST, self.to_manifest())
        return path


def load(path: str | Path) -> SpectrumResult:
    """Read a result written by :meth:`SpectrumResult.save` (no pickle involved)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ResultFormatError(f"{path} holds no spectra result (missing {MANIFEST})")
    manifest = read_json_object(manifest_path)
    if manifest.get("format") != "spectra-result":
        raise ResultFormatError(f"{manifest_path} is not a spectra result manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ResultFormatError(
            f"{path} was written in result format {version!r}; this spectra reads up to "
            f"{FORMAT_VERSION} — upgrade spectra to load it"
        )
    names = manifest.get("arrays", [])
    if not isinstance(names, list) or not all(isinstance(a, str) for a in names):
        raise ResultFormatError(f"{manifest_path}: 'arrays' must be a list of array names")
    arrays: dict[str, np.ndarray] = {}
    if (path / ARRAYS).exists():
        try:
            with np.load(path / ARRAYS, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise ResultFormatError(f"{path / ARRAYS} is corrupt: {exc}") from exc
    expected = {a.replace("extra/", "extra__") for a in names}
    missing = expected - set(arrays)
    if missing:
        raise ResultFormatError(f"{path / ARRAYS} lacks arrays {sorted(missing)} named in the manifest")
    _check_fields(manifest, manifest_path)
    _check_arrays(arrays, path / ARRAYS)
    return SpectrumResult(
        method=manifest["method"],
        is_exact=manifest.get("is_exact"),  # None in results saved before it was recorded: the method decides
        num_params=manifest["num_params"],
        num_samples=manifest.get("num_samples"),
        num_matvecs=manifest.get("num_matvecs", 0),
        provenance=manifest.get("provenance", {}),
        arrays={k[len("extra__"):]: v for k, v in arrays.items() if k.startswith("extra__")},
        **{k: arrays.get(k) for k in _ARRAY_FIELDS},
    )


def _check_fields(manifest: dict[str, Any], where: Path) -> None:
    """Refuse manifest fields of the wrong type (a hand-edited or damaged result.json)."""
    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    checks = [("method", isinstance(manifest.get("method"), str) and manifest.get("method") != "", "a name"),
              ("num_params", count(manifest.get("num_params")), "a count"),
              ("num_samples", manifest.get("num_samples") is None or count(manifest.get("num_samples")), "a count"),
              ("num_matvecs", count(manifest.get("num_matvecs", 0)), "a count"),
              ("provenance", isinstance(manifest.get("provenance", {}), dict), "an object"),
              ("is_exact", manifest.get("is_exact") is None or isinstance(manifest.get("is_exact"), bool),
               "true or false")]
    for name, ok, what in checks:
        if not ok:
            raise ResultFormatError(f"{where}: {name!r} must be {what}; got {manifest.get(name)!r}")


def _check_arrays(arrays: dict[str, np.ndarray], where: Path) -> None:
    """Numbers of the right shapes: a spectrum to summarise, not just any arrays."""
    for name, arr in arrays.items():
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ResultFormatError(f"{where}: array {name!r} holds {arr.dtype}, not numbers")
    shapes = {k: arrays[k].shape for k in _ARRAY_FIELDS if k in arrays}
    if "eigenvalues" in shapes and (len(shapes["eigenvalues"]) != 1 or shapes["eigenvalues"][0] == 0):
        raise ResultFormatError(f"{where}: eigenvalues must be a non-empty vector; got shape {shapes['eigenvalues']}")
    if ("nodes" in shapes) != ("weights" in shapes) or (
            "nodes" in shapes and (len(shapes["nodes"]) != 2 or shapes["nodes"] != shapes["weights"]
                                   or 0 in shapes["nodes"])):
        raise ResultFormatError(f"{where}: nodes and weights must be two non-empty [probes, steps] arrays of "
                                f"one shape; got {shapes.get('nodes')} and {shapes.get('weights')}")
    if "eigenvalues" not in shapes and "nodes" not in shapes:
        raise ResultFormatError(f"{where} holds neither eigenvalues nor Lanczos nodes")


SHOWN_ITEMS = 5  # a list in a summary table shows its first few items and its length


def format_value(value: Any) -> str:
    """One summary value as text: floats to 6 significant digits, long lists cut.

    >>> format_value(0.123456789), format_value(list(range(8)))
    ('0.123457', '[0, 1, 2, 3, 4, ...] (8)')
    """
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        head = ", ".join(format_value(v) for v in value[:SHOWN_ITEMS])
        more = len(value) > SHOWN_ITEMS
        return f"[{head}{', ...' if more else ''}]" + (f" ({len(value)})" if more else "")
    return str(value)


def format_summary(summary: dict[str, Any]) -> str:
    """A summary dict as an aligned two-column table.

    >>> print(format_summary({"method": "exact", "lambda_max": 2.0}))
      method      exact
      lambda_max  2
    """
    width = max((len(k) for k in summary), default=0)
    return "\n".join(f"  {k.ljust(width)}  {format_value(v)}" for k, v in summary.items())


def versions() -> dict[str, str]:
    """Versions of the libraries a result depends on."""
    import scipy
    import torch

    from . import __version__

    return {"spectra": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "python": platform.python_version()}
