"""The ``spectra`` command (also ``python -m spectra``).

Subcommands::

    spectra list [models|datasets|backends|plugins] [--json]
    spectra analyze --model NAME [--model-arg k=v ...] --dataset NAME [--dataset-arg k=v ...]
                    [--loss cross_entropy|mse] [--train gd|sgd --lr .. --grad-tol .. --max-steps ..]
                    [--method auto|exact|arpack|lanczos|<plugin>] [--k .. --which ..]
                    [--probes .. --steps ..] [--seed ..] [--dtype ..] [--out DIR] [--force] [--quiet]
                    [--timeout SECONDS]
    torchrun --nproc-per-node N -m spectra analyze ...   (data-parallel; rank 0 prints and writes)
    spectra show DIR
    spectra demo [--out DIR]

User errors print one line ``spectra: error: ...`` on stderr and exit with
status 2, without a traceback.  Sub-commands come from the ``commands``
registry (the hook ``spectra_register_commands``), so plugins can add more.

>>> main(["list", "backends"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import glob
import importlib
import io
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from .errors import InvalidInputError, PluginError, SpectraError, describe_exception, first_line

RESULT_FILES = ("result.json", "arrays.npz")
SPECTRUM_PNG = "spectrum.png"
TRAINING_JSON = "training.json"
TRAINING_PNG = "training_curve.png"
# Every file ``analyze`` may write: with --force, stale ones from an earlier run are removed.
KNOWN_OUTPUTS = (*RESULT_FILES, SPECTRUM_PNG, TRAINING_JSON, TRAINING_PNG)
_DTYPES = ("float64", "float32")


# ----------------------------------------------------------------- argparse
class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


class _UsageError(Exception):
    pass


def _one_line(text: str) -> str:
    """``text`` with every non-printable character escaped, so an error stays on one line.

    User input reaches error messages, and ``str.splitlines`` (like terminals)
    breaks lines at more than ``\\n``: ``\\r``, ``\\x1e``, ``\\u2028`` ...

    >>> _one_line("unrecognized arguments: a\\x1eb\\nc")
    'unrecognized arguments: a\\\\x1eb\\\\nc'
    """
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def parse_key_value(text: str, option: str) -> tuple[str, Any]:
    """``"sizes=[784,10,10]"`` -> ``("sizes", [784, 10, 10])``; values are JSON where they parse, else strings.

    >>> parse_key_value("hidden=6", "--model-arg"), parse_key_value("activation=tanh", "--model-arg")
    (('hidden', 6), ('activation', 'tanh'))
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise InvalidInputError(f"{option} {text!r} must look like key=value with a name as key "
                                "(e.g. hidden=6 or sizes=[784,10,10])")
    raw = raw.strip()
    if raw == "":
        raise InvalidInputError(f"{option} {text!r} has no value after '='")
    try:
        value = json.loads(raw)
    except ValueError:
        if raw[:1] in "[{\"":  # meant as JSON but malformed: do not guess
            raise InvalidInputError(f"{option} {key}={raw}: the value is not valid JSON") from None
        value = raw
    return key, value


