"""Curvature along the straight line between two parameter points.

For ``theta(t) = (1 - t) theta_a + t theta_b`` (e.g. a GD and an SGD
solution from the same start, as in the paper's figure 10) this records the
loss, the gradient norm, the top eigenvalue(s) of the Hessian and its trace
(with a standard error) at each ``t``.  The eigen-solver at each ``t`` is
warm-started from the eigenvectors at the previous ``t``
(:func:`spectra.backends.top_eigenpairs.warm_top_eigenpairs`).

**BatchNorm buffers.**  A net with BatchNorm has running statistics that are
not parameters, and a point on the line needs some.  The policy is declared
(and recorded in every result):

``"interpolate"``
    running means and variances are interpolated like the weights (cheap; the
    statistics then need not match the interpolated weights).
``"reestimate"``
    at each ``t`` the running statistics are reset and re-estimated by
    forward passes in train mode over ``bn_data`` (default: the data), as a
    cumulative average (``momentum=None``), then the analysis runs in eval
    mode.  This is what the network at ``theta(t)`` would use after a
    statistics refresh.

Other non-floating buffers (``num_batches_tracked``) are taken from the start
point.  The caller's model is never modified: the work happens on a copy.

>>> import torch
>>> torch.manual_seed(0) and None
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
>>> X, y = torch.randn(40, 2, dtype=torch.float64), torch.randint(0, 2, (40,))
>>> a = {k: v.clone() for k, v in net.state_dict().items()}
>>> b = {k: v + 0.3 for k, v in a.items()}
>>> res = curvature_path(net, a, b, (X, y), ts=3, k=1, trace="exact")
>>> res.ts.tolist(), res.eigenvalues.shape, res.bn_policy
([0.0, 0.5, 1.0], (3, 1), 'none (no BatchNorm)')
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ._io import atomic_save_npz, atomic_write_json, atomic_write_text
from .errors import InvalidInputError
from .tracking import tidy_csv

__all__ = ["PathResult", "curvature_path", "interpolation_losses", "point_on_line", "BN_POLICIES"]

BN_POLICIES = ("interpolate", "reestimate")
PointLike = Any  # nn.Module | Mapping[str, Tensor] (a state_dict) | flat Tensor of the trainable parameters


@dataclass
class PathResult:
    """Curvature at points ``ts`` of the segment; arrays are indexed by point."""

    ts: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    accuracy: np.ndarray
    eigenvalues: np.ndarray  # [len(ts), k] descending (k = 0: not computed)
    trace: np.ndarray
    trace_stderr: np.ndarray
    eig_matvecs: np.ndarray
    trace_matvecs: np.ndarray
    distance: float
    bn_policy: str
    info: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """Tidy rows ``{t, quantity, index, value, stderr}``."""
        out = []
        for i, t in enumerate(self.ts):
            def add(q: str, v: float, index: int = 0, se: float = math.nan) -> None:
                out.append({"t": float(t), "quantity": q, "index": index, "value": float(v), "stderr": float(se)})

            add("loss", self.loss[i])
            add("grad_norm", self.grad_norm[i])
            add("accuracy", self.accuracy[i])
            for j, lam in enumerate(self.eigenvalues[i], start=1):
                add("eigenvalue", lam, j)
            if not math.isnan(self.trace[i]):
                add("trace", self.trace[i], se=self.trace_stderr[i])
            add("eig_matvecs", self.eig_matvecs[i])
            add("trace_matvecs", self.trace_matvecs[i])
        return out

    def save(self, out: str | Path) -> Path:
        """``path.csv``, ``path.json`` and ``path.npz`` in folder ``out`` (atomically)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        atomic_save_npz(out / "path.npz", ts=self.ts, loss=self.loss, grad_norm=self.grad_norm,
                        accuracy=self.accuracy, eigenvalues=self.eigenvalues, trace=self.trace,
                        trace_stderr=self.trace_stderr, eig_matvecs=self.eig_matvecs,
                        trace_matvecs=self.trace_matvecs)
        atomic_write_text(out / "path.csv", tidy_csv(rows, ["t", "quantity", "index", "value", "stderr"]))
        atomic_write_json(out / "path.json", {"format": "spectra-curvature-path", "format_version": 1,
                                              "distance": self.distance, "bn_policy": self.bn_policy,
                                              "info": self.info, "rows": rows})
        return out

    def plot(self, axes: Sequence[Any] | None = None) -> tuple[Any, Any]:
        """Loss, top eigenvalue(s) and trace against ``t``; returns ``(fig, axes)``."""
        from .plotting import axes_or_new

        fig, axes = axes_or_new(axes, 3, size=(13, 3.6))
        axes[0].plot(self.ts, self.loss, marker=".")
        axes[0].set_title("loss along the line")
        for j in range(self.eigenvalues.shape[1]):
            axes[1].plot(self.ts, self.eigenvalues[:, j], marker=".", label=f"λ{j + 1}")
        axes[1].set_title("top Hessian eigenvalue" + ("s" if self.eigenvalues.shape[1] > 1 else ""))
        if not np.all(np.isnan(self.trace)):
            axes[2].errorbar(self.ts, self.trace, yerr=2 * self.trace_stderr, marker=".", capsize=2)
        axes[2].set_title("trace (± 2 s.e.)")
        for ax in axes:
            ax.set_xlabel("t  (0 = start, 1 = end)")
        fig.suptitle(f"|θ_b − θ_a| = {self.distance:.3g}, BatchNorm: {self.bn_policy}", fontsize=9)
        fig.tight_layout()
        return fig, axes


