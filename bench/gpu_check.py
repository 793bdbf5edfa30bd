"""GPU check: memory and time of spectra's Hessian products, top-k and density on a ResNet-size net.

For a machine with a CUDA GPU (it also runs on CPU, small, to test the script):

    python bench/gpu_check.py                         # cuda, ~1M-param ResNet, 512 images 3x32x32, float32
    python bench/gpu_check.py --dtype float64 --n 1024
    python bench/gpu_check.py --device cpu --small --threads 1   # ~60k params, 32 images 3x16x16: smoke test

The net (defined here, no downloads) is a CIFAR-style ResNet: a 3x3 stem and six
basic residual blocks (BatchNorm, evaluated in eval mode as spectra does), 0.97M
parameters at full width.  Data are random images with random labels, seeded.

Measured, each phase on its own with the peak memory it added (CUDA:
``torch.cuda.max_memory_allocated`` above what was allocated before the phase; CPU:
growth of the process's peak RSS, coarse): one gradient; one HVP in each mode
(reverse-over-reverse with and without the cached graph, forward-over-reverse);
a block of 10 HVPs; ARPACK top-k and ``topk`` top-k (block Krylov-Schur, its basis
on the device); SLQ density (probes x steps, float64 recurrence for float32
models).  Then an MLP on the same images: gradient, one HVP and a block of 10 with
the chain products and with autograd's cached double backward, and top-k by ARPACK
and by ``topk`` (whose eigenvalues are checked against ARPACK's).
Prints a table and writes JSON next to ``--out`` if given.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from typing import Any, Callable

import torch
from torch import nn


class Block(nn.Module):
    """A basic residual block: two 3x3 convs with BatchNorm, identity or 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


def resnet(width: int = 32, num_classes: int = 10) -> nn.Module:
    """Stem + blocks (w, 2w s2, 2w, 4w s2, 4w, 4w) + global pool + linear: 0.97M params at width 32."""
    w = width
    layers: list[nn.Module] = [nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
    plan = [(w, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2), (4 * w, 4 * w, 1), (4 * w, 4 * w, 1)]
    layers += [Block(a, b, s) for a, b, s in plan]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes)]
    return nn.Sequential(*layers)


