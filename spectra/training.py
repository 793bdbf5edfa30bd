"""Training as the paper does it: full-batch gradient descent to a gradient-norm tolerance.

``train`` runs either

* ``optimizer="gd"``: full-batch gradient descent.  The gradient is that of
  the *mean* loss over the whole dataset; when the data comes in several
  batches each batch is weighted by its size (``n_b / N``), so a short last
  batch is not over-weighted.  With ``step_rule="armijo"`` (the default) each
  step is the largest of ``min(2 s, lr), min(2 s, lr)/2, ...`` (``s`` the last
  step taken) that passes the sufficient-decrease test
  ``L(w - s g) <= L(w) - ARMIJO_C s |g|^2``: backtracking, so GD stays a
  descent method and cannot hover at the edge of stability
  (``s lambda_max`` near 2, where a constant step makes the loss oscillate);
  ``step_rule="constant"`` takes every step ``lr`` as the paper did.
  Training stops at the first point whose gradient norm is below
  ``grad_tol`` (``stop_reason="grad_tol"``, ``converged=True``) or after
  ``max_steps`` updates (``"max_steps"``: a :class:`NotConvergedWarning`
  says so).
* ``optimizer="sgd"``: plain SGD with a constant step on minibatches of
  ``batch_size``; each epoch visits the samples in a fresh order drawn from
  ``seed`` and the epoch number, so a run can be resumed exactly.  The
  full-batch gradient is checked (and the history recorded) every ``log_every``
  updates.

A progress bar (tqdm, on stderr) shows the steps when stderr is a terminal;
``progress=False`` silences it, ``True`` forces it.

``init_on_sphere`` draws the weights uniformly on a sphere of fixed radius in
parameter space, the paper's initialisation protocol.

>>> import torch
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).double()
>>> X = torch.randn(40, 2, dtype=torch.float64); y = (X.sum(1) > 0).long()
>>> radius = init_on_sphere(model, seed=1)
>>> hist = train(model, (X, y), lr=0.5, grad_tol=1e-2, max_steps=20000)
>>> hist.converged, hist.final_grad_norm < 1e-2, hist.step_rule, hist.final_lr <= 0.5
(True, True, 'armijo', True)
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .data import as_batch_source
from .errors import InvalidInputError, NonFiniteError
from .losses import LossLike, resolve_loss
from .progress import StepBar, wanted
from .validation import check_int as _check_count
from .validation import check_seed as _check_seed

Callback = Callable[[torch.nn.Module, dict], Any]

__all__ = ["TrainHistory", "NotConvergedWarning", "train", "init_on_sphere", "sphere_vector", "default_radius",
           "ARMIJO_C", "STEP_RULES"]

# Sufficient decrease asked of a GD step (Armijo's constant; Nocedal & Wright use 1e-4).
ARMIJO_C = 1e-4
# The loss is a sum of N rounded terms: a step that changes it by less than this
# relative amount counts as no increase (otherwise rounding alone could halve lr).
ARMIJO_ROUNDING_SLACK = 64 * float(np.finfo(np.float64).eps)
STEP_RULES = ("armijo", "constant")
# Halving below this fraction of the first lr means no step decreases the loss: stop with an error.
MIN_STEP_FRACTION = 2.0 ** -60


class NotConvergedWarning(UserWarning):
    """``train`` stopped at ``max_steps`` with the gradient norm still above ``grad_tol``."""


@dataclass
class TrainHistory:
    """What happened during :func:`train`.

    The lists hold one entry per *recorded* step (every ``log_every`` updates,
    plus the last step).  ``step[i]`` is the number of updates done before the
    measurement, so ``step[0] == 0`` is the starting point.
    """

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    stop_reason: str = ""
    converged: bool = False
    steps_taken: int = 0
    optimizer: str = "gd"
    lr: float = 0.0
    grad_tol: float = 0.0
    batch_size: int | None = None
    seed: int = 0
    loss_name: str = ""
    wall_time_s: float = 0.0
    step_rule: str = "constant"
    final_lr: float = 0.0
    step_halvings: int = 0
    gradient_evaluations: int = 0
    min_lr: float = 0.0

    @property
    def final_loss(self) -> float:
        return self.loss[-1] if self.loss else math.nan

    @property
    def final_grad_norm(self) -> float:
        return self.grad_norm[-1] if self.grad_norm else math.nan

    @property
    def final_accuracy(self) -> float:
        return self.accuracy[-1] if self.accuracy else math.nan

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN accuracies become ``None``)."""
        d = asdict(self)
        d["accuracy"] = [None if math.isnan(a) else a for a in self.accuracy]
        d.update(final_loss=self.final_loss, final_grad_norm=self.final_grad_norm,
                 final_accuracy=None if math.isnan(self.final_accuracy) else self.final_accuracy)
        return d

    def arrays(self) -> dict[str, np.ndarray]:
        """The history as numpy arrays (for ``np.savez``)."""
        return {
            "step": np.asarray(self.step, dtype=np.int64),
            "loss": np.asarray(self.loss, dtype=np.float64),
            "accuracy": np.asarray(self.accuracy, dtype=np.float64),
            "grad_norm": np.asarray(self.grad_norm, dtype=np.float64),
        }


