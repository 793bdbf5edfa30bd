"""How spectra's data-parallel Hessian scales with ranks (measured on this machine).

Runs, in one invocation, the same workload three ways and prints medians and ratios:

* ``1 proc x1 thr``: one process, one torch thread (the per-rank baseline);
* ``1 proc x2 thr``: one process using both cores through torch's threads;
* ``2 ranks x1 thr``: two gloo processes on 127.0.0.1 (FileStore rendezvous),
  the data split 50/50 with :func:`spectra.distributed.shard`.

Workload: an MLP on 1000 MNIST images (real ones through
``spectra.datasets.load("mnist", n=1000, seed=0)``, float64).  Measured: one
block of 10 Hessian-vector products (split into local compute and time inside
all-reduces), a bare all-reduce of a ``P x 10`` float64 block and of the
``[world, 4]`` status table, ARPACK top-10, and SLQ with 10 probes x 30 steps.

    python bench/bench_distributed.py                  # 784-64-64-10
    python bench/bench_distributed.py --sizes 784,10,10 --repeats 7

Numbers on a busy shared machine are noisy: read the ratios, and rerun.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def build(sizes: list[int], n: int):
    import spectra

    model = spectra.models.create("mlp", sizes=sizes, dtype="float64", seed=0)
    data = spectra.datasets.load("mnist", n=n, seed=0)
    data.X = data.X.to(torch.float64)
    return model, data


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(op, repeats: int, comm_timer: dict | None) -> dict:
    from spectra.backends.arpack import ArpackBackend
    from spectra.backends.lanczos import LanczosBackend

    P = op.shape[0]
    V = torch.randn(P, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out: dict = {"P": P, "N": op.num_samples}

    def block():
        op.matmat(V)

    if comm_timer is not None:
        comm_timer["t"] = 0.0
        comm_timer["n"] = 0
    out["block10_s"] = median_time(block, repeats)
    if comm_timer is not None:
        out["block10_comm_s"] = comm_timer["t"] / (repeats + 1)  # warm-up + repeats blocks (mean)
    before = op.num_matvecs
    t0 = time.perf_counter()
    r = ArpackBackend().run(op, k=10, which="largest", seed=0)
    out["arpack_top10_s"] = time.perf_counter() - t0
    out["arpack_matvecs"] = op.num_matvecs - before
    out["arpack_top"] = r.eigenvalues.tolist()
    t0 = time.perf_counter()
    r = LanczosBackend().run(op, num_probes=10, num_steps=30, seed=0)
    out["slq_10x30_s"] = time.perf_counter() - t0
    out["slq_extreme"] = r.provenance["extreme_ritz"]
    return out


def single(args, threads: int) -> dict:
    from spectra.operators.hessian import HessianOperator

    torch.set_num_threads(threads)
    model, data = build(args.sizes, args.n)
    op = HessianOperator(model, "cross_entropy", data)
    return measure(op, args.repeats, None)


def worker(args) -> None:
    import torch.distributed as dist

    from spectra import distributed as sd
    from spectra.operators.hessian import HessianOperator

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{args.store}", rank=args.rank, world_size=args.world,
                            timeout=datetime.timedelta(seconds=300))
    model, data = build(args.sizes, args.n)
    part = sd.shard(data)
    timer = {"t": 0.0, "n": 0}
    op = HessianOperator(model, "cross_entropy", part, distributed=True)
    channel = op.reducer.channel  # the data-parallel reducer's fail-stop collectives
    original = channel._all_reduce

    def timed(tensor, what):
        t0 = time.perf_counter()
        original(tensor, what)
        timer["t"] += time.perf_counter() - t0
        timer["n"] += 1

    channel._all_reduce = timed
    res = measure(op, args.repeats, timer)
    # bare collectives: a P x 10 block and the status table
    P = op.shape[0]
    big = torch.zeros(P, 10, dtype=torch.float64)
    small = torch.zeros(args.world, 4, dtype=torch.float64)
    res["allreduce_block_s"] = median_time(lambda: dist.all_reduce(big), args.repeats)
    res["allreduce_status_s"] = median_time(lambda: dist.all_reduce(small), max(args.repeats, 20))
    res["local_samples"] = len(part)
    Path(args.out, f"rank{args.rank}.json").write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


def multi(args, world: int) -> list[dict]:
    tmp = tempfile.mkdtemp(prefix="spectra-bench-dist-")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", "--world", str(world), "--store", f"{tmp}/store", "--out", tmp,
           "--sizes", ",".join(map(str, args.sizes)), "--n", str(args.n), "--repeats", str(args.repeats)]
    procs = [subprocess.Popen(cmd + ["--rank", str(r)], env=env) for r in range(world)]
    for p in procs:
        if p.wait(timeout=1800) != 0:
            raise SystemExit(f"a worker failed (exit {p.returncode})")
    return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="784,64,64,10")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--world", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if args.worker:
        worker(args)
        return
    print(f"MLP {args.sizes}, MNIST n={args.n}, float64, cross-entropy; medians of {args.repeats}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    runs = {"1 proc x1 thr": single(args, 1), "1 proc x2 thr": single(args, 2)}
    ranks = multi(args, 2)
    runs["2 ranks x1 thr"] = ranks[0]
    same = all(r["arpack_top"] == ranks[0]["arpack_top"] for r in ranks)
    base = runs["1 proc x1 thr"]
    print(f"P = {base['P']}, N = {base['N']}; 2-rank shards {[r['local_samples'] for r in ranks]}; "
          f"ranks bitwise equal: {same}")
    print(f"{'setup':16} {'10-HVP block':>13} {'(in comm)':>10} {'top-10 arpack':>14} {'matvecs':>8} "
          f"{'SLQ 10x30':>10} {'block speedup':>14}")
    for name, r in runs.items():
        comm = r.get("block10_comm_s")
        print(f"{name:16} {r['block10_s']:12.4f}s {'' if comm is None else f'{comm:9.4f}s':>10} "
              f"{r['arpack_top10_s']:13.3f}s {r['arpack_matvecs']:8d} {r['slq_10x30_s']:9.3f}s "
              f"{base['block10_s'] / r['block10_s']:13.2f}x")
    err = max(abs(a - b) / abs(b) for a, b in zip(ranks[0]["arpack_top"], base["arpack_top"]))
    print(f"top-10 max relative difference, 2 ranks vs 1 process: {err:.1e}")
    r0 = ranks[0]
    print(f"bare all-reduce (2 ranks, gloo, localhost): P x 10 float64 block "
          f"({base['P'] * 80 / 2**20:.1f} MiB) {r0['allreduce_block_s'] * 1e3:.2f} ms, "
          f"status table {r0['allreduce_status_s'] * 1e6:.0f} us; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