# ------------------------------------------------------------------ points


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _bn_buffer_names(model: nn.Module) -> set[str]:
    names = set()
    for mod_name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for b, _ in m.named_buffers(recurse=False):
                names.add(f"{mod_name}.{b}" if mod_name else b)
    return names


def _as_state(template: nn.Module, point: PointLike, what: str) -> dict[str, torch.Tensor]:
    """A full state_dict for ``point`` (module, state_dict or flat trainable vector)."""
    base = {k: v.detach().clone() for k, v in template.state_dict().items()}
    if isinstance(point, nn.Module):
        state = point.state_dict()
    elif isinstance(point, Mapping):
        state = dict(point)
    elif isinstance(point, (torch.Tensor, np.ndarray)):
        flat = torch.as_tensor(point).reshape(-1)
        named = [(n, p) for n, p in template.named_parameters() if p.requires_grad]
        P = sum(p.numel() for _, p in named)
        if flat.numel() != P:
            raise InvalidInputError(f"{what} is a flat vector of {flat.numel()} numbers; the model has {P} "
                                    "trainable parameters")
        state, offset = {}, 0
        for n, p in named:
            state[n] = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
    else:
        raise InvalidInputError(f"{what} must be a model, a state_dict or a flat parameter vector; "
                                f"got {type(point).__name__}")
    unknown = sorted(set(state) - set(base))
    if unknown:
        raise InvalidInputError(f"{what} has entries the model does not: {', '.join(unknown[:5])}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(base[k].shape):
            raise InvalidInputError(f"{what}[{k!r}] has shape {tuple(v.shape)}, the model {tuple(base[k].shape)}")
        base[k] = v.detach().to(base[k].dtype).clone()
    return base


def point_on_line(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], t: float,
                  skip: set[str] = frozenset()) -> dict[str, torch.Tensor]:
    """``(1 - t) a + t b`` for floating entries (not those in ``skip``); others from ``a``."""
    out = {}
    for k, va in state_a.items():
        vb = state_b[k]
        out[k] = torch.lerp(va, vb, float(t)) if va.is_floating_point() and k not in skip else va.clone()
    return out


def _reestimate_bn(model: nn.Module, data: Any) -> None:
    """Reset BatchNorm running statistics and re-estimate them (cumulative average) on ``data``."""
    from .data import as_batch_source

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum, m.training) for m in bns]
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    was_training = model.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch counts alike
        model.train()
        with torch.no_grad():
            for X, _ in as_batch_source(data):
                X = X.to(device)
                model(X.to(dtype) if X.is_floating_point() else X)
    finally:
        for m, momentum, training in saved:
            m.momentum = momentum
        model.train(was_training)
        for m, _, training in saved:
            m.training = training


# ------------------------------------------------------------------ the path


