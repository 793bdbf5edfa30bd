"""Atomic file writing: a kill never leaves a half-written file that looks whole.

Each writer puts the bytes into a temporary file in the destination folder,
flushes it to disk, then ``os.replace``-s it over the destination (atomic on
POSIX and Windows when both live on one filesystem).  A folder of files that
belong together (a result with its plots) is written through a
:class:`StagedFolder`, which moves them in only when all are written.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> atomic_write_json(os.path.join(d, "x.json"), {"a": 1})
>>> open(os.path.join(d, "x.json")).read().strip()
'{\\n  "a": 1\\n}'
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidInputError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file 0600; give it the mode a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    """The process umask, read without changing it where the OS allows.

    ``os.umask`` can only be read by setting it; for that instant another
    thread would create world-writable files, so Linux's /proc is read first.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # the brief window is private, never world-writable
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # torch scalars
        return obj.item()
    return str(obj)


def to_json(obj: Any) -> str:
    """JSON text with numpy/torch scalars converted; NaN/Inf written as null."""
    return json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False) + "\n"


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.floating) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, to_json(obj))


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``numpy.savez_compressed`` to ``path`` atomically; object arrays refused."""
    for name, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise TypeError(f"array {name!r} has dtype object; only numeric arrays are saved")
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object saved at ``path``; :class:`~spectra.errors.ResultFormatError` if it is not valid JSON
    or not an object (the caller checks that the file exists, and its format).
    """
    from .errors import ResultFormatError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ResultFormatError(f"{path} is corrupt: it is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ResultFormatError(f"{path} is corrupt: not a JSON object")
    return data


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> None:
    """A matplotlib figure as a PNG at ``path``, atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def jsonable(value: Any) -> Any:
    """``value`` with anything JSON cannot hold turned into its ``str`` (tuples become lists).

    >>> jsonable({"sizes": (784, 10), "dtype": np.float64, 3: None})
    {'sizes': [784, 10], 'dtype': "<class 'numpy.float64'>", '3': None}
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


OWNER = ".owner"  # in a staging folder: "pid host" of the run writing it


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


class StagedFolder:
    """Writes into a staging folder next to ``out``; moves the files in only when all are written.

    So a failed or killed run leaves no partial result, and a replaced result
    (``force``) never mixes with files of the old one.  ``outputs``: every
    file a run may write (with ``force``, stale ones from an earlier run are
    removed); ``manifest``: the file that marks a whole result, moved in last.
    ``option`` and ``force_hint`` word the refusals (``"out"``/``"force=True"``
    in Python, ``"--out"``/``"--force"`` on the command line).

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "result"
    >>> with StagedFolder(out, outputs=("a.txt",)) as stage:
    ...     atomic_write_text(stage / "a.txt", "whole")
    ...     out.exists()
    False
    >>> sorted(p.name for p in out.iterdir())
    ['a.txt']
    """

    def __init__(self, out: str | os.PathLike, force: bool = False, *, outputs: tuple[str, ...] = (),
                 manifest: str = "result.json", option: str = "out", force_hint: str = "force=True"):
        self.out = Path(out).expanduser()
        self.force = force
        self.outputs, self.manifest, self.option, self.force_hint = outputs, manifest, option, force_hint
        self.stage: Path | None = None

    def check(self) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise InvalidInputError(f"{self.option} {str(out)!r} exists and is not a folder")
        if out.is_dir() and any(out.iterdir()) and not self.force:
            if (out / self.manifest).exists():
                raise InvalidInputError(f"{self.option} {str(out)!r} already holds a result; pass "
                                        f"{self.force_hint} to replace it")
            raise InvalidInputError(f"{self.option} {str(out)!r} exists and is not empty; choose a new folder or "
                                    f"pass {self.force_hint}")
        # can we write there?  Probe the nearest existing folder now, not after the computation
        probe = out
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".spectra-probe.", dir=probe))
        except OSError as exc:
            raise InvalidInputError(f"{self.option} {str(out)!r}: cannot write in {str(probe)!r} "
                                    f"({exc.strerror or exc})") from None

    def __enter__(self) -> Path:
        self.check()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._sweep_stale_stages()
        self.stage = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial", dir=self.out.parent))
        os.chmod(self.stage, 0o777 & ~_umask())  # mkdtemp makes it private; the result folder should not be
        atomic_write_text(self.stage / OWNER, f"{os.getpid()} {socket.gethostname()}\n")
        return self.stage

    def _sweep_stale_stages(self) -> None:
        """Remove staging folders of earlier runs into the same ``out`` whose process is gone.

        A SIGKILLed run cannot clean up after itself; its stage names its owner
        (pid and host), and a stage whose owner no longer runs on this host is
        deleted.  Stages of live runs, of other hosts, or without an owner file
        are left alone.
        """
        for stage in self.out.parent.glob(f".{glob.escape(self.out.name)}.*.partial"):
            try:
                pid_text, host = (stage / OWNER).read_text(encoding="utf-8").split()
                pid = int(pid_text)
            except (OSError, ValueError):
                continue
            if host != socket.gethostname() or _process_alive(pid):
                continue
            shutil.rmtree(stage, ignore_errors=True)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self.stage is not None
        try:
            if exc_type is None:
                self._commit(self.stage)
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)

    def _commit(self, stage: Path) -> None:
        (stage / OWNER).unlink(missing_ok=True)
        if not self.out.exists():
            os.replace(stage, self.out)  # one rename: the whole result appears at once
            return
        self.check()  # someone may have written there meanwhile
        written = {p.name for p in stage.iterdir()}
        # the manifest goes last, so a folder with a manifest is always whole
        for name in sorted(written, key=lambda n: n == self.manifest):
            os.replace(stage / name, self.out / name)
        for name in self.outputs:
            if name not in written and (self.out / name).exists():
                (self.out / name).unlink()


__all__ = ["OWNER", "StagedFolder", "atomic_save_npz", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "jsonable", "read_json_object", "save_figure", "to_json"]