# --------------------------------------------------------------------------- init


def trainable_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters that require grad, in ``model.parameters()`` order."""
    if not isinstance(model, torch.nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InvalidInputError(
            f"the model ({type(model).__name__}) has no trainable parameters (all have requires_grad=False)"
        )
    return params


def default_radius(model: torch.nn.Module) -> float:
    """Expected norm of the model's parameters under PyTorch's default layer init.

    ``nn.Linear``/``nn.Conv*`` draw weights and biases from
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, variance ``1 / (3 fan_in)``; the
    radius is ``sqrt(sum_p numel(p) / (3 fan_in(p)))`` over the trainable
    parameters.  A bias uses the fan-in of its module's weight; a parameter
    with no weight beside it (a free vector) counts with variance 1/3.
    Depending only on the architecture, it is the same for every seed.

    >>> round(default_radius(torch.nn.Linear(3, 2)), 6)  # sqrt(8 / 9)
    0.942809
    """
    total = 0.0
    seen: set[int] = set()
    for module in model.modules():
        own = {n: p for n, p in module.named_parameters(recurse=False) if p.requires_grad}
        weight = dict(module.named_parameters(recurse=False)).get("weight")
        fan_in = int(weight[0].numel()) if weight is not None and weight.ndim >= 2 else 1
        for p in own.values():
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel() / (3.0 * fan_in)
    if not seen:
        trainable_parameters(model)  # raises the clear error
    return math.sqrt(total)


def sphere_vector(num_params: int, radius: float, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A point drawn uniformly on the sphere of ``radius`` in ``R^num_params``.

    A standard normal vector (float64, from ``torch.Generator().manual_seed(seed)``)
    rescaled to the radius, so the same seed gives the same direction whatever
    the dtype asked for.

    >>> v = sphere_vector(5, 2.0, seed=0)
    >>> round(float(v.norm()), 12)
    2.0
    """
    if num_params < 1:
        raise InvalidInputError(f"num_params must be >= 1; got {num_params}")
    _check_positive_finite("radius", radius)
    gen = torch.Generator().manual_seed(_check_seed(seed))
    v = torch.randn(num_params, generator=gen, dtype=torch.float64)
    return (v * (radius / v.norm())).to(dtype)