def _collect_pairs(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for text in items or ():
        key, value = parse_key_value(text, option)
        if key in out:
            raise InvalidInputError(f"{option} {key} is given twice")
        out[key] = value
    return out


_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20, "mb": 10**6,
               "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12}


def parse_size(text: str) -> int:
    """``"2GiB"`` -> 2147483648; ``K/M/G/T`` and ``KiB...`` are powers of 1024, ``kB/MB/GB/TB`` of 1000.

    >>> parse_size("500MB"), parse_size("1.5G"), parse_size("4096")
    (500000000, 1610612736, 4096)
    """
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size such as 2GiB, 500MB or 1e9")
    value = float(match.group(1)) * _SIZE_UNITS[unit]
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive memory size")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser: one sub-command per entry of the ``commands`` registry."""
    from . import __version__, plugins

    parser = _Parser(prog="spectra", description="Eigenvalues of neural-network loss Hessians, "
                                                  "exact and approximate.")
    parser.add_argument("--version", action="version", version=f"spectra {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for entry in plugins.registry("commands"):
        try:
            entry.factory(sub)
            added = sub.choices.get(entry.name)
            if added is None or added.get_default("handler") is None:
                raise PluginError(f"command {entry.name!r} from plugin {entry.plugin!r} did not add a "
                                  f"sub-command {entry.name!r} with a handler")
        except Exception as exc:  # noqa: BLE001 - one broken command must not take the others down
            warnings.warn(f"spectra: command {entry.name!r} from plugin {entry.plugin!r} is not available: "
                          f"{describe_exception(exc)}", plugins.PluginWarning, stacklevel=2)
    return parser


def add_list_command(sub: Any) -> argparse.ArgumentParser:
    from .plugins import KINDS

    kinds = (*KINDS, "plugins")
    p = sub.add_parser("list", help="list models, datasets, backends, matrices, losses, ... or plugins",
                       description="List what the plugins provide (models, datasets and backends when no kind "
                                   "is given).")
    p.add_argument("kind", nargs="?", choices=kinds, metavar="KIND", help=f"one of {', '.join(kinds)}")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_list)
    return p


def add_analyze_command(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("analyze", help="compute a Hessian spectrum and save it",
                       description="Build a model and a dataset by name, optionally train, compute the "
                                   "Hessian spectrum, print a summary and save result + plots to --out.")
    _add_analysis_options(p)
    p.set_defaults(handler=cmd_analyze)
    return p


def add_show_command(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("show", help="print the summary and redraw the plots of a saved result",
                       description="Re-print the summary of a saved result and redraw its plots "
                                   f"({SPECTRUM_PNG}, {TRAINING_PNG}) without recomputing.")
    p.add_argument("dir", metavar="DIR", help="a folder written by 'spectra analyze'")
    p.add_argument("--no-plots", action="store_true", help="only print the summary")
    p.set_defaults(handler=cmd_show)
    return p


def add_demo_command(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="a small real analysis in seconds",
                       description="Train the paper's 2-6-6-2 blob net (74 parameters) on two Gaussian "
                                   "blobs with gradient descent, compute its exact Hessian spectrum, "
                                   "print a summary and save the histogram and result files.")
    p.add_argument("--out", default="spectra-demo", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace a result already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_demo)
    return p


def _add_analysis_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, metavar="NAME", help="registered model ('spectra list models')")
    g.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="model argument, JSON value (e.g. sizes=[784,10,10], hidden=6); repeatable")
    g.add_argument("--dataset", required=True, metavar="NAME", help="registered dataset ('spectra list datasets')")
    g.add_argument("--dataset-arg", action="append", metavar="KEY=VALUE",
                   help="dataset argument, JSON value (e.g. n=1000, std=0.5); repeatable")
    g.add_argument("--loss", default="cross_entropy", metavar="NAME",
                   help="registered loss ('spectra list losses'; default: %(default)s)")
    g.add_argument("--dtype", default="float64", choices=_DTYPES,
                   help="dtype of weights and inputs (default: %(default)s, for accurate spectra)")
    g = p.add_argument_group("training (optional, before the analysis)")
    g.add_argument("--train", choices=("gd", "sgd"), help="train first: full-batch GD or minibatch SGD")
    g.add_argument("--lr", type=float, default=0.1, help="step size (default: %(default)s)")
    g.add_argument("--grad-tol", type=float, default=1e-4,
                   help="stop when the gradient norm is below this (default: %(default)s)")
    g.add_argument("--max-steps", type=int, default=10_000, help="most updates (default: %(default)s)")
    g.add_argument("--batch-size", type=int, help="SGD minibatch size (needed with --train sgd)")
    g = p.add_argument_group("analysis")
    g.add_argument("--method", default="auto", metavar="NAME",
                   help="exact, arpack, lanczos, auto, or a plugin backend (default: %(default)s)")
    g.add_argument("--matrix", default="hessian", metavar="NAME",
                   help="the curvature matrix: hessian, ggn, residual, or a plugin's ('spectra list matrices'; "
                        "default: %(default)s)")
    g.add_argument("--k", type=int, default=10, help="arpack: eigenvalues per end (default: %(default)s)")
    g.add_argument("--which", default="largest", choices=("largest", "smallest", "both"),
                   help="arpack: which end(s) (default: %(default)s)")
    g.add_argument("--probes", type=int, default=10, help="lanczos: random probes (default: %(default)s)")
    g.add_argument("--steps", type=int, default=80, help="lanczos: steps per probe (default: %(default)s)")
    g.add_argument("--product-dtype", choices=_DTYPES,
                   help="run the Hessian products in this dtype on a copy of the model (float32: about 2x "
                        "faster on CPU, 1e-7 relative error per product; default: the model's dtype)")
    g.add_argument("--memory-limit", type=parse_size, metavar="SIZE",
                   help="most memory the dense Hessian (exact) or the Lanczos basis may take, e.g. 2GiB, "
                        "500MB (default: the memory free now)")
    g.add_argument("--on-memory", choices=("refuse", "lanczos"), default="refuse",
                   help="when exact or the Lanczos basis does not fit: refuse (default), or fall back to "
                        "lanczos / its low-memory engine (recorded in the result)")
    g.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: torch's choice; 1 is fastest for small nets on a busy machine)")
    g.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="under torchrun: most seconds a rank waits for the others at one synchronisation "
                        "point before all ranks stop (default: torch's process-group timeout, 30 min)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of probes and SGD order, and the default 'seed' of the model and dataset "
                        "factories (default: %(default)s)")
    g = p.add_argument_group("output")
    g.add_argument("--out", metavar="DIR", help="folder for result.json, arrays.npz and PNG plots")
    g.add_argument("--force", action="store_true", help="replace a result already in --out")
    g.add_argument("--quiet", action="store_true", help="no progress bars or status lines")


