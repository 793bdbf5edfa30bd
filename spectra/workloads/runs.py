"""The two real workloads end to end: train, then analyse, with what each step cost.

* :func:`language_model_run`: :class:`~spectra.workloads.tiny_gpt.TinyGPT` on the
  standard library's source (:mod:`~spectra.workloads.text`), dict batches with
  ragged padding, next-token labels; its top eigenvalues (ARPACK), its SLQ
  density, and the split ``H = G + R`` (how much of each top eigenvalue the
  Gauss-Newton part carries).
* :func:`resnet_run`: :class:`~spectra.workloads.resnet.SmallResNet` on the
  scikit-learn digits; the exact spectrum in eval mode and with batch
  statistics, the latter checked against central finite differences of the
  gradient, and ``torch.func.hessian`` compared with it.

Each returns a plain dict (numbers only), printed by ``examples/transformer_lm.py``
and ``examples/resnet_batchnorm.py``; ``scale="tiny"`` runs in seconds (tests).

>>> sorted(SCALES)
['small', 'tiny']
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from ..batches import BatchReader
from ..errors import InvalidInputError
from .fit import fit
from .resnet import SmallResNet
from .text import VOCAB, load_corpus, sequence_batches
from .tiny_gpt import TinyGPT

__all__ = ["SCALES", "language_model_run", "resnet_run", "product_gradient_ratio", "example_arguments",
           "print_json"]

SCALES = {
    "tiny": {"lm": dict(d_model=8, num_heads=2, num_layers=1, seq_len=16, batch_size=4, train_batches=4,
                        analysis_batches=2, steps=20, k=4, probes=2, lanczos_steps=10, max_chars=20_000),
             "resnet": dict(channels=2, num_blocks=1, n_train=128, n_analysis=48, steps=20, batch_size=32)},
    "small": {"lm": dict(d_model=32, num_heads=2, num_layers=1, seq_len=64, batch_size=32, train_batches=60,
                         analysis_batches=4, steps=600, k=10, probes=4, lanczos_steps=40, max_chars=None),
              "resnet": dict(channels=4, num_blocks=2, n_train=1297, n_analysis=500, steps=400, batch_size=128)},
}
FD_EPS = (1e-3, 1e-4, 1e-5)
FUNC_HESSIAN_SAMPLES = 64
TIMING_REPEATS = 5


def example_arguments(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The examples' command line: ``--scale``, ``--seed``, ``--json``; one torch thread."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the whole record as JSON")
    torch.set_num_threads(1)  # small models: a second thread only adds hand-offs on 2 cores
    return parser.parse_args(argv)


def print_json(record: dict[str, Any]) -> None:
    """The whole record, indented."""
    print(json.dumps(record, indent=1, default=str))


def _scale(scale: str, part: str) -> dict[str, Any]:
    if scale not in SCALES:
        raise InvalidInputError(f"scale must be one of {', '.join(SCALES)}; got {scale!r}")
    return SCALES[scale][part]


def product_gradient_ratio(op: Any, gradient: Callable[[], Any], repeats: int = TIMING_REPEATS) -> float:
    """Median over ``repeats`` of (one product with ``op``) / (one ``gradient()``), timed back to back."""
    v = torch.randn(op.shape[0], dtype=op.dtype, generator=torch.Generator().manual_seed(0)).to(op.device)
    ratios = []
    for _ in range(repeats):
        start = time.perf_counter()
        gradient()
        mid = time.perf_counter()
        op.matvec(v)
        end = time.perf_counter()
        ratios.append((end - mid) / (mid - start))
    return float(statistics.median(ratios))


def _gradient_fn(model: torch.nn.Module, batches: list, reader: BatchReader, train_mode: bool = False) -> Callable:
    """One gradient of the mean loss over ``batches`` (what a product is compared with)."""
    from ..losses import resolve_loss
    from ..operators.model_state import model_mode

    loss = resolve_loss("cross_entropy")
    bound = reader.bind(model, loss)
    dtype = next(model.parameters()).dtype
    read = [bound.to(*bound.split(b), "cpu", dtype) for b in batches]
    counts = [bound.count(i, t) for i, t in read]
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient() -> None:
        with model_mode(model, train_mode):
            total = sum((n / sum(counts)) * loss(bound.call(model, i), t) for (i, t), n in zip(read, counts))
            torch.autograd.grad(total, params)
    return gradient


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def language_model_run(scale: str = "small", seed: int = 0) -> dict[str, Any]:
    """Train the tiny GPT on Python's own source, then its top-k, SLQ density and H = G + R."""
    import spectra
    from ..operators.ggn import GGNOperator

    cfg = _scale(scale, "lm")
    corpus = load_corpus(max_chars=cfg["max_chars"])
    batches = sequence_batches(corpus, cfg["seq_len"], cfg["batch_size"])
    needed = cfg["train_batches"] + cfg["analysis_batches"]
    if len(batches) < needed:
        raise InvalidInputError(f"the corpus gives {len(batches)} batches; scale {scale!r} needs {needed}")
    train, held_out = batches[:cfg["train_batches"]], batches[cfg["train_batches"]:needed]
    torch.manual_seed(seed)
    model = TinyGPT(len(VOCAB), cfg["d_model"], cfg["num_heads"], cfg["num_layers"], cfg["seq_len"])
    reader = BatchReader(shift_labels=True)  # labels are the input ids: predict the next one
    record = fit(model, train, reader=reader, steps=cfg["steps"], lr=3e-3, seed=seed)
    model = model.double()
    analysis = train[: cfg["analysis_batches"]]
    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in analysis)

    top, top_s = _timed(lambda: spectra.analyze(model, analysis, reader=reader, method="arpack", k=cfg["k"],
                                                return_eigenvectors=True, seed=seed))
    density, density_s = _timed(lambda: spectra.analyze(model, analysis, reader=reader, method="lanczos",
                                                        num_probes=cfg["probes"], num_steps=cfg["lanczos_steps"],
                                                        seed=seed))
    ggn_top, ggn_s = _timed(lambda: spectra.analyze(model, analysis, reader=reader, method="arpack",
                                                    matrix="ggn", k=cfg["k"], seed=seed))
    G = GGNOperator(model, "cross_entropy", analysis, reader=reader)
    order = np.argsort(top.eigenvalues)[::-1]
    V = torch.as_tensor(np.ascontiguousarray(top.eigenvectors[:, order]))
    shares = ((V * G.matmat(V)).sum(0).numpy() / top.eigenvalues[order]).tolist()
    H = spectra.HessianOperator(model, "cross_entropy", analysis, reader=reader)
    ratio = product_gradient_ratio(H, _gradient_fn(model, analysis, reader))
    nodes, weights = density.nodes.reshape(-1), density.weights.reshape(-1)
    return {
        "scale": scale, "num_params": top.num_params, "tokens": tokens, "corpus": corpus.info,
        "train": record.as_dict(), "grad_norm_at_analysis": top.provenance["grad_norm"],
        "loss_at_analysis": top.provenance["loss_value"],
        "top_eigenvalues": top.eigenvalues[order].tolist(), "top_products": top.num_matvecs, "top_seconds": top_s,
        "ggn_top_eigenvalues": sorted(ggn_top.eigenvalues.tolist(), reverse=True),
        "ggn_products": ggn_top.num_matvecs, "ggn_seconds": ggn_s,
        "ggn_share_of_top": shares,
        "slq_products": density.num_matvecs, "slq_seconds": density_s,
        "slq_negative_mass": float(weights[nodes < 0].sum() / weights.sum()),
        "slq_range": [float(nodes.min()), float(nodes.max())],
        "product_gradient_ratio": ratio,
        "held_out_batches": len(held_out),
    }


