"""Pieces every experiment uses: the run context, seeds, training units, spectrum numbers.

A *training unit* trains one model from a sphere initialisation with
:func:`spectra.train`, takes its exact spectrum with :func:`spectra.analyze`,
and stores parameters, spectrum and history as one progress unit of the
:class:`~spectra.experiments._report.RunDir` (so ``resume`` skips it).
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ._report import RunDir

# "Zero" eigenvalue: |lambda| < ZERO_TOL_REL * max|lambda| (the same default as
# SpectrumResult.summary).  A second, looser band is reported beside it.
ZERO_TOL_REL = 1e-3
ZERO_TOL_REL_LOOSE = 1e-2

# Finished units of this process, so `reproduce all` trains a shared model once.
_MEMO: dict[tuple, tuple[dict[str, np.ndarray], dict[str, Any]]] = {}


@dataclass
class Context:
    """What an experiment function receives."""

    name: str
    scale: str
    seed: int
    cfg: dict[str, Any]
    rd: RunDir
    quiet: bool = False

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{self.name}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def torch_threads(num: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(num)`` (None: unchanged), then restore.

    The blob nets' operations are tiny; splitting them over threads costs more
    than it saves, and on a busy machine a second thread that has to be
    scheduled for every small op makes them many times slower (measured here:
    4.7 ms vs 84 ms per GD step of an 18-parameter net under load).
    """
    if num is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(num))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sub_seed(seed: int, *labels: Any) -> int:
    """A seed for one purpose of a run (``sub_seed(seed, "init", 3)``), stable across runs."""
    words = [int(seed)] + [zlib.crc32(str(x).encode()) for x in labels]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0])


def flat_params(model: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad]).numpy().copy()


def set_flat_params(model: torch.nn.Module, flat: np.ndarray) -> None:
    vec = torch.as_tensor(np.asarray(flat))
    with torch.no_grad():
        offset = 0
        for p in model.parameters():
            if p.requires_grad:
                n = p.numel()
                p.copy_(vec[offset : offset + n].view_as(p).to(p.dtype))
                offset += n


def exact_eigenvalues(model: torch.nn.Module, data: Any, loss: str) -> np.ndarray:
    """All Hessian eigenvalues (ascending) via ``spectra.analyze(method="exact")``."""
    from ..api import analyze

    return np.asarray(analyze(model, data, loss=loss, method="exact").eigenvalues, dtype=np.float64)


def dense_hessian(model: torch.nn.Module, data: Any, loss: str) -> np.ndarray:
    """The Hessian matrix itself (for heatmaps), from :class:`~spectra.operators.hessian.HessianOperator`."""
    from ..operators.hessian import HessianOperator

    H = HessianOperator(model, loss, data).to_dense()
    H = H.detach().cpu().numpy() if isinstance(H, torch.Tensor) else np.asarray(H)
    return 0.5 * (H + H.T)


def spectrum_numbers(eigs: np.ndarray, product_dtype: str = "float64") -> dict[str, Any]:
    """The numbers the paper talks about, for one exact spectrum, from :meth:`SpectrumResult.summary`.

    The counts are the library's (:mod:`spectra.counts`): negatives beyond the
    rounding tolerance ``negative_tol``, outliers above ``0.1 * lambda_max``
    with the count at other fractions (``outlier_sweep``); "zero" means
    ``|lambda| < 1e-3 max|lambda|`` (and a looser ``1e-2`` band).
    """
    from ..result import SpectrumResult

    lam = np.sort(np.asarray(eigs, dtype=np.float64))
    s = SpectrumResult(method="exact", eigenvalues=lam, num_params=lam.size,
                       provenance={"dtype": product_dtype}).summary(zero_tol=ZERO_TOL_REL * float(np.max(np.abs(lam))))
    big = float(np.max(np.abs(lam)))
    neg = lam[lam < -s["negative_tol"]]
    top = lam[::-1]
    return {
        "num_params": int(lam.size),
        "lambda_max": float(lam[-1]),
        "lambda_min": float(lam[0]),
        "top5": top[:5].tolist(),
        "zero_tol": s["zero_tol"],
        "zero_fraction": s["zero_fraction"],
        "zero_fraction_loose": float(np.mean(np.abs(lam) < ZERO_TOL_REL_LOOSE * big)),
        "negative_tol": s["negative_tol"],
        "num_negative": s["num_negative"],
        "num_negative_raw": s["num_negative_raw"],
        "num_zero": s["num_zero"],
        "most_negative": float(neg.min()) if neg.size else 0.0,
        "negative_sum": s["negative_sum"],
        "most_negative_over_lambda_max": float(-neg.min() / big) if neg.size else 0.0,
        "num_outliers": s["num_outliers"],
        "outlier_sweep": s["outlier_sweep"],
        "outlier_cut_ratio": s["outlier_cut_ratio"],
        "bulk_edge": s["bulk_edge"],
        "top8_over_lambda_max": (top[:8] / lam[-1]).tolist() if lam[-1] > 0 else [],
    }


