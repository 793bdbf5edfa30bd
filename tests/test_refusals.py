"""What spectra refuses, and what it says: one row per bad input, for the API and the command line.

Each :class:`Refusal` row names the bad input, the exception class the API
raises (``None`` where the input is *handled* by a declared policy), a
fragment of the real message, and the command line that meets the same
problem with its exit status.  ``docs/refusals.md`` is the table users read;
a meta-test checks that every documented row names a row here (and the other
way round) with the same class, message fragment and exit status.

The command line runs in-process (``spectra.cli.main``): an error must be one
line ``spectra: error: ...`` on stderr, exit status 2, and leave no file
behind.  Models and datasets that real plugins could ship but the built-ins do
not (frozen, NaN weights, float targets, ...) come from a fixture plugin.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import spectra
from spectra import cli, pipeline, plugins
from spectra.errors import (ConvergenceError, InvalidInputError, MemoryBudgetError, NonDeterministicError,
                            NonFiniteError, PluginError, ResultFormatError, UnknownNameError)
from spectra.losses import Loss
from spectra.operators.hessian import HessianOperator
from spectra.result import SpectrumResult
from spectra.sharding import shard

DOC = Path(__file__).resolve().parent.parent / "docs" / "refusals.md"
PLUGIN = "refusal-fixtures"


# ------------------------------------------------------------------ fixture plugin
def _net(hidden: int = 2) -> nn.Module:
    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2)).double()


class _Sqrt(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * x).sqrt()  # |x|, with a 0/0 derivative at x = 0


def frozen_net() -> nn.Module:
    return _net().requires_grad_(False)


def half_frozen_net() -> nn.Module:
    net = _net()
    net[0].requires_grad_(False)
    return net


def nan_net() -> nn.Module:
    net = _net()
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    return net


def sqrt_net() -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 3), _Sqrt(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.zero_()  # every hidden pre-activation is exactly 0
    return net


def dropout_net() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.5), nn.Tanh(), nn.Linear(4, 2)).double()


def crashing_net() -> nn.Module:
    raise RuntimeError("weights file truncated")


def _blobs(n: int = 20) -> spectra.Dataset:
    return spectra.datasets.load("blobs", n=n, seed=0, dtype="float64")


def poisoned(value: Any = "nan", n: int = 20) -> spectra.Dataset:
    """Blobs with one input replaced by ``value`` (nan, inf, or a huge number)."""
    data = _blobs(n)
    data.X[3, 1] = float(value)
    return data


def float_targets(n: int = 20) -> spectra.Dataset:
    data = _blobs(n)
    data.y = data.y.double()
    return data


def crashing_data() -> spectra.Dataset:
    raise OSError("disk on fire")


def _register(registry: Any) -> None:
    if registry.kind == "models":
        for name, f in [("frozen-net", frozen_net), ("half-frozen-net", half_frozen_net), ("nan-net", nan_net),
                        ("sqrt-net", sqrt_net), ("dropout-net", dropout_net), ("crashing-net", crashing_net)]:
            registry.register(name, f)
    else:
        for name, f in [("poisoned", poisoned), ("float-targets", float_targets),
                        ("crashing-data", crashing_data)]:
            registry.register(name, f)


@pytest.fixture(scope="module", autouse=True)
def fixture_plugin():
    plugin = type(pytest)("refusal_fixtures")
    plugin.spectra_register_models = spectra.hookimpl(lambda registry: _register(registry))
    plugin.spectra_register_datasets = spectra.hookimpl(lambda registry: _register(registry))
    plugins.reset()
    plugins.register_plugin(plugin, PLUGIN)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: a second thread only adds contention
    yield
    torch.set_num_threads(before)
    plugins.reset()


# ------------------------------------------------------------------ helpers for rows
def _xy(n: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    d = _blobs(n)
    return d.X, d.y


class _TokenLoss(Loss):
    """A loss of one's own that averages over tokens (the fixture of a Fisher it cannot split)."""

    def __init__(self) -> None:
        super().__init__("token-loss", nn.functional.cross_entropy)

    def unit(self, target: Any) -> str:
        return "token"