# ------------------------------------------------------------------- output
def progress_enabled(args: argparse.Namespace) -> bool:
    """Progress bars only for a person watching: not with --quiet, not into a pipe or a log file."""
    stream = sys.stderr
    return not getattr(args, "quiet", False) and bool(getattr(stream, "isatty", lambda: False)())


def _say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr, flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        head = ", ".join(_fmt(v) for v in value[:5])
        return f"[{head}{', ...' if len(value) > 5 else ''}]" + (f" ({len(value)})" if len(value) > 5 else "")
    return str(value)


def format_summary(summary: dict[str, Any]) -> str:
    """The summary dict as an aligned two-column table."""
    width = max((len(k) for k in summary), default=0)
    return "\n".join(f"  {k.ljust(width)}  {_fmt(v)}" for k, v in summary.items())


# --------------------------------------------------------------------- list
def cmd_list(args: argparse.Namespace) -> int:
    from . import plugins

    kinds = [args.kind] if args.kind else ["models", "datasets", "backends"]
    data: dict[str, Any] = {}
    for kind in kinds:
        data[kind] = plugins.list_plugins() if kind == "plugins" else plugins.list_entries(kind)
    if args.json:
        print(json.dumps(data if len(kinds) > 1 else data[kinds[0]], indent=2, default=str))
        return 0
    blocks = []
    for kind, rows in data.items():
        lines = [f"{kind} ({len(rows)}):"]
        if kind == "plugins":
            for r in rows:
                provides = "; ".join(f"{k}: {', '.join(r[k])}" for k in plugins.KINDS if r[k])
                lines.append(f"  {r['name']}  [{r['source']}]  {'ok' if r['ok'] else 'FAILED'}")
                if provides:
                    lines.append(f"      provides {provides}")
                lines.extend(f"      error: {e}" for e in r["errors"])
        else:
            width = max((len(r["name"]) for r in rows), default=0)
            for r in rows:
                lines.append(f"  {r['name'].ljust(width)}  {r['description']}  [{r['plugin']}]")
                if r["aliases"]:
                    lines.append(f"  {' ' * width}  also: {', '.join(r['aliases'])}")
                if r["parameters"]:
                    lines.append(f"  {' ' * width}  parameters: {', '.join(r['parameters'])}")
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    return 0


# ------------------------------------------------------------------ analyze
def _factory_accepts(kind: str, name: str, param: str) -> bool:
    from . import plugins

    return plugins.get_entry(kind, name).accepts(param)


def _with_defaults(kind: str, name: str, kwargs: dict[str, Any], dtype: str, seed: int) -> dict[str, Any]:
    """Pass ``--dtype`` and ``--seed`` to factories that take them, unless given explicitly."""
    out = dict(kwargs)
    for param, value in (("dtype", dtype), ("seed", seed)):
        if param not in out and _factory_accepts(kind, name, param):
            out[param] = value
    return out


