"""How analyze calls a backend: common arguments by signature, options checked, the backend's own is_exact.

Plugin backends here are small classes registered with
``spectra.plugins.register_plugin``; each records what ``run`` received.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import spectra
from spectra import plugins
from spectra.backends.arpack import ArpackBackend
from spectra.backends.lanczos import LanczosBackend
from spectra.errors import ConvergenceError, InvalidInputError, SpectraError
from spectra.operators.base import DenseOperator
from spectra.result import SpectrumResult

RECEIVED: list[dict] = []


def _eigh(op) -> np.ndarray:
    return np.linalg.eigvalsh(op.to_dense().detach().numpy())


class TakesKAndSeed:
    name, is_exact = "takes-k-seed", False

    def run(self, op, *, k=1, seed=0):
        RECEIVED.append({"k": k, "seed": seed})
        return SpectrumResult(method=self.name, eigenvalues=_eigh(op)[-k:], num_params=op.shape[0])


class TakesProbes:
    name, is_exact = "takes-probes", False

    def run(self, op, *, num_probes=1, num_steps=2, memory_limit=None):
        RECEIVED.append({"num_probes": num_probes, "num_steps": num_steps, "memory_limit": memory_limit})
        return SpectrumResult(method=self.name, eigenvalues=_eigh(op)[-1:], num_params=op.shape[0])


class TakesNothing:
    name, is_exact = "takes-nothing", True

    def run(self, op):
        RECEIVED.append({})
        return SpectrumResult(method=self.name, eigenvalues=_eigh(op), num_params=op.shape[0])


class TakesAnyOption:
    name, is_exact = "takes-any", True

    def run(self, op, **options):
        RECEIVED.append(dict(options))
        return SpectrumResult(method=self.name, eigenvalues=_eigh(op), num_params=op.shape[0])


class ClaimsExactButIsNot:
    """Names its result 'exact' but says is_exact = False: the flag wins."""

    name, is_exact = "misnamed", False

    def run(self, op, *, k=3):
        RECEIVED.append({"k": k})
        return SpectrumResult(method="exact", eigenvalues=_eigh(op)[-k:], num_params=op.shape[0])


BACKENDS = [TakesKAndSeed, TakesProbes, TakesNothing, TakesAnyOption, ClaimsExactButIsNot]


@pytest.fixture(autouse=True)
def backend_plugin():
    plugins.reset()
    plugin = types.ModuleType("test_backends_plugin")
    plugin.spectra_register_backends = spectra.hookimpl(
        lambda registry: [registry.register(cls.name, cls, cls.__doc__ or "") for cls in BACKENDS])
    plugins.register_plugin(plugin, "backend-arguments")
    RECEIVED.clear()
    yield
    plugins.reset()


@pytest.fixture(scope="module")
def net_and_data():
    model = spectra.models.create("blobnet", hidden=2, dtype="float64", seed=3)
    data = spectra.datasets.load("blobs", n=40, dtype="float64", seed=1)
    return model, data


# (backend, extra analyze arguments, what run() must receive)
RECEIVES = [
    ("takes-k-seed", {"k": 4, "seed": 7, "num_probes": 3}, {"k": 4, "seed": 7}),
    ("takes-probes", {"num_probes": 3, "num_steps": 5, "memory_limit": 10**9, "k": 2},
     {"num_probes": 3, "num_steps": 5, "memory_limit": 10**9}),
    ("takes-nothing", {"k": 4, "seed": 7}, {}),
    ("takes-any", {"k": 4, "colour": "blue"}, {"colour": "blue"}),  # **options: the user's options only
    ("misnamed", {"k": 2}, {"k": 2}),
]


@pytest.mark.parametrize("method, kwargs, received", RECEIVES, ids=[r[0] for r in RECEIVES])
def test_a_plugin_backend_receives_the_common_arguments_its_signature_names(net_and_data, method, kwargs,
                                                                             received):
    model, data = net_and_data
    result = spectra.analyze(model, data, method=method, **kwargs)
    assert RECEIVED == [received]
    assert result.provenance["method"] == result.method


# (backend, its is_exact flag, the method its result names) -> result.is_exact and the summary's path
IS_EXACT = [
    ("exact", True, "exact"),
    ("arpack", False, "arpack"),
    ("takes-nothing", True, "takes-nothing"),  # a plugin's exact solver under its own name
    ("misnamed", False, "exact"),  # a result named "exact" by a backend that is not
]


@pytest.mark.parametrize("method, flag, named", IS_EXACT, ids=[r[0] for r in IS_EXACT])
def test_is_exact_comes_from_the_backend(net_and_data, tmp_path, method, flag, named):
    model, data = net_and_data
    result = spectra.analyze(model, data, method=method, k=3)
    assert result.method == named and result.is_exact is flag
    summary = result.summary()
    if flag:  # every eigenvalue: exact counts and a density
        assert summary["estimated"] is False and isinstance(summary["num_negative"], int)
        grid, rho = result.density()
        assert abs(float(np.trapezoid(rho, grid)) - 1) < 1e-2
    else:  # a few eigenvalues: listed, not counted
        assert summary["num_computed"] == 3 and "num_negative" not in summary
        with pytest.raises(InvalidInputError, match="not a whole spectrum"):
            result.density()
    assert spectra.load(result.save(tmp_path / "r")).is_exact is flag


def test_a_hand_made_result_is_exact_when_its_method_says_so():
    assert SpectrumResult(method="exact", eigenvalues=np.array([1.0]), num_params=1).is_exact is True
    assert SpectrumResult(method="arpack", eigenvalues=np.array([1.0]), num_params=1).is_exact is False


# (method, options, message): unknown options are refused before any product, with the closest name
UNKNOWN_OPTIONS = [
    ("lanczos", {"num_prob": 5}, "the lanczos backend does not take option(s) 'num_prob'; it takes: engine, "
                                 "lanczos_dtype, memory_limit, num_probes, num_steps, probes, seed; "
                                 "did you mean 'num_probes'?"),
    ("exact", {"num_prob": 5}, "the exact backend does not take option(s) 'num_prob'; it takes: block_size, "
                               "memory_limit, return_eigenvectors, return_hessian; did you mean 'num_probes'?"),
    ("arpack", {"chunk_sise": 8}, "did you mean 'chunk_size'?"),
    ("takes-k-seed", {"tolerance": 1e-3}, "the takes-k-seed backend does not take option(s) 'tolerance'; "
                                          "it takes: k, seed"),
]


@pytest.mark.parametrize("method, options, message", UNKNOWN_OPTIONS, ids=[r[0] for r in UNKNOWN_OPTIONS])
def test_unknown_options_are_refused_with_a_suggestion(net_and_data, method, options, message):
    model, data = net_and_data
    with pytest.raises(InvalidInputError) as info:
        spectra.analyze(model, data, method=method, **options)
    assert message in str(info.value)
    assert RECEIVED == []  # refused before the backend ran


def test_a_direct_call_with_an_unknown_option_is_refused_the_same_way():
    op = DenseOperator(torch.eye(20, dtype=torch.float64))
    with pytest.raises(InvalidInputError, match="the lanczos backend does not take option.*did you mean 'num_probes'"):
        LanczosBackend().run(op, num_prob=3)


# (method as typed, backend that runs)
CASES = [("Exact", "exact"), ("ARPACK", "arpack"), ("Lanczos", "lanczos"), ("AUTO", "topk"),
         ("Takes-Nothing", "takes-nothing")]


@pytest.mark.parametrize("typed, ran", CASES, ids=[c[0] for c in CASES])
def test_method_names_are_found_in_any_case(net_and_data, typed, ran):
    model, data = net_and_data
    result = spectra.analyze(model, data, method=typed, k=2, num_probes=2, num_steps=6)
    assert result.method == ran and result.provenance["requested_method"] == typed
    # k given without a method asks for extreme eigenvalues: "auto" runs topk (a float64 model: float32 search)
    assert result.provenance["auto_reason"].startswith("topk: extreme" if typed == "AUTO" else "requested")


def test_arpack_that_does_not_converge_says_what_to_change():
    op = DenseOperator(torch.diag(torch.linspace(0, 1, 300, dtype=torch.float64)))
    with pytest.raises(ConvergenceError) as info:
        ArpackBackend().run(op, k=5, tol=0, maxiter=1, ncv=11)
    message = str(info.value)
    assert "ARPACK did not converge at the largest end" in message and "maxiter=1" in message
    assert "raise maxiter, raise ncv (at most P=300), loosen tol" in message
    assert isinstance(info.value, SpectraError) and isinstance(info.value, RuntimeError)
