"""spectra side by side with PyHessian, hessian-eigenthings and curvlinops, in one run.

Same workloads for every tool: MLPs 784-10-10 and 784-64-64-10 (float64, seed 0,
at initialisation) on 1000 MNIST images (``spectra.datasets.load("mnist", n=1000,
seed=0)``), cross-entropy (mean).  Two tasks:

* **top-10**: the 10 largest (algebraic) Hessian eigenvalues.  Error = max over
  the 10 of ``|lambda_i - lambda_i^ref| / |lambda_1^ref|``.
* **density**: an SLQ spectral density (10 probes x 100 steps where the tool
  allows).  Error = L1 distance to the exact spectrum broadened the same way
  (784-10-10 only: the 784-64-64-10 Hessian is too big for an exact spectrum here).

References: 784-10-10: ``numpy.linalg.eigvalsh`` of the dense Hessian (P = 7960).
784-64-64-10 (P = 55050): scipy ``eigsh(tol=0)`` top-10 with residuals
``||Hv - lambda v|| <= 1e-9 lambda_1``.  Each reference is cross-checked against a
second, independent HVP implementation (curvlinops' ``jvp(jacrev)``) when that runs.

Matvecs are counted by wrapping each tool's Hessian-product entry point (a block of
m columns counts m); a tool's own checks (determinism probes, boundary estimates)
count too.  Seconds include building the tool's operator.

The benchmark installs nothing: peers are imported from ``--peers-dir`` (default
``$SPECTRA_PEERS_DIR`` or ``/tmp/spectra-peers``), see bench/peers/README.md.  A
peer that is missing or fails is recorded as such in the table.

    python bench/peers/bench_peers.py                       # everything, writes BENCHMARKS.md
    python bench/peers/bench_peers.py --nets small --tasks top10
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
NETS = {"small": [784, 10, 10], "big": [784, 64, 64, 10]}
SIGMA_FRACTION = 1 / 100  # broadening for density errors: 1/100 of the exact spectral range
K = 10
KEEP_MARKER = "<!-- bench_peers.py writes everything above this line; sections below it are kept -->"


# ------------------------------------------------------------------ helpers
class Counter:
    """Counts Hessian-vector products (columns) through a wrapped callable."""

    def __init__(self) -> None:
        self.n = 0

    def wrap(self, fn: Callable, columns: Callable[..., int]) -> Callable:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.n += columns(*args, **kwargs)
            return fn(*args, **kwargs)

        return wrapped


def workload(sizes: list[int]):
    import spectra

    model = spectra.models.create("mlp", sizes=sizes, dtype="float64", seed=0)
    data = spectra.datasets.load("mnist", n=1000, seed=0)
    X = data.X.to(torch.float64).reshape(len(data), -1)  # flatten once: every tool sees the same tensors
    flat = nn.Sequential(*[m for m in model if not isinstance(m, nn.Flatten)])
    return flat, X, data.y


def fresh_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def broadened(atoms: np.ndarray, mass: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    from spectra.density import gaussian_density

    return gaussian_density(atoms, mass, grid, sigma)


def density_error(nodes: np.ndarray, weights: np.ndarray, exact: np.ndarray) -> float:
    """L1 distance between an SLQ measure and the exact spectrum, both broadened alike."""
    from spectra.density import l1_distance

    lo, hi = float(exact.min()), float(exact.max())
    sigma = SIGMA_FRACTION * (hi - lo)
    grid = np.linspace(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo), 4001)
    nodes, weights = np.asarray(nodes, float).ravel(), np.asarray(weights, float).ravel()
    rho = broadened(nodes, weights / weights.sum(), grid, sigma)
    rho_exact = broadened(exact, np.full(exact.size, 1 / exact.size), grid, sigma)
    return l1_distance(rho, rho_exact, grid)


def top_error(values: Any, ref: np.ndarray) -> float:
    got = np.sort(np.asarray(values, dtype=float))[::-1][:K]
    want = np.sort(ref)[::-1][:K]
    if got.size < K:
        return float("nan")
    return float(np.max(np.abs(got - want)) / abs(want[0]))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ------------------------------------------------------------------ tools
def spectra_top10(model, X, y):
    from spectra.backends.arpack import ArpackBackend
    from spectra.operators.hessian import HessianOperator

    op = HessianOperator(model, "cross_entropy", (X, y))
    r = ArpackBackend().run(op, k=K, which="largest")
    products = r.num_matvecs + r.provenance["residual_matvecs"] + op.check_matvecs
    return r.eigenvalues, products, "arpack eigsh, default tol 1e-6 (+ residual and determinism-check products)"


def spectra_top10_tol0(model, X, y):
    from spectra.backends.arpack import ArpackBackend
    from spectra.operators.hessian import HessianOperator

    op = HessianOperator(model, "cross_entropy", (X, y))
    r = ArpackBackend().run(op, k=K, which="largest", tol=0)
    products = r.num_matvecs + r.provenance["residual_matvecs"] + op.check_matvecs
    return r.eigenvalues, products, "arpack eigsh tol=0 (machine-precision residuals)"


def spectra_top10_topk(model, X, y, mixed: bool = True):
    """``spectra.analyze(method="topk")``: by default a float32 search then float64 (``mixed=False``: float64 only)."""
    import spectra

    r = spectra.analyze(model, (X, y), method="topk", k=K, **({} if mixed else {"low_precision": None}))
    pv = r.provenance
    products = r.num_matvecs + pv["residual_matvecs"] + pv["determinism_check_matvecs"] + pv.get("low_precision_matvecs", 0)
    how = ("topk, default: float32 products one at a time, then a float64 block and Rayleigh-Ritz, tol 1e-10"
           if mixed else "topk low_precision=None: float64 blocks of 2, tol 1e-10")
    return r.eigenvalues, products, how + " (+ residual and determinism-check products)"


def spectra_density(model, X, y):
    from spectra.backends.lanczos import LanczosBackend
    from spectra.operators.hessian import HessianOperator

    op = HessianOperator(model, "cross_entropy", (X, y))
    r = LanczosBackend().run(op, num_probes=10, num_steps=100, seed=0)
    return (r.nodes, r.weights), r.num_matvecs + op.check_matvecs, "SLQ 10 probes x 100 steps, engine='reorth' (default)"


def spectra_density_lowmem(model, X, y):
    from spectra.backends.lanczos import LanczosBackend
    from spectra.operators.hessian import HessianOperator

    op = HessianOperator(model, "cross_entropy", (X, y))
    r = LanczosBackend().run(op, num_probes=10, num_steps=100, seed=0, engine="lowmem")
    return (r.nodes, r.weights), r.num_matvecs + op.check_matvecs, "SLQ 10 probes x 100 steps, engine='lowmem'"


def spectra_density_float32(model, X, y, engine: str = "reorth"):
    import spectra

    r = spectra.analyze(model, (X, y), method="lanczos", num_probes=10, num_steps=100, seed=0, engine=engine,
                        product_dtype="float32")
    return ((r.nodes, r.weights), r.num_matvecs + r.provenance["determinism_check_matvecs"],
            f"SLQ 10 probes x 100 steps, engine='{engine}', float32 products (product_dtype), float64 recurrence")


def _pyhessian(model, X, y):
    from pyhessian import hessian as pyh_module

    mod = importlib.import_module("pyhessian.hessian")
    counter = Counter()
    original = mod.hessian_vector_product
    mod.hessian_vector_product = counter.wrap(original, lambda gradsH, params, v: 1)
    fresh_grads(model)
    comp = pyh_module(model, nn.CrossEntropyLoss(), data=(X, y), cuda=False)
    return comp, counter, lambda: setattr(mod, "hessian_vector_product", original)


def pyhessian_top10(model, X, y):
    torch.manual_seed(0)
    with default_dtype(torch.float64):  # PyHessian draws its vectors in the default dtype
        comp, counter, restore = _pyhessian(model, X, y)
        try:
            values, _ = comp.eigenvalues(maxIter=100, tol=1e-3, top_n=K)
        finally:
            restore()
            fresh_grads(model)
    return values, counter.n, "power iteration + deflation, maxIter=100, tol=1e-3 (defaults)"


def _torch_eig_shim(T: torch.Tensor, eigenvectors: bool = False):
    """torch.eig was removed in torch 2.x; PyHessian 0.1's density() still calls it on a symmetric T."""
    w, V = torch.linalg.eigh(T)
    return torch.stack([w, torch.zeros_like(w)], dim=1), V