def check_fit(model: Any, data: Any, loss: str, model_name: str, dataset_name: str) -> None:
    """One forward pass on two samples: refuse a model that cannot take the dataset's inputs."""
    import torch

    from .losses import resolve_loss

    X, y = data.X[:2], data.y[:2]
    shape = "[n, " + ", ".join(str(s) for s in data.X.shape[1:]) + "]"
    was_training = model.training
    try:
        model.eval()  # no BatchNorm statistics are touched by this probe
        with torch.no_grad():
            out = model(X)
    except Exception as exc:  # noqa: BLE001 - any failure here means "does not fit"
        msg = first_line(exc)
        raise InvalidInputError(
            f"model {model_name!r} does not fit dataset {dataset_name!r}: it fails on inputs of shape {shape}"
            f"{_first_layer_hint(model)}: {msg}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise InvalidInputError(f"model {model_name!r} returned a {type(out).__name__}, not a tensor")
    try:
        resolve_loss(loss).check_target(out, y)
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"model {model_name!r} does not fit dataset {dataset_name!r} (inputs {shape}, "
            f"outputs [n, {', '.join(str(s) for s in out.shape[1:])}]): {exc}"
        ) from None


def _first_layer_hint(model: Any) -> str:
    """``" (its first layer takes 2 input features)"``, when the first layer says so."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            return f" (its first layer takes {module.in_features} input features)"
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            return f" (its first layer takes {module.in_channels} input channels)"
    return ""


OWNER = ".owner"  # in a staging folder: "pid host" of the run writing it


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


class _OutDir:
    """Writes into a staging folder next to ``--out``; moves the files in only when all are written.

    So a failed or killed run leaves no partial result, and a replaced result
    (``--force``) never mixes with files of the old one.
    """

    def __init__(self, out: str, force: bool):
        self.out = Path(out).expanduser()
        self.force = force
        self.stage: Path | None = None

    def check(self) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise InvalidInputError(f"--out {str(out)!r} exists and is not a folder")
        if out.is_dir() and any(out.iterdir()) and not self.force:
            if (out / "result.json").exists():
                raise InvalidInputError(f"--out {str(out)!r} already holds a result; pass --force to replace it")
            raise InvalidInputError(f"--out {str(out)!r} exists and is not empty; choose a new folder or "
                                    "pass --force")
        # can we write there?  Probe the nearest existing folder now, not after the computation
        probe = out
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".spectra-probe.", dir=probe))
        except OSError as exc:
            raise InvalidInputError(f"--out {str(out)!r}: cannot write in {str(probe)!r} "
                                    f"({exc.strerror or exc})") from None

    def __enter__(self) -> Path:
        self.check()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._sweep_stale_stages()
        self.stage = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial", dir=self.out.parent))
        from ._io import _umask, atomic_write_text

        os.chmod(self.stage, 0o777 & ~_umask())  # mkdtemp makes it private; the result folder should not be
        atomic_write_text(self.stage / OWNER, f"{os.getpid()} {socket.gethostname()}\n")
        return self.stage

    def _sweep_stale_stages(self) -> None:
        """Remove staging folders of earlier runs into the same ``--out`` whose process is gone.

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
        # the manifest goes last, so a folder with result.json is always whole
        for name in sorted(written, key=lambda n: n == "result.json"):
            os.replace(stage / name, self.out / name)
        for name in KNOWN_OUTPUTS:
            if name not in written and (self.out / name).exists():
                (self.out / name).unlink()


class _Elapsed:
    """A tqdm line that shows elapsed time while an uninterruptible computation runs."""

    def __init__(self, desc: str, enabled: bool):
        self.desc, self.quiet = desc, not enabled
        self._stop = threading.Event()

    def __enter__(self) -> "_Elapsed":
        if self.quiet:
            return self
        from tqdm import tqdm

        self.bar = tqdm(total=None, desc=self.desc, bar_format="{desc} [{elapsed}]", file=sys.stderr,
                        leave=False)
        self.thread = threading.Thread(target=self._tick, daemon=True)
        self.thread.start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self.bar.refresh()

    def __exit__(self, *exc: Any) -> None:
        if not self.quiet:
            self._stop.set()
            self.thread.join()
            self.bar.close()