def _analyze(model: Any, data: Any, **kw: Any) -> SpectrumResult:
    kw.setdefault("method", "exact")
    return spectra.analyze(model, data, **kw)


def _saved_result(folder: Path) -> Path:
    SpectrumResult(method="exact", eigenvalues=np.array([0.0, 1.0]), num_params=2).save(folder)
    return folder


def _damaged(kind: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        folder = _saved_result(tmp / "r")
        if kind == "corrupt":
            (folder / "arrays.npz").write_bytes(b"PK\x03\x04 not really a zip")
        elif kind == "newer":
            manifest = json.loads((folder / "result.json").read_text())
            manifest["format_version"] = 99
            (folder / "result.json").write_text(json.dumps(manifest))
        return folder
    return make


def _handled_frozen(tmp: Path) -> None:
    r = _analyze(half_frozen_net(), _xy())
    assert r.num_params == 6 and r.provenance["param_names"] == ["2.weight", "2.bias"]


def _handled_not_a_chain(tmp: Path) -> None:
    r = _analyze(_conv_net(), _images())
    assert r.provenance["hvp_mode"] == "reverse" and "Conv1d" in r.provenance["chain_products"]


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 2, 2), nn.Flatten(), nn.Linear(2 * 3, 2)).double()


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    X, y = _xy()
    return torch.cat([X, X], dim=1)[:, None, :], y  # [20, 1, 4]


def _handled_dropout(tmp: Path) -> None:
    model = dropout_net().train()
    r = _analyze(model, _xy())
    assert r.provenance["model_mode"] == "eval" and model.training  # analysed in eval mode, mode restored
    ref = _analyze(model.eval(), _xy(), train_mode=False)
    assert np.array_equal(r.eigenvalues, ref.eigenvalues)


def _handled_batchnorm(tmp: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rev = _analyze(model, _xy(), train_mode=True, mode="reverse")
    fwd = _analyze(model, _xy(), train_mode=True, mode="forward")
    assert rev.provenance["model_mode"] == "train"
    np.testing.assert_allclose(fwd.eigenvalues, rev.eigenvalues, rtol=0, atol=1e-10)
    # batch statistics were used, the running statistics were not touched
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    ev = _analyze(model, _xy())
    assert ev.provenance["model_mode"] == "eval" and np.abs(ev.eigenvalues - rev.eigenvalues).max() > 1e-6


def _handled_fallback(tmp: Path) -> None:
    r = _analyze(_net(), _xy(), memory_limit=2000, on_memory="lanczos", num_probes=2, num_steps=6)
    assert r.method == "lanczos" and r.provenance["requested_method"] == "exact"
    assert r.provenance["memory_fallback"] == "exact needs 3.4 KiB > 2.0 KiB: ran lanczos"


class _RandomFeatures(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.randn_like(x)  # noise injected without any Dropout module


def _noisy_net() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 3), _RandomFeatures(), nn.Tanh(), nn.Linear(3, 2)).double()


def _shuffling_loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_xy()), batch_size=8, shuffle=True)


def _cli_analyze(*extra: str, model: str = "blobnet", dataset: str = "blobs") -> list[str]:
    argv = ["analyze", "--model", model, "--dataset", dataset, "--dataset-arg", "n=20", "--method", "exact",
            "--quiet", "--out", "out"]
    if model == "blobnet":
        argv[3:3] = ["--model-arg", "hidden=2"]
    return [*argv, *extra]


# ------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Refusal:
    id: str
    bad_input: str
    error: type | None  # the API's exception class; None = handled by a declared policy
    api: Callable[[Path], Any] | None  # given a scratch folder: raises error (or, when handled, checks the policy)
    api_message: str | None
    cli: Callable[[Path], list[str]] | None = None  # argv, given the working folder
    cli_message: str | None = None  # None: the API message
    cli_code: int | None = None  # 2 refused, 0 handled, None: not a command-line situation
    cli_check: Callable[[Path], None] | None = None  # for handled rows: what the command wrote