def pyhessian_density(model, X, y, n_v: int = 1):
    torch.manual_seed(0)
    had = hasattr(torch, "eig")
    old = getattr(torch, "eig", None)
    torch.eig = _torch_eig_shim
    with default_dtype(torch.float64):
        comp, counter, restore = _pyhessian(model, X, y)
        try:
            nodes, weights = comp.density(iter=100, n_v=n_v)
        finally:
            restore()
            fresh_grads(model)
            if had:
                torch.eig = old
            else:
                del torch.eig
    return (np.array(nodes), np.array(weights)), counter.n, f"SLQ {n_v} probe(s) x 100 steps (torch.eig shimmed)"


def _eigenthings_op(model, X, y):
    import hessian_eigenthings as he

    op = he.HessianOperator(model, [(X, y)], he.supervised_loss(nn.CrossEntropyLoss()))
    counter = Counter()
    op.matvec = counter.wrap(op.matvec, lambda v: 1)
    return he, op, counter


def eigenthings_top10(model, X, y):
    he, op, counter = _eigenthings_op(model, X, y)
    r = he.lanczos(op, k=K, which="LA", seed=0)
    return r.eigenvalues.detach().cpu().numpy(), counter.n, "lanczos k=10 (defaults: 20 steps, full reorth)"


def eigenthings_top10_long(model, X, y):
    he, op, counter = _eigenthings_op(model, X, y)
    r = he.lanczos(op, k=K, which="LA", seed=0, max_iter=100, reorthogonalize=True)
    return r.eigenvalues.detach().cpu().numpy(), counter.n, "lanczos k=10, max_iter=100, full reorth"