def _train(args: argparse.Namespace, model: Any, data: Any) -> Any:
    try:
        from .train import train
    except ImportError as exc:  # pragma: no cover - train.py ships with spectra
        raise InvalidInputError(f"--train is not available in this installation: {exc}") from exc
    bar = None
    if progress_enabled(args):
        from tqdm import tqdm

        bar = tqdm(total=args.max_steps, desc=f"training ({args.train})", unit="step", file=sys.stderr,
                   leave=False)

    def progress(_model: Any, info: dict[str, Any]) -> None:
        if bar is not None:
            bar.set_postfix(loss=f"{info['loss']:.4g}", grad=f"{info['grad_norm']:.2g}", refresh=False)
            bar.update(info["step"] - bar.n)

    try:
        return train(model, data, loss=args.loss, optimizer=args.train, lr=args.lr, grad_tol=args.grad_tol,
                     max_steps=args.max_steps, batch_size=args.batch_size, seed=args.seed,
                     callbacks=progress)
    finally:
        if bar is not None:
            bar.close()


def _savefig(fig: Any, path: Path) -> None:
    from ._io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_spectrum(result: Any, path: Path) -> None:
    """Draw ``result.plot()`` on an Agg figure (no window, no pyplot state) and save a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    result.plot(ax=fig.add_subplot())
    _savefig(fig, path)


def plot_training(history: dict[str, Any], path: Path) -> None:
    """Loss and gradient norm against the step, log scale."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    steps = history.get("step", [])
    for ax, key, label in ((ax1, "loss", "loss"), (ax2, "grad_norm", "gradient norm")):
        values = history.get(key, [])
        positive = [v for v in values if v is not None and v > 0]
        ax.plot(steps, values, color="tab:blue")
        if positive:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    if history.get("grad_tol"):
        ax2.axhline(history["grad_tol"], color="tab:red", ls="--", lw=1, label="grad_tol")
        ax2.legend(loc="upper right")
    fig.suptitle(f"training ({history.get('optimizer')}, lr={history.get('lr')}): {history.get('stop_reason')}")
    _savefig(fig, path)


class _Ranks:
    """The command's view of torch.distributed: a plain process, or one rank of a torchrun launch.

    Under ``torchrun --nproc-per-node N -m spectra analyze ...`` every rank
    builds the same model, loads only its shard of the data (the whole
    dataset with ``--train``, since training is not data-parallel, or when the
    dataset cannot load a shard), trains alike, analyses its shard, and only
    rank 0 prints and writes.  Each stage runs in
    :func:`spectra.distributed.fail_together`, so an error on any rank stops
    every rank with a one-line message instead of leaving them waiting.
    """

    def __init__(self, timeout: float | None = None) -> None:
        from . import distributed as sd

        if timeout is not None and not timeout > 0:
            raise InvalidInputError(f"--timeout must be a positive number of seconds; got {timeout:g}")
        self.sd = sd
        self.owns_group = False
        if sd.launched_by_torchrun() and not sd.is_initialized():
            # gloo: the command builds models and data on the CPU (NCCL would need CUDA tensors);
            # the timeout bounds every collective of the group
            self.owns_group = sd.init_from_env(backend="gloo", timeout=timeout)
        self.active = sd.is_distributed()
        self.rank, self.world = sd.rank(), sd.world_size()
        self.main = self.rank == 0
        self.store = sd._default_store() if self.active else None  # for farewell(), after close()

    def step(self, what: str) -> Any:
        """A stage every rank runs; when it fails on one rank it fails on all."""
        import contextlib

        return self.sd.fail_together(what) if self.active else contextlib.nullcontext()

    def check_shards(self, record: dict[str, int]) -> None:
        """Refuse shards that do not tile one dataset: every rank must load the same number of samples.

        One all-reduce of each rank's ``info["shard"]`` record; every rank then
        reaches the same verdict, so run it in a :meth:`step` of its own.
        """
        if not self.active:
            return
        import torch

        table = torch.zeros(self.world, 3, dtype=torch.float64)
        table[self.rank] = torch.tensor([record["num_samples_total"], record["start"], record["stop"]],
                                        dtype=torch.float64)
        self.sd._all_reduce_within(table, None, None)
        _check_tiling([[int(v) for v in row] for row in table.tolist()])

    def share_weights(self, model: Any) -> None:
        """Rank 0's weights on every rank, bit for bit (training may differ in the last bits between hosts)."""
        if not self.active:
            return
        try:
            self.sd.broadcast_parameters(model)
        except Exception as exc:  # noqa: BLE001 - gloo/NCCL errors: a peer crashed or left
            from .errors import DistributedError

            raise DistributedError(f"rank {self.rank}: could not receive rank 0's weights "
                                   f"({first_line(exc)}): "
                                   "another rank crashed or exited; this rank stops too") from exc

    def close(self) -> None:
        if self.owns_group:
            self.sd.destroy()

    def farewell(self) -> None:
        """After printing an error: wait briefly for the other ranks to print theirs (torchrun kills on exit)."""
        if self.active:
            self.sd.farewell(self.store, self.rank, self.world)


