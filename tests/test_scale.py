"""Large-model paths on small nets where the dense answer is known.

* parameter subsets (``params=``) for every backend: the spectrum of the
  selected block of the dense float64 Hessian (torch.autograd.functional.hessian,
  block cut out by index here, not by spectra's selector);
* float32 models: exact/arpack/lanczos against the float64 spectrum of the same
  weights, with the Lanczos recurrence in float64 (``lanczos_dtype``) and in float32;
* the low-memory Lanczos engine (no stored basis, no reorthogonalisation)
  against exact: extreme Ritz values and the broadened density.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import spectra
from spectra.backends.arpack import ArpackBackend
from spectra.backends.exact import ExactBackend
from spectra.backends.lanczos import LanczosBackend
from spectra.operators.hessian import HessianOperator
from spectra.testing import assert_quadrature_moments, density_distance, reference_hessian

# model parameters in order: 0.weight (30), 0.bias (6), 2.weight (24), 2.bias (4): P = 64
OFFSETS = {"0.weight": (0, 30), "0.bias": (30, 36), "2.weight": (36, 60), "2.bias": (60, 64)}
SUBSETS = [  # (selector, names it must pick)
    ("0", ["0.weight", "0.bias"]),
    (["2.weight"], ["2.weight"]),
    ("*.bias", ["0.bias", "2.bias"]),
    (["2.bias", "0.weight"], ["0.weight", "2.bias"]),  # given out of order: model order is kept
]
SUBSET_IDS = ["layer-prefix", "one-tensor", "glob", "two-out-of-order"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny products with 2 torch threads on a busy 2-core machine spin-wait (35x slower measured)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4)).to(dtype)


def _data(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(40, 5, generator=g, dtype=torch.float64).to(dtype), torch.randint(0, 4, (40,), generator=g)


@pytest.fixture(scope="module")
def dense():
    """The full 64 x 64 float64 Hessian, from torch.autograd.functional.hessian."""
    X, y = _data()
    return reference_hessian(_model(), "cross_entropy", X, y).numpy()


def _block(H: np.ndarray, names: list[str]) -> np.ndarray:
    idx = np.concatenate([np.arange(*OFFSETS[n]) for n in names])
    return H[np.ix_(idx, idx)]


# ------------------------------------------------------------------ parameter subsets
@pytest.mark.parametrize("selector,names", SUBSETS, ids=SUBSET_IDS)
def test_subset_exact_is_the_block_spectrum(dense, selector, names):
    op = HessianOperator(_model(), "cross_entropy", _data(), params=selector)
    assert op.param_names == names
    want = np.linalg.eigvalsh(_block(dense, names))
    got = ExactBackend().run(op).eigenvalues
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * np.abs(want).max())


@pytest.mark.parametrize("selector,names", SUBSETS, ids=SUBSET_IDS)
def test_subset_arpack_gives_the_block_ends(dense, selector, names):
    op = HessianOperator(_model(), "cross_entropy", _data(), params=selector)
    want = np.linalg.eigvalsh(_block(dense, names))
    # 2.weight alone is positive semidefinite with a 6-fold exact zero at the bottom; see
    # test_arpack_smallest_end_on_an_exact_null_space for what ARPACK does there
    which = "largest" if names == ["2.weight"] else "both"
    got = ArpackBackend().run(op, k=3, which=which).eigenvalues
    ends = want[-3:] if which == "largest" else np.concatenate([want[:3], want[-3:]])
    np.testing.assert_allclose(got, ends, rtol=0, atol=1e-9 * np.abs(want).max())


def test_arpack_smallest_end_on_an_exact_null_space(dense):
    from spectra.errors import SpectraError

    op = HessianOperator(_model(), "cross_entropy", _data(), params=["2.weight"])
    want = np.linalg.eigvalsh(_block(dense, ["2.weight"]))
    from spectra.backends.arpack import CostlyRunWarning

    try:
        with pytest.warns(CostlyRunWarning, match="method='topk'"):  # the null space makes ARPACK dear
            got = ArpackBackend().run(op, k=3, which="smallest").eigenvalues
    except SpectraError:
        return  # a clear refusal is acceptable
    np.testing.assert_allclose(got, want[:3], rtol=0, atol=1e-9 * np.abs(want).max())


@pytest.mark.parametrize("engine", ["reorth", "linear_operator", "lowmem"])
@pytest.mark.parametrize("selector,names", SUBSETS, ids=SUBSET_IDS)
def test_subset_lanczos_quadrature_is_exact_on_the_block(dense, selector, names, engine):
    op = HessianOperator(_model(), "cross_entropy", _data(), params=selector)
    block = _block(dense, names)
    probes = np.random.default_rng(3).standard_normal((block.shape[0], 3))
    r = LanczosBackend().run(op, probes=torch.as_tensor(probes), num_steps=4, engine=engine)
    assert_quadrature_moments(r, block, probes, rtol=1e-9)


@pytest.mark.parametrize("method", ["exact", "arpack", "lanczos"])
def test_analyze_passes_params_to_every_backend(dense, method):
    options = {"k": 2, "which": "largest"} if method == "arpack" else {"num_probes": 2, "num_steps": 20}
    r = spectra.analyze(_model(), _data(), method=method, params="2", distributed=False, **options)
    want = np.linalg.eigvalsh(_block(dense, ["2.weight", "2.bias"]))
    assert r.num_params == 28 and r.provenance["param_names"] == ["2.weight", "2.bias"]
    top = r.eigenvalues.max() if r.eigenvalues is not None else r.nodes.max()
    np.testing.assert_allclose(top, want[-1], rtol=1e-8)


# ------------------------------------------------------------------ float32 models
@pytest.fixture(scope="module")
def float32_case():
    """A float32 model and the float64 spectrum of exactly its weights on exactly its data."""
    m32 = _model(torch.float32)
    X, y = _data(torch.float32)
    m64 = _model(torch.float64)
    m64.load_state_dict({k: v.double() for k, v in m32.state_dict().items()})
    H64 = reference_hessian(m64, "cross_entropy", X.double(), y).numpy()
    return m32, (X, y), H64, np.linalg.eigvalsh(H64)


F32_TOL = 1e-5  # relative to ||H||: float32 products carry ~1e-7 relative round-off


def test_float32_exact_and_arpack(float32_case):
    m32, data, _H, lam = float32_case
    op = HessianOperator(m32, "cross_entropy", data)
    assert op.dtype == torch.float32
    scale = np.abs(lam).max()
    np.testing.assert_allclose(ExactBackend().run(op).eigenvalues, lam, rtol=0, atol=F32_TOL * scale)
    r = ArpackBackend().run(op, k=3, which="both")
    np.testing.assert_allclose(r.eigenvalues, np.concatenate([lam[:3], lam[-3:]]), rtol=0, atol=F32_TOL * scale)
    assert r.residuals.max() < 1e-5 * scale


@pytest.mark.parametrize("engine", ["reorth", "linear_operator", "lowmem"])
@pytest.mark.parametrize("lanczos_dtype", [torch.float64, torch.float32], ids=["acc64", "acc32"])
def test_float32_lanczos_with_float64_or_float32_tridiagonal(float32_case, engine, lanczos_dtype):
    m32, data, H, lam = float32_case
    op = HessianOperator(m32, "cross_entropy", data)
    probes = np.random.default_rng(5).standard_normal((op.shape[0], 4))
    r = LanczosBackend().run(op, probes=torch.as_tensor(probes), num_steps=6, engine=engine,
                             lanczos_dtype=lanczos_dtype)
    assert r.provenance["lanczos_dtype"] == str(lanczos_dtype).replace("torch.", "")
    # quadrature moments against the float64 matrix: only float32 product round-off remains
    assert_quadrature_moments(r, H, probes, rtol=1e-5 if lanczos_dtype == torch.float64 else 1e-4)
    weights_sum = r.weights.sum(axis=1)
    np.testing.assert_allclose(weights_sum, 1.0, atol=1e-12 if lanczos_dtype == torch.float64 else 1e-6)
    full = LanczosBackend().run(op, num_probes=2, num_steps=40, engine=engine, lanczos_dtype=lanczos_dtype)
    scale = np.abs(lam).max()
    assert abs(full.nodes.max() - lam[-1]) < F32_TOL * scale
    assert abs(full.nodes.min() - lam[0]) < F32_TOL * scale


# ------------------------------------------------------------------ low-memory engine vs exact
@pytest.fixture(scope="module")
def wider():
    """A 5-24-24-4 tanh net on 60 samples (P = 844): big enough for ghosts to matter, exact in < 1 s."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(5, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 4)).double()
    g = torch.Generator().manual_seed(8)
    data = (torch.randn(60, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (60,), generator=g))
    op = HessianOperator(model, "cross_entropy", data)
    return op, ExactBackend().run(op).eigenvalues


