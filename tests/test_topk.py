"""The topk backend (block Krylov-Schur) against exact spectra: synthetic, degenerate and real MNIST nets.

Tolerances: every requested eigenvalue within ``1e-10 * max|lambda|`` of ``numpy.linalg.eigvalsh``
(the backend's default ``tol``); error estimates never below the true error by more than
``1e-13 * max|lambda|`` (round-off of the reference).
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from torch import nn

import spectra
from spectra.backends import block_krylov, topk
from spectra.backends.exact import ExactBackend
from spectra.backends.topk import TopkBackend
from spectra.errors import ConvergenceError, InvalidInputError, MemoryBudgetError
from spectra.operators.base import DenseOperator
from spectra.operators.hessian import HessianOperator
from spectra.testing import matrix_with_spectrum

P = 400
RTOL = 1e-10
ROUNDOFF = 1e-13
SMALL_BASIS = {"block_size": 5, "max_basis": 60}  # P = 400 > 2 x 60: the Krylov path


def _spectrum(name: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    if name == "spread":  # a continuum, denser inside than at its ends, with outliers at both ends
        x = np.linspace(-1.0, 1.3, P - 4)
        return np.concatenate([np.sign(x) * np.abs(x) ** 3, [-3.0, -2.5, 4.0, 5.0]])
    if name == "zero_cluster":  # a singular Hessian: 85 % exact zeros, small negatives, a few outliers
        n_zero = int(0.85 * P)
        rest = P - n_zero - 8
        return np.concatenate([np.zeros(n_zero), -np.geomspace(0.05, 0.001, 8), rng.uniform(0.01, 1.0, rest - 3),
                               [2.0, 3.0, 5.0]])
    if name == "repeated_ends":  # the top and the bottom eigenvalue four times each
        return np.concatenate([np.full(4, 2.0), [1.5], np.full(4, -1.0), rng.uniform(-0.5, 1.0, P - 9)])
    if name == "clustered_top":  # like the MNIST 784-64-64-10 top: a slowly decaying cluster, gaps ~1e-2
        top = np.array([0.552, 0.518, 0.490, 0.458, 0.433, 0.429, 0.417, 0.414, 0.401, 0.396])
        return np.concatenate([top, np.linspace(-0.47, 0.39, P - 10)])
    raise KeyError(name)


SPECTRA = ["spread", "zero_cluster", "repeated_ends", "clustered_top"]
WHICH = ["largest", "smallest", "both"]


@pytest.fixture(scope="module")
def matrices():
    return {name: (torch.as_tensor(matrix_with_spectrum(_spectrum(name), seed=2)), np.sort(_spectrum(name)))
            for name in SPECTRA}


def _expected(exact: np.ndarray, k: int, which: str) -> np.ndarray:
    lo = exact[:k] if which in ("smallest", "both") else exact[:0]
    hi = exact[-k:] if which in ("largest", "both") else exact[:0]
    return np.concatenate([lo, hi])


def _check(result, exact: np.ndarray, k: int, which: str) -> None:
    want = _expected(exact, k, which)
    scale = np.abs(exact).max()
    err = np.abs(np.sort(result.eigenvalues) - want)
    assert err.max() <= RTOL * scale, f"max error {err.max() / scale:.2e} relative to max|lambda|"
    est = np.asarray(result.provenance["eigenvalue_error_estimates"])
    assert np.all(err <= est + ROUNDOFF * scale), "an error estimate is below the true error"
    assert np.all(est <= result.provenance["tol"] * scale * (1 + 1e-9) + ROUNDOFF * scale)


# (spectrum, which, block size): block 5 >= the four-fold ends; block 2 must recover the missing copies
CASES = [(s, w, 5) for s in SPECTRA for w in WHICH] + [("repeated_ends", w, 2) for w in WHICH]


@pytest.mark.parametrize("name,which,block", CASES, ids=[f"{s}-{w}-b{b}" for s, w, b in CASES])
def test_topk_equals_exact_spectrum(matrices, name, which, block):
    A, exact = matrices[name]
    op = DenseOperator(A)
    result = TopkBackend().run(op, k=5, which=which, block_size=block, max_basis=12 * block,
                               return_eigenvectors=True)
    _check(result, exact, 5, which)
    prov = result.provenance
    assert prov["path"] == "krylov" and prov["converged"] and prov["block_size"] == block
    assert result.num_matvecs + prov["residual_matvecs"] == op.num_matvecs
    assert prov["residual_matvecs"] == result.eigenvalues.size  # the answer's residuals come from fresh products
    # the residuals are what they claim: ||A x - lambda x|| for the returned unit vectors
    X = result.eigenvectors
    np.testing.assert_allclose(X.T @ X, np.eye(X.shape[1]), atol=1e-12)
    res = np.linalg.norm(A.numpy() @ X - X * result.eigenvalues, axis=0)
    np.testing.assert_allclose(res, result.residuals, rtol=1e-6, atol=1e-14 * np.abs(exact).max())
    if block == 2:  # four copies cannot come from one 2-column Krylov run: the check must have found them
        assert prov["multiplicity_check_rounds"] >= 1


@pytest.fixture(scope="module")
def mnist_nets():
    """Real MNIST nets at initialisation (small enough for an exact spectrum): ReLU and tanh."""
    data = spectra.datasets.load("mnist", n=200, seed=0)
    X = data.X.to(torch.float64).reshape(len(data), -1)
    nets = {}
    for activation in ("relu", "tanh"):
        model = spectra.models.create("mlp", sizes=[784, 2, 10], activation=activation, dtype="float64", seed=0)
        model = nn.Sequential(*[m for m in model if not isinstance(m, nn.Flatten)])
        op = HessianOperator(model, "cross_entropy", (X, data.y))
        nets[activation] = (model, (X, data.y), ExactBackend().run(op).eigenvalues)
    return nets


MNIST_CASES = [(a, w) for a in ("relu", "tanh") for w in WHICH]


@pytest.mark.parametrize("activation,which", MNIST_CASES, ids=[f"{a}-{w}" for a, w in MNIST_CASES])
def test_topk_on_mnist_net_equals_exact(mnist_nets, activation, which):
    model, data, exact = mnist_nets[activation]
    result = spectra.analyze(model, data, method="topk", k=10, which=which)
    assert result.method == "topk" and result.provenance["path"] == "krylov"
    _check(result, exact, 10, which)
    # relative to each eigenvalue itself where it is not in the zero bulk
    want = _expected(exact, 10, which)
    big = np.abs(want) > 1e-3 * np.abs(exact).max()
    rel = np.abs(np.sort(result.eigenvalues) - want)[big] / np.abs(want[big])
    assert rel.max() <= 1e-9


@pytest.mark.parametrize("activation,which", MNIST_CASES, ids=[f"{a}-{w}" for a, w in MNIST_CASES])
def test_topk_on_mnist_net_reaches_1e10_relative_on_every_eigenvalue(mnist_nets, activation, which):
    """``tol`` is relative to the largest |eigenvalue|: asked for ``1e-10 * min|lambda| / max|lambda|``,
    every requested eigenvalue comes out within 1e-10 of itself (none of these is in the zero bulk)."""
    model, data, exact = mnist_nets[activation]
    want = _expected(exact, 10, which)
    assert np.abs(want).min() > 1e-2 * np.abs(exact).max(), "test premise: no requested eigenvalue is ~0"
    tol = 1e-10 * np.abs(want).min() / np.abs(exact).max()
    result = spectra.analyze(model, data, method="topk", k=10, which=which, tol=tol)
    assert result.provenance["path"] == "krylov" and result.provenance["tol"] == tol
    rel = np.abs(np.sort(result.eigenvalues) - want) / np.abs(want)
    assert rel.max() <= 1e-10, f"max relative error {rel.max():.1e}"


# (provenance key, what it must be): the run names its algorithm, block size, restarts and products
PROVENANCE = [
    ("algorithm", lambda v, op, r: v.startswith("block Krylov-Schur") and "thick restart" in v and "locking" in v),
    ("block_size", lambda v, op, r: v == 5),
    ("max_basis", lambda v, op, r: v == 60),
    ("restarts", lambda v, op, r: isinstance(v, int) and v >= 1),
    ("iterations", lambda v, op, r: isinstance(v, int) and v >= 1),
    ("phases", lambda v, op, r: [p["operator"] for p in v] == ["main"] and v[0]["products"] == r.num_matvecs),
    ("residual_matvecs", lambda v, op, r: v + r.num_matvecs == op.num_matvecs),
    ("recurrence_dtype", lambda v, op, r: v == "float64"),
    ("path", lambda v, op, r: v == "krylov"),
    ("converged", lambda v, op, r: v is True),
]


@pytest.mark.parametrize("key,holds", PROVENANCE, ids=[k for k, _ in PROVENANCE])
def test_provenance_names_algorithm_block_restarts_and_products(matrices, key, holds):
    A, _ = matrices["clustered_top"]
    op = DenseOperator(A)
    result = TopkBackend().run(op, k=5, **SMALL_BASIS)
    assert holds(result.provenance[key], op, result), f"provenance[{key!r}] = {result.provenance[key]!r}"


# (max_matvecs, what happens): enough for the run and its check; enough for the run only (the check is
# skipped, residuals from the recurrence); too few (a clear error). Products never exceed the budget.
BUDGETS = [(400, "verified"), ("exact_run", "unverified"), (30, "error")]


@pytest.mark.parametrize("budget,outcome", BUDGETS, ids=[o for _, o in BUDGETS])
def test_max_matvecs_is_honoured(matrices, budget, outcome):
    A, exact = matrices["clustered_top"]
    if budget == "exact_run":  # the products of an unbudgeted run, less its fresh-product check
        free = TopkBackend().run(DenseOperator(A), k=5, **SMALL_BASIS)
        budget = free.num_matvecs
    op = DenseOperator(A)
    if outcome == "error":
        with pytest.raises(ConvergenceError, match=f"max_matvecs={budget}"):
            TopkBackend().run(op, k=5, max_matvecs=budget, **SMALL_BASIS)
    else:
        result = TopkBackend().run(op, k=5, max_matvecs=budget, **SMALL_BASIS)
        _check(result, exact, 5, "largest")
        verified = result.provenance["residual_matvecs"] > 0
        assert verified == (outcome == "verified")
        assert result.provenance["residuals_from"] == ("fresh products" if verified else "the Krylov recurrence")
    assert op.num_matvecs <= budget


def test_mixed_precision_finishes_in_float64(matrices):
    A, exact = matrices["clustered_top"]
    low = DenseOperator(A.float())
    op = DenseOperator(A)
    result = TopkBackend().run(op, k=5, low_precision=low, **SMALL_BASIS)
    _check(result, exact, 5, "largest")
    phases = result.provenance["phases"]
    assert [p["operator"] for p in phases] == ["low_precision", "main"]
    assert phases[0]["dtype"] == "float32" and low.num_matvecs == phases[0]["products"] > 0
    assert result.provenance["low_precision_matvecs"] == low.num_matvecs


# (operator size, whether the Krylov path runs and so builds the low-precision operator)
BUILDER_CASES = [(400, True), (100, False)]


@pytest.mark.parametrize("size,krylov", BUILDER_CASES, ids=["krylov-builds-it", "dense-never-builds-it"])
def test_low_precision_builder_is_called_only_on_the_krylov_path(size, krylov):
    d = torch.linspace(0.0, 1.0, size, dtype=torch.float64)
    built = []

    def build():
        built.append(DenseOperator(torch.diag(d).float()))
        return built[-1]

    result = TopkBackend().run(DenseOperator(torch.diag(d)), k=3, low_precision=build)
    assert result.provenance["path"] == ("krylov" if krylov else "dense") and len(built) == int(krylov)
    if krylov:  # one vector at a time in the float32 phase, the float64 finish from its vectors
        assert [(p["operator"], p["block_size"]) for p in result.provenance["phases"]] == [
            ("low_precision", topk.DEFAULT_LOW_PRECISION_BLOCK_SIZE), ("main", 3)]
        assert built[0].num_matvecs == result.provenance["low_precision_matvecs"] > 0
    np.testing.assert_allclose(result.eigenvalues, d[-3:].numpy(), atol=1e-12)


def test_low_precision_builder_must_return_an_operator():
    with pytest.raises(InvalidInputError, match="low_precision's builder returned NoneType, not an operator"):
        TopkBackend().run(DenseOperator(torch.diag(torch.linspace(0.0, 1.0, 400, dtype=torch.float64))), k=3,
                          low_precision=lambda: None)


def test_no_float32_twin_where_products_are_float32_already(mnist_nets):
    import copy

    model, data, _ = mnist_nets["tanh"]
    model32 = copy.deepcopy(model).float()
    op32 = HessianOperator(model32, "cross_entropy", data)
    assert spectra.api.low_precision_twin(op32, HessianOperator, model32, "cross_entropy", data, None, {}) is None
    assert not spectra.api.has_low_precision_twin(op32)
    assert spectra.api.has_low_precision_twin(HessianOperator(model, "cross_entropy", data))


def test_float32_operator_gets_a_float32_tolerance(matrices):
    A, exact = matrices["spread"]
    result = TopkBackend().run(DenseOperator(A.float()), k=3, **SMALL_BASIS)
    assert result.provenance["tol"] == topk.DEFAULT_TOL[torch.float32]
    np.testing.assert_allclose(np.sort(result.eigenvalues), exact[-3:], atol=1e-5 * np.abs(exact).max())


def test_deterministic_for_a_seed(matrices):
    A, _ = matrices["zero_cluster"]
    runs = [TopkBackend().run(DenseOperator(A), k=4, which="both", seed=3, **SMALL_BASIS, return_eigenvectors=True)
            for _ in range(2)]
    assert np.array_equal(runs[0].eigenvalues, runs[1].eigenvalues)
    assert np.array_equal(runs[0].eigenvectors, runs[1].eigenvectors)
    assert runs[0].num_matvecs == runs[1].num_matvecs


def test_warm_start_from_previous_eigenvectors_saves_products(matrices):
    A, exact = matrices["clustered_top"]
    cold = TopkBackend().run(DenseOperator(A), k=5, **SMALL_BASIS, return_eigenvectors=True)
    op = DenseOperator(A)
    warm = TopkBackend().run(op, k=5, **SMALL_BASIS, v0=cold.eigenvectors)
    _check(warm, exact, 5, "largest")
    assert warm.provenance["warm_start_vectors"] == 5
    assert warm.num_matvecs <= cold.num_matvecs / 3


def test_budget_is_honoured_with_a_clear_error(matrices):
    A, _ = matrices["clustered_top"]
    op = DenseOperator(A)
    with pytest.raises(ConvergenceError, match=r"max_matvecs=30 .* of 5 pairs within tol"):
        TopkBackend().run(op, k=5, **SMALL_BASIS, max_matvecs=30)
    assert op.num_matvecs <= 30


# ---------------------------------------------------------------- the cheaper path
def test_small_operator_takes_the_dense_path():
    for lam, rule in [(np.concatenate([np.zeros(40), np.linspace(-0.1, 1.0, 30)]), "2 x max_basis=35"),
                      (np.concatenate([np.zeros(60), np.linspace(-0.1, 1.0, 40)]), "P=100 <= 160")]:
        op = DenseOperator(torch.as_tensor(matrix_with_spectrum(lam, seed=0)))
        result = TopkBackend().run(op, k=5, which="smallest")
        assert result.provenance["path"] == "dense" and rule in result.provenance["path_reason"]
        assert op.num_matvecs == lam.size
        np.testing.assert_allclose(np.sort(result.eigenvalues), np.sort(lam)[:5], atol=1e-12)
    big = DenseOperator(torch.diag(torch.linspace(0.0, 1.0, 161, dtype=torch.float64)))
    assert TopkBackend().run(big, k=5).provenance["path"] == "krylov"


def test_dense_fallback_after_p_products_without_convergence():
    """Equally spaced eigenvalues: a small basis converges slowly at both ends; dense finishes it."""
    d = torch.arange(-100.0, 100.0, dtype=torch.float64)
    op = DenseOperator(torch.diag(d))
    result = TopkBackend().run(op, k=2, which="both", block_size=2, max_basis=8)
    assert result.provenance["path"] == "dense" and "without converging" in result.provenance["path_reason"]
    assert op.num_matvecs <= 2 * 200
    assert result.eigenvalues.tolist() == [-100.0, -99.0, 98.0, 99.0]


def test_smallest_end_of_one_relu_layer_costs_at_most_5p_products():
    """An untrained ReLU net's layer: a singular Hessian where ARPACK's small end takes thousands."""
    model = spectra.models.create("mlp", sizes=[2, 10, 10, 2], dtype="float64", seed=0)
    data = spectra.datasets.load("blobs", n=400, seed=0)
    layer = ["fc2.weight", "fc2.bias"]
    exact = spectra.analyze(model, data, method="exact", params=layer).eigenvalues
    P_layer = exact.size
    assert P_layer == 110 and (np.abs(exact) < 1e-12).sum() > 10, "test premise: a large zero cluster"
    for dense in ("auto", False):
        r = spectra.analyze(model, data, method="topk", which="smallest", k=10, params=layer, dense=dense)
        assert r.num_matvecs + r.provenance["residual_matvecs"] <= 5 * P_layer
        np.testing.assert_allclose(np.sort(r.eigenvalues), exact[:10], atol=1e-10 * np.abs(exact).max())
    assert r.provenance["path"] == "krylov"


# ---------------------------------------------------------------- refusals
BAD = [
    ({"which": "middle"}, InvalidInputError, "which must be"),
    ({"k": 0}, InvalidInputError, "k must be a positive integer"),
    ({"k": 300, "which": "both"}, InvalidInputError, "topk needs k <= P"),
    ({"tol": 2.0}, InvalidInputError, "tol must be"),
    ({"block_size": 0}, InvalidInputError, "block_size must be"),
    ({"k": 10, "block_size": 10, "max_basis": 12}, InvalidInputError, "max_basis must be an integer >= "),
    ({"max_matvecs": 0}, InvalidInputError, "max_matvecs must be"),
    ({"v0": np.ones(3)}, InvalidInputError, r"v0 must have shape \[P=400\]"),
    ({"v0": np.zeros(400)}, InvalidInputError, "nonzero columns"),
    ({"check_multiplicity": "sometimes"}, InvalidInputError, "check_multiplicity must be"),
    ({"low_precision": DenseOperator(torch.eye(3, dtype=torch.float64))}, InvalidInputError, "same shape"),
    ({"colour": "red"}, InvalidInputError, "does not take option"),
    ({"memory_limit": 1000}, MemoryBudgetError, r"topk needs about .* pass a smaller max_basis"),
]


@pytest.mark.parametrize("options,error,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_options_are_refused_before_any_product(options, error, message):
    op = DenseOperator(torch.eye(400, dtype=torch.float64))
    with pytest.raises(error, match=message):
        TopkBackend().run(op, **options)
    assert op.num_matvecs == 0


def test_memory_check_counts_the_float64_phase_after_a_low_precision_search():
    """The search's basis (block 1, 40 columns) is smaller than the float64 phase's that follows it
    (a block of k = 10 and 80 columns): a budget between the two is refused before any product."""
    P, k = 400, 10
    search = topk.topk_memory_bytes(P, topk.default_basis(1, k), k, 1)
    main = topk.topk_memory_bytes(P, topk.default_basis(k, k), k, k)
    assert topk.default_basis(k, k) == 80 and search < main, "test premise: the float64 phase needs more"
    op = DenseOperator(torch.diag(torch.linspace(0.0, 1.0, P, dtype=torch.float64)))
    twin = DenseOperator(torch.diag(torch.linspace(0.0, 1.0, P, dtype=torch.float64)).float())
    with pytest.raises(MemoryBudgetError, match=r"topk needs about .* or low_precision=None"):
        TopkBackend().run(op, k=k, low_precision=twin, memory_limit=(search + main) // 2)
    assert op.num_matvecs == twin.num_matvecs == 0
    r = TopkBackend().run(op, k=k, low_precision=twin, memory_limit=main)  # enough for both phases
    assert [p["operator"] for p in r.provenance["phases"]] == ["low_precision", "main"]


# ---------------------------------------------------------------- through analyze and summary
def test_analyze_passes_the_common_arguments_and_summary_names_the_ends(mnist_nets):
    model, data, exact = mnist_nets["tanh"]
    r = spectra.analyze(model, data, method="topk", k=3, which="smallest", seed=5, return_eigenvectors=True)
    assert r.provenance["k"] == 3 and r.provenance["which"] == "smallest" and r.provenance["seed"] == 5
    assert r.eigenvectors.shape == (exact.size, 3)
    s = r.summary()
    assert "lambda_max" not in s and s["lambda_min"] == pytest.approx(exact[0], rel=1e-9)
    assert s["largest_computed"] == pytest.approx(exact[2], rel=1e-9)
    top = spectra.analyze(model, data, method="topk", k=3, which="largest").summary()
    assert "lambda_min" not in top and top["lambda_max"] == pytest.approx(exact[-1], rel=1e-10)
    assert top["smallest_computed"] == pytest.approx(exact[-3], rel=1e-10)


@pytest.mark.parametrize("module", [topk, block_krylov], ids=["topk", "block_krylov"])
def test_docstring_examples(module):
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


# ---------------------------------------------------------------- the default path
# (arguments, torch threads, method that runs, start of auto_reason, dtype of the search phase): k or which
# without a method asks for extremes; the largest end runs topk where it can search with float32 products
# (a float64 model's float32 twin), whatever the threads or the product engine
TWIN = "; topk searches with float32 products"
NO_TWIN = "; no float32 twin of the operator"
DEFAULT_PATH = [
    ({}, 1, "exact", "exact: P=", None),
    ({"k": 3}, 1, "topk", "topk: extreme eigenvalues asked for (k=3, which='largest')" + TWIN, "float32"),
    ({"k": 3}, 2, "topk", "topk: extreme eigenvalues asked for (k=3, which='largest')" + TWIN, "float32"),
    ({"k": 3, "mode": "reverse"}, 1, "topk", "topk: extreme eigenvalues asked for (k=3, which='largest')" + TWIN,
     "float32"),
    ({"k": 3, "product_dtype": "float32"}, 1, "arpack",
     "arpack: extreme eigenvalues asked for (k=3, which='largest')" + NO_TWIN, None),
    ({"which": "smallest"}, 1, "topk", "topk: extreme eigenvalues asked for (k=10, which='smallest'); the small end",
     "float32"),
    ({"k": 3, "method": "arpack"}, 2, "arpack", "requested", None),
    ({"k": 3, "method": "topk", "low_precision": None}, 1, "topk", "requested", "float64"),
]


@pytest.mark.parametrize("arguments,threads,ran,reason,search", DEFAULT_PATH,
                         ids=["nothing", "k", "k-two-threads", "k-reverse", "k-float32-model", "which",
                              "k-and-method", "topk-float64-only"])
def test_k_or_which_without_a_method_runs_the_faster_solver(mnist_nets, arguments, threads, ran, reason, search):
    model, data, exact = mnist_nets["tanh"]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = spectra.analyze(model, data, **arguments)
    finally:
        torch.set_num_threads(before)
    assert result.method == ran and result.provenance["auto_reason"].startswith(reason)
    if ran == "topk":
        phases = result.provenance["phases"]
        assert phases[0]["dtype"] == search and phases[-1]["dtype"] == "float64"
        assert (phases[0]["operator"] == "low_precision") == (search == "float32")
        _check(result, exact, arguments.get("k", 10), arguments.get("which", "largest"))
    elif ran == "arpack":
        k = arguments["k"]
        rtol = 1e-5 if arguments.get("product_dtype") == "float32" else 1e-9
        np.testing.assert_allclose(np.sort(result.eigenvalues), exact[-k:], rtol=rtol)


def test_cli_k_without_method_runs_topk():
    from spectra.cli.analyze import add_analysis_options
    import argparse

    parser = argparse.ArgumentParser()
    add_analysis_options(parser)
    bare = parser.parse_args(["--model", "mlp", "--dataset", "mnist"])
    assert (bare.k, bare.which) == (None, None)  # so that method "auto" keeps the whole spectrum
    assert spectra.api.check_request(1600, k=3) in ("topk", "arpack")  # by the thread count
    assert spectra.api.check_request(1600, which="smallest") == "topk"
    assert spectra.api.check_request(1600) == "exact"


def test_tracking_warm_starts_run_topk():
    from spectra.backends.top_eigenpairs import warm_top_eigenpairs

    A = DenseOperator(torch.as_tensor(matrix_with_spectrum(_spectrum("spread"), seed=2)))
    cold = warm_top_eigenpairs(A, 2, tol=1e-8)
    warm = warm_top_eigenpairs(A, 2, previous=cold, tol=1e-8)
    assert cold.solver == warm.solver == "topk" and warm.warm and not cold.warm
    np.testing.assert_allclose(warm.values, [5.0, 4.0], rtol=1e-12)
    assert warm.num_matvecs < cold.num_matvecs
