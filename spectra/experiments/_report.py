"""The output folder of one experiment run: progress units, arrays, figures, results.json, report.md.

Every file is written atomically (``spectra._io``), so a run killed at any
moment leaves only whole files.  Long experiments save *units* of work
(one width, one chunk of initialisations, one checkpoint) under
``progress/`` as they finish; ``resume=True`` loads finished units instead of
recomputing them, and refuses if the configuration changed.  Units are
deterministic functions of (config, seed), so a resumed run equals an
uninterrupted one.

Layout of ``OUT/<figure>/``::

    results.json      measured numbers, config, seed, timings, versions
    report.md         the paper's claims beside our measurements
    arrays.npz        raw arrays (eigenvalues, histories, ...)
    *.png             figures
    progress/         finished units (kept, so a finished run can be re-reported)

>>> import tempfile
>>> rd = RunDir(tempfile.mkdtemp(), "figX", config={"a": 1}, seed=0)
>>> rd.save_unit("w2", {"eig": np.arange(3.0)}, {"loss": 0.5})
>>> rd.has_unit("w2"), rd.load_unit("w2")[1]["loss"]
(True, 0.5)
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_save_npz, atomic_write_bytes, atomic_write_json, atomic_write_text, to_json
from ..errors import InvalidInputError, ResultFormatError

RESULTS = "results.json"
REPORT = "report.md"
ARRAYS = "arrays.npz"
PROGRESS = "progress"
CLOCK = "clock.json"  # in progress/: time spent by earlier processes of a resumed run
_UNIT_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


CANNOT_SHOW = "quick scale cannot show this"


@dataclass
class Claim:
    """One row of report.md: what the paper says, what we measured, and the verdict with its statistics.

    ``agrees``: True / False, or None when the paper makes no testable
    statement (``verdict`` then says why: ``"n/a"`` or :data:`CANNOT_SHOW`).
    ``effect`` (the effect size), ``seeds`` (how many independent runs the
    verdict rests on) and ``test`` (the test or interval and its outcome) are
    what a verdict must name; ``runs`` says which runs it uses (converged ones
    only, or that it includes others).
    """

    topic: str
    paper: str
    ours: str
    agrees: bool | None = None
    note: str = ""
    effect: str = ""
    seeds: int | str = ""
    test: str = ""
    runs: str = ""
    verdict: str = ""

    def __post_init__(self) -> None:
        if not self.verdict:
            self.verdict = {True: "agrees", False: "differs", None: "n/a"}[self.agrees]

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "paper": self.paper, "ours": self.ours, "agrees": self.agrees,
                "verdict": self.verdict, "effect": self.effect, "seeds": self.seeds, "test": self.test,
                "runs": self.runs, "note": self.note}


def cannot_show(claim: Claim, why: str) -> Claim:
    """The same claim without a verdict: at quick scale the measurement cannot decide it (``why``)."""
    claim.agrees, claim.verdict = None, CANNOT_SHOW
    claim.note = f"{why}. {claim.note}".strip()
    return claim


class RunDir:
    """``root/name``: where one experiment writes; see the module docstring.

    A folder that already holds a result (or progress) is refused unless
    ``resume`` (continue it; the config must match) or ``force`` (delete it
    first; only folders that look like ours are deleted).
    """

    def __init__(self, root: str | Path, name: str, *, config: dict[str, Any], seed: int,
                 resume: bool = False, force: bool = False):
        self.root = Path(root)
        self.name = name
        self.path = self.root / name
        self.config = config
        self.seed = seed
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()
        if self.path.exists() and not self.path.is_dir():
            raise InvalidInputError(f"{self.path} exists and is not a folder")
        fingerprint = {"figure": name, "seed": seed, "config": _plain(config)}
        occupied = self.path.is_dir() and any(self.path.iterdir())
        ours = (self.path / RESULTS).exists() or (self.path / PROGRESS).is_dir()
        if occupied and force:
            if not ours:
                raise InvalidInputError(
                    f"{self.path} is not empty and does not look like a spectra experiment folder; "
                    "refusing to delete it even with force — choose another --out"
                )
            shutil.rmtree(self.path)
            occupied = False
        if occupied and not resume:
            raise InvalidInputError(
                f"{self.path} already holds files from an earlier run; pass resume=True (--resume) to "
                "continue it, force=True (--force) to replace it, or choose another --out"
            )
        self.progress = self.path / PROGRESS
        self.progress.mkdir(parents=True, exist_ok=True)
        fp_file = self.progress / "config.json"
        if fp_file.exists():
            try:
                old = json.loads(fp_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ResultFormatError(f"{fp_file} is corrupt ({exc}); use --force to start over") from exc
            if old != json.loads(to_json(fingerprint)):
                raise InvalidInputError(
                    f"cannot resume {self.path}: it was started with a different configuration or seed "
                    f"(saved {old.get('config')}, seed {old.get('seed')}); use --force to start over"
                )
        else:
            atomic_write_json(fp_file, fingerprint)
        # Time spent by earlier processes of a resumed run, up to their last saved unit
        # (work after it was lost and is redone, so it is counted again here).
        self.earlier = {"wall_s": 0.0, "cpu_s": 0.0, "processes": 0}
        clock = self.progress / CLOCK
        if clock.exists():
            try:
                self.earlier = {**self.earlier, **json.loads(clock.read_text(encoding="utf-8"))}
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ResultFormatError(f"{clock} is corrupt ({exc}); use --force to start over") from exc

    # ------------------------------------------------------------------ units
    def _unit_paths(self, key: str) -> tuple[Path, Path]:
        if not _UNIT_RE.match(key):
            raise ValueError(f"bad unit key {key!r}")
        return self.progress / f"{key}.npz", self.progress / f"{key}.json"

    def has_unit(self, key: str) -> bool:
        # The JSON is written after the arrays, so its presence marks a whole unit.
        return self._unit_paths(key)[1].exists()

    def save_unit(self, key: str, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
        npz, js = self._unit_paths(key)
        atomic_save_npz(npz, **{k: np.asarray(v) for k, v in arrays.items()})
        atomic_write_json(js, meta)
        wall, cpu = self._elapsed()
        atomic_write_json(self.progress / CLOCK, {"wall_s": wall, "cpu_s": cpu,
                                                  "processes": self.earlier["processes"] + 1})

    def _elapsed(self) -> tuple[float, float]:
        """Wall and CPU seconds of the whole run so far, earlier processes included."""
        return (self.earlier["wall_s"] + time.perf_counter() - self.started,
                self.earlier["cpu_s"] + time.process_time() - self.cpu_started)

    def load_unit(self, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        npz, js = self._unit_paths(key)
        try:
            meta = json.loads(js.read_text(encoding="utf-8"))
            with np.load(npz, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            raise ResultFormatError(f"progress unit {key!r} in {self.progress} is corrupt ({exc}); "
                                    "delete it or use --force") from exc
        return arrays, meta

    # ---------------------------------------------------------------- outputs
    def save_arrays(self, arrays: dict[str, Any], name: str = ARRAYS) -> Path:
        path = self.path / name
        atomic_save_npz(path, **{k: np.asarray(v) for k, v in arrays.items()})
        return path

    def save_figure(self, fig: Any, name: str, dpi: int = 110) -> Path:
        """Save a matplotlib figure as PNG (atomically)."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        path = self.path / name
        atomic_write_bytes(path, buf.getvalue())
        return path

    def finish(self, *, title: str, scale: str, measured: dict[str, Any], claims: list[Claim],
               notes: list[str] | None = None, tables: list[str] | None = None,
               training: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write results.json and report.md; return the results dict."""
        from ..result import versions

        files = sorted(p.name for p in self.path.iterdir() if p.is_file() and p.name not in (RESULTS, REPORT))
        wall, cpu = self._elapsed()
        results = {
            "format": "spectra-experiment",
            "format_version": 1,
            "figure": self.name,
            "title": title,
            "scale": scale,
            "seed": self.seed,
            "config": _plain(self.config),
            "measured": _plain(measured),
            "claims": [c.to_dict() for c in claims],
            "training": _plain(training) if training else None,
            "notes": notes or [],
            "files": files + [RESULTS, REPORT],
            # Over all processes of a resumed run (up to each one's last saved unit).
            "wall_time_s": wall,
            # CPU seconds (all threads): a fairer measure than wall time when the machine is shared.
            "cpu_time_s": cpu,
            "processes": self.earlier["processes"] + 1,
            "wall_time_this_process_s": time.perf_counter() - self.started,
            "versions": versions(),
        }
        atomic_write_text(self.path / REPORT, render_report(results, tables or []))
        atomic_write_json(self.path / RESULTS, results)
        return json.loads(to_json(results))


def render_report(results: dict[str, Any], tables: list[str]) -> str:
    """report.md: the claims table with each verdict's statistics, training, tables, notes and files."""
    shown = {"agrees": "agrees", "differs": "**differs**"}
    lines = [f"# {results['figure']}: {results['title']}", "",
             f"Scale `{results['scale']}`, seed {results['seed']}, "
             f"{results['wall_time_s']:.1f} s wall time, {results['cpu_time_s']:.1f} s CPU time"
             + (f" (over {results['processes']} processes: the run was resumed)." if results.get("processes", 1) > 1
                else "."), ""]
    training = results.get("training")
    if training:
        lines += ["## Training", "", training_sentence(training), ""]
    lines += ["## The paper's claims beside our measurements", "",
              "| topic | paper | measured here | effect size | seeds | test | runs used | verdict | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in results["claims"]:
        verdict = c.get("verdict") or {True: "agrees", False: "differs", None: "n/a"}[c["agrees"]]
        cells = [c["topic"], c["paper"], c["ours"], c.get("effect", ""), c.get("seeds", ""), c.get("test", ""),
                 c.get("runs", ""), shown.get(verdict, verdict), c["note"]]
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    for table in tables:
        lines += ["", table]
    if results["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    lines += ["", "## Configuration", "", "```json", json.dumps(results["config"], indent=1), "```",
              "", "## Files", ""] + [f"- `{f}`" for f in results["files"]]
    return "\n".join(lines) + "\n"


def percent(fraction: float) -> str:
    """A share as a percentage that reads 100 % (or 0 %) only when it is exactly that.

    >>> percent(996 / 1000), percent(1.0), percent(0.5)
    ('99.6%', '100%', '50.0%')
    """
    return f"{fraction:.0%}" if fraction in (0.0, 1.0) else f"{fraction:.1%}"


def training_sentence(training: dict[str, Any]) -> str:
    """One paragraph: how many trained runs converged, to which tolerance, by which rule, and the rest."""
    if training.get("text"):
        return training["text"]
    parts = [f"{training['converged']} of {training['runs']} trained runs converged "
             f"({percent(training['fraction'])}): gradient norm below {training['tolerance']}."]
    if training.get("rule"):
        parts.append(training["rule"])
    if training.get("not_converged"):
        parts.append("Not converged: " + "; ".join(training["not_converged"]) + ".")
    if training.get("verdicts"):
        parts.append(training["verdicts"])
    return " ".join(parts)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats printed with 4 significant digits."""
    def fmt(x: Any) -> str:
        if isinstance(x, (float, np.floating)):
            return "nan" if not math.isfinite(x) else f"{x:.4g}"
        return str(x)

    out = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(fmt(x)) for x in row) + " |" for row in rows]
    return "\n".join(out)


def _cell(x: Any) -> str:
    """Text for one markdown table cell: pipes escaped, on one line."""
    return str(x).replace("|", "\\|").replace("\n", " ")


def _plain(obj: Any) -> Any:
    """JSON-ready copy (numpy scalars/arrays to Python)."""
    return json.loads(to_json(obj))


def load_results(path: str | Path) -> dict[str, Any]:
    """Read an experiment folder's results.json (no pickle)."""
    f = Path(path) / RESULTS
    if not f.is_file():
        raise ResultFormatError(f"{path} holds no experiment result (missing {RESULTS})")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultFormatError(f"{f} is corrupt: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != "spectra-experiment":
        raise ResultFormatError(f"{f} is not a spectra experiment result")
    if not isinstance(data.get("format_version"), int) or data["format_version"] > 1:
        raise ResultFormatError(f"{f} has format version {data.get('format_version')!r}; this spectra reads 1")
    return data
