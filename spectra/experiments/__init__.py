"""The paper's experiments, one function per figure: ``run("fig4", "runs", scale="quick")``.

Each run writes into ``OUT/<figure>/``: PNG figure(s), raw arrays (``.npz``),
``results.json`` (measured numbers, config, seed, timings, versions) and
``report.md`` (the paper's claims beside our measurements).  Scales:

* ``"quick"``: small sizes; all figures together take minutes on 2 cores;
* ``"paper"``: the paper's sizes (hours for some figures);
* ``"tiny"``: seconds per figure, for tests and smoke runs.

Long runs save progress as they go; ``resume=True`` continues an interrupted
run and gives the same numbers as an uninterrupted one.

>>> sorted(EXPERIMENTS)[:3]
['fig1', 'fig10', 'fig2']
"""

from __future__ import annotations

import importlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import InvalidInputError, close_matches, did_you_mean

SCALES = ("tiny", "quick", "paper")


@dataclass(frozen=True)
class Experiment:
    """A figure: its title and where its function and configs live."""

    name: str
    title: str
    module: str
    function: str

    def load(self) -> tuple[Callable[..., dict[str, Any]], dict[str, dict[str, Any]]]:
        mod = importlib.import_module(f"{__name__}.{self.module}")
        return getattr(mod, self.function), mod.CONFIGS


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in [
        Experiment("fig1", "MNIST 784-k-10: spectra after GD for growing k, and the 784-2-10 Hessian",
                   "mnist_width", "run_fig1"),
        Experiment("fig2", "Random inputs vs MNIST: spectra at initialisation and after training",
                   "random_vs_mnist", "run_fig2"),
        Experiment("fig3", "The blob data", "blobs", "run_fig3"),
        Experiment("fig4", "Blob nets of growing size, cross-entropy: spectra after GD", "blobs", "run_fig4"),
        Experiment("fig5", "Blob nets trained with the mean square loss", "blobs", "run_fig5"),
        Experiment("fig6", "Hessian heatmaps of small trained blob nets", "blobs", "run_fig6"),
        Experiment("fig7", "The spectrum during training", "training_evolution", "run_fig7"),
        Experiment("fig8", "Top eigenvalue over many initialisations", "many_inits", "run_fig8"),
        Experiment("fig9", "Top eigenvalues against the blob standard deviation", "std_sweep", "run_fig9"),
        Experiment("fig10", "Loss along lines between GD and SGD solutions", "interpolation", "run_fig10"),
        # beyond the paper (not part of "all", which reproduces the paper's figures)
        Experiment("decomposition", "Hessian = Gauss-Newton + residual: which part holds the outliers",
                   "decomposition", "run_decomposition"),
        Experiment("classes", "Outlier count against the number of classes (MNIST subsets, C = 2, 5, 10)",
                   "classes", "run_classes"),
        Experiment("bulk-vs-outliers", "Does the bulk follow the architecture and the outliers the data? "
                   "Data x width design", "bulk_outliers", "run_bulk_outliers"),
        Experiment("fig4-outliers", "When do two isolated eigenvalues appear? Loss x init scale x std x stop, "
                   "with H = G + R and the class-mean explanation", "outlier_factors", "run_outlier_factors"),
    ]
}


def config(name: str, scale: str = "quick") -> dict[str, Any]:
    """The configuration ``name`` runs with at ``scale`` (a copy)."""
    exp = _get(name)
    _check_scale(scale)
    import copy

    return copy.deepcopy(exp.load()[1][scale])


def _get(name: str) -> Experiment:
    """The experiment registered as ``name`` (the built-ins above are registered by a default plugin)."""
    from .. import plugins

    return plugins.get_entry("experiments", name).factory


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise InvalidInputError(f"scale must be one of {', '.join(SCALES)}; got {scale!r}")


def run(name: str, out: str | Path, scale: str = "quick", seed: int = 0, resume: bool = False,
        quiet: bool = False, force: bool = False, overrides: dict[str, Any] | None = None,
        threads: int | None = None) -> dict[str, Any]:
    """Run figure ``name`` (or ``"all"``) into ``out/<figure>/``; return its results dict.

    For ``"all"`` the return value maps each figure to its results.
    ``overrides`` replaces entries of the scale's configuration (recorded in
    results.json).  An output folder that already holds a run is refused
    unless ``resume`` (continue it) or ``force`` (replace it).  ``threads``
    sets torch's thread count for the run (default: the figure's own choice —
    1 for the tiny blob nets — else torch's current setting).
    """
    from .. import plugins
    from ..validation import check_seed
    from ._common import Context, torch_threads
    from ._report import RunDir

    _check_scale(scale)
    seed = check_seed(seed)
    if name == "all":
        started = time.perf_counter()
        results = {n: run(n, out, scale, seed, resume, quiet, force, threads=threads)
                   for n in EXPERIMENTS if re.fullmatch(r"fig\d+", n)}
        _write_index(Path(out), results, time.perf_counter() - started)
        return results
    exp = _get(name)
    name = plugins.get_entry("experiments", name).name  # as registered, whatever the case typed
    fn, configs = exp.load()
    cfg = dict(configs[scale])
    for key, value in (overrides or {}).items():
        if key not in cfg:
            raise InvalidInputError(f"unknown setting {key!r} for {name}; known: {', '.join(sorted(cfg))}"
                                    f"{did_you_mean(close_matches(key, cfg))}")
        cfg[key] = value
    rd = RunDir(out, name, config=cfg, seed=seed, resume=resume, force=force)
    ctx = Context(name=name, scale=scale, seed=seed, cfg=cfg, rd=rd, quiet=quiet)
    ctx.log(f"{exp.title} (scale {scale}, seed {seed}) -> {rd.path}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InvalidInputError(f"threads must be a positive integer; got {threads!r}")
    with torch_threads(threads if threads is not None else cfg.get("threads")):
        part = fn(ctx)
    results = rd.finish(title=exp.title, scale=scale, measured=part["measured"], claims=part["claims"],
                        notes=part.get("notes"), tables=part.get("tables"), training=part.get("training"))
    ctx.log(f"done in {results['wall_time_s']:.1f}s")
    return results


def _write_index(out: Path, results: dict[str, dict[str, Any]], seconds: float) -> None:
    from .._io import atomic_write_text

    lines = ["# spectra reproduce all", "", f"Total wall time {seconds:.1f} s.", "",
             "| figure | title | seconds | converged runs | claims agreeing | claims differing | not decided |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        agree = sum(1 for c in r["claims"] if c["agrees"] is True)
        differ = [c["topic"] for c in r["claims"] if c["agrees"] is False]
        open_ = [f"{c['topic']} ({c.get('verdict', 'n/a')})" for c in r["claims"] if c["agrees"] is None]
        t = r.get("training")
        conv = f"{t['converged']}/{t['runs']}" if t and t.get("fraction") is not None else "-"
        lines.append(f"| [{name}]({name}/report.md) | {r['title']} | {r['wall_time_s']:.1f} | {conv} | {agree} | "
                     f"{', '.join(differ) or '-'} | {', '.join(open_) or '-'} |")
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")


__all__ = ["EXPERIMENTS", "Experiment", "SCALES", "config", "run"]
