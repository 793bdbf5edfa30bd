"""Nothing lost: killed runs resume to the same result, files are whole or absent, nothing is unpickled.

Kill and resume (subprocesses, small sizes): an experiment is started, killed
with SIGKILL as soon as its first progress unit is on disk, resumed with
``resume=True`` / ``--resume``, and compared with an uninterrupted run of the
same configuration and seed: the same arrays bit for bit, and the units
finished before the kill are not recomputed (their files are untouched).

Atomic writes: :mod:`spectra._io` leaves the old file or the new one, never a
mix, and gives files the mode ``open()`` would; a scan of the sources checks
that every write goes through it and every load refuses pickles.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from spectra import _io

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}

# fig8 (many initialisations), one init per progress unit, few GD steps
FIG8 = ("import sys; import spectra.experiments as E; "
        "E.run('fig8', sys.argv[1], scale='tiny', quiet=True, resume=sys.argv[2] == 'resume', "
        "overrides=dict(num_inits=3, chunk=1, max_steps=150, check_loop=0))")
# fig7 (the spectrum at checkpoints during GD), through the command line
FIG7 = [sys.executable, "-m", "spectra", "reproduce", "fig7", "--scale", "tiny", "--quiet", "--out"]
# the uninterrupted references, both in one process (what `spectra reproduce fig7` runs, without the parser)
REFERENCE = FIG8 + "; E.run('fig7', sys.argv[1], scale='tiny', quiet=True)"


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def _kill_on_markers(jobs: dict[str, tuple[subprocess.Popen, Path]], timeout: float = 240.0) -> None:
    """SIGKILL each job's process as soon as its marker file exists; it must still be running then.

    All jobs are watched together: whichever reaches its marker first is killed first.
    """
    pending = dict(jobs)
    deadline = time.monotonic() + timeout
    while pending:
        for name, (proc, marker) in list(pending.items()):
            if marker.exists():
                if proc.poll() is not None:
                    pytest.fail(f"{name} finished ({proc.returncode}) before it could be killed")
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                assert proc.returncode == -signal.SIGKILL
                del pending[name]
            elif proc.poll() is not None:
                pytest.fail(f"{name} ended ({proc.returncode}) before {marker.name} appeared: "
                            f"{proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no marker within {timeout:.0f} s for {', '.join(pending)}")
        time.sleep(0.005)


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()
            if p.suffix in (".npz", ".json") and not p.name.startswith(".")}


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if "seconds" not in k and "wall_time" not in k}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Run every scenario side by side (they mostly wait on imports), then hand out the folders."""
    base = tmp_path_factory.mktemp("kill")
    for name in ("full", "fig8-killed", "fig7-killed"):
        (base / name).mkdir()
    procs = {
        "full": _start([sys.executable, "-c", REFERENCE, "out", "fresh"], base / "full"),
        "fig8-killed": _start([sys.executable, "-c", FIG8, "out", "fresh"], base / "fig8-killed"),
        "fig7-killed": _start([*FIG7, "out"], base / "fig7-killed"),
    }
    try:
        progress = {fig: base / f"{fig}-killed" / "out" / fig / "progress" for fig in ("fig8", "fig7")}
        _kill_on_markers({"fig8": (procs["fig8-killed"], progress["fig8"] / "inits_c00000.json"),
                          "fig7": (procs["fig7-killed"], progress["fig7"] / "s0_ckpt_000000010.json")})
        state = {fig: (_stamps(folder), (folder.parent / "results.json").exists()) for fig, folder in progress.items()}
        procs["fig8-resumed"] = _start([sys.executable, "-c", FIG8, "out", "resume"], base / "fig8-killed")
        procs["fig7-resumed"] = _start([*FIG7, "out", "--resume"], base / "fig7-killed")
        for name in ("full", "fig8-resumed", "fig7-resumed"):
            _finish(procs[name])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return base, state


@pytest.mark.parametrize("figure", ["fig8", "fig7"])
def test_a_killed_experiment_resumes_to_the_uninterrupted_result(killed_and_resumed, figure):
    base, state = killed_and_resumed
    stamps_at_kill, finished_at_kill = state[figure]
    full, resumed = base / "full" / "out" / figure, base / f"{figure}-killed" / "out" / figure
    assert not finished_at_kill, "the kill came too late to test anything"
    assert stamps_at_kill, "no progress unit was on disk at the kill"

    # finished units were loaded, not recomputed: their files were not rewritten
    after = _stamps(resumed / "progress")
    for name, stamp in stamps_at_kill.items():
        if name == "clock.json":
            continue  # the run's time bookkeeping, rewritten by design at every saved unit
        assert after[name] == stamp, f"{name} was rewritten on resume"
    assert set(after) == set(_stamps(full / "progress"))  # and the missing ones were done

    a, b = _npz(full / "arrays.npz"), _npz(resumed / "arrays.npz")
    assert a.keys() == b.keys()
    for key in a:
        if "seconds" not in key:
            assert np.array_equal(a[key], b[key]), f"{key} differs after resume"
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (full, resumed))
    assert _without_timings(ra["measured"]) == _without_timings(rb["measured"])
    assert ra["config"] == rb["config"] and ra["seed"] == rb["seed"]