def _row(id: str, bad_input: str, error: type | None, api: Callable[[Path], Any] | None, api_message: str | None,
         cli_argv: list[str] | Callable[[Path], list[str]] | None = None, cli_message: str | None = None,
         cli_code: int | None = None, cli_check: Callable[[Path], None] | None = None) -> Refusal:
    if isinstance(cli_argv, list):
        fixed = cli_argv
        cli_argv = lambda tmp: fixed  # noqa: E731
    if cli_argv is not None and cli_code is None:
        cli_code = 2 if error is not None or cli_message is not None else 0
    return Refusal(id, bad_input, error, api, api_message, cli_argv, cli_message, cli_code, cli_check)


def _provenance_of(tmp: Path) -> dict[str, Any]:
    return spectra.load(tmp / "out").provenance


ROWS: list[Refusal] = [
    # ---- the model
    _row("no-trainable-params", "a model with no trainable parameters", InvalidInputError,
         lambda tmp: _analyze(frozen_net(), _xy()), "the model has no trainable parameters",
         _cli_analyze(model="frozen-net"), "has no trainable parameters"),
    _row("frozen-and-trainable", "frozen parameters mixed with trainable ones (handled: frozen ones are left out "
         "of the Hessian)", None, _handled_frozen, None,
         _cli_analyze(model="half-frozen-net"),
         cli_check=lambda tmp: _assert(_provenance_of(tmp)["num_params"] == 6)),
    _row("input-shape", "inputs of a shape the model cannot take", InvalidInputError,
         lambda tmp: _analyze(_net(), (torch.zeros(20, 5, dtype=torch.float64), _xy()[1])),
         "the model cannot take batch 0 with inputs of shape (20, 5)",
         _cli_analyze(dataset="random"), "model 'blobnet' does not fit dataset 'random'"),
    _row("labels-out-of-range", "labels out of range for the model's classes", InvalidInputError,
         lambda tmp: _analyze(_net(), (_xy()[0], torch.full((20,), 5))), "labels out of range",
         ["analyze", "--model", "mlp", "--model-arg", "sizes=[2,1]", "--dataset", "blobs", "--dataset-arg",
          "n=20", "--quiet", "--out", "out"]),
    _row("float-targets-ce", "float targets with cross-entropy", InvalidInputError,
         lambda tmp: _analyze(_net(), (_xy()[0], _xy()[1].double())), "cross_entropy needs integer class labels",
         _cli_analyze("--model-arg", "sizes=[2,2]", model="mlp", dataset="float-targets")),
    _row("nan-in-data", "NaN in the data", NonFiniteError,
         lambda tmp: _analyze(_net(), (poisoned("nan").X, _xy()[1])), "batch 0: the inputs X contain NaN or Inf",
         _cli_analyze(dataset="poisoned")),
    _row("inf-in-data", "Inf in the data", NonFiniteError,
         lambda tmp: _analyze(_net(), (poisoned("inf").X, _xy()[1])), "the inputs X contain NaN or Inf",
         _cli_analyze("--dataset-arg", "value=inf", dataset="poisoned")),
    _row("nan-in-weights", "NaN in the weights", NonFiniteError,
         lambda tmp: _analyze(nan_net(), _xy()), "the model's parameter '0.weight' contains NaN or Inf",
         _cli_analyze(model="nan-net")),
    _row("inf-loss", "a loss that overflows to Inf (finite data and weights)", NonFiniteError,
         lambda tmp: _analyze(nn.Linear(2, 2).double(), (poisoned(1e200).X, _xy()[1]), loss="mse"),
         "the loss is inf on batch 0",
         _cli_analyze("--model-arg", "sizes=[2,2]", "--dataset-arg", "value=1e200", "--loss", "mse", model="mlp",
                      dataset="poisoned")),
    _row("nan-gradient", "a finite loss with a NaN gradient (a non-differentiable point such as sqrt(0))",
         NonFiniteError, lambda tmp: _analyze(sqrt_net(), _xy()), "the gradient of the loss contains NaN or Inf",
         _cli_analyze(model="sqrt-net")),
    # ---- the data
    _row("empty-dataset", "an empty dataset", InvalidInputError,
         lambda tmp: _analyze(_net(), (torch.zeros(0, 2, dtype=torch.float64), torch.zeros(0, dtype=torch.long))),
         "the dataset is empty",
         ["analyze", "--model", "blobnet", "--dataset", "blobs", "--dataset-arg", "n=0", "--quiet"],
         "dataset 'blobs': n must be >= 2"),
    _row("inconsistent-batches", "batches of inconsistent feature shape", InvalidInputError,
         lambda tmp: _analyze(_net(), [_xy(), (torch.zeros(4, 3, dtype=torch.float64),
                                               torch.zeros(4, dtype=torch.long))]),
         "batches have inconsistent feature shapes: batch 0 has (2,), batch 1 has (3,)"),
    _row("shuffling-loader", "a shuffling DataLoader", NonDeterministicError,
         lambda tmp: _analyze(_net(), _shuffling_loader()), "the DataLoader shuffles"),
    _row("drop-last-loader", "a DataLoader that drops its last batch", InvalidInputError,
         lambda tmp: _analyze(_net(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_xy()),
                                                              batch_size=8, drop_last=True)),
         "drops its last batch"),
    _row("torch-dataset", "a torch Dataset (samples, not batches)", InvalidInputError,
         lambda tmp: _analyze(_net(), torch.utils.data.TensorDataset(*_xy())),
         "a torch Dataset holds samples, not batches: pass DataLoader(dataset, batch_size=...)"),
    _row("param-tensor-not-in-model", "params naming a tensor that is not one of the model's parameters",
         InvalidInputError, lambda tmp: _analyze(_net(), _xy(), params=[nn.Linear(2, 3).weight]),
         "a selected tensor of shape (3, 2) is not a parameter of the model"),
    # ---- randomness and train mode
    _row("dropout-default", "dropout in a model left in train mode (handled: analysis runs in eval mode by "
         "default, recorded as provenance model_mode)", None, _handled_dropout, None,
         _cli_analyze(model="dropout-net"),
         cli_check=lambda tmp: _assert(_provenance_of(tmp)["model_mode"] == "eval")),
    _row("dropout-train-mode", "dropout with train_mode=True", NonDeterministicError,
         lambda tmp: _analyze(dropout_net(), _xy(), train_mode=True), "train_mode=True with dropout (Dropout)"),
    _row("noise-in-forward", "random numbers drawn in the forward pass (not a Dropout module), reverse mode",
         NonDeterministicError, lambda tmp: _analyze(_noisy_net(), _xy()), "the Hessian is not deterministic"),
    _row("noise-forward-mode", "random numbers drawn in the forward pass, forward-over-reverse mode",
         NonDeterministicError, lambda tmp: _analyze(_noisy_net(), _xy(), mode="forward"),
         "the model draws random numbers in its forward pass"),
    _row("batchnorm-train-mode", "BatchNorm with train_mode=True (handled: batch statistics are used, running "
         "statistics are left untouched, model_mode 'train' is recorded)", None, _handled_batchnorm, None),
    # ---- the backends
    _row("arpack-k-too-big", "k >= P for arpack", InvalidInputError,
         lambda tmp: _analyze(_net(), _xy(), method="arpack", k=12), "arpack needs k < P; got k=12 for P=12",
         _cli_analyze("--method", "arpack", "--k", "18", "--train", "gd"), "arpack needs k < P; got k=18 for P=18"),
    _row("lanczos-steps-too-few", "num_steps < 2 for lanczos", InvalidInputError,
         lambda tmp: _analyze(_net(), _xy(), method="lanczos", num_steps=1), "num_steps must be an integer >= 2",
         _cli_analyze("--method", "lanczos", "--steps", "1", "--train", "gd")),
    _row("lanczos-steps-too-many", "num_steps > P for lanczos", InvalidInputError,
         lambda tmp: _analyze(_net(), _xy(), method="lanczos", num_steps=13), "num_steps=13 exceeds P=12",
         _cli_analyze("--method", "lanczos", "--steps", "19", "--train", "gd"), "num_steps=19 exceeds P=18"),
    _row("exact-too-big", "an exact spectrum too big for memory (refused before allocating, with the bytes "
         "needed)", MemoryBudgetError, lambda tmp: _analyze(_net(), _xy(), memory_limit=2000),
         "needs about 3.4 KiB (3 dense 12x12 float64 matrices) but only 2.0 KiB is available; use method='lanczos'",
         _cli_analyze("--memory-limit", "2KiB", "--train", "gd"), "needs about 7.6 KiB"),
    _row("lanczos-basis-too-big", "a Lanczos basis too big for memory", MemoryBudgetError,
         lambda tmp: _analyze(_net(), _xy(), method="lanczos", num_steps=10, num_probes=4, memory_limit=2000),
         "the Lanczos basis needs 3.8 KiB (10 steps x 4 probes x P=12) but 2.0 KiB is available; use "
         "engine='lowmem'",
         _cli_analyze("--method", "lanczos", "--steps", "10", "--probes", "4", "--memory-limit", "2KiB"),
         "the Lanczos basis needs 5.6 KiB"),
    _row("memory-fallback", "too big for memory with on_memory='lanczos' (handled: Lanczos runs instead, "
         "recorded as provenance memory_fallback)", None, _handled_fallback, None,
         _cli_analyze("--memory-limit", "5KiB", "--on-memory", "lanczos", "--steps", "6", "--probes", "2"),
         cli_check=lambda tmp: _assert("ran lanczos" in _provenance_of(tmp)["memory_fallback"])),
    _row("backend-option-misspelt", "a backend option the backend does not take (a typo)", InvalidInputError,
         lambda tmp: _analyze(_net(), _xy(), method="lanczos", num_prob=5, num_steps=6),
         "the lanczos backend does not take option(s) 'num_prob'; it takes: engine, lanczos_dtype, memory_limit, "
         "num_probes, num_steps, probes, seed; did you mean 'num_probes'?"),
    _row("arpack-no-convergence", "ARPACK stops before it converges", ConvergenceError,
         lambda tmp: _analyze(_net(), _xy(), method="arpack", k=3, maxiter=1, tol=0, ncv=5),
         "ARPACK did not converge at the largest end: 0 of k=3 eigenvalues converged within maxiter=1 restarts "
         "(ncv=5, tol=0); raise maxiter, raise ncv (at most P=12), loosen tol, or ask for fewer eigenvalues"),
    _row("chain-mode-not-a-chain", "mode='chain' for a model that is not a Linear/activation Sequential",
         InvalidInputError, lambda tmp: _analyze(_conv_net(), _images(), mode="chain"),
         "mode='chain' cannot be used here: 0 (Conv1d) before the first Linear; use mode='auto' or 'reverse'"),
    _row("not-a-chain-auto", "a model that is not a chain, with the default mode='auto' (handled: autograd "
         "products, and provenance chain_products says why)", None, _handled_not_a_chain, None),
    _row("bad-product-dtype", "a product_dtype other than float32/float64", InvalidInputError,
         lambda tmp: _analyze(_net(), _xy(), product_dtype="float16"),
         "product_dtype must be 'float32' or 'float64'; got 'float16'",
         _cli_analyze("--product-dtype", "float16"), "argument --product-dtype: invalid choice: 'float16'"),
    # ---- names and arguments
    _row("unknown-model", "an unknown model name", UnknownNameError,
         lambda tmp: spectra.analyze("resnet", "blobs"), "unknown model 'resnet'; known models: blobnet, cnn",
         _cli_analyze(model="resnet")),
    _row("unknown-dataset", "an unknown dataset name", UnknownNameError,
         lambda tmp: spectra.datasets.load("cifar"), "unknown dataset 'cifar'; known datasets: blobs",
         _cli_analyze(dataset="cifar")),
    _row("unknown-backend", "an unknown backend (method) name", UnknownNameError,
         lambda tmp: _analyze(_net(), _xy(), method="eigen"), "unknown backend 'eigen'; known backends: arpack",
         _cli_analyze("--method", "eigen")),
    _row("unknown-matrix", "an unknown (misspelt) matrix name", UnknownNameError,
         lambda tmp: _analyze(_net(), _xy(), matrix="hessain"),
         "unknown matrix 'hessain'; known matrices: empirical_fisher, ggn, hessian, mc_fisher, residual; "
         "did you mean 'hessian'?",
         _cli_analyze("--matrix", "hessain")),
    _row("mc-samples-other-matrix", "mc_samples for a matrix that draws nothing", InvalidInputError,
         lambda tmp: _analyze(_net(), _xy(), matrix="ggn", mc_samples=3),
         "mc_samples is an option of the matrix mc_fisher; matrix='ggn' does not take it",
         _cli_analyze("--matrix", "ggn", "--mc-samples", "3"),
         "--mc-samples applies to a matrix that draws targets (mc_fisher); --matrix 'ggn' draws none"),
    _row("fisher-of-an-unsplittable-token-loss", "a Fisher of a loss of one's own that counts tokens",
         InvalidInputError, lambda tmp: _analyze(_net(), _xy(), matrix="empirical_fisher", loss=_TokenLoss()),
         "the Fisher needs each unit's own loss; the loss 'token-loss' counts tokens, and spectra knows the "
         "per-token losses of the built-in 'cross_entropy' and 'mse' only"),
    _row("shard-uncuttable-batch", "sharding a batch with a tensor that does not hold its samples on axis 0",
         InvalidInputError, lambda tmp: shard(
             {"input_ids": torch.zeros(4, 3), "position_ids": torch.arange(3)[None], "labels": torch.zeros(4)}, 0, 2),
         'cannot cut batch into samples: batch["position_ids"] has shape (1, 3), but batch["input_ids"] has 4 '
         "samples on its first axis"),
    _row("unknown-loss", "an unknown loss name", UnknownNameError,
         lambda tmp: _analyze(_net(), _xy(), loss="hinge"), "unknown loss 'hinge'; known losses: cross_entropy, mse",
         _cli_analyze("--loss", "hinge")),
    _row("unknown-model-argument", "a model argument the factory does not take", InvalidInputError,
         lambda tmp: spectra.models.create("blobnet", depth=3),
         "model 'blobnet' has no argument 'depth'; it accepts: hidden=6",
         _cli_analyze("--model-arg", "depth=3")),
    _row("malformed-model-arg", "a malformed --model-arg value", None, None, None,
         _cli_analyze("--model-arg", "sizes=[784,10"), "--model-arg sizes=[784,10: the value is not valid JSON"),
    _row("model-arg-not-key-value", "a --model-arg without key=value", None, None, None,
         _cli_analyze("--model-arg", "hidden"), "--model-arg 'hidden' must look like key=value"),
    _row("bad-memory-size", "a malformed --memory-limit", None, None, None,
         _cli_analyze("--memory-limit", "lots"), "argument --memory-limit: 'lots' is not a memory size"),
    # ---- plugins
    _row("plugin-model-raises", "a plugin's model factory raises", PluginError,
         lambda tmp: spectra.models.create("crashing-net"),
         "model 'crashing-net' from plugin 'refusal-fixtures' failed: RuntimeError: weights file truncated",
         _cli_analyze(model="crashing-net")),
    _row("plugin-dataset-raises", "a plugin's dataset loader raises", PluginError,
         lambda tmp: spectra.datasets.load("crashing-data"),
         "dataset 'crashing-data' from plugin 'refusal-fixtures' failed: OSError: disk on fire",
         ["analyze", "--model", "blobnet", "--dataset", "crashing-data", "--quiet"]),
    # ---- output and saved results
    _row("out-holds-result", "an output folder that already holds a result (without --force)",
         InvalidInputError, lambda tmp: _saved_result(_saved_result(tmp / "r")),
         "already holds a result",
         lambda tmp: (_saved_result(tmp / "out"), _cli_analyze())[1],
         "--out 'out' already holds a result; pass --force to replace it"),
    _row("out-not-empty", "an output folder with other files in it (without --force)", None, None, None,
         lambda tmp: ((tmp / "out").mkdir(), (tmp / "out" / "notes.txt").write_text("mine"), _cli_analyze())[2],
         "--out 'out' exists and is not empty"),
    _row("out-unwritable", "an output folder that cannot be written", None, None, None,
         lambda tmp: ["analyze", "--model", "blobnet", "--dataset", "blobs", "--out", "/proc/spectra-out"],
         "--out '/proc/spectra-out': cannot write in '/proc'"),
    _row("result-missing", "loading a folder that holds no result", ResultFormatError,
         lambda tmp: spectra.load(tmp / "nothing"), "holds no spectra result (missing result.json)",
         lambda tmp: ["show", str(tmp / "nothing")]),
    _row("result-corrupt", "loading a corrupt result", ResultFormatError,
         lambda tmp: spectra.load(_damaged("corrupt")(tmp)), "arrays.npz is corrupt",
         lambda tmp: ["show", str(_damaged("corrupt")(tmp))]),
    _row("result-newer-format", "loading a result written by a newer spectra", ResultFormatError,
         lambda tmp: spectra.load(_damaged("newer")(tmp)),
         "was written in result format 99; this spectra reads up to 1",
         lambda tmp: ["show", str(_damaged("newer")(tmp))]),
]
ROW_IDS = [r.id for r in ROWS]