def kink_distance(model: torch.nn.Module, data: Any) -> float | None:
    """How close the weights sit to a ReLU kink: min over samples and ReLU units of ``|z| / median |z|``.

    ``z`` are the pre-activations entering every ``nn.ReLU``/``nn.LeakyReLU``.
    Near 0 (below :data:`KINK_RELATIVE`) a sample lies on a unit's switching
    surface, where the loss is not differentiable: plain GD zig-zags across
    the surface and its gradient norm cannot fall below the jump there.
    None for nets without such units.
    """
    from ..data import as_batch_source

    seen: list[tuple[float, float]] = []

    def hook(_m: Any, inputs: tuple, _out: Any) -> None:
        z = inputs[0].detach().abs()
        seen.append((float(z.min()), float(z.median())))

    units = [m for m in model.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU))]
    if not units:
        return None
    handles = [m.register_forward_hook(hook) for m in units]
    try:
        with torch.no_grad():
            for X, _ in as_batch_source(data):
                model(X.to(next(model.parameters()).dtype) if X.is_floating_point() else X)
    finally:
        for h in handles:
            h.remove()
    return float(min(lo / med if med > 0 else 0.0 for lo, med in seen))


# A run whose kink distance is below this sits on a ReLU switching surface.
KINK_RELATIVE = 1e-6