def _ts(ts: int | Sequence[float]) -> np.ndarray:
    if isinstance(ts, (int, np.integer)) and not isinstance(ts, bool):
        if ts < 2:
            raise InvalidInputError(f"ts must be >= 2 points (or a list of t values); got {ts}")
        return np.linspace(0.0, 1.0, int(ts))
    arr = np.asarray(ts, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise InvalidInputError("ts must be a non-empty list of finite numbers")
    return arr


def curvature_path(model: nn.Module, start: PointLike, end: PointLike, data: Any, *,
                   loss: Any = "cross_entropy", ts: int | Sequence[float] = 11, k: int = 1,
                   trace: str | None = "hutchpp", trace_matvecs: int = 30, bn: str = "interpolate",
                   bn_data: Any = None, params: Any = None, tol: float = 1e-4, seed: int = 0,
                   warm_start: bool = True, operator_options: dict[str, Any] | None = None) -> PathResult:
    """Loss, top-``k`` eigenvalues and trace of the Hessian at ``theta(t)``, ``t`` in ``ts``.

    ``model`` gives the architecture; ``start``/``end`` are models, state
    dicts, or flat vectors of the trainable parameters.  ``ts`` is a number
    of evenly spaced points on ``[0, 1]`` or a list (values outside ``[0, 1]``
    extrapolate).  ``k=0`` skips the eigenvalues and ``trace=None`` the trace
    (a loss-only line costs no Hessian products).  ``bn``: see the module notes.
    """
    from .operators.hessian import HessianOperator
    from .backends.top_eigenpairs import warm_top_eigenpairs
    from .data import accuracy

    if bn not in BN_POLICIES:
        raise InvalidInputError(f"bn must be one of {', '.join(map(repr, BN_POLICIES))}; got {bn!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise InvalidInputError(f"k must be an integer >= 0; got {k!r}")
    points = _ts(ts)
    work = copy.deepcopy(model)
    state_a = _as_state(work, start, "start")
    state_b = _as_state(work, end, "end")
    has_bn = _has_batchnorm(work)
    skip = _bn_buffer_names(work) if (has_bn and bn == "reestimate") else set()
    trainable = {n for n, p in work.named_parameters() if p.requires_grad}
    distance = math.sqrt(sum(float((state_b[n] - state_a[n]).double().pow(2).sum()) for n in trainable))
    n = points.size
    out = {name: np.full(n, np.nan) for name in ("loss", "grad_norm", "accuracy", "trace", "trace_stderr")}
    eig = np.full((n, int(k)), np.nan)
    eig_mv = np.zeros(n, dtype=np.int64)
    tr_mv = np.zeros(n, dtype=np.int64)
    previous = None
    for i, t in enumerate(points):
        work.load_state_dict(point_on_line(state_a, state_b, t, skip))
        if has_bn and bn == "reestimate":
            _reestimate_bn(work, data if bn_data is None else bn_data)
        need_ops = k > 0 or trace is not None
        options = {"check_determinism": i == 0, **(operator_options or {})}
        if not need_ops:
            options.update(cache_graph=False, check_determinism=False)
        op = HessianOperator(work, loss, data, params=params, **options)
        out["loss"][i], out["grad_norm"][i] = op.loss_value, op.grad_norm
        out["accuracy"][i] = accuracy(work, data)
        if k > 0:
            pairs = warm_top_eigenpairs(op, int(k), previous if warm_start else None, tol=tol, seed=seed)
            eig[i] = pairs.values
            eig_mv[i] = pairs.num_matvecs
            previous = pairs
        if trace is not None:
            from .trace import estimate_trace

            est = estimate_trace(op, trace, num_matvecs=trace_matvecs, seed=seed)
            out["trace"][i], out["trace_stderr"][i], tr_mv[i] = est.estimate, est.stderr, est.num_matvecs
    policy = bn if has_bn else "none (no BatchNorm)"
    info = {"loss": str(loss), "k": int(k), "trace_method": trace, "trace_matvecs": trace_matvecs, "seed": seed,
            "tol": tol, "warm_start": warm_start, "bn_data": "data" if bn_data is None else "bn_data",
            "interpolated": "all floating parameters and buffers" + (" except BatchNorm statistics (re-estimated)"
                                                                      if skip else "")}
    return PathResult(ts=points, eigenvalues=eig, eig_matvecs=eig_mv, trace_matvecs=tr_mv, distance=distance,
                      bn_policy=policy, info=info, **out)


def interpolation_losses(model: nn.Module, start: PointLike, end: PointLike, data: Any, *,
                         loss: Any = "cross_entropy", ts: int | Sequence[float] = 11,
                         bn: str = "interpolate", bn_data: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``(ts, loss)`` along the line — the paper's figure 10 curves (no Hessian products)."""
    res = curvature_path(model, start, end, data, loss=loss, ts=ts, k=0, trace=None, bn=bn, bn_data=bn_data)
    return res.ts, res.loss