def _functional_hessian_error(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, params: list[str],
                              dense: torch.Tensor) -> float:
    """Relative distance of ``torch.func.hessian`` (batch statistics) from spectra's matrix on ``params``."""
    from ..operators.model_state import model_mode

    named = dict(model.named_parameters())
    tensors = [named[n] for n in params]
    sizes = [t.numel() for t in tensors]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        pieces = [p.view(t.shape) for p, t in zip(torch.split(flat, sizes), tensors)]
        out = torch.func.functional_call(model, dict(zip(params, pieces)), (X,))
        return torch.nn.functional.cross_entropy(out, y)

    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    with model_mode(model, True):
        by_func = torch.func.hessian(loss_of)(flat)
    return float((by_func - dense).norm() / dense.norm())


def resnet_run(scale: str = "small", seed: int = 0) -> dict[str, Any]:
    """Train the small ResNet on digits, then its exact spectra in eval mode and with batch statistics."""
    import spectra
    from ..testing import gradient_difference

    cfg = _scale(scale, "resnet")
    data = spectra.datasets.load("digits", seed=seed)
    n_train, size = cfg["n_train"], cfg["batch_size"]
    train = list(zip(data.X[:n_train].split(size), data.y[:n_train].split(size)))
    X, y = data.X[:cfg["n_analysis"]], data.y[:cfg["n_analysis"]]  # analysed: training images, one batch
    torch.manual_seed(seed)
    # a smooth activation: the finite-difference check would cross ReLU's kinks
    model = SmallResNet(cfg["channels"], cfg["num_blocks"], activation="silu").double()
    record = fit(model, train, steps=cfg["steps"], lr=1e-2, seed=seed)
    out: dict[str, Any] = {"scale": scale, "num_params": model.num_parameters(), "samples": int(X.shape[0]),
                           "train": record.as_dict()}
    reader = BatchReader()
    for name, train_mode in (("eval", False), ("batch_statistics", True)):
        result, seconds = _timed(lambda: spectra.analyze(model, (X, y), method="exact", train_mode=train_mode))
        op = spectra.HessianOperator(model, "cross_entropy", (X, y), train_mode=train_mode)
        eig = np.sort(result.eigenvalues)[::-1]
        out[name] = {"top_eigenvalues": eig[:5].tolist(), "min_eigenvalue": float(eig[-1]),
                     "products": result.num_matvecs, "seconds": seconds,
                     "grad_norm": result.provenance["grad_norm"],
                     "product_gradient_ratio": product_gradient_ratio(
                         op, _gradient_fn(model, [(X, y)], reader, train_mode))}
    # batch statistics: H v against central differences of the gradient, for three directions
    op = spectra.HessianOperator(model, "cross_entropy", (X, y), train_mode=True)
    build = lambda: spectra.HessianOperator(model, "cross_entropy", (X, y), train_mode=True,  # noqa: E731
                                            check_determinism=False)
    errors = []
    for j in range(3):
        v = torch.randn(op.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed + j))
        hv = op.matvec(v)
        errors.append([float((gradient_difference(build, op.params, v, eps) - hv).norm() / hv.norm())
                       for eps in FD_EPS])
    out["finite_difference"] = {"eps": list(FD_EPS), "relative_errors": errors}
    # torch.func.hessian on the same matrix (all parameters, the first images: it holds P tangents at once)
    Xf, yf = X[:FUNC_HESSIAN_SAMPLES], y[:FUNC_HESSIAN_SAMPLES]
    names = [n for n, _ in model.named_parameters()]
    dense = spectra.HessianOperator(model, "cross_entropy", (Xf, yf), train_mode=True).to_dense()
    out["torch_func_hessian_error"] = {"samples": int(Xf.shape[0]),
                                       "relative_error": _functional_hessian_error(model, Xf, yf, names, dense)}
    return out