def _assert(condition: bool) -> None:
    assert condition


# ------------------------------------------------------------------ the tests
@pytest.mark.parametrize("row", [r for r in ROWS if r.api is not None],
                         ids=[r.id for r in ROWS if r.api is not None])
def test_api(row: Refusal, tmp_path: Path) -> None:
    if row.error is None:
        row.api(tmp_path)  # a handled case: the row's function checks the declared policy
        return
    with pytest.raises(row.error) as info:
        row.api(tmp_path)
    assert type(info.value) is row.error, f"{type(info.value).__name__} is not exactly {row.error.__name__}"
    message = str(info.value)
    assert row.api_message in message, message
    assert "\n" not in message.strip(), "one line"


@pytest.mark.parametrize("row", [r for r in ROWS if r.cli is not None],
                         ids=[r.id for r in ROWS if r.cli is not None])
def test_cli(row: Refusal, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # a request the backend would refuse is refused before training, so the typo costs nothing
    monkeypatch.setattr(pipeline, "_train", lambda *a: pytest.fail("trained before refusing"))
    argv = row.cli(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == row.cli_code, (code, err)
    if row.cli_code == 0:
        if row.cli_check is not None:
            row.cli_check(tmp_path)
        return
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spectra: error: "), err
    assert "Traceback" not in err
    assert (row.cli_message or row.api_message) in lines[0], lines[0]
    # nothing written: no result, no staging folder, no temporary file
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert after == before, set(after) - set(before)


def test_exceptions_are_spectra_errors_of_the_builtin_kind() -> None:
    """Callers can catch SpectraError, or the matching built-in exception."""
    pairs = {InvalidInputError: ValueError, UnknownNameError: LookupError, MemoryBudgetError: MemoryError,
             NonDeterministicError: RuntimeError, NonFiniteError: FloatingPointError, PluginError: RuntimeError,
             ResultFormatError: ValueError, ConvergenceError: RuntimeError}
    for cls, builtin in pairs.items():
        assert issubclass(cls, spectra.errors.SpectraError) and issubclass(cls, builtin)
    for row in ROWS:
        assert row.error is None or row.error in pairs


def test_analysis_leaves_the_model_as_it_was() -> None:
    """Refused or not, analysis restores train/eval flags and changes no parameter or buffer."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Dropout(0.3), nn.Linear(4, 2)).double()
    model.train()
    model[1].eval()  # a mixed state must survive too
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _analyze(model, _xy())
    with pytest.raises(NonDeterministicError):
        _analyze(model, _xy(), train_mode=True)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm1d))


def test_operator_refuses_noise_even_without_the_determinism_check() -> None:
    """Forward mode meets vmap's randomness error at every product, not only in the check."""
    op = HessianOperator(_noisy_net(), "cross_entropy", _xy(), mode="forward", check_determinism=False)
    with pytest.raises(NonDeterministicError, match="draws random numbers"):
        op.matvec(torch.ones(op.shape[0], dtype=torch.float64))


@pytest.mark.parametrize("text, size", [("4096", 4096), ("2KiB", 2048), ("2K", 2048), ("2kB", 2000),
                                        ("1.5GiB", 3 * 2**29), ("500MB", 5 * 10**8), ("1e9", 10**9),
                                        (" 3 mib ", 3 * 2**20)])
def test_memory_sizes(text: str, size: int) -> None:
    assert cli.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1", "0", "2XB", "1e999", "GiB", "nan"])
def test_bad_memory_sizes(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_size(text)


def test_check_request_runs_the_backend_checks_without_products() -> None:
    import spectra.api  # not imported by `import spectra` (lazy), so import it here

    assert spectra.api.check_request(18, method="arpack", k=5) == "arpack"
    assert spectra.api.check_request(10**5, method="lanczos", num_steps=10, num_probes=2,
                                     on_memory="lanczos", memory_limit=10**7) == "lanczos"
    assert spectra.api.check_request(10**6, method="exact", memory_limit=10**9, on_memory="lanczos") == "lanczos"
    with pytest.raises(MemoryBudgetError, match="needs about 21.8 TiB"):
        spectra.api.check_request(10**6, method="exact", memory_limit=10**9)
    with pytest.raises(InvalidInputError, match="on_memory must be"):
        spectra.api.check_request(10, on_memory="pray")


# ------------------------------------------------------------------ the documented table
def _doc_rows() -> list[list[str]]:
    rows = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 5 and not set(cells[0]) <= set("-: ") and cells[0] != "bad input":
            rows.append(cells)
    return rows


def test_every_documented_refusal_has_a_test_and_every_test_is_documented() -> None:
    rows = _doc_rows()
    assert len(rows) >= 30
    by_id = {r.id: r for r in ROWS}
    documented = []
    for bad_input, error, message, code, test_id in rows:
        match = re.fullmatch(r"`([a-z0-9-]+)`", test_id)
        assert match, f"the test column must name a row id in backquotes: {test_id!r}"
        row = by_id.get(match.group(1))
        assert row is not None, f"docs/refusals.md names {test_id}, which tests/test_refusals.py does not have"
        documented.append(row.id)
        expected_error = "handled" if row.api is not None and row.error is None else (
            f"`{row.error.__name__}`" if row.error else "—")
        assert error == expected_error, (row.id, error, expected_error)
        expected_code = {None: "—", 0: "0 (handled)", 2: "2"}[row.cli_code]
        assert code == expected_code, (row.id, code, expected_code)
        for fragment in (row.api_message, row.cli_message):
            if fragment:
                assert fragment.replace("|", "\\|") in message, (row.id, fragment)
    assert sorted(documented) == sorted(ROW_IDS), set(ROW_IDS) ^ set(documented)


# ------------------------------------------------------------------ fuzz: damaged results, memory sizes
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])
json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False)
                           | st.text(max_size=5), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
