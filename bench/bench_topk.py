"""top-k race: spectra's ``topk`` against its own ARPACK backend and hessian-eigenthings' default Lanczos.

Workloads as ``bench/peers/bench_peers.py``: MLPs 784-10-10 and 784-64-64-10 at
initialisation (float64, seed 0), 1000 MNIST images, cross-entropy (mean); the
top-10 eigenvalues.  ``--nets cnn`` adds spectra's registry CNN (conv 4 -> conv 8
-> linear, P = 2202, float64, seed 0) on 200 MNIST images: its products are
reverse-over-reverse autograd (no chain products for convolutions).  References:
the exact spectrum (784-10-10) and ``eigsh(tol=0, ncv=60)`` (the others), as in
the peers benchmark.  Error = max over the 10 of ``|lambda_i - ref_i| / |ref_i|``
(relative to each eigenvalue).

Three commands:

``race``   paired timings in one process of ``spectra.analyze(method="arpack")``
           and ``spectra.analyze(method="topk")`` as a user calls them (operator
           build included; topk's default: a float32 search, then float64), and
           of ``--variants`` of topk: each repetition runs every method once, in
           turn, and the ratio to ARPACK is taken within the repetition; the
           table gives the median ratio, the median seconds, the ratio of the
           process's CPU times, and the ratio of each method's fastest run (the
           least disturbed by other jobs on a shared machine).
``costs``  seconds per product against the block size (float64 and float32
           products), each relative to a gradient timed back to back; and the
           first layer's matrix product in float64, float32, bfloat16 and
           float16.
``sweep``  products, seconds and error for a grid of block sizes and bases
           (the notes of what was tried; products do not depend on the load).
``floor``  the lower bound of the default ``topk`` without solver bookkeeping:
           paired with ``analyze(method="arpack")``, the same products the
           default run makes (its float32 single-vector products, then one
           float64 block of 10, on operators built as ``analyze`` builds them),
           with nothing else; and the same with only the reorthogonalisation
           added (two passes over a float64 basis of the search's size, as
           its thick restarts grow and shrink it), the least a Krylov search
           with an orthogonal basis does.

    python bench/bench_topk.py race --threads 2 --repeats 5 --eigenthings
    python bench/bench_topk.py race --threads 2 --variants "mixed=0;block_size=2"
    python bench/bench_topk.py race --threads 2 --nets cnn --variants ""
    python bench/bench_topk.py costs --threads 2
    python bench/bench_topk.py sweep --nets big --blocks 2,3,4,5,10 --bases 4,8,12
    python bench/bench_topk.py floor --threads 2 --nets big --repeats 7
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(HERE))
from bench_peers import NETS, reference_big, reference_small, workload  # noqa: E402

K = 10
CNN_IMAGES = 200  # float64 convolutions take the CPU's slow path: fewer images than the MLPs


def load_net(net: str):
    """(model, X, y, title) of a named workload: ``small``/``big`` (the peers' MLPs) or ``cnn``."""
    if net in NETS:
        model, X, y = workload(NETS[net])
        return model, X, y, f"MLP {'-'.join(map(str, NETS[net]))}"
    if net == "cnn":
        import spectra

        model = spectra.models.create("cnn", dtype="float64", seed=0)
        data = spectra.datasets.load("mnist", n=CNN_IMAGES, seed=0)
        X = data.X.to(torch.float64).reshape(CNN_IMAGES, 1, 28, 28)
        return model, X, data.y, f"CNN conv4-conv8-linear on {CNN_IMAGES} images"
    raise SystemExit(f"unknown net {net!r}: use small, big or cnn")


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def references(net: str, model, X, y, cache: str | None) -> np.ndarray:
    """The 10 largest reference eigenvalues, ascending (cached in ``cache`` when given, under a
    fingerprint of the data and weights so that a changed loader or model never meets a stale reference)."""
    import hashlib

    digest = hashlib.sha256(X.numpy().tobytes() + y.numpy().tobytes()
                            + b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:12]
    path = Path(cache) / f"topk_ref_{net}_{digest}.npy" if cache else None
    if path is not None and path.exists():
        return np.load(path)
    if net == "small":
        exact, _ = reference_small(model, X, y)
        ref = np.sort(exact)[-K:]
    else:
        ref, _, _ = reference_big(model, X, y)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, ref)
    return ref


