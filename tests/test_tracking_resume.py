"""Resuming a curvature track: a killed train + tracker run, resumed, gives the uninterrupted table.

The reference is an uninterrupted run; the interrupted one is stopped by an
exception raised from a callback (or from one of the three file writes) after
some records, then resumed in a fresh tracker from a checkpoint of the weights.
Tables are compared row by row: same (step, quantity, index) keys, no
duplicates, eigenvalues equal to 1e-10 (float64, tiny net), product counts
equal (so the warm start was restored, not redone cold).
"""

from __future__ import annotations

import copy
import csv
import doctest
import io
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import spectra
from spectra import _io, tracking
from spectra.tracking import store
from spectra.errors import InvalidInputError, ResultFormatError
from spectra.tracking import CSV, JSON, NPZ, CurvatureTracker

N = 16  # training steps
SETTINGS = dict(k=2, every=4, trace="hutchpp", trace_matvecs=9, tol=1e-8)  # records at 0, 4, 8, 12, 16
EXACT = {"eig_matvecs", "eig_warm", "trace_matvecs", "eig_matvecs_cold"}  # counts: equal, not close


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(48, 2, generator=gen, dtype=torch.float64)
    return X, (X[:, 0] * X[:, 1] > 0).long()


DATA = make_data()
TRAIN = {"gd": dict(lr=0.5), "sgd": dict(optimizer="sgd", lr=0.3, batch_size=16, seed=3)}


class Killed(Exception):
    """Stands for the process being killed."""


class Checkpoints:
    """A user's checkpointing callback: the weights at each call (what torch.save would keep)."""

    def __init__(self):
        self.saved: dict[int, dict] = {}

    def __call__(self, model, info):
        self.saved[int(info["step"])] = copy.deepcopy(model.state_dict())

    def latest(self) -> int:
        return max(self.saved, default=0)


def kill_after(tracker: CurvatureTracker, records: int):
    def killer(model, info):
        if len(tracker.records) == records:
            raise Killed(f"killed at step {info['step']}")
    return killer


def train(model, tracker, *callbacks, start=0, optimizer="gd"):
    return spectra.train(model, DATA, grad_tol=0, start_step=start, max_steps=N - start,
                         callbacks=[tracker, *callbacks] if callbacks else tracker,
                         callback_steps=tracker.schedule(N), **TRAIN[optimizer])


def resume(out, ckpt: Checkpoints, optimizer="gd", **settings) -> CurvatureTracker:
    """What a rerun does: a fresh model from the latest checkpoint, the same tracker call plus resume=True."""
    model = make_model()
    step = ckpt.latest()
    if ckpt.saved:  # else no checkpoint was written: the rerun starts from the initial weights
        model.load_state_dict(ckpt.saved[step])
    tracker = CurvatureTracker(DATA, out=out, resume=True, **{**SETTINGS, **settings})
    train(model, tracker, start=step, optimizer=optimizer)
    return tracker


def table(out) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO((out / CSV).read_text())))
    return [r for r in rows if r["quantity"] != "seconds"]  # timings differ between runs