def init_on_sphere(
    model: torch.nn.Module, radius: float | None = None, seed: int = 0, *, std: float | None = None
) -> float:
    """Overwrite the trainable parameters with a uniform draw on a sphere; return the radius.

    The paper initialises "on the surface of a sphere with a fixed radius given
    the total number of parameters": every run of a given architecture starts at
    the same distance from the origin, only the direction is random.

    Radius: ``radius`` if given; else ``std * sqrt(P)`` if ``std`` is given (the
    norm ``P`` i.i.d. ``N(0, std^2)`` weights concentrate at); else
    :func:`default_radius` (the expected norm under PyTorch's default init).

    >>> m = torch.nn.Linear(4, 3).double()
    >>> r = init_on_sphere(m, radius=1.5, seed=3)
    >>> round(float(torch.nn.utils.parameters_to_vector(m.parameters()).detach().norm()), 12)
    1.5
    """
    params = trainable_parameters(model)
    num = sum(p.numel() for p in params)
    if radius is not None and std is not None:
        raise InvalidInputError("give either radius or std to init_on_sphere, not both")
    if radius is None:
        if std is not None:
            _check_positive_finite("std", std)
            radius = float(std) * math.sqrt(num)
        else:
            radius = default_radius(model)
    vec = sphere_vector(num, float(radius), seed)
    with torch.no_grad():
        offset = 0
        for p in params:
            n = p.numel()
            p.copy_(vec[offset : offset + n].view_as(p).to(p.dtype))
            offset += n
    return float(radius)


# --------------------------------------------------------------------------- checks


def _check_positive_finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive finite number; got {value!r}")
    return float(value)


def _check_nonnegative_finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
        raise InvalidInputError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def _with_decay(grads: list[torch.Tensor], params: Sequence[torch.Tensor], weight_decay: float) -> list[torch.Tensor]:
    """The gradients of ``loss + weight_decay / 2 |theta|^2`` from those of the loss."""
    return [g + weight_decay * p.detach() for g, p in zip(grads, params)] if weight_decay else grads


# --------------------------------------------------------------------------- training


def _epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    # One generator per (seed, epoch): the order of any epoch can be rebuilt
    # without replaying the earlier ones, which makes resumed SGD exact.
    mixed = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    gen = torch.Generator().manual_seed(int(mixed) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.randperm(num_samples, generator=gen)


class _Objective:
    """Mean (or summed) loss over a list of batches and its gradient."""

    def __init__(self, model, loss, batches, params, dtype, weight_decay=0.0):
        self.model, self.loss, self.params, self.weight_decay = model, loss, params, weight_decay
        self.batches = [(_cast_inputs(X, dtype), y) for X, y in batches]
        self.total = sum(int(X.shape[0]) for X, _ in self.batches)
        self.checked = False

    def evaluate(self, batches=None, total=None):
        """Return (loss, flat gradient, accuracy) at the current parameters."""
        batches = self.batches if batches is None else batches
        total = self.total if total is None else total
        loss_sum, correct, acc_ok = 0.0, 0, True
        grads = None
        for X, y in batches:
            out = self.model(X)
            if not self.checked:
                self.loss.check_target(out, y)
            value = self.loss(out, y)
            weight = X.shape[0] / total if self.loss.reduction == "mean" else 1.0
            g = torch.autograd.grad(value * weight, self.params, allow_unused=True)
            g = [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, self.params)]
            grads = g if grads is None else [a + b for a, b in zip(grads, g)]
            loss_sum += float(value.detach()) * weight
            if acc_ok and out.ndim == 2 and not y.is_floating_point() and y.ndim == 1:
                correct += int((out.detach().argmax(dim=1) == y).sum())
            else:
                acc_ok = False
        self.checked = True
        if self.weight_decay:
            loss_sum += 0.5 * self.weight_decay * sum(float(p.detach().pow(2).sum()) for p in self.params)
            grads = _with_decay(grads, self.params, self.weight_decay)
        accuracy = correct / total if acc_ok else math.nan
        return loss_sum, grads, accuracy