def rel_error(values: Any, ref: np.ndarray) -> float:
    got = np.sort(np.asarray(values, dtype=np.float64))[-K:]
    return float(np.max(np.abs(got - ref) / np.abs(ref)))


# ------------------------------------------------------------------ methods
def run_arpack(model, X, y) -> tuple[np.ndarray, str, str]:
    import spectra

    r = spectra.analyze(model, (X, y), method="arpack", k=K)
    return r.eigenvalues, products_of(r), "spectra.analyze(method='arpack'): eigsh, tol 1e-6"


def run_topk(model, X, y, mixed: bool = True, **options: Any) -> tuple[np.ndarray, str, str]:
    """``spectra.analyze(method="topk")``: by default a float32 search and a float64 finish; ``mixed=False``
    passes ``low_precision=None`` (float64 products only)."""
    import spectra

    r = spectra.analyze(model, (X, y), method="topk", k=K, **options, **({} if mixed else {"low_precision": None}))
    phases = ", ".join(f"{p['dtype']} {p.get('algorithm', 'block Krylov-Schur')}, block {p['block_size']}"
                       for p in r.provenance["phases"])
    settings = ", ".join(f"{k}={v}" for k, v in options.items())
    return r.eigenvalues, products_of(r), f"spectra.analyze(method='topk'{', ' if settings else ''}{settings}): {phases}"


def products_of(r: Any) -> str:
    """Products of a result: float64 (solver, residual checks and the determinism check) [+ float32]."""
    f64 = r.num_matvecs + r.provenance.get("residual_matvecs", 0) + r.provenance["determinism_check_matvecs"]
    f32 = r.provenance.get("low_precision_matvecs", 0)
    return f"{f64}" + (f" + {f32} float32" if f32 else "")


def run_eigenthings(model, X, y) -> tuple[np.ndarray, int, str]:
    sys.path.insert(0, os.environ.get("SPECTRA_PEERS_DIR", "/tmp/spectra-peers"))
    from bench_peers import eigenthings_top10

    values, products, how = eigenthings_top10(model, X, y)
    return values, products, f"hessian-eigenthings {how}"


def methods(args: argparse.Namespace) -> dict[str, Callable]:
    out: dict[str, Callable] = {"arpack": run_arpack, "topk": run_topk}
    for spec in filter(None, args.variants.split(";")):  # e.g. "block_size=2,mixed=1"
        options = {k: int(v) for k, v in (item.split("=") for item in spec.split(","))}
        mixed = bool(options.pop("mixed", 1))
        out[f"topk {spec}"] = lambda m, a, b, o=options, x=mixed: run_topk(m, a, b, mixed=x, **o)
    if args.eigenthings:
        out["eigenthings-20"] = run_eigenthings
    return out