# ------------------------------------------------------------------ atomic writes
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_files_get_the_mode_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        _io.atomic_write_text(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as fh:
            fh.write("x")
        _io.atomic_save_npz(tmp_path / "c.npz", x=np.arange(3))
    finally:
        os.umask(old)
    expected = (tmp_path / "b.txt").stat().st_mode & 0o777
    assert expected == 0o666 & ~umask
    for name in ("a.txt", "c.npz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name
    assert _io._umask() == old  # reading the umask did not change it


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    _io.atomic_write_json(target, {"version": 1})

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        _io.atomic_write_json(target, {"version": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    with pytest.raises(TypeError, match="dtype object"):
        _io.atomic_save_npz(tmp_path / "bad.npz", x=np.array([{"a": 1}], dtype=object))
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


# ------------------------------------------------------------------ source scan
SOURCES = sorted(p for d in ("spectra", "plugins") for p in (ROOT / d).rglob("*.py"))
WRITER = ROOT / "spectra" / "_io.py"  # the one place that may open files for writing


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def _keyword(node: ast.Call, name: str):
    for kw in node.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return "missing"


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    where = path.relative_to(ROOT)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "shelve") for n in names):
                found.append(f"{where}:{node.lineno}: imports a pickle module")
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    for node, owner, name in _calls(tree):
        line = f"{where}:{node.lineno}"
        if name == "load" and owner == "torch" and _keyword(node, "weights_only") is not True:
            found.append(f"{line}: torch.load without weights_only=True")
        if name == "load" and owner == "np" and _keyword(node, "allow_pickle") is not False:
            found.append(f"{line}: np.load without allow_pickle=False")
        if name in ("loads", "load") and owner in ("pickle", "yaml"):
            found.append(f"{line}: {owner}.{name}")
        if path == WRITER:
            continue
        if name in ("save", "savez", "savez_compressed", "savetxt") and owner in ("np", "numpy", "torch"):
            found.append(f"{line}: {owner}.{name} writes in place (use spectra._io)")
        if name in ("write_text", "write_bytes") or (name == "dump" and owner == "json"):
            found.append(f"{line}: {name} writes in place (use spectra._io)")
        if name == "open" and not owner:
            mode = node.args[1].value if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) else \
                _keyword(node, "mode")
            if isinstance(mode, str) and set(mode) & set("wax+"):
                found.append(f"{line}: open(..., {mode!r}) writes in place (use spectra._io)")
        if name == "savefig":
            # allowed only into a buffer that the same function hands to atomic_write_bytes
            func = next((f for f in functions if f.lineno <= node.lineno <= f.end_lineno), None)
            names = {n for _, _, n in _calls(func)} if func is not None else set()
            if "atomic_write_bytes" not in names:
                found.append(f"{line}: savefig to a path (save into io.BytesIO, then atomic_write_bytes)")
    return found


def test_sources_write_atomically_and_never_unpickle():
    assert len(SOURCES) > 20 and WRITER in SOURCES
    problems = [p for path in SOURCES for p in _problems(path)]
    assert problems == []


def test_the_scan_catches_what_it_should(tmp_path, monkeypatch):
    bad = ROOT / "spectra" / "_scan_fixture.py"  # never written: parsed from a string
    source = ("import pickle\nimport numpy as np, torch, json\n"
              "def f(p, fig):\n    np.load(p)\n    torch.load(p)\n    np.save(p, 1)\n"
              "    open(p, 'w')\n    json.dump({}, open(p, mode='a'))\n    fig.savefig(p)\n    p.write_text('x')\n"
              "def g(p):\n    np.load(p, allow_pickle=False)\n    torch.load(p, weights_only=True)\n    open(p)\n")
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source)
    found = _problems(bad)
    kinds = ["imports a pickle", "np.load without", "torch.load without", "np.save", "open(..., 'w')",
             "open(..., 'a')", "dump writes", "savefig to a path", "write_text"]
    for kind in kinds:
        assert any(kind in f for f in found), (kind, found)
    assert len(found) == len(kinds), found