def _cast_inputs(X: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Inputs follow the parameters' float dtype so a float64 model can be fed
    # float32 data (what most loaders give) without a dtype error.
    return X.to(dtype) if X.is_floating_point() and X.dtype != dtype else X


def _flat_norm(grads: Sequence[torch.Tensor]) -> float:
    return math.sqrt(sum(float(g.detach().pow(2).sum()) for g in grads))


def train(
    model: torch.nn.Module,
    data: Any,
    *,
    loss: LossLike = "cross_entropy",
    optimizer: str = "gd",
    lr: float = 0.1,
    grad_tol: float = 1e-4,
    max_steps: int = 100_000,
    weight_decay: float = 0.0,
    batch_size: int | None = None,
    seed: int = 0,
    callbacks: Callback | Iterable[Callback] | None = None,
    callback_steps: Iterable[int] | None = None,
    log_every: int | None = None,
    start_step: int = 0,
    step_rule: str | None = None,
    resume_lr: float | None = None,
    progress: bool | None = None,
) -> TrainHistory:
    """Train ``model`` in place on ``data``; return a :class:`TrainHistory`.

    Parameters
    ----------
    loss: a name (``"cross_entropy"``, ``"mse"``), a :class:`spectra.losses.Loss` or a callable.
    optimizer: ``"gd"`` (full batch) or ``"sgd"`` (minibatches of ``batch_size``).
    lr: the step size (> 0); with ``step_rule="armijo"`` the largest one tried.
    grad_tol: stop once the full-batch gradient norm is below it (0 disables the test).
    max_steps: the most updates to make (counted from ``start_step``).
    weight_decay: adds ``weight_decay / 2 * |theta|^2`` to the loss (``>= 0``); the
        recorded loss and gradient norm, and so ``grad_tol``, include it.
    batch_size: SGD minibatch size (required for SGD); for GD it only chunks the
        full-batch gradient to save memory (the step is the same).
    seed: SGD shuffling seed (epoch ``e`` uses an order drawn from ``(seed, e)``).
    callbacks: ``f(model, info)`` called at the steps in ``callback_steps``
        (before the update of that step) and once more at the final step with
        ``info["final"] = True``.  ``info`` holds step, loss, grad_norm,
        accuracy and lr (the step size in force).  With ``callback_steps=None``
        they run at every recorded step.
    log_every: record the history every this many updates (GD default 1; SGD
        default one epoch, since each record costs a full pass over the data).
    start_step: the step counter to start from (resume a run from saved
        parameters: GD keeps no state but its last step size, ``info["lr"]``
        of the callbacks, which goes to ``resume_lr``; SGD rebuilds its epoch
        order from the seed; so the continued run equals an uninterrupted one).
    step_rule: ``"armijo"`` (GD default: backtracking, see the module
        docstring) or ``"constant"`` (every step ``lr``; the only rule for SGD).
    resume_lr: with ``"armijo"``, the last accepted step of the run being
        resumed (the next try is twice it, at most ``lr``).
    progress: show a tqdm bar on stderr (None: only when stderr is a terminal).

    The model runs in train mode during training and is put back in its
    previous mode afterwards.  A non-finite loss or gradient at an accepted
    point raises :class:`~spectra.errors.NonFiniteError` naming the step.
    Stopping at ``max_steps`` above ``grad_tol`` warns with
    :class:`NotConvergedWarning` (``history.converged`` is False).
    """
    started = time.perf_counter()
    if not isinstance(optimizer, str) or optimizer.lower() not in ("gd", "sgd"):
        raise InvalidInputError(f"optimizer must be 'gd' or 'sgd'; got {optimizer!r}")
    optimizer = optimizer.lower()
    lr = _check_positive_finite("lr", lr)
    _check_nonnegative_finite("grad_tol", grad_tol)
    max_steps = _check_count("max_steps", max_steps, 0)
    weight_decay = _check_nonnegative_finite("weight_decay", weight_decay)
    start_step = _check_count("start_step", start_step, 0)
    seed = _check_seed(seed)
    step_rule = _check_step_rule(step_rule, optimizer)
    if batch_size is not None:
        batch_size = _check_count("batch_size", batch_size, 1)
    if optimizer == "sgd" and batch_size is None:
        raise InvalidInputError("optimizer='sgd' needs a batch_size")
    if log_every is not None:
        log_every = _check_count("log_every", log_every, 1)
    if progress is not None and not isinstance(progress, bool):
        raise InvalidInputError(f"progress must be True, False or None; got {progress!r}")
    cbs = _as_callbacks(callbacks)
    cb_steps = None if callback_steps is None else _as_steps(callback_steps)

    loss_obj = resolve_loss(loss)
    params = trainable_parameters(model)
    dtype = params[0].dtype if params[0].is_floating_point() else torch.get_default_dtype()
    source = as_batch_source(data)
    batches = list(source)
    if batch_size is not None and (optimizer == "sgd" or len(batches) == 1):
        X_all = torch.cat([X for X, _ in batches]) if len(batches) > 1 else batches[0][0]
        y_all = torch.cat([y for _, y in batches]) if len(batches) > 1 else batches[0][1]
        if optimizer == "gd":
            batches = [(X_all[i : i + batch_size], y_all[i : i + batch_size])
                       for i in range(0, X_all.shape[0], batch_size)]
    objective = _Objective(model, loss_obj, batches, params, dtype, weight_decay)
    N = objective.total
    if optimizer == "sgd":
        X_all, y_all = _cast_inputs(X_all, dtype), y_all
        per_epoch = math.ceil(N / batch_size)
        if log_every is None:
            log_every = per_epoch
    elif log_every is None:
        log_every = 1

    hist = TrainHistory(optimizer=optimizer, lr=lr, grad_tol=float(grad_tol), batch_size=batch_size,
                        seed=seed, loss_name=loss_obj.name, step_rule=step_rule)
    bar = StepBar(max_steps, "training", enabled=wanted(progress))
    was_training = model.training
    model.train()
    armijo = step_rule == "armijo"
    if resume_lr is not None:
        resume_lr = _check_positive_finite("resume_lr", resume_lr)
        if not armijo or resume_lr > lr:
            raise InvalidInputError(f"resume_lr ({resume_lr!r}) is the last step of an armijo run and must be <= lr "
                                    f"({lr!r})")
    step_lr = lr if resume_lr is None else resume_lr  # the step in force
    try:
        last = start_step + max_steps
        step = start_step
        current = None  # (loss, gradient, accuracy) at the current weights, when already known
        while True:
            record = (step - start_step) % log_every == 0 or step == last
            want_cb = bool(cbs) and (cb_steps is None and record or cb_steps is not None and step in cb_steps)
            full = optimizer == "gd" or record or want_cb
            if full:
                value, grads, acc = current if current is not None else objective.evaluate()
                hist.gradient_evaluations += current is None
                current = None
                gnorm = _flat_norm(grads)
                if not (math.isfinite(value) and math.isfinite(gnorm)):
                    raise NonFiniteError(
                        f"training diverged at step {step}: loss {value}, gradient norm {gnorm} "
                        f"(lr={lr} may be too large)"
                    )
                done = gnorm < grad_tol or step >= last
                if record or done:
                    hist.step.append(step)
                    hist.loss.append(value)
                    hist.accuracy.append(acc)
                    hist.grad_norm.append(gnorm)
                    bar.update(step - start_step, loss=f"{value:.4g}", grad=f"{gnorm:.2g}", lr=f"{step_lr:.3g}")
                info = {"step": step, "loss": value, "grad_norm": gnorm, "accuracy": acc, "final": done,
                        "lr": step_lr}
                if done:
                    hist.stop_reason = "grad_tol" if gnorm < grad_tol else "max_steps"
                    hist.converged = gnorm < grad_tol
                    for cb in cbs:
                        cb(model, info)
                    break
                if want_cb:
                    for cb in cbs:
                        cb(model, info)
            if optimizer == "sgd":
                epoch, within = divmod(step, per_epoch)
                order = _epoch_order(N, seed, epoch)
                idx = order[within * batch_size : (within + 1) * batch_size]
                Xb, yb = X_all[idx], y_all[idx]
                out = model(Xb)
                value_b = loss_obj(out, yb)
                if not math.isfinite(float(value_b.detach())):
                    raise NonFiniteError(f"training diverged at step {step}: minibatch loss {float(value_b)} "
                                         f"(lr={lr} may be too large)")
                grads = torch.autograd.grad(value_b, params, allow_unused=True)
                grads = _with_decay([torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)],
                                    params, weight_decay)
            if armijo:
                step_lr, current = _armijo_step(objective, params, grads, value, gnorm, step_lr, hist)
            else:
                with torch.no_grad():
                    for p, g in zip(params, grads):
                        p.sub_(g, alpha=lr)
            step += 1
        hist.steps_taken = step - start_step
    finally:
        model.train(was_training)
        bar.close()
    hist.final_lr = step_lr
    hist.wall_time_s = time.perf_counter() - started
    if not hist.converged and grad_tol > 0 and max_steps > 0:
        warnings.warn(
            f"train stopped after max_steps={max_steps} updates with gradient norm {hist.final_grad_norm:.3g}, "
            f"above grad_tol={grad_tol:g}: the run has not converged (history.converged is False); raise "
            "max_steps, or check the step size", NotConvergedWarning, stacklevel=2)
    return hist