def train_unit(
    ctx: Context,
    key: str,
    make_model: Callable[[], torch.nn.Module],
    data: Any,
    *,
    loss: str,
    train_kwargs: dict[str, Any],
    init_seed: int,
    radius: float | None = None,
    spectrum: bool | str = True,
    memo_key: tuple | None = None,
    newton_on_kinks: bool = False,
) -> dict[str, Any]:
    """Train one model (or load the finished unit ``key``); return params, history, spectrum.

    ``spectrum``: True (exact), ``"estimated"`` (:func:`estimated_numbers`) or False.
    Returns ``{"params", "eigs" (or None), "numbers" (spectrum numbers or None), "hist" (arrays),
    "meta"}``; ``meta``
    holds the stop reason, final loss/accuracy/grad norm, steps, radius and timings.
    ``memo_key`` (a hashable description of model and data) lets another figure
    of the same process reuse the unit instead of training again.
    ``newton_on_kinks``: where GD stops short of its tolerance on a ReLU net,
    finish with :func:`~spectra.experiments._kinks.finish_on_kinks` (Newton
    continuation to the minimum, convergence certified on the one-sided
    gradients) or, for nets too large for Newton steps,
    :func:`~spectra.experiments._kinks.smoothing_detour`; the meta then keeps
    GD's own end as ``gd_final_*`` and names the method.
    """
    from ..data import accuracy
    from ..training import NotConvergedWarning, init_on_sphere, train

    memo = None if memo_key is None else (memo_key, loss, init_seed, radius, spectrum, newton_on_kinks,
                                          tuple(sorted((k, repr(v)) for k, v in train_kwargs.items())))
    if ctx.rd.has_unit(key):
        arrays, meta = ctx.rd.load_unit(key)
        ctx.log(f"{key}: loaded from progress")
    elif memo is not None and memo in _MEMO:
        arrays, meta = _MEMO[memo]
        ctx.rd.save_unit(key, arrays, meta)
        ctx.log(f"{key}: reused from an earlier figure of this run")
    else:
        model = make_model()
        r = init_on_sphere(model, radius=radius, seed=init_seed)
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # the outcome is recorded and logged below
            warnings.simplefilter("ignore", NotConvergedWarning)
            hist = train(model, data, loss=loss, progress=False, **train_kwargs)
        kinks = None
        if newton_on_kinks and not hist.converged and hist.steps_taken > 0:
            kinks = _finish_on_kinks(model, data, loss, train_kwargs, hist.grad_tol)
        t1 = time.perf_counter()
        estimated = estimated_numbers(model, data, loss) if spectrum == "estimated" else None
        eigs = exact_eigenvalues(model, data, loss) if spectrum and estimated is None else np.zeros(0)
        t2 = time.perf_counter()
        meta = {"stop_reason": hist.stop_reason, "converged": hist.converged, "steps": hist.steps_taken,
                "final_loss": hist.final_loss, "final_grad_norm": hist.final_grad_norm, "grad_tol": hist.grad_tol,
                "final_accuracy": hist.final_accuracy, "radius": r, "init_seed": init_seed,
                "step_rule": hist.step_rule, "lr": hist.lr, "last_lr": hist.final_lr, "min_lr": hist.min_lr,
                "step_halvings": hist.step_halvings, "kink_distance": kink_distance(model, data),
                "weight_norm": float(np.linalg.norm(flat_params(model))),
                "train_seconds": t1 - t0, "spectrum_seconds": t2 - t1}
        if kinks is not None:  # GD stalled and a finish took over (see _kinks); the model holds its end point
            meta.update({"stop_reason": f"finished by {kinks['method']}" if kinks["converged"] else hist.stop_reason,
                         "finish_method": kinks["method"], "finish_steps": kinks["steps"],
                         "converged": kinks["converged"], "final_grad_norm": kinks["grad_norm"],
                         "final_loss": kinks["loss"], "final_accuracy": accuracy(model, data),
                         "gd_final_grad_norm": hist.final_grad_norm, "gd_final_loss": hist.final_loss,
                         "piece_grad_norm": kinks["piece_grad_norm"]})
        if estimated is not None:
            meta["estimated_numbers"] = estimated
        top = float(eigs[-1]) if eigs.size else (estimated["lambda_max"] if estimated else None)
        if top is not None:
            meta["last_lr_times_lambda_max"] = hist.final_lr * top
        arrays = {"params": flat_params(model), "eigs": eigs, **{f"hist_{k}": v for k, v in hist.arrays().items()}}
        ctx.rd.save_unit(key, arrays, meta)
        if memo is not None:
            _MEMO[memo] = (arrays, meta)
        ctx.log(f"{key}: {hist.stop_reason} after {hist.steps_taken} steps, loss {hist.final_loss:.4g}, "
                f"|grad| {hist.final_grad_norm:.2e} ({t1 - t0:.1f}s train, {t2 - t1:.1f}s spectrum)"
                + ("" if kinks is None else f"; then {kinks['method']}: {kinks['steps']} steps, loss "
                   f"{kinks['loss']:.4g}, |grad| {kinks['grad_norm']:.2e}, converged {kinks['converged']}"))
    eigs = arrays["eigs"] if spectrum and arrays["eigs"].size else None
    numbers = meta.get("estimated_numbers") or (spectrum_numbers(eigs) if eigs is not None else None)
    return {"params": arrays["params"], "eigs": eigs, "numbers": numbers,
            "hist": {k[5:]: v for k, v in arrays.items() if k.startswith("hist_")}, "meta": meta}