def _check_tiling(rows: list[list[int]]) -> None:
    """``rows[r] = [num_samples_total, start, stop]`` of rank ``r``: the shards must cut one dataset in order.

    >>> _check_tiling([[5, 0, 3], [5, 3, 5]])
    >>> _check_tiling([[5, 0, 3], [6, 3, 6]])
    Traceback (most recent call last):
    spectra.errors.InvalidInputError: the ranks loaded datasets of different sizes (rank 0: 5, rank 1: 6 samples); the dataset must be the same on every rank (same arguments and seed)
    """
    totals = [row[0] for row in rows]
    if len(set(totals)) > 1:
        per_rank = ", ".join(f"rank {r}: {t}" for r, t in enumerate(totals))
        raise InvalidInputError(f"the ranks loaded datasets of different sizes ({per_rank} samples); the dataset "
                                "must be the same on every rank (same arguments and seed)")
    stops = [0] + [row[2] for row in rows]
    if any(row[1] != stops[r] for r, row in enumerate(rows)) or stops[-1] != totals[0]:
        cuts = ", ".join(f"rank {r}: {row[1]}:{row[2]}" for r, row in enumerate(rows))
        raise InvalidInputError(f"the ranks' shards do not cut the {totals[0]} samples in order ({cuts})")


_RANKS: _Ranks | None = None  # this process's ranks, when the command runs under torchrun
_RANK_TAG = ""  # "rank 1: " on the ranks of a torchrun launch, for error lines


def run_analysis(args: argparse.Namespace) -> int:
    """The work of ``analyze`` and ``demo``: build, (train), analyse, print, save.

    Under torchrun this process is one rank of a data-parallel analysis (see :class:`_Ranks`).
    """
    global _RANK_TAG, _RANKS
    ranks = _Ranks(getattr(args, "timeout", None))
    if ranks.active:
        _RANKS, _RANK_TAG = ranks, f"rank {ranks.rank}: "
        if not ranks.main:  # rank 0 speaks for all: no progress, status lines or warnings twice
            args.quiet = True
            warnings.simplefilter("ignore")
    try:
        return _run_analysis(args, ranks)
    finally:
        ranks.close()