def _armijo_step(objective: "_Objective", params: list[torch.Tensor], grads: list[torch.Tensor], value: float,
                 gnorm: float, lr: float, hist: TrainHistory) -> tuple[float, tuple]:
    """Backtracking: try ``min(2 lr, max_lr)``, halve until the sufficient-decrease test passes.

    Returns the accepted step and the loss, gradient and accuracy at the new
    point (the next step's, so an accepted try costs nothing extra).  Trying
    twice the last accepted step first lets the step grow back after a
    transient (a ReLU kink, a sharp region) instead of staying small for the
    rest of the run; each refused try costs one evaluation.
    """
    start = [p.detach().clone() for p in params]
    lr = min(2.0 * lr, hist.lr)
    while True:
        with torch.no_grad():
            for p, p0, g in zip(params, start, grads):
                p.copy_(p0).sub_(g, alpha=lr)
        new = objective.evaluate()
        hist.gradient_evaluations += 1
        wanted = value - ARMIJO_C * lr * gnorm * gnorm + ARMIJO_ROUNDING_SLACK * abs(value)
        if math.isfinite(new[0]) and new[0] <= wanted:
            hist.min_lr = min(hist.min_lr, lr) if hist.min_lr else lr
            return lr, new
        lr *= 0.5
        hist.step_halvings += 1
        if lr < hist.lr * MIN_STEP_FRACTION:
            raise NonFiniteError(f"no step size decreases the loss (gradient norm {gnorm:.3g}, lr down to {lr:.3g})"
                                 "; the loss is not differentiable here or the gradient is wrong")


def _check_step_rule(step_rule: Any, optimizer: str) -> str:
    if step_rule is None:
        return "armijo" if optimizer == "gd" else "constant"
    if step_rule not in STEP_RULES:
        raise InvalidInputError(f"step_rule must be one of {', '.join(STEP_RULES)}; got {step_rule!r}")
    if step_rule == "armijo" and optimizer == "sgd":
        raise InvalidInputError("step_rule='armijo' needs full-batch losses; use optimizer='gd' or "
                                "step_rule='constant' with SGD")
    return step_rule


def _as_callbacks(callbacks: Any) -> list[Callback]:
    if callbacks is None:
        return []
    cbs = [callbacks] if callable(callbacks) else list(callbacks)
    for cb in cbs:
        if not callable(cb):
            raise InvalidInputError(f"callbacks must be callables f(model, info); got {type(cb).__name__}")
    return cbs


def _as_steps(steps: Iterable[int]) -> set[int]:
    try:
        out = {_check_count("callback step", s, 0) for s in steps}
    except TypeError as exc:
        raise InvalidInputError(f"callback_steps must be an iterable of step numbers; got {steps!r}") from exc
    return out
