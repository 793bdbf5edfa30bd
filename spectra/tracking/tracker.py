"""The curvature tracker: record at chosen steps, keep a tidy table, save it after every record, resume.

See :mod:`spectra.tracking` for the whole story and :class:`CurvatureTracker` for examples.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..backends.top_eigenpairs import TINY
from ..errors import InvalidInputError, ResultFormatError, close_matches, did_you_mean
from .record import CurvatureRecord, curvature_at
from .store import NPZ, TRACK_FILES, plain, read_track, settings_differences, write_track, write_views
from .table import BUILTIN_QUANTITIES, TABLE_COLUMNS, record_rows, tidy_csv

# The options of curvature_at a tracker passes on (all of them define its table), with their defaults.
OPTION_DEFAULTS = {name: p.default for name, p in inspect.signature(curvature_at).parameters.items()
                   if p.kind is p.KEYWORD_ONLY and name not in ("step", "loss", "k", "previous")}


class CurvatureTracker:
    """Record curvature at chosen steps; a tidy table, saved atomically, resumable and plotted.

    ``steps``: the steps to record (an iterable), or ``every`` = record each
    multiple of it; the final step of :func:`spectra.train` is always
    recorded.  Other options go to :func:`curvature_at`.  With ``out`` (a
    folder), ``curvature.npz``, ``curvature.csv`` and ``curvature.json`` are
    rewritten (atomically, in that order) after every record.

    **Resuming.**  ``curvature.npz`` is the snapshot: the settings, the whole
    table and the last eigenvectors (the warm-start state); the CSV and JSON
    are views of it.  ``resume=True`` continues the track already in ``out``:
    the settings must be the ones it was started with (k, loss, the schedule
    and every option; a difference is refused by name), its records are
    restored, the next record warm-starts from the saved eigenvectors exactly
    as the uninterrupted run would have, and steps up to the last recorded one
    are never redone (``wants`` is false for them and the callback skips
    them), so training restarted from an earlier checkpoint replays without
    duplicate rows.  An empty ``out`` starts a fresh track.  Without
    ``resume``, a folder that already holds a track is refused unless
    ``force=True`` (which deletes the three files first).
    :meth:`load` reads a saved track for its table and plots.

    >>> import torch, spectra
    >>> torch.manual_seed(0) and None
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    >>> X, y = torch.randn(64, 2, dtype=torch.float64), (torch.randn(64) > 0).long()
    >>> tracker = CurvatureTracker((X, y), k=2, every=10, trace_matvecs=12)
    >>> hist = spectra.train(net, (X, y), lr=0.5, max_steps=20, grad_tol=0,
    ...                      callbacks=tracker, callback_steps=tracker.schedule(20))
    >>> [r.step for r in tracker.records]
    [0, 10, 20]
    >>> sorted({row["quantity"] for row in tracker.rows()})[:4]
    ['accuracy', 'eig_matvecs', 'eig_warm', 'eigen_residual']

    A run that stopped after step 10 (its weights at step 10 kept, here in
    memory; in practice ``model.load_state_dict(torch.load(path,
    weights_only=True))``) continues with the same call plus ``resume=True``
    and ``spectra.train(..., start_step=10)``:

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> torch.manual_seed(1) and None
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    >>> first = CurvatureTracker((X, y), k=2, every=10, trace_matvecs=12, out=out)
    >>> _ = spectra.train(net, (X, y), lr=0.5, max_steps=10, grad_tol=0, callbacks=first,
    ...                   callback_steps=first.schedule(10))
    >>> again = CurvatureTracker((X, y), k=2, every=10, trace_matvecs=12, out=out, resume=True)
    >>> again.resumed, again.last_step, again.wants(10), again.wants(20)
    (2, 10, False, True)
    >>> _ = spectra.train(net, (X, y), lr=0.5, start_step=10, max_steps=10, grad_tol=0, callbacks=again,
    ...                   callback_steps=again.schedule(20))
    >>> [r.step for r in CurvatureTracker.load(out).records], again.records[-1].eig.warm
    ([0, 10, 20], True)
    """

    def __init__(self, data: Any, *, loss: Any = "cross_entropy", k: int = 5, steps: Iterable[int] | None = None,
                 every: int | None = None, out: str | Path | None = None, resume: bool = False,
                 force: bool = False, **options: Any):
        if steps is None and every is None:
            raise InvalidInputError("give the steps to record (steps=[...]) or a period (every=N)")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise InvalidInputError(f"every must be a positive integer; got {every!r}")
        unknown = sorted(set(options) - set(OPTION_DEFAULTS))
        if unknown:
            raise InvalidInputError(f"unknown CurvatureTracker option(s) {', '.join(unknown)}; "
                                    f"known: {', '.join(OPTION_DEFAULTS)}"
                                    f"{did_you_mean(close_matches(unknown[0], OPTION_DEFAULTS))}")
        if resume and force:
            raise InvalidInputError("resume=True continues the track in out and force=True replaces it: give one")
        if (resume or force) and out is None:
            raise InvalidInputError("resume=True and force=True need out= (the folder of the track)")
        self.data = data
        self.loss = loss
        self.k = int(k)
        self.steps = None if steps is None else sorted({int(s) for s in steps})
        self.every = every
        self.out = None if out is None else Path(out)
        self.options = options
        self.records: list[CurvatureRecord] = []
        self.resumed = 0  # records restored from out by resume=True
        self.repaired: list[str] = []  # views rewritten on resume because a kill had left them behind the npz
        self._saved_settings: dict[str, Any] | None = None  # set by load(): the settings read from the file
        self._check_gap = False  # the first record after a resume checks no scheduled step was skipped
        if self.out is not None:
            self._open(resume, force)

    def _open(self, resume: bool, force: bool) -> None:
        """Refuse, replace or resume a track already in ``out``."""
        assert self.out is not None
        if self.out.exists() and not self.out.is_dir():
            raise InvalidInputError(f"out={self.out} exists and is not a folder")
        present = [name for name in TRACK_FILES if (self.out / name).exists()]
        if not present:
            return
        if force:
            for name in present:
                (self.out / name).unlink()
            return
        if not resume:
            raise InvalidInputError(
                f"{self.out} already holds a curvature track ({', '.join(present)}); pass resume=True to "
                "continue it, force=True to replace it, or choose another out")
        saved = read_track(self.out)
        differences = settings_differences(saved.settings, self.settings())
        if differences:
            raise InvalidInputError(
                f"cannot resume the curvature track in {self.out}: {'; '.join(differences)}; use the settings "
                "it was started with, or force=True to start over")
        self.records = saved.records
        self.resumed = len(saved.records)
        self._check_gap = bool(saved.records)
        if saved.stale:
            self.repaired = saved.stale
            write_views(self.out, self.records, self.settings(), self.options, self.matvec_summary())

    @classmethod
    def load(cls, out: str | Path) -> CurvatureTracker:
        """Read the track saved in ``out`` (validated; for its table, summary and plots).

        The snapshot ``curvature.npz`` is read; views a kill left one record
        behind are ignored (not rewritten).  A damaged or foreign file raises
        :class:`~spectra.errors.ResultFormatError` naming it.  The tracker has
        no data: to continue recording, build one with ``resume=True``.
        """
        out = Path(out)
        if not out.is_dir():
            raise ResultFormatError(f"{out} is not a folder holding a curvature track")
        saved = read_track(out)
        s = saved.settings
        try:
            tracker = cls(None, loss=s["loss"], k=s["k"], steps=s["steps"], every=s["every"])
        except (InvalidInputError, TypeError, ValueError) as exc:
            raise ResultFormatError(f"{out / NPZ}: its settings are not a tracker's ({exc})") from exc
        tracker.options = dict(s["options"])
        tracker.records = saved.records
        tracker.resumed = len(saved.records)
        tracker._saved_settings = s
        return tracker

    def settings(self) -> dict[str, Any]:
        """What defines the table (JSON-ready): k, loss, the schedule and every option, defaults filled in."""
        if self._saved_settings is not None:
            return json.loads(json.dumps(self._saved_settings))
        from ..losses import resolve_loss

        lo = resolve_loss(self.loss)
        return plain({"k": self.k, "loss": lo.name, "loss_reduction": lo.reduction, "steps": self.steps,
                       "every": self.every,
                       "options": {name: self.options.get(name, default) for name, default in OPTION_DEFAULTS.items()}})

    # -- scheduling -----------------------------------------------------------
    def schedule(self, max_steps: int) -> list[int]:
        """The steps in ``[0, max_steps]`` this tracker records (for ``callback_steps=``)."""
        if self.steps is not None:
            return [s for s in self.steps if s <= max_steps]
        return list(range(0, max_steps + 1, self.every))

    def wants(self, step: int) -> bool:
        """Whether ``step`` is scheduled and after the last recorded step (recorded steps are never redone)."""
        if self.records and step <= self.records[-1].step:
            return False
        if self.steps is not None:
            return step in self.steps
        return step % self.every == 0

    @property
    def last_step(self) -> int | None:
        """The last recorded step (``None`` before the first record)."""
        return self.records[-1].step if self.records else None

    # -- recording ------------------------------------------------------------
    def record(self, model: torch.nn.Module, step: int, **extra: float) -> CurvatureRecord:
        """Record the curvature now (the plain call for any training loop); ``extra`` values go in the table.

        Steps must increase: a step at or before the last recorded one is refused.
        """
        if self.data is None:
            raise InvalidInputError("this tracker was loaded for reading (CurvatureTracker.load); to continue "
                                    "recording, build it with its data, the same settings and resume=True")
        step = int(step)
        if self.records and step <= self.records[-1].step:
            raise InvalidInputError(f"step {step} is not after the last recorded step {self.records[-1].step}: "
                                    "a track's steps increase and recorded steps are not redone")
        clash = sorted(set(extra) & BUILTIN_QUANTITIES)
        if clash:
            raise InvalidInputError(f"extra value name(s) {', '.join(clash)} are table quantities of the tracker "
                                    "itself; choose other names")
        if self._check_gap:
            self._refuse_gap(step)
        previous = self.records[-1] if self.records else None
        if previous is not None and previous.eig is not None and previous.eig.vectors is not None:
            # Restored eigenvectors come from the file on the CPU; the warm start is built where the
            # uninterrupted run built it, on the model's device.
            param = next(iter(model.parameters()), None)
            if param is not None and previous.eig.vectors.device != param.device:
                previous.eig.vectors = previous.eig.vectors.to(param.device)
        rec = curvature_at(model, self.data, step=step, loss=self.loss, k=self.k, previous=previous,
                           **self.options)
        rec.extra = {k: float(v) for k, v in extra.items()}
        self.records.append(rec)
        self._check_gap = False
        if self.out is not None:
            self.save(self.out)
        return rec

    def _refuse_gap(self, step: int) -> None:
        """After a resume: a scheduled step between the last record and ``step`` would be missing for good."""
        last = self.records[-1].step
        if self.steps is not None:
            missed = [s for s in self.steps if last < s < step]
        else:
            nxt = (last // self.every + 1) * self.every
            missed = [nxt] if nxt < step else []
        if missed:
            raise InvalidInputError(
                f"the resumed track's last record is step {last}, but training continues at step {step}: "
                f"scheduled step {missed[0]} would never be recorded; restart training from a checkpoint at or "
                f"before step {missed[0]}")

    def __call__(self, model: torch.nn.Module, info: dict) -> None:
        """The :func:`spectra.train` callback: ``f(model, info)``."""
        step = int(info["step"])
        if self.records and step <= self.records[-1].step:
            return  # recorded already: the final call repeating a scheduled step, or a replay after a resume
        if self.wants(step) or info.get("final"):
            self.record(model, step, accuracy=info.get("accuracy", math.nan))

    # -- the table --------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """Tidy rows ``{step, quantity, index, value, stderr}`` (index: eigenvalue rank from 1, else 0)."""
        return [row for r in self.records for row in record_rows(r)]

    def column(self, quantity: str, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one quantity from the table."""
        rows = [r for r in self.rows() if r["quantity"] == quantity and r["index"] == index]
        return np.array([r["step"] for r in rows]), np.array([r["value"] for r in rows])

    def matvec_summary(self) -> dict[str, Any]:
        """Products spent on the eigenvalues: warm vs cold (when ``compare_cold`` was on).

        Cold ARPACK and cold Lanczos totals cover the same records as the warm total
        (all but the first, which has nothing to start from).
        """
        warm = [r.eig.num_matvecs for r in self.records if r.eig is not None and r.eig.warm]
        first = [r.eig.num_matvecs for r in self.records if r.eig is not None and not r.eig.warm]
        cold = [r.cold.num_matvecs for r in self.records[1:] if r.cold is not None]
        out = {"records": len(self.records), "first_record_matvecs": sum(first),
               "warm_matvecs_total": sum(warm), "warm_records": len(warm)}
        cold_lz = [r.cold_lanczos.num_matvecs for r in self.records if r.cold_lanczos is not None]
        if cold:
            out.update(cold_arpack_matvecs_total=sum(cold), warm_to_cold_ratio=sum(warm) / max(sum(cold), 1))
        if cold_lz:
            out.update(cold_lanczos_matvecs_total=sum(cold_lz),
                       warm_to_cold_lanczos_ratio=sum(warm) / max(sum(cold_lz), 1))
        if cold:
            diffs = [float(np.max(np.abs(r.eig.values - r.cold.values)) / max(abs(r.cold.values).max(), TINY))
                     for r in self.records if r.cold is not None and r.eig is not None]
            out["max_relative_eigenvalue_difference"] = max(diffs)
        return out

    def to_csv(self) -> str:
        return tidy_csv(self.rows(), TABLE_COLUMNS)

    def save(self, out: str | Path) -> Path:
        """Write ``curvature.npz`` (the snapshot), then ``curvature.csv`` and ``curvature.json`` into ``out``.

        Each file is written atomically.  A kill between the writes leaves the
        views one record behind the snapshot; :meth:`load` and ``resume=True``
        detect that and trust the snapshot (``resume`` rewrites the views).
        """
        out = Path(out)
        write_track(out, self.records, self.settings(), self.options, self.matvec_summary())
        return out

    # -- plotting -----------------------------------------------------------------
    def plot(self, axes: Sequence[Any] | None = None) -> tuple[Any, Any]:
        """Top eigenvalues, trace (with 2 standard errors) and loss against the step; returns ``(fig, axes)``."""
        from ..plotting import axes_or_new

        fig, axes = axes_or_new(axes, 3, size=(13, 3.6))
        steps = np.array([r.step for r in self.records])
        if self.records and self.records[0].eig is not None:
            lam = np.array([r.eig.values for r in self.records])
            for i in range(lam.shape[1]):
                axes[0].plot(steps, lam[:, i], marker=".", label=f"λ{i + 1}")
            axes[0].set_title(f"top-{lam.shape[1]} Hessian eigenvalues")
            axes[0].set_xlabel("step")
            if lam.shape[1] <= 6:
                axes[0].legend(fontsize=7)
        tr = [(r.step, r.trace.estimate, r.trace.stderr) for r in self.records if r.trace is not None]
        if tr:
            s, v, e = map(np.array, zip(*tr))
            axes[1].errorbar(s, v, yerr=2 * e, marker=".", capsize=2)
            axes[1].set_title("trace (± 2 s.e.)")
            axes[1].set_xlabel("step")
        axes[2].plot(steps, [r.loss for r in self.records], marker=".")
        axes[2].set_yscale("log")
        axes[2].set_title("loss")
        axes[2].set_xlabel("step")
        fig.tight_layout()
        return fig, axes


__all__ = ["CurvatureTracker", "OPTION_DEFAULTS"]