# Measured here (10 probes x 60 steps): L1 0.045 (full reorth) / 0.053 (lowmem) at sigma = 1/200
# of the range, 0.013 for both at 1/20; extremes to ~1e-15 relative.  The tolerances leave room
# for other BLAS builds and seeds, not for a broken engine (a wrong quadrature gives L1 > 0.5).
@pytest.mark.parametrize("engine", ["reorth", "linear_operator", "lowmem"])
def test_lowmem_and_full_reorth_match_exact(wider, engine):
    op, lam = wider
    r = LanczosBackend().run(op, num_probes=10, num_steps=60, seed=0, engine=engine)
    scale = np.abs(lam).max()
    assert abs(r.nodes.max() - lam[-1]) < 1e-8 * scale
    assert abs(r.nodes.min() - lam[0]) < 1e-8 * scale
    assert density_distance(r, lam) < 0.15
    # coarser broadening (1/20 of the range) is what density plots show
    assert density_distance(r, lam, sigma=(lam[-1] - lam[0]) / 20) < 0.05


def test_lowmem_engine_keeps_no_basis(wider, monkeypatch):
    import linear_operator.utils.lanczos as lo

    def refuse(*args, **kwargs):
        raise AssertionError("the lowmem engine must not call lanczos_tridiag (it stores the basis)")

    monkeypatch.setattr(lo, "lanczos_tridiag", refuse)
    op, _ = wider
    r = LanczosBackend().run(op, num_probes=2, num_steps=30, engine="lowmem", memory_limit=100_000)  # above the lowmem need (66 KiB), below the basis (396 KiB)
    assert r.provenance["reorthogonalization"] == "none" and r.nodes.shape == (2, 30)