def eigenthings_power(model, X, y):
    he, op, counter = _eigenthings_op(model, X, y)
    r = he.deflated_power_iteration(op, k=K, seed=0)
    return r.eigenvalues.detach().cpu().numpy(), counter.n, "deflated power iteration (defaults: 100 it, tol=1e-4)"


def eigenthings_density(model, X, y):
    he, op, counter = _eigenthings_op(model, X, y)
    r = he.spectral_density(op, num_runs=10, lanczos_steps=100, seed=0)
    nodes, weights = r.raw_eigenvalues.detach().cpu().numpy(), r.raw_weights.detach().cpu().numpy()
    return (nodes, weights), counter.n, "spectral_density 10 runs x 100 steps"


def _curvlinops_op(model, X, y):
    from curvlinops import HessianLinearOperator

    params = [p for p in model.parameters() if p.requires_grad]
    H = HessianLinearOperator(model, nn.CrossEntropyLoss(), params, [(X, y)])
    counter = Counter()
    H._matmat = counter.wrap(H._matmat, lambda Xs: int(Xs[0].shape[-1]))
    return H, counter


def curvlinops_top10(model, X, y):
    from scipy.sparse.linalg import eigsh

    H, counter = _curvlinops_op(model, X, y)
    values = eigsh(H.to_scipy(), k=K, which="LA", tol=0, return_eigenvectors=False,
                   v0=np.random.default_rng(0).standard_normal(H.shape[0]))
    return values, counter.n, "scipy eigsh tol=0 on HessianLinearOperator.to_scipy()"


def curvlinops_density(model, X, y, exact: np.ndarray | None):
    from curvlinops import lanczos_approximate_spectrum

    H, counter = _curvlinops_op(model, X, y)
    torch.manual_seed(0)
    grid, rho = lanczos_approximate_spectrum(H, ncv=100, num_repeats=10)
    return (grid.cpu().numpy(), rho.cpu().numpy()), counter.n, "lanczos_approximate_spectrum ncv=100 x 10 (Papyan 2020)"


def curvlinops_density_error(grid: np.ndarray, rho: np.ndarray, exact: np.ndarray, kappa: float = 3.0,
                             ncv: int = 100) -> float:
    """L1 on curvlinops' grid against the exact spectrum broadened with curvlinops' own kernel."""
    from spectra.density import l1_distance

    d = (grid[-1] - grid[0]) / 2  # the padded half-width curvlinops normalises by
    sigma = 2 / (ncv - 1) / np.sqrt(8 * np.log(kappa)) * d
    rho_exact = broadened(exact, np.full(exact.size, 1 / exact.size), grid, sigma)
    return l1_distance(rho, rho_exact, grid)


