"""Build a model and a dataset by name, optionally train, analyse, and save: ``spectra analyze`` as one call.

:func:`run` does what the command does, checks first: names, arguments, the
fit of model and data, and the backend's own refusals (``k < P``, memory)
are all checked before any training, so a typo costs nothing.  With ``out``
it writes ``result.json``, ``arrays.npz`` and ``spectrum.png`` (plus
``training.json`` and ``training_curve.png`` after training) through a staging
folder, so the folder appears whole or not at all.  Under torchrun each
process is one rank of a data-parallel analysis (:class:`spectra.ranks.Ranks`).

>>> r = run("blobnet", "blobs", model_args={"hidden": 2}, dataset_args={"n": 40}, method="exact", progress=False)
>>> r.result.method, r.result.num_params, r.result.provenance["model"]["name"]
('exact', 18, 'blobnet')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import api, datasets, models, plugins
from ._io import StagedFolder, atomic_write_json, jsonable, save_figure
from .errors import InvalidInputError, first_line
from .progress import StepBar, wanted
from .ranks import Ranks
from .result import SpectrumResult, format_value

RESULT_FILES = ("result.json", "arrays.npz")
SPECTRUM_PNG = "spectrum.png"
TRAINING_JSON = "training.json"
TRAINING_PNG = "training_curve.png"
# Every file run() may write: with force, stale ones from an earlier run are removed.
KNOWN_OUTPUTS = (*RESULT_FILES, SPECTRUM_PNG, TRAINING_JSON, TRAINING_PNG)
FIT_CHECK_SAMPLES = 2  # the model is tried on this many samples before any work
# How refusals name the options: as keyword arguments in Python, as flags on the command line.
WORDING = {
    "python": {"out": "out", "force": "force=True", "dataset_args": "dataset_args", "threads": "threads",
               "mc_samples": "mc_samples", "matrix": "matrix="},
    "cli": {"out": "--out", "force": "--force", "dataset_args": "--dataset-arg", "threads": "--threads",
            "mc_samples": "--mc-samples", "matrix": "--matrix "},
}


@dataclass
class PipelineRun:
    """What :func:`run` did: the result, the training history, the arguments the factories got."""

    result: SpectrumResult
    history: dict[str, Any] | None
    model_args: dict[str, Any]
    dataset_args: dict[str, Any]
    out: Path | None = None
    written: list[str] = field(default_factory=list)
    main: bool = True  # rank 0 of a torchrun launch (or a plain process): the one that writes


def run(model: str, dataset: str, *, model_args: dict[str, Any] | None = None,
        dataset_args: dict[str, Any] | None = None, loss: str = "cross_entropy", dtype: str = "float64",
        train: str | None = None, lr: float = 0.1, grad_tol: float = 1e-4, max_steps: int = 10_000,
        batch_size: int | None = None, method: str = "auto", matrix: str = "hessian",
        mc_samples: int | None = None, k: int | None = None,
        which: str | None = None, num_probes: int = 10, num_steps: int = 80, seed: int = 0,
        memory_limit: int | None = None, on_memory: str = "refuse", product_dtype: str | None = None,
        threads: int | None = None, timeout: float | None = None, out: str | Path | None = None,
        force: bool = False, progress: bool | None = None, log: Callable[[str], None] | None = None,
        command: list[str] | None = None, ranks: Ranks | None = None, wording: str = "python") -> PipelineRun:
    """Build ``model`` and ``dataset`` by registry name, train (``train="gd"`` or ``"sgd"``), analyse, save.

    ``dtype`` and ``seed`` are also the default ``dtype`` and ``seed`` of the
    model and dataset factories that take them (an explicit entry of
    ``model_args``/``dataset_args`` wins).  The analysis arguments are those of
    :func:`spectra.analyze`; ``mc_samples`` (``None``: the matrix's default)
    goes to a matrix that draws targets, such as ``"mc_fisher"``, seeded by ``seed``.  ``progress``: bars on stderr (``None``: when it
    is a terminal); ``log``: where status lines go (default: nowhere).
    ``out``: a folder to write (refused if it holds anything, unless
    ``force``).  ``ranks``: a torchrun launch's :class:`~spectra.ranks.Ranks`
    (default: joined here when torchrun started the process, and left at the end).
    """
    settings = dict(locals())  # every argument, by name, for the steps below
    owns_ranks = ranks is None
    ranks = Ranks(timeout) if ranks is None else ranks
    try:
        return _run(ranks, settings)
    finally:
        if owns_ranks:
            ranks.close()


def _run(ranks: Ranks, a: dict[str, Any]) -> PipelineRun:
    words = WORDING[a["wording"]]
    log = a["log"] or (lambda text: None)
    show = wanted(a["progress"]) and ranks.main  # rank 0 speaks for all
    with ranks.step("while setting up"):
        if a["threads"] is not None:
            if a["threads"] < 1:
                raise InvalidInputError(f"{words['threads']} must be >= 1; got {a['threads']}")
            torch.set_num_threads(a["threads"])
        model_args, dataset_args = dict(a["model_args"] or {}), dict(a["dataset_args"] or {})
        if datasets.SHARD_PARAMETER in dataset_args:
            raise InvalidInputError(f"{words['dataset_args']} shard is not a dataset argument: under torchrun each "
                                    "rank loads its own shard")
        out = None
        if a["out"] is not None and ranks.main:  # only rank 0 writes
            out = StagedFolder(a["out"], a["force"], outputs=KNOWN_OUTPUTS, option=words["out"],
                               force_hint=words["force"])
            out.check()  # before any work: a refused folder should cost nothing
        # unknown names fail fast, listing the known ones
        model_name = plugins.get_entry("models", a["model"]).name
        dataset_name = plugins.get_entry("datasets", a["dataset"]).name
        if a["method"].lower() != api.AUTO:
            plugins.get_entry("backends", a["method"])
        plugins.get_entry("losses", a["loss"])
        matrix = plugins.get_entry("matrices", a["matrix"]).name
        matrix_options = _matrix_options(matrix, a["mc_samples"], words)

        # every rank builds the same model (same seed).  Analysis only: each rank loads just its shard
        # (the dataset's loader cuts it, or the whole is loaded, cut and let go).  With training every rank
        # keeps the whole dataset, since training is not data-parallel, and analyses its shard afterwards.
        dataset_args = with_defaults("datasets", dataset_name, dataset_args, a["dtype"], a["seed"])
        model_args = with_defaults("models", model_name, model_args, a["dtype"], a["seed"])
        if ranks.active and not a["train"]:
            data = datasets.load(dataset_name, shard=(ranks.rank, ranks.world), **dataset_args)
            if not datasets.loads_shards(dataset_name) and ranks.main:
                log(f"note: dataset {dataset_name!r} cannot load a shard: every rank loads all "
                    f"{data.info['shard']['num_samples_total']} samples and keeps its part")
        else:
            data = datasets.load(dataset_name, **dataset_args)
        net = models.create(model_name, **model_args)
        # factories without a dtype argument (or an explicit other dtype) still get one consistent dtype
        params = [p for p in net.parameters() if p.is_floating_point()]
        net_dtype = params[0].dtype if params else getattr(torch, a["dtype"])
        if data.X.is_floating_point() and data.X.dtype != net_dtype:
            data.X = data.X.to(net_dtype)
        check_fit(net, data, a["loss"], model_name, dataset_name)
        num_params = sum(p.numel() for p in net.parameters() if p.requires_grad)
        if num_params == 0:
            raise InvalidInputError(f"model {model_name!r} has no trainable parameters "
                                    "(all have requires_grad=False)")
        # the backend's own option and memory checks, before training: a bad request costs nothing
        api.check_request(num_params, method=a["method"], k=a["k"], which=a["which"], num_probes=a["num_probes"],
                          num_steps=a["num_steps"], seed=a["seed"], memory_limit=a["memory_limit"],
                          on_memory=a["on_memory"], dtype=net_dtype)
        if ranks.active:
            # contiguous, sizes differ by at most one sample
            shard = ranks.sd.shard(data, ranks.rank, ranks.world) if a["train"] else data

    with ranks.step("while comparing the ranks' shards"):
        if ranks.active:
            ranks.check_shards(shard.info["shard"])

    history = None
    if a["train"]:
        with ranks.step("while training"):
            # every rank trains on all the data alike (no waiting on rank 0), then takes rank 0's weights
            history = _train(net, data, a, show).to_dict()
        ranks.share_weights(net)
        if ranks.main:
            log(f"trained {history['steps_taken']} steps ({history['stop_reason']}): loss "
                f"{format_value(history['final_loss'])}, gradient norm {format_value(history['final_grad_norm'])}")

    with ranks.step("while computing the spectrum"):
        result = api.analyze(net, shard if ranks.active else data, loss=a["loss"], method=a["method"], k=a["k"],
                             which=a["which"], num_probes=a["num_probes"], num_steps=a["num_steps"], seed=a["seed"],
                             memory_limit=a["memory_limit"], on_memory=a["on_memory"], distributed=ranks.active,
                             matrix=matrix, product_dtype=a["product_dtype"], progress=show, **matrix_options)

    done = PipelineRun(result, history, model_args, dataset_args, main=ranks.main)
    with ranks.step("while rank 0 wrote the result"):
        if ranks.main:
            result.provenance["model"] = {"name": model_name, "arguments": jsonable(model_args),
                                          "plugin": plugins.get_entry("models", model_name).plugin}
            result.provenance["dataset_arguments"] = jsonable(dataset_args)
            if a["command"] is not None:
                result.provenance["command"] = list(a["command"])
            if history is not None:
                result.provenance["training"] = {key: v for key, v in history.items()
                                                 if key not in ("step", "loss", "accuracy", "grad_norm")}
            if out is not None:
                done.out, done.written = out.out, write_outputs(out, result, history)
    return done


def write_outputs(out: StagedFolder, result: SpectrumResult, history: dict[str, Any] | None) -> list[str]:
    """The result, its plot, and the training history and its curve, moved into ``out`` at once."""
    with out as stage:
        result.save(stage)
        save_figure(spectrum_figure(result), stage / SPECTRUM_PNG)
        if history is not None:
            atomic_write_json(stage / TRAINING_JSON, history)
            save_figure(training_figure(history), stage / TRAINING_PNG)
    return [*RESULT_FILES, SPECTRUM_PNG] + ([TRAINING_JSON, TRAINING_PNG] if history is not None else [])


def _matrix_options(matrix: str, mc_samples: int | None, words: dict[str, str]) -> dict[str, Any]:
    """The matrix's own options asked for (``mc_samples``), checked before any work."""
    if mc_samples is None:
        return {}
    from . import matrices

    takers = matrices.taking("mc_samples")
    if matrix not in takers:
        raise InvalidInputError(f"{words['mc_samples']} applies to a matrix that draws targets "
                                f"({', '.join(takers)}); {words['matrix']}{matrix!r} draws none")
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise InvalidInputError(f"{words['mc_samples']} must be a positive integer; got {mc_samples!r}")
    return {"mc_samples": mc_samples}


def with_defaults(kind: str, name: str, kwargs: dict[str, Any], dtype: str, seed: int) -> dict[str, Any]:
    """``kwargs`` plus ``dtype`` and ``seed`` for a factory that takes them and was not given them."""
    names, takes_any = plugins.accepted_keywords(plugins.get_entry(kind, name).factory)
    out = dict(kwargs)
    for param, value in (("dtype", dtype), ("seed", seed)):
        if param not in out and (param in names or takes_any):
            out[param] = value
    return out


def check_fit(model: Any, data: Any, loss: str, model_name: str, dataset_name: str) -> None:
    """One forward pass on two samples: refuse a model that cannot take the dataset's inputs."""
    from .losses import resolve_loss

    X, y = data.X[:FIT_CHECK_SAMPLES], data.y[:FIT_CHECK_SAMPLES]
    shape = "[n, " + ", ".join(str(s) for s in data.X.shape[1:]) + "]"
    was_training = model.training
    try:
        model.eval()  # no BatchNorm statistics are touched by this probe
        with torch.no_grad():
            output = model(X)
    except Exception as exc:  # noqa: BLE001 - any failure here means "does not fit"
        raise InvalidInputError(
            f"model {model_name!r} does not fit dataset {dataset_name!r}: it fails on inputs of shape {shape}"
            f"{_first_layer_hint(model)}: {first_line(exc)}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(output, torch.Tensor):
        raise InvalidInputError(f"model {model_name!r} returned a {type(output).__name__}, not a tensor")
    try:
        resolve_loss(loss).check_target(output, y)
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"model {model_name!r} does not fit dataset {dataset_name!r} (inputs {shape}, "
            f"outputs [n, {', '.join(str(s) for s in output.shape[1:])}]): {exc}"
        ) from None


def _first_layer_hint(model: Any) -> str:
    """``" (its first layer takes 2 input features)"``, when the first layer says so."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            return f" (its first layer takes {module.in_features} input features)"
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            return f" (its first layer takes {module.in_channels} input channels)"
    return ""


def _train(model: Any, data: Any, a: dict[str, Any], show: bool) -> Any:
    from .training import train

    with StepBar(a["max_steps"], f"training ({a['train']})", enabled=show) as bar:
        def progress(_model: Any, info: dict[str, Any]) -> None:
            bar.update(info["step"], loss=f"{info['loss']:.4g}", grad=f"{info['grad_norm']:.2g}")

        return train(model, data, loss=a["loss"], optimizer=a["train"], lr=a["lr"], grad_tol=a["grad_tol"],
                     max_steps=a["max_steps"], batch_size=a["batch_size"], seed=a["seed"], callbacks=progress,
                     progress=False)


def spectrum_figure(result: SpectrumResult) -> Any:
    """``result.plot()`` on an Agg figure (no window, no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.2))
    result.plot(ax=fig.add_subplot())
    return fig


def training_figure(history: dict[str, Any]) -> Any:
    """Loss and gradient norm against the step, log scale, with the gradient tolerance drawn."""
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
    return fig


__all__ = ["KNOWN_OUTPUTS", "PipelineRun", "RESULT_FILES", "SPECTRUM_PNG", "TRAINING_JSON", "TRAINING_PNG",
           "check_fit", "run", "spectrum_figure", "training_figure", "with_defaults", "write_outputs"]