class Meter:
    """Peak memory added and wall time of one phase, on CUDA or (coarsely) on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def run(self, fn: Callable[[], Any]) -> tuple[Any, float, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        else:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t0 = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        secs = time.perf_counter() - t0
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        return out, secs, peak / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="width 8, 32 images of 3x16x16, fewer probes and steps")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--n", type=int, default=None, help="number of images (default 512, --small 64)")
    ap.add_argument("--batch-size", type=int, default=None, help="split the data into batches of this size")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--probes", type=int, default=None, help="SLQ probes (default 10, --small 4)")
    ap.add_argument("--steps", type=int, default=None, help="Lanczos steps (default 50, --small 10)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's; 1 is safer on a busy shared CPU)")
    ap.add_argument("--out", default=None, help="write the measurements as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from spectra.backends.arpack import ArpackBackend
    from spectra.backends.lanczos import LanczosBackend
    from spectra.backends.topk import TopkBackend
    from spectra.operators.hessian import HessianOperator

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --device cpu --small to test the script", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    n = args.n or (32 if args.small else 512)
    size = 16 if args.small else 32
    steps = args.steps or (10 if args.small else 50)
    probes = args.probes or (4 if args.small else 10)
    torch.manual_seed(0)
    model = resnet(8 if args.small else 32).to(device=device, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, 3, size, size, generator=g).to(dtype)
    y = torch.randint(0, 10, (n,), generator=g)
    data: Any = (X, y) if args.batch_size is None else [
        (X[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, n, args.batch_size)]
    P = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"ResNet P={P:,} params, {n} images 3x{size}x{size}, {args.dtype}, device {device} ({name}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    meter = Meter(device)
    rows: list[dict[str, Any]] = []

    def record(phase: str, fn: Callable[[], Any], matvecs: Callable[[Any], int] | None = None) -> Any:
        out, secs, mib = meter.run(fn)
        rows.append({"phase": phase, "seconds": secs, "peak_added_MiB": mib,
                     "matvecs": matvecs(out) if matvecs else None})
        print(f"  {phase:44s} {secs:9.3f} s  {mib:10.1f} MiB" + (f"  {rows[-1]['matvecs']} matvecs" if matvecs else ""),
              flush=True)
        return out

    def gradient() -> None:
        model.zero_grad(set_to_none=True)
        model.eval()
        for Xb, yb in (data if isinstance(data, list) else [data]):
            nn.functional.cross_entropy(model(Xb.to(device)), yb.to(device)).backward()
        model.zero_grad(set_to_none=True)

    record("gradient (warm-up)", gradient)
    record("gradient", gradient)
    v = torch.randn(P, 1, generator=g).to(device=device, dtype=dtype)
    V = torch.randn(P, 10, generator=g).to(device=device, dtype=dtype)
    ops = {}
    for label, kwargs in [("reverse, cached graph", {"mode": "reverse", "cache_graph": True}),
                          ("reverse, fresh graph", {"mode": "reverse", "cache_graph": False}),
                          ("forward (jvp of grad)", {"mode": "forward"})]:
        try:
            op = record(f"build operator: {label}", lambda kw=kwargs: HessianOperator(model, "cross_entropy", data, **kw))
            ops[label] = op
            op.matmat(v)  # warm-up
            record(f"1 HVP: {label}", lambda op=op: op.matmat(v))
            record(f"10 HVPs as one block: {label}", lambda op=op: op.matmat(V))
        except Exception as exc:  # noqa: BLE001 - a mode failing on a device is a finding
            print(f"  {label}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            rows.append({"phase": label, "error": f"{type(exc).__name__}: {exc}"})
    op = ops.get("reverse, cached graph") or next(iter(ops.values()))
    lanczos_dtype = torch.float64
    record(f"arpack top-{args.k}", lambda: ArpackBackend().run(op, k=args.k, which="largest", tol=1e-8),
           lambda r: r.num_matvecs)
    record(f"topk top-{args.k} (block Krylov-Schur)", lambda: TopkBackend().run(op, k=args.k, which="largest"),
           lambda r: r.num_matvecs)
    r = record(f"SLQ {probes} probes x {steps} steps (float64 recurrence)",
               lambda: LanczosBackend().run(op, num_probes=probes, num_steps=steps, seed=0,
                                            lanczos_dtype=lanczos_dtype),
               lambda r: r.num_matvecs)
    record(f"SLQ {probes} x {steps}, lowmem engine",
           lambda: LanczosBackend().run(op, num_probes=probes, num_steps=steps, seed=0, engine="lowmem",
                                        lanczos_dtype=lanczos_dtype),
           lambda r: r.num_matvecs)
    print(f"  extreme Ritz values: {r.provenance['extreme_ritz']}")

    # An MLP on the same images: the chain products (mode="chain", the default for
    # Linear/activation Sequentials) against autograd's cached double backward.
    width = 64 if args.small else 1024
    torch.manual_seed(2)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, width), nn.ReLU(), nn.Linear(width, width),
                        nn.ReLU(), nn.Linear(width, 10)).to(device=device, dtype=dtype)
    P_mlp = sum(p.numel() for p in mlp.parameters())
    print(f"MLP {3 * size * size}-{width}-{width}-10, P={P_mlp:,}")
    params = list(mlp.parameters())

    def mlp_gradient() -> None:
        for Xb, yb in (data if isinstance(data, list) else [data]):
            torch.autograd.grad(nn.functional.cross_entropy(mlp(Xb.to(device)), yb.to(device)), params)

    record("MLP gradient (warm-up)", mlp_gradient)
    record("MLP gradient", mlp_gradient)
    v = torch.randn(P_mlp, 1, generator=g).to(device=device, dtype=dtype)
    V = torch.randn(P_mlp, 10, generator=g).to(device=device, dtype=dtype)
    for label, mode in [("chain", "chain"), ("reverse, cached graph", "reverse")]:
        op = record(f"MLP build operator: {label}", lambda m=mode: HessianOperator(mlp, "cross_entropy", data, mode=m))
        op.matmat(v)  # warm-up
        record(f"MLP 1 HVP: {label}", lambda op=op: op.matmat(v))
        record(f"MLP 10 HVPs as one block: {label}", lambda op=op: op.matmat(V))
    op = HessianOperator(mlp, "cross_entropy", data)
    ref = record(f"MLP arpack top-{args.k}", lambda: ArpackBackend().run(op, k=args.k, which="largest", tol=1e-8),
                 lambda r: r.num_matvecs)
    got = record(f"MLP topk top-{args.k}", lambda: TopkBackend().run(op, k=args.k, which="largest"),
                 lambda r: r.num_matvecs)
    agree = float(abs(torch.as_tensor(got.eigenvalues) - torch.as_tensor(ref.eigenvalues)).max()
                  / abs(ref.eigenvalues).max())
    rows.append({"phase": "MLP topk vs arpack, max relative difference", "value": agree,
                 "topk_path": got.provenance["path"], "topk_basis_device": str(op.device)})
    print(f"  MLP topk vs arpack: max relative difference {agree:.1e} (path {got.provenance['path']})")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"P": P, "n": n, "dtype": args.dtype, "device": str(device), "device_name": name,
                       "torch": torch.__version__, "rows": rows}, fh, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