# ------------------------------------------------------------------ driver
def timed(fn: Callable, *args: Any) -> tuple[Any, float, str | None]:
    t0 = time.perf_counter()
    try:
        out = fn(*args)
        return out, time.perf_counter() - t0, None
    except Exception as exc:  # noqa: BLE001 - recorded in the table
        tb = traceback.format_exc().strip().splitlines()
        return None, time.perf_counter() - t0, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]} " \
                                               f"[{tb[-3].strip()[:120] if len(tb) > 2 else ''}]"


def peer_versions() -> dict[str, str]:
    out = {}
    for dist, module in (("PyHessian", "pyhessian"), ("hessian-eigenthings", "hessian_eigenthings"),
                         ("curvlinops-for-pytorch", "curvlinops"), ("backpack-for-pytorch", "backpack")):
        try:
            importlib.import_module(module)
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                out[dist] = "imported (version unknown)"
        except Exception as exc:  # noqa: BLE001
            out[dist] = f"not importable: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
    return out


def reference_small(model, X, y) -> tuple[np.ndarray, float]:
    from spectra.operators.hessian import HessianOperator

    t0 = time.perf_counter()
    op = HessianOperator(model, "cross_entropy", (X, y))
    dense = op.to_dense().numpy()
    lam = np.linalg.eigvalsh(dense)
    return lam, time.perf_counter() - t0