def _run_analysis(args: argparse.Namespace, ranks: _Ranks) -> int:
    import torch

    from . import api, datasets, models, plugins

    with ranks.step("while setting up"):
        if args.threads is not None:
            if args.threads < 1:
                raise InvalidInputError(f"--threads must be >= 1; got {args.threads}")
            torch.set_num_threads(args.threads)
        model_args = _collect_pairs(args.model_arg, "--model-arg")
        dataset_args = _collect_pairs(args.dataset_arg, "--dataset-arg")
        if "shard" in dataset_args:
            raise InvalidInputError("--dataset-arg shard is not a dataset argument: under torchrun each rank "
                                    "loads its own shard")
        out = _OutDir(args.out, args.force) if args.out and ranks.main else None  # only rank 0 writes
        if out is not None:
            out.check()  # before any work: a refused folder should cost nothing
        plugins.get_entry("models", args.model)  # unknown names fail fast, listing the known ones
        plugins.get_entry("datasets", args.dataset)
        if args.method.lower() != "auto":
            plugins.get_entry("backends", args.method)
        plugins.get_entry("losses", args.loss)
        plugins.get_entry("matrices", getattr(args, "matrix", "hessian"))

        # every rank builds the same model (same seed).  Analysis only: each rank loads just its shard
        # (the dataset's loader cuts it, or the whole is loaded, cut and let go).  With --train every rank
        # keeps the whole dataset, since training is not data-parallel, and analyses its shard afterwards.
        dataset_args = _with_defaults("datasets", args.dataset, dataset_args, args.dtype, args.seed)
        model_args = _with_defaults("models", args.model, model_args, args.dtype, args.seed)
        if ranks.active and not args.train:
            data = datasets.load(args.dataset, shard=(ranks.rank, ranks.world), **dataset_args)
            if not datasets.loads_shards(args.dataset):
                _say(args, f"note: dataset {args.dataset!r} cannot load a shard: every rank loads all "
                           f"{data.info['shard']['num_samples_total']} samples and keeps its part")
        else:
            data = datasets.load(args.dataset, **dataset_args)
        model = models.create(args.model, **model_args)
        # factories without a dtype argument (or an explicit other dtype) still get one consistent dtype
        params = [p for p in model.parameters() if p.is_floating_point()]
        dtype = params[0].dtype if params else getattr(torch, args.dtype)
        if data.X.is_floating_point() and data.X.dtype != dtype:
            data.X = data.X.to(dtype)
        check_fit(model, data, args.loss, args.model, args.dataset)
        num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if num_params == 0:
            raise InvalidInputError(f"model {args.model!r} has no trainable parameters "
                                    "(all have requires_grad=False)")
        # the backend's own option and memory checks, before training: a bad request costs nothing
        api.check_request(num_params, method=args.method, k=args.k, which=args.which, num_probes=args.probes,
                          num_steps=args.steps, seed=args.seed, memory_limit=args.memory_limit,
                          on_memory=args.on_memory, dtype=dtype)
        if ranks.active:
            # contiguous, sizes differ by at most one sample
            shard = ranks.sd.shard(data, ranks.rank, ranks.world) if args.train else data

    with ranks.step("while comparing the ranks' shards"):
        if ranks.active:
            ranks.check_shards(shard.info["shard"])

    history = None
    if args.train:
        with ranks.step("while training"):
            # every rank trains on all the data alike (no waiting on rank 0), then takes rank 0's weights
            history = _train(args, model, data).to_dict()
        ranks.share_weights(model)
        _say(args, f"trained {history['steps_taken']} steps ({history['stop_reason']}): loss "
                   f"{_fmt(history['final_loss'])}, gradient norm {_fmt(history['final_grad_norm'])}")

    where = f" on {ranks.world} ranks" if ranks.active else ""
    with ranks.step("while computing the spectrum"), \
            _Elapsed(f"computing the Hessian spectrum (method={args.method}){where}", progress_enabled(args)):
        result = api.analyze(model, shard if ranks.active else data, loss=args.loss, method=args.method, k=args.k,
                             which=args.which, num_probes=args.probes, num_steps=args.steps, seed=args.seed,
                             memory_limit=args.memory_limit, on_memory=args.on_memory, distributed=ranks.active,
                             matrix=getattr(args, "matrix", "hessian"), product_dtype=getattr(args, "product_dtype", None))

    with ranks.step("while rank 0 wrote the result"):
        if ranks.main:
            _report(args, result, model_args, dataset_args, history, out)
    return 0


def _report(args: argparse.Namespace, result: Any, model_args: dict[str, Any], dataset_args: dict[str, Any],
            history: dict[str, Any] | None, out: _OutDir | None) -> None:
    """Print the summary and write the output folder (rank 0 only under torchrun)."""
    from . import plugins

    entry = plugins.get_entry("models", args.model)
    result.provenance["model"] = {"name": args.model, "arguments": _jsonable(model_args), "plugin": entry.plugin}
    result.provenance["dataset_arguments"] = _jsonable(dataset_args)
    result.provenance["command"] = ["spectra", *getattr(args, "argv", [])]
    if history is not None:
        result.provenance["training"] = {k: v for k, v in history.items()
                                         if k not in ("step", "loss", "accuracy", "grad_norm")}

    print(f"{args.model} on {args.dataset}: P={result.num_params}, N={result.num_samples}, "
          f"method={result.method}")
    print(format_summary(result.summary()))
    if out is not None:
        from ._io import atomic_write_json

        with out as stage:
            result.save(stage)
            plot_spectrum(result, stage / SPECTRUM_PNG)
            if history is not None:
                atomic_write_json(stage / TRAINING_JSON, history)
                plot_training(history, stage / TRAINING_PNG)
        written = [*RESULT_FILES, SPECTRUM_PNG] + ([TRAINING_JSON, TRAINING_PNG] if history else [])
        print(f"wrote {out.out}/ ({', '.join(written)})")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def cmd_analyze(args: argparse.Namespace) -> int:
    return run_analysis(args)