def assert_same_table(a, b) -> None:
    ta, tb = table(a), table(b)
    keys = [(r["step"], r["quantity"], r["index"]) for r in tb]
    assert len(set(keys)) == len(keys), "duplicate rows"
    assert [(r["step"], r["quantity"], r["index"]) for r in ta] == keys
    for ra, rb in zip(ta, tb):
        if ra["quantity"] in EXACT:
            assert ra["value"] == rb["value"], (ra, rb)
        else:
            assert float(rb["value"]) == pytest.approx(float(ra["value"]), rel=1e-10, abs=1e-12), (ra, rb)
    with np.load(a / NPZ, allow_pickle=False) as za, np.load(b / NPZ, allow_pickle=False) as zb:
        np.testing.assert_allclose(zb["eigenvalues"], za["eigenvalues"], rtol=1e-10, atol=0)
        np.testing.assert_array_equal(zb["step"], za["step"])
    for out in (a, b):  # and the three files are one snapshot
        assert json.loads((out / JSON).read_text())["records"] == len(CurvatureTracker.load(out).records)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, one per optimizer: {optimizer: folder}."""
    refs = {}
    for optimizer in TRAIN:
        out = tmp_path_factory.mktemp(f"ref-{optimizer}")
        tracker = CurvatureTracker(DATA, out=out, **SETTINGS)
        train(make_model(), tracker, optimizer=optimizer)
        assert [r.step for r in tracker.records] == [0, 4, 8, 12, 16]
        refs[optimizer] = out
    return refs


# ------------------------------------------------------------------ killed, resumed, compared
@pytest.mark.parametrize("optimizer", ["gd", "sgd"])
@pytest.mark.parametrize("records, checkpoint", [
    (2, "at the last record"),        # the checkpoint callback ran after the tracker's record
    (3, "one record behind"),         # killed between the tracker's record and the checkpoint
    (1, "one record behind"),         # killed right after the first record
])
def test_killed_training_resumes_to_the_uninterrupted_table(tmp_path, reference, optimizer, records, checkpoint):
    ckpt, tracker = Checkpoints(), CurvatureTracker(DATA, out=tmp_path, **SETTINGS)
    order = [ckpt, kill_after(tracker, records)]
    if checkpoint == "one record behind":
        order.reverse()
    with pytest.raises(Killed):
        train(make_model(), tracker, *order, optimizer=optimizer)
    assert len(CurvatureTracker.load(tmp_path).records) == records

    resumed = resume(tmp_path, ckpt, optimizer)
    assert resumed.resumed == records and resumed.repaired == []
    assert [r.step for r in resumed.records] == [0, 4, 8, 12, 16]
    first_new = resumed.records[records]
    assert first_new.eig.warm  # warm-started from the saved eigenvectors, as the uninterrupted run was
    assert_same_table(reference[optimizer], tmp_path)


@pytest.mark.parametrize("fail", ["csv", "json"])
def test_a_kill_between_the_file_writes_is_detected_and_repaired(tmp_path, reference, monkeypatch, fail):
    # save() writes curvature.npz, then .csv, then .json; the third record's save dies after the npz
    # ("csv") or after the npz and csv ("json"), so the views on disk are one record behind.
    writer = {"csv": "atomic_write_text", "json": "atomic_write_json"}[fail]
    real, calls = getattr(store, writer), []

    def dies_on_third(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise Killed(f"killed before writing {args[0]}")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, writer, dies_on_third)
    ckpt, tracker = Checkpoints(), CurvatureTracker(DATA, out=tmp_path, **SETTINGS)
    with pytest.raises(Killed):
        train(make_model(), tracker, ckpt)
    monkeypatch.undo()
    assert json.loads((tmp_path / JSON).read_text())["records"] == 2  # the json lags the npz
    loaded = CurvatureTracker.load(tmp_path)  # trusts the snapshot, writes nothing
    assert [r.step for r in loaded.records] == [0, 4, 8]
    assert json.loads((tmp_path / JSON).read_text())["records"] == 2
    assert ckpt.latest() == 4  # the kill came inside the tracker's call at step 8

    resumed = resume(tmp_path, ckpt)
    assert resumed.resumed == 3
    assert resumed.repaired == ([CSV, JSON] if fail == "csv" else [JSON])
    assert_same_table(reference["gd"], tmp_path)


def test_the_views_are_rewritten_on_resume_before_anything_else(tmp_path, monkeypatch):
    real, calls = store.atomic_write_json, []

    def dies_on_second(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "atomic_write_json", dies_on_second)
    tracker = CurvatureTracker(DATA, out=tmp_path, **SETTINGS)
    with pytest.raises(Killed):
        train(make_model(), tracker)
    monkeypatch.undo()
    again = CurvatureTracker(DATA, out=tmp_path, resume=True, **SETTINGS)
    assert again.repaired == [JSON] and json.loads((tmp_path / JSON).read_text())["records"] == 2
    assert (tmp_path / CSV).read_text() == again.to_csv()


def test_a_gap_after_resume_is_refused(tmp_path):
    # The last record is step 4 but training restarts from a checkpoint at step 12: step 8 would be lost.
    ckpt, tracker = Checkpoints(), CurvatureTracker(DATA, out=tmp_path, **SETTINGS)
    with pytest.raises(Killed):
        train(make_model(), tracker, kill_after(tracker, 2))
    model = make_model()
    spectra.train(model, DATA, grad_tol=0, max_steps=12, lr=0.5)
    again = CurvatureTracker(DATA, out=tmp_path, resume=True, **SETTINGS)
    with pytest.raises(InvalidInputError, match="scheduled step 8 would never be recorded"):
        train(model, again, start=12)
    assert [r.step for r in CurvatureTracker.load(tmp_path).records] == [0, 4]


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("change, setting", [
    (dict(k=3), "k"),
    (dict(every=5), "every"),
    (dict(every=None, steps=[0, 4, 8, 12, 16]), "steps"),
    (dict(loss="mse"), "loss"),
    (dict(trace=None), "trace"),
    (dict(trace_matvecs=12), "trace_matvecs"),
    (dict(density=True), "density"),
    (dict(density_probes=3), "density_probes"),
    (dict(tol=1e-6), "tol"),
    (dict(compare_cold=True), "compare_cold"),
    (dict(seed=1), "seed"),
])
def test_resume_refuses_other_settings_by_name(reference, tmp_path, change, setting):
    shutil.copytree(reference["gd"], tmp_path, dirs_exist_ok=True)
    with pytest.raises(InvalidInputError, match=rf"cannot resume .*\b{setting} differs"):
        CurvatureTracker(DATA, out=tmp_path, resume=True, **{**SETTINGS, **change})


def test_defaults_given_explicitly_are_the_same_settings(reference, tmp_path):
    shutil.copytree(reference["gd"], tmp_path, dirs_exist_ok=True)
    again = CurvatureTracker(DATA, out=tmp_path, resume=True, seed=0, mix=tracking.DEFAULT_MIX,
                             loss="cross_entropy", **SETTINGS)
    assert again.resumed == 5 and again.last_step == 16 and not again.wants(16) and again.wants(20)


def _rewrite_npz(path, **changes):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value(arrays[key]) if callable(value) else value
    _io.atomic_save_npz(path, **arrays)


def _edited_value(v):
    v = v.copy()
    v[0] += 1e-3
    return v


def _duplicated_rank(index):
    index = index.copy()
    index[np.flatnonzero(index == 2)[0]] = 1  # two "eigenvalue 1" rows in one record
    return index


DAMAGE = {
    "npz garbage": (lambda d: _io.atomic_write_bytes(d / NPZ, b"not a zip archive"), NPZ, "cannot be read"),
    "npz truncated": (lambda d: _io.atomic_write_bytes(d / NPZ, (d / NPZ).read_bytes()[:200]), NPZ, "cannot be read"),
    "npz foreign": (lambda d: _io.atomic_save_npz(d / NPZ, x=np.arange(3)), NPZ, "not a spectra curvature track"),
    "npz newer": (lambda d: _rewrite_npz(d / NPZ, format_version=np.array(99)), NPZ, "format version 99"),
    "npz table edited": (lambda d: _rewrite_npz(d / NPZ, table_index=_duplicated_rank), NPZ, "does not rebuild"),
    # a value changed in the snapshot alone: the views no longer match it
    "npz value edited": (lambda d: _rewrite_npz(d / NPZ, table_value=_edited_value), CSV, "does not match"),
    "npz lengths": (lambda d: _rewrite_npz(d / NPZ, step=lambda s: s[:-1]), NPZ, "disagree in length"),
    "npz no eigenvectors": (lambda d: _rewrite_npz(d / NPZ, last_eigenvectors=None), NPZ, "warm-start state"),
    "npz no settings": (lambda d: _rewrite_npz(d / NPZ, settings=None), NPZ, "damaged .*settings"),
    "npz missing": (lambda d: (d / NPZ).unlink(), NPZ, "is missing"),
    "json garbage": (lambda d: _io.atomic_write_text(d / JSON, "{not json"), JSON, "not valid JSON"),
    "json foreign": (lambda d: _io.atomic_write_json(d / JSON, {"format": "other"}), JSON, "not a spectra curvature"),
    "json other run": (lambda d: _io.atomic_write_json(d / JSON, {**json.loads((d / JSON).read_text()), "records": 7}),
                       JSON, "does not match"),
    "csv edited": (lambda d: _io.atomic_write_text(d / CSV, (d / CSV).read_text().replace("loss,0,", "loss,0,1")),
                   CSV, "does not match"),
    "format 1": (lambda d: (_io.atomic_save_npz(d / NPZ, step=np.arange(5), eigenvalues=np.ones((5, 2))),
                            _io.atomic_write_json(d / JSON, {"format": tracking.TRACK_FORMAT, "format_version": 1})),
                 NPZ, "older spectra .*format 1"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_or_foreign_files_are_named(reference, tmp_path, case):
    damage, name, message = DAMAGE[case]
    shutil.copytree(reference["gd"], tmp_path, dirs_exist_ok=True)
    damage(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ResultFormatError, match=rf"{name}.*{message}"):
        CurvatureTracker.load(tmp_path)
    with pytest.raises(ResultFormatError, match=rf"{name}.*{message}"):
        CurvatureTracker(DATA, out=tmp_path, resume=True, **SETTINGS)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing overwritten


def test_an_occupied_folder_needs_resume_or_force(reference, tmp_path):
    shutil.copytree(reference["gd"], tmp_path, dirs_exist_ok=True)
    with pytest.raises(InvalidInputError, match="already holds a curvature track.*resume=True.*force=True"):
        CurvatureTracker(DATA, out=tmp_path, **SETTINGS)
    fresh = CurvatureTracker(DATA, out=tmp_path, force=True, **SETTINGS)
    assert fresh.records == [] and not any(tmp_path.iterdir())  # the old track is gone
    empty = CurvatureTracker(DATA, out=tmp_path / "new", resume=True, **SETTINGS)  # nothing to resume: fresh
    assert empty.resumed == 0 and empty.wants(0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(resume=True), "need out="),
    (dict(force=True), "need out="),
    (dict(out="x", resume=True, force=True), "give one"),
    (dict(warmstart=False), "unknown CurvatureTracker option.*warmstart"),
    (dict(previous=None), "unknown CurvatureTracker option.*previous"),
])
def test_bad_tracker_arguments(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        CurvatureTracker(DATA, **{**SETTINGS, **kwargs})


def test_record_refuses_old_steps_and_clashing_extras(tmp_path):
    model = make_model()
    tracker = CurvatureTracker(DATA, **SETTINGS)
    tracker.record(model, 5)
    with pytest.raises(InvalidInputError, match="step 5 is not after the last recorded step 5"):
        tracker.record(model, 5)
    with pytest.raises(InvalidInputError, match="trace"):
        tracker.record(model, 6, trace=1.0)
    assert not tracker.wants(4) and not tracker.wants(0) and tracker.wants(8)
    assert [r.step for r in tracker.records] == [5]


# ------------------------------------------------------------------ reading back
def test_load_gives_back_the_table_and_refuses_to_record(reference):
    loaded = CurvatureTracker.load(reference["gd"])
    assert loaded.to_csv() == (reference["gd"] / CSV).read_text()
    assert loaded.matvec_summary() == json.loads((reference["gd"] / JSON).read_text())["matvecs"]
    last = loaded.records[-1].eig
    assert last.vectors.shape == (27, 2) and last.vectors.dtype == torch.float64
    with pytest.raises(InvalidInputError, match="loaded for reading"):
        loaded.record(make_model(), 20)
    with pytest.raises(ResultFormatError, match="not a folder"):
        CurvatureTracker.load(reference["gd"] / CSV)


def test_density_and_cold_records_round_trip(tmp_path):
    options = dict(SETTINGS, trace="exact", density=True, density_probes=2, density_steps=6, compare_cold=True)
    tracker = CurvatureTracker(DATA, out=tmp_path, **options)
    train(make_model(), tracker)
    loaded = CurvatureTracker.load(tmp_path)
    assert tidy_equal(loaded.rows(), tracker.rows()) and any(r.cold_lanczos for r in loaded.records)
    assert loaded.records[-1].density.nodes.shape == (2, 6)
    np.testing.assert_array_equal(loaded.records[-1].density.weights, tracker.records[-1].density.weights)
    assert loaded.matvec_summary() == tracker.matvec_summary()


def tidy_equal(a, b) -> bool:
    return tracking.tidy_csv(a, tracking.TABLE_COLUMNS) == tracking.tidy_csv(b, tracking.TABLE_COLUMNS)


@pytest.mark.parametrize("module", ["spectra.tracking", "spectra.tracking.record", "spectra.tracking.table",
                                    "spectra.tracking.tracker", "spectra.tracking.store",
                                    "spectra.backends.top_eigenpairs"])
def test_doctests(module):
    import importlib

    assert doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS).failed == 0