def reference_big(model, X, y) -> tuple[np.ndarray, float, float]:
    from scipy.sparse.linalg import eigsh

    from spectra.backends.arpack import single_threaded_blas
    from spectra.operators.hessian import HessianOperator

    t0 = time.perf_counter()
    op = HessianOperator(model, "cross_entropy", (X, y))
    with single_threaded_blas():
        w, V = eigsh(op.to_scipy(), k=K, which="LA", tol=0, ncv=60,
                     v0=np.random.default_rng(123).standard_normal(op.shape[0]))
    Vt = torch.as_tensor(V)
    res = float(((op.matmat(Vt) - Vt * torch.as_tensor(w)).norm(dim=0)).max())
    return np.sort(w), time.perf_counter() - t0, res / float(np.abs(w).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers-dir", default=os.environ.get("SPECTRA_PEERS_DIR", "/tmp/spectra-peers"))
    ap.add_argument("--nets", default="small,big")
    ap.add_argument("--tasks", default="top10,density")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for every tool (default: torch's)")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args()
    if os.path.isdir(args.peers_dir):
        sys.path.insert(0, args.peers_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    versions = peer_versions()
    import scipy

    import spectra

    lines = [
        "# Benchmarks: spectra and its peers",
        "",
        f"Written by `bench/peers/bench_peers.py` on {time.strftime('%Y-%m-%d %H:%M')} "
        f"({platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} thread(s), scipy {scipy.__version__}, spectra {spectra.__version__}; "
        f"load average at start {os.getloadavg()[0]:.1f}).",
        "Workloads: MLPs at initialisation (seed 0), float64, 1000 MNIST images "
        "(`spectra.datasets.load('mnist', n=1000, seed=0)`), cross-entropy (mean).",
        "Seconds include building each tool's operator; matvecs count every Hessian-vector product the tool "
        "performed (its own checks included). One run each on a shared machine: compare ratios, not absolutes.",
        "",
        "Peers (imported from a separate folder, never project dependencies): "
        + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
    ]
    print("\n".join(lines))
    for net in args.nets.split(","):
        sizes = NETS[net]
        model, X, y = workload(sizes)
        P = sum(p.numel() for p in model.parameters())
        if net == "small":
            exact, ref_s = reference_small(model, X, y)
            ref_top = np.sort(exact)[-K:]
            ref_note = f"exact: eigvalsh of the dense Hessian ({ref_s:.1f} s)"
        else:
            exact = None
            ref_top, ref_s, ref_res = reference_big(model, X, y)
            ref_note = f"eigsh tol=0, ncv=60, max relative residual {ref_res:.1e} ({ref_s:.1f} s)"
        section = [f"## MLP {'-'.join(map(str, sizes))} (P = {P})", "", f"Reference: {ref_note}. "
                   f"lambda_1..lambda_10 = {', '.join(f'{v:.6g}' for v in ref_top[::-1])}.", ""]
        if "top10" in args.tasks:
            section += ["### top-10 eigenvalues", "", "| tool | method | seconds | matvecs | max rel. error |",
                        "|---|---|---|---|---|"]
            runs = [("spectra", spectra_top10), ("spectra", spectra_top10_tol0), ("spectra", spectra_top10_topk),
                    ("spectra", lambda m, a, b: spectra_top10_topk(m, a, b, mixed=False)),
                    ("PyHessian", pyhessian_top10),
                    ("hessian-eigenthings", eigenthings_top10), ("hessian-eigenthings", eigenthings_top10_long),
                    ("hessian-eigenthings", eigenthings_power), ("curvlinops", curvlinops_top10)]
            for tool, fn in runs:
                out, secs, err = timed(fn, model, X, y)
                if err:
                    row = f"| {tool} | {fn.__name__} | {secs:.2f} | - | failed: {err} |"
                else:
                    values, mv, how = out
                    row = f"| {tool} | {how} | {secs:.2f} | {mv} | {top_error(values, ref_top):.1e} |"
                print(row, flush=True)
                section.append(row)
            section.append("")
        if "density" in args.tasks:
            section += ["### spectral density", "",
                        "| tool | method | seconds | matvecs | L1 to exact |", "|---|---|---|---|---|"]
            runs = [("spectra", spectra_density), ("spectra", spectra_density_lowmem),
                    ("spectra", spectra_density_float32),
                    ("spectra", lambda m, a, b: spectra_density_float32(m, a, b, engine="lowmem")),
                    ("PyHessian", pyhessian_density),
                    ("PyHessian", lambda m, a, b: pyhessian_density(m, a, b, n_v=10)),
                    ("hessian-eigenthings", eigenthings_density),
                    ("curvlinops", lambda m, a, b: curvlinops_density(m, a, b, exact))]
            for tool, fn in runs:
                out, secs, err = timed(fn, model, X, y)
                if err:
                    row = f"| {tool} | {getattr(fn, '__name__', 'density')} | {secs:.2f} | - | failed: {err} |"
                else:
                    (a, b), mv, how = out
                    if exact is None:
                        acc = "n/a (no exact spectrum)"
                    elif tool == "curvlinops":
                        acc = f"{curvlinops_density_error(a, b, exact):.3f} (its own kernel)"
                    else:
                        acc = f"{density_error(a, b, exact):.3f}"
                    row = f"| {tool} | {how} | {secs:.2f} | {mv} | {acc} |"
                print(row, flush=True)
                section.append(row)
            section.append("")
        print("\n".join(section[:4]))
        lines += section
    lines += [
        "## Notes",
        "",
        f"- Density errors: both measures broadened with a Gaussian of sigma = {SIGMA_FRACTION:g} x the exact "
        "spectral range, L1 over a grid padded by 10 % (0 = identical, 2 = disjoint); curvlinops returns a "
        "density on its own grid with its own kernel, so the exact spectrum is broadened with that kernel there.",
        "- PyHessian 0.1: `density()` calls `torch.eig`, removed from torch; the benchmark installs a shim "
        "(`torch.linalg.eigh` of the symmetric tridiagonal) for the duration of the call. PyHessian draws its "
        "random vectors in torch's default dtype, so its calls run with float64 as the default dtype.",
        "- hessian-eigenthings on PyPI is 1.0.0a5 (a new API: `HessianOperator`, `lanczos`, "
        "`deflated_power_iteration`, `spectral_density`); its default `lanczos` takes 2k = 20 steps.",
        "- curvlinops' products are forward-over-reverse (`jvp` of `jacrev`, vmapped over columns).",
        "",
    ]
    from spectra._io import atomic_write_text

    # Sections written by hand or by other benchmarks sit below the marker and are kept.
    kept = ""
    if os.path.exists(args.out):
        old = open(args.out, encoding="utf-8").read()
        if KEEP_MARKER in old:
            kept = old[old.index(KEEP_MARKER) + len(KEEP_MARKER):].lstrip("\n")
    atomic_write_text(args.out, "\n".join(lines) + "\n" + KEEP_MARKER + "\n\n" + kept)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