def _finish_on_kinks(model: torch.nn.Module, data: Any, loss: str, train_kwargs: dict[str, Any],
                     grad_tol: float) -> dict[str, Any] | None:
    """Where GD stopped short on a ReLU net: Newton continuation to its minimum, or for nets too large for Newton
    steps a detour along the softplus twin (None for nets without ReLU units)."""
    from ._kinks import finish_on_kinks, smoothing_detour

    X, y = _full_batch(data)
    out = finish_on_kinks(model, X, y, loss=loss, weight_decay=float(train_kwargs.get("weight_decay") or 0.0),
                          grad_tol=grad_tol)
    return out if out is not None else smoothing_detour(model, data, loss=loss, train_kwargs=train_kwargs)


def _full_batch(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data import as_batch_source

    parts = list(as_batch_source(data))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def training_numbers(meta: dict[str, Any]) -> dict[str, Any]:
    """The training outcome fields of a unit's meta, for results.json."""
    keys = ("stop_reason", "converged", "steps", "final_loss", "final_grad_norm", "grad_tol", "final_accuracy",
            "step_rule", "lr", "last_lr", "step_halvings", "last_lr_times_lambda_max", "kink_distance",
            "weight_norm", "train_seconds", "spectrum_seconds", "gd_final_grad_norm", "gd_final_loss",
            "piece_grad_norm", "finish_method", "finish_steps")
    return {k: meta.get(k) for k in keys}


RULE_TEXT = ("GD steps by backtracking (spectra.train's default rule: try twice the last step, at most the "
             "configured lr, and halve until the loss falls by 1e-4·step·|g|²), so every step decreases the loss "
             "and GD cannot hover at the edge of stability.")
NEWTON_ON_KINKS_TEXT = ("Where GD stops short of the tolerance on a ReLU net (it stalls on the kinks where such "
                        "minima lie) and the Newton steps cost at most 1.5e13 multiply-adds in all (N·C·P² for the "
                        "Hessian of N samples with C outputs and P³ for its eigh, times 300 steps with weight decay or "
                        "1500 without), Newton continuation through softplus(βz)/β, β = 1e2 … "
                        "1e6, takes it to the minimum; there 'converged' means a convex combination of the ReLU "
                        "loss's one-sided gradients (entries within 1e-4 of their switching surface) has norm below "
                        "the tolerance. A costlier ReLU net that stalls takes a detour: GD on its softplus(10z)/10 "
                        "twin, then GD on the ReLU net again, converged by the ordinary test.")


def training_rule(cfg: dict[str, Any]) -> str:
    """The training rule a report states: GD with backtracking, and the finish on kinks where ``cfg`` asks for it
    (``newton_on_kinks``)."""
    return f"{RULE_TEXT} {NEWTON_ON_KINKS_TEXT}" if cfg.get("newton_on_kinks") else RULE_TEXT


def run_record(label: str, converged: Any, grad_norm: float, grad_tol: float, kink: float | None = None,
               steps: int | None = None) -> dict[str, Any]:
    """One trained run as the training summary counts it."""
    return {"label": label, "converged": bool(converged), "final_grad_norm": float(grad_norm),
            "grad_tol": float(grad_tol), "kink_distance": None if kink is None or not np.isfinite(kink) else float(kink),
            "steps": None if steps is None else int(steps)}


def training_summary(records: list[dict[str, Any]], rule: str = RULE_TEXT,
                     verdicts: str = "Verdicts use the converged runs only.") -> dict[str, Any]:
    """``results.json``'s ``training``: how many runs converged, and what stopped the others.

    A run that stopped on a ReLU kink (:func:`kink_distance` below
    :data:`KINK_RELATIVE`) is named as such: there the loss is not
    differentiable and its gradient norm cannot fall below the jump.
    """
    tols = sorted({r["grad_tol"] for r in records})
    bad = [r for r in records if not r["converged"]]
    on_kink = [r for r in bad if r["kink_distance"] is not None and r["kink_distance"] < KINK_RELATIVE]
    groups: dict[str, list[str]] = {}
    for r in bad:
        why = "on a ReLU kink" if r in on_kink else "gradient still above tolerance"
        groups.setdefault(why, []).append(f"{r['label']} (|g| {r['final_grad_norm']:.1e})")
    return {"runs": len(records), "converged": len(records) - len(bad),
            "fraction": (len(records) - len(bad)) / max(len(records), 1),
            "tolerance": ", ".join(f"{t:g}" for t in tols), "rule": rule, "on_kink": len(on_kink),
            "not_converged": [f"{why}: {', '.join(items)}" for why, items in groups.items()],
            "verdicts": verdicts, "per_run": records}


def estimated_numbers(model: torch.nn.Module, data: Any, loss: str, *, k: int = 20, probes: int = 10,
                      steps: int = 80, seed: int = 0) -> dict[str, Any]:
    """:func:`spectrum_numbers`' keys for a net too large for an exact spectrum at this scale.

    ARPACK gives the ``k`` largest eigenvalues (exact to about 1e-12), so
    ``lambda_max``, the outliers and their sweep are exact unless the count
    reaches ``k`` (then ``censored``).  Stochastic Lanczos quadrature gives the
    rest, marked ``estimated``: ``lambda_min`` (the smallest Ritz value, which
    converges first), the mass near zero and the negative count (quadrature
    mass times P below the zero band ``-1e-3 lambda_max``: the quadrature places
    the zero cluster's nodes about 1e-4 from 0 on either side, so nearer
    negatives cannot be told from it).  ARPACK's smallest end is not used:
    next to a zero cluster of thousands it converges very slowly.
    """
    from ..api import analyze
    from ..counts import OUTLIER_FRACTION, OUTLIER_SWEEP, negative_tolerance

    top = np.sort(analyze(model, data, loss=loss, method="arpack", which="largest", k=k).eigenvalues)[::-1]
    slq = analyze(model, data, loss=loss, method="lanczos", num_probes=probes, num_steps=steps, seed=seed)
    P = int(slq.num_params)
    nodes, weights = slq.nodes.ravel(), slq.weights.ravel() / slq.nodes.shape[0]
    lam_min = float(min(nodes.min(), top[-1]))
    big = float(max(abs(top[0]), abs(lam_min)))
    zero_tol = max(ZERO_TOL_REL * big, negative_tolerance(P, big, "float64"))
    tol = zero_tol  # what the quadrature resolves
    n_out = int(np.sum(top > OUTLIER_FRACTION * top[0]))
    return {
        "num_params": P, "lambda_max": float(top[0]), "lambda_min": lam_min, "top5": top[:5].tolist(),
        "zero_tol": zero_tol, "zero_fraction": float(weights[np.abs(nodes) < zero_tol].sum()),
        "zero_fraction_loose": float(weights[np.abs(nodes) < ZERO_TOL_REL_LOOSE * big].sum()),
        "negative_tol": tol, "num_negative": int(round(P * float(weights[nodes < -tol].sum()))),
        "num_negative_raw": None, "num_zero": None, "most_negative": min(lam_min, 0.0), "negative_sum": None,
        "most_negative_over_lambda_max": float(max(-lam_min, 0.0) / big),
        "num_outliers": n_out, "outlier_sweep": {f"{f:g}": int(np.sum(top > f * top[0])) for f in OUTLIER_SWEEP},
        "outlier_cut_ratio": float(top[n_out - 1] / top[n_out]) if 0 < n_out < k and top[n_out] > 0 else None,
        "bulk_edge": float(top[n_out]) if n_out < k else None,
        "top8_over_lambda_max": (top[:8] / top[0]).tolist(),
        "estimated": True, "method": f"arpack k={k} (largest) + SLQ {probes}x{steps}",
        "censored": ["num_outliers"] if n_out == k else [], "top_eigenvalues": top.tolist(),
    }