array_values = st.one_of(
    st.builds(np.zeros, st.tuples(st.integers(0, 3)) | st.tuples(st.integers(0, 3), st.integers(0, 3))),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4).map(np.array),
    st.lists(st.text(max_size=2), min_size=1, max_size=3).map(np.array),
    st.lists(st.booleans(), min_size=1, max_size=3).map(np.array),
)
FIELDS = ["format_version", "method", "num_params", "num_samples", "num_matvecs", "provenance", "arrays", "summary"]


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3),
       arrays=st.dictionaries(st.sampled_from(["eigenvalues", "nodes", "weights", "residuals", "eigenvectors"]),
                              array_values, max_size=3),
       replace_arrays=st.booleans())
def test_damaged_results_load_or_refuse_with_one_line(tmp_path_factory, changes, arrays, replace_arrays):
    folder = _saved_result(tmp_path_factory.mktemp("fuzz") / "r")
    manifest = json.loads((folder / "result.json").read_text())
    manifest.update(changes)
    (folder / "result.json").write_text(json.dumps(manifest))
    if replace_arrays:
        np.savez(folder / "arrays.npz", **arrays)
    try:
        spectra.load(folder).summary()
    except (ResultFormatError, InvalidInputError):
        pass
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["show", str(folder)])
    assert code in (0, 2)
    if code == 2:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spectra: error: "), err.getvalue()


@FUZZ
@given(text=st.text(max_size=12))
def test_memory_size_parser_works_or_refuses(text):
    import argparse

    try:
        size = cli.parse_size(text)
    except argparse.ArgumentTypeError:
        return
    assert isinstance(size, int) and size >= 1