def paired_runs(runs: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict, dict, dict, dict]:
    """Each repetition calls every run once, back to back (the order reversed every other repetition),
    after one warm-up call each (imports, first allocations).  Returns per run the wall seconds, the
    per-repetition ratios of wall and of CPU time to the run named ``"arpack"``, and its last result."""
    for fn in runs.values():
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    ratios: dict[str, list[float]] = {name: [] for name in runs}
    cpu_ratios: dict[str, list[float]] = {name: [] for name in runs}
    last: dict[str, Any] = {}
    for rep in range(repeats):
        wall, cpu = {}, {}
        for name in (list(runs) if rep % 2 == 0 else list(runs)[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            last[name] = runs[name]()
            wall[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0
        for name in runs:
            seconds[name].append(wall[name])
            ratios[name].append(wall[name] / wall["arpack"])
            cpu_ratios[name].append(cpu[name] / cpu["arpack"])
    return seconds, ratios, cpu_ratios, last


def race(args: argparse.Namespace) -> None:
    print(f"# top-10 race, {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load at start {load_average()}")
    for net in args.nets.split(","):
        model, X, y, title = load_net(net)
        P = sum(p.numel() for p in model.parameters())
        ref = references(net, model, X, y, args.cache)
        runs = {name: (lambda fn=fn: fn(model, X, y)) for name, fn in methods(args).items()}
        seconds, ratios, cpu_ratios, last = paired_runs(runs, args.repeats)
        info = {name: (rel_error(values, ref), products, how) for name, (values, products, how) in last.items()}
        print(f"\n## {title} (P = {P}); load at end {load_average()}\n")
        print("| method | median seconds | x ARPACK, wall (median of paired ratios) | x ARPACK, CPU time "
              "| x ARPACK, fastest runs | products | max rel. error |")
        print("|---|---|---|---|---|---|---|")
        for name in runs:
            err, products, how = info[name]
            print(f"| {how} | {statistics.median(seconds[name]):.3f} | {statistics.median(ratios[name]):.2f} "
                  f"| {statistics.median(cpu_ratios[name]):.2f} | {min(seconds[name]) / min(seconds['arpack']):.2f} "
                  f"| {products} | {err:.1e} |")
        print("\nall ratios: " + "; ".join(f"{n}: {', '.join(f'{r:.2f}' for r in ratios[n])}" for n in runs))


def costs(args: argparse.Namespace) -> None:
    from _timing import paired_ratio

    from spectra.operators.hessian import HessianOperator

    print(f"# product cost per vector against the block size, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{torch.get_num_threads()} threads, load at start {load_average()}")
    for net in args.nets.split(","):
        model, X, y = workload(NETS[net])
        op = HessianOperator(model, "cross_entropy", (X, y))
        op32 = HessianOperator(copy.deepcopy(model).float(), "cross_entropy", (X.float(), y))
        P = op.shape[0]
        params = list(model.parameters())

        def grad() -> None:
            torch.autograd.grad(torch.nn.functional.cross_entropy(model(X), y), params)

        print(f"\n## MLP {'-'.join(map(str, NETS[net]))} (P = {P})\n")
        print("| block | float64: gradients per vector | float32: gradients per vector |")
        print("|---|---|---|")
        g = torch.Generator().manual_seed(0)
        for b in [int(x) for x in args.blocks.split(",")]:
            V = torch.randn(P, b, generator=g, dtype=torch.float64)
            r64, _ = paired_ratio(lambda: op.matmat(V), grad, repeats=args.repeats)
            V32 = V.float()
            r32, _ = paired_ratio(lambda: op32.matmat(V32), grad, repeats=args.repeats)
            print(f"| {b} | {r64 / b:.3f} | {r32 / b:.3f} |", flush=True)
        # a product's largest matrix products are the first layer's [N, 784] x [784, width]: what each
        # precision the CPU offers charges for one (half precisions could only make products cheaper here)
        width = NETS[net][1]
        print(f"\nThe first layer's matrix product [{X.shape[0]}, {X.shape[1]}] x [{X.shape[1]}, {width}], "
              "median of 20 (ms):\n")
        for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
            # B as the product engine passes it: a transposed [width, 784] block (the faster layout here)
            A, B = X.reshape(X.shape[0], -1).to(dtype), torch.randn(width, X[0].numel(), generator=g).to(dtype).T
            times = []
            for _ in range(21):
                t0 = time.perf_counter()
                A @ B
                times.append(time.perf_counter() - t0)
            print(f"- {str(dtype).replace('torch.', '')}: {1e3 * statistics.median(times[1:]):.2f}")
        print(f"\nload at end {load_average()}")


def sweep(args: argparse.Namespace) -> None:
    print(f"# topk sweep, {time.strftime('%Y-%m-%d %H:%M')}, {torch.get_num_threads()} threads, "
          f"load at start {load_average()}")
    for net in args.nets.split(","):
        model, X, y, title = load_net(net)
        ref = references(net, model, X, y, args.cache)
        print(f"\n## {title}\n")
        print("| block | basis | mixed | products | seconds | max rel. error |")
        print("|---|---|---|---|---|---|")
        for b in [int(x) for x in args.blocks.split(",")]:
            for blocks in [int(x) for x in args.bases.split(",")]:
                for mixed in [False, True] if args.mixed else [False]:
                    t0 = time.perf_counter()
                    values, products, _ = run_topk(model, X, y, mixed=mixed, block_size=b,
                                                   max_basis=max(blocks * b, K + 2 * b))
                    s = time.perf_counter() - t0
                    print(f"| {b} | {max(blocks * b, K + 2 * b)} | {'yes' if mixed else 'no'} | {products} | "
                          f"{s:.2f} | {rel_error(values, ref):.1e} |", flush=True)
        print(f"\nload at end {load_average()}")


def floor(args: argparse.Namespace) -> None:
    import spectra
    from spectra.api import low_precision_twin
    from spectra.backends import topk
    from spectra.operators.hessian import HessianOperator

    print(f"# topk without bookkeeping, {time.strftime('%Y-%m-%d %H:%M')}, {torch.get_num_threads()} threads, "
          f"load at start {load_average()}")
    for net in args.nets.split(","):
        model, X, y, title = load_net(net)
        r = spectra.analyze(model, (X, y), method="topk", k=K)
        n32 = r.provenance["low_precision_matvecs"]
        n64 = r.num_matvecs + r.provenance["residual_matvecs"]

        P = sum(p.numel() for p in model.parameters())
        search_basis = topk.default_basis(topk.DEFAULT_LOW_PRECISION_BLOCK_SIZE, K)
        rows = torch.linalg.qr(torch.randn(P, search_basis, dtype=torch.float64))[0].T.contiguous()

        def products_only(orthogonalise: bool = False) -> None:  # what analyze(method="topk") multiplies
            op = HessianOperator(model, "cross_entropy", (X, y))
            op32 = low_precision_twin(op, HessianOperator, model, "cross_entropy", (X, y), None, {})()
            v = torch.randn(op.shape[0], 1, dtype=torch.float32)
            n = 1  # basis rows: growing to the search's basis, then from half of it again (thick restarts)
            for _ in range(n32):
                w = op32.matmat(v).to(torch.float64).T
                if orthogonalise:  # the two passes over a float64 basis that keep it orthogonal, nothing else
                    w = torch.addmm(w, w @ rows[:n].T, rows[:n], alpha=-1)
                    n = n + 1 if n < search_basis else search_basis // 2
                v = (w / w.norm()).T.to(torch.float32)
            op.matmat(torch.randn(op.shape[0], n64, dtype=torch.float64))

        runs = {"arpack": lambda: run_arpack(model, X, y), "topk": lambda: run_topk(model, X, y),
                "products only": products_only,
                "products + reorthogonalisation": lambda: products_only(orthogonalise=True)}
        ratios = paired_runs(runs, args.repeats)[1]
        print(f"\n## {title}: {n32} float32 products one at a time + a float64 block of {n64}; "
              f"load at end {load_average()}\n")
        for name in runs:
            print(f"- {name}: x ARPACK {statistics.median(ratios[name]):.2f} "
                  f"(per repetition {', '.join(f'{x:.2f}' for x in ratios[name])})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("race", "costs", "sweep", "floor"))
    ap.add_argument("--nets", default="small,big")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--blocks", default="1,2,3,4,5,8,10,15,20")
    ap.add_argument("--bases", default="4,8,12")
    ap.add_argument("--mixed", action="store_true", help="sweep: also float32-then-float64 products")
    ap.add_argument("--eigenthings", action="store_true", help="race: add hessian-eigenthings' default lanczos")
    ap.add_argument("--variants", default="mixed=0",
                    help="race: extra topk settings, ';'-separated, e.g. 'block_size=2;block_size=10,mixed=0' "
                         "(mixed=0: float64 products only)")
    ap.add_argument("--cache", default=None, help="folder to keep the reference eigenvalues in")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    {"race": race, "costs": costs, "sweep": sweep, "floor": floor}[args.command](args)


if __name__ == "__main__":
    main()