def cmd_demo(args: argparse.Namespace) -> int:
    demo = argparse.Namespace(
        model="blobnet", model_arg=["hidden=6"], dataset="blobs", dataset_arg=["n=1000", "std=0.5"],
        loss="cross_entropy", dtype="float64", train="gd", lr=0.5, grad_tol=1e-3, max_steps=2000,
        batch_size=None, method="exact", k=10, which="largest", probes=10, steps=80, seed=0,
        memory_limit=None, on_memory="refuse", timeout=None,
        # one thread: a 74-parameter net gains nothing from more, and on a busy 2-core machine
        # extra threads made the demo 3.5x slower (16 s vs 58 s measured)
        threads=1,
        out=args.out, force=args.force, quiet=args.quiet, argv=getattr(args, "argv", []),
    )
    _say(args, "demo: the paper's 2-6-6-2 ReLU net (74 parameters) on two Gaussian blobs, trained by "
               "gradient descent, then its exact Hessian spectrum")
    return run_analysis(demo)


# --------------------------------------------------------------------- show
def cmd_show(args: argparse.Namespace) -> int:
    from .result import load

    folder = Path(args.dir).expanduser()
    result = load(folder)
    prov = result.provenance

    def name_of(key: str) -> str:  # provenance is free-form: a hand-edited one must not crash show
        entry = prov.get(key)
        return str(entry.get("name", key)) if isinstance(entry, dict) else key

    model, data = name_of("model"), name_of("data")
    print(f"{model} on {data}: P={result.num_params}, N={result.num_samples}, method={result.method}")
    print(format_summary(result.summary()))
    history = None
    if (folder / TRAINING_JSON).is_file():
        try:
            history = json.loads((folder / TRAINING_JSON).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InvalidInputError(f"{folder / TRAINING_JSON} is corrupt: {exc}") from exc
        if not isinstance(history, dict):
            raise InvalidInputError(f"{folder / TRAINING_JSON} is corrupt: not a JSON object")
        print(f"trained {history.get('steps_taken')} steps with {history.get('optimizer')} "
              f"({history.get('stop_reason')}): final loss {_fmt(history.get('final_loss'))}, "
              f"gradient norm {_fmt(history.get('final_grad_norm'))}")
    if not args.no_plots:
        plot_spectrum(result, folder / SPECTRUM_PNG)
        drawn = [SPECTRUM_PNG]
        if history is not None:
            try:
                plot_training(history, folder / TRAINING_PNG)
            except (TypeError, ValueError) as exc:  # lists of unequal length, strings for numbers
                raise InvalidInputError(f"{folder / TRAINING_JSON} is corrupt: cannot plot it ({exc})") from None
            drawn.append(TRAINING_PNG)
        print(f"redrew {', '.join(drawn)} in {folder}/")
    return 0


# --------------------------------------------------------------------- main
def _one_line_warnings(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                       line: Any = None) -> None:
    text = str(message).removeprefix("spectra: ")
    print(f"spectra: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    saved_showwarning: Callable[..., Any] = warnings.showwarning
    warnings.showwarning = _one_line_warnings
    try:
        try:
            args = build_parser().parse_args(argv)
        except _UsageError as exc:
            print(f"spectra: error: {_one_line(str(exc))}", file=sys.stderr)
            return 2
        args.argv = argv
        return int(args.handler(args) or 0)
    except SpectraError as exc:
        text = _one_line(str(exc).strip().replace("\n", " "))
        tag = "" if text.startswith("rank ") else _RANK_TAG  # a DistributedError names its rank already
        # one write per line: the ranks of a torchrun launch share this stream
        sys.stderr.write(f"spectra: error: {tag}{text}\n")
        sys.stderr.flush()
        _farewell()
        return 2
    except KeyboardInterrupt:
        print("spectra: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `spectra list | head`
        return 0
    except OSError as exc:  # a folder that cannot be written, a full disk: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"spectra: error: {_RANK_TAG}{exc.strerror or exc}{where}\n")
        sys.stderr.flush()
        _farewell()
        return 2
    except Exception:
        if _RANKS is None:
            raise  # a bug: the traceback, as usual
        # under torchrun, print it now, before the other ranks' exit makes torchrun kill this one
        import traceback

        sys.stderr.write(f"spectra: error: {_RANK_TAG}unexpected failure:\n{traceback.format_exc()}")
        sys.stderr.flush()
        _farewell()
        return 1
    finally:
        warnings.showwarning = saved_showwarning


def _farewell() -> None:
    if _RANKS is not None:
        _RANKS.farewell()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
