"""Many initialisations of one small net at once: batched GD and exact Hessians.

The paper's figure 8 trains the same net from 5000 random points and looks at
the top Hessian eigenvalue of each.  Looping over 5000 ``nn.Module`` s in
Python spends most of its time in per-call overhead (the nets have 18-434
parameters), so here the B parameter vectors are stacked into one ``[B, P]``
tensor (:class:`StackedNet`, a functional view of a template module):

* GD: one forward/backward per step for all B inits.  For chains of
  ``Linear`` layers and elementwise activations (the paper's MLPs) the
  forward and backward passes are written out as batched matmuls laid out
  ``[B, width, N]`` (:mod:`spectra.experiments._batched_mlp`, no autograd
  graph); any other module goes through
  ``torch.func.vmap(torch.func.grad_and_value(...))`` over
  ``torch.func.functional_call``.  Each init stops on its own when its
  gradient norm drops below ``grad_tol`` (exactly :func:`spectra.train`'s
  rule); the rest carry on.  The GD state can be checkpointed and resumed.
* Hessians: for such chains, the exact Hessians ``[B, P, P]`` in closed form
  (Gauss-Newton part from the forward tangents plus the layer cross terms,
  :func:`spectra.experiments._batched_mlp.chain_hessian`), a few inits per
  block; otherwise forward-over-reverse (``torch.func.jvp`` of
  ``torch.func.grad``) vmapped over inits.  Then one batched
  ``torch.linalg.eigvalsh``.

:func:`looped_reference` does the same work one init at a time with
:func:`spectra.train` and ``torch.autograd.functional.hessian`` (no
``torch.func``), so the two paths check each other.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2)).double()
>>> X = torch.tensor([[1., 1.], [-1., -1.], [1.2, .8], [-.9, -1.1]], dtype=torch.float64)
>>> y = torch.tensor([0, 1, 0, 1])
>>> stack = StackedNet(net)
>>> thetas = init_thetas(stack.num_params, seeds=[init_seed(0, i) for i in range(3)], radius=1.0)
>>> out = batched_gd(stack, thetas, X, y, lr=0.5, grad_tol=1e-3, max_steps=50)
>>> out["theta"].shape, out["steps"].shape
(torch.Size([3, 12]), torch.Size([3]))
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import InvalidInputError, NonFiniteError
from ..losses import LossLike, resolve_loss
from ..operators.layer_chain import UnsupportedChain, parse_chain
from ..training import sphere_vector, trainable_parameters

__all__ = ["StackedNet", "init_seed", "init_thetas", "batched_gd", "batched_hessian_eigvals", "looped_reference"]


def init_seed(seed: int, index: int) -> int:
    """The seed of initialisation ``index`` in a run with master ``seed``.

    Each init gets its own seed (mixed by numpy's SeedSequence), so an init's
    weights do not depend on chunking, on the order of work, or on resuming.

    >>> init_seed(0, 1) == init_seed(0, 1) != init_seed(0, 2)
    True
    """
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def init_thetas(num_params: int, seeds: Sequence[int], radius: float,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Stack one :func:`spectra.train.sphere_vector` per seed into ``[B, P]``."""
    return torch.stack([sphere_vector(num_params, radius, s, dtype) for s in seeds])


class StackedNet:
    """A template module evaluated functionally at flat parameter vectors.

    ``loss(theta, X, y)`` is the dataset loss at one flat vector ``theta``
    (``P`` entries, in ``model.parameters()`` order), written with
    ``torch.func.functional_call`` so it can be vmapped over many thetas.
    """

    def __init__(self, template: torch.nn.Module, loss: LossLike = "cross_entropy"):
        params = trainable_parameters(template)
        named = [(n, p) for n, p in template.named_parameters() if p.requires_grad]
        self.template = template
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [p.numel() for p in params]
        self.num_params = sum(self.sizes)
        self.dtype = params[0].dtype
        self.loss_obj = resolve_loss(loss)
        if self.loss_obj.reduction != "mean":
            raise InvalidInputError("batched GD expects a mean-reduced loss")
        # Frozen parameters and buffers stay as they are in the template.
        self.fixed = {n: t.detach() for n, t in template.named_parameters() if not t.requires_grad}
        self.fixed.update({n: b for n, b in template.named_buffers()})

        self.chain = _mlp_chain(self)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = torch.split(theta, self.sizes)
        out = {n: t.reshape(s) for n, t, s in zip(self.names, pieces, self.shapes)}
        out.update(self.fixed)
        return out

    def forward(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.template, self.unflatten(theta), (X,))

    def loss(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_obj(self.forward(theta, X), y)

    def batched_forward(self, thetas: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Outputs ``[B, N, C]`` of the net at each row of ``thetas`` ([B, P])."""
        if self.chain is None:
            return torch.func.vmap(self.forward, in_dims=(0, None))(thetas, X)
        return _chain_forward(self.chain, thetas, X).transpose(1, 2)

    def batched_losses(self, thetas: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The dataset loss at each row of ``thetas``: ``[B]``."""
        if self.chain is None or self.loss_obj.name not in _PER_SAMPLE:
            return torch.func.vmap(self.loss, in_dims=(0, None, None))(thetas, X, y)
        out = _chain_forward(self.chain, thetas, X)
        return _PER_SAMPLE[self.loss_obj.name](out, y).mean(dim=1)

    def from_model(self, model: torch.nn.Module) -> torch.Tensor:
        """The flat parameter vector of a module built like the template."""
        return torch.cat([p.detach().reshape(-1) for p in trainable_parameters(model)])

    def to_model(self, theta: torch.Tensor) -> torch.nn.Module:
        """A deep copy of the template holding ``theta``."""
        import copy

        model = copy.deepcopy(self.template)
        with torch.no_grad():
            for p, t in zip(trainable_parameters(model), torch.split(theta, self.sizes)):
                p.copy_(t.reshape(p.shape))
        return model


# --------------------------------------------------------------------------- fast MLP path
# vmap costs milliseconds of dispatch per call whatever the batch, which is
# most of a step for these tiny nets.  A chain of Linear layers and
# elementwise activations is instead run as batched matmuls on [B, N, width]
# tensors with ordinary autograd: the B losses are independent, so the
# gradient of their sum holds every init's own gradient.


def _mlp_chain(stack: "StackedNet") -> list | None:
    """The template as [("flatten",), ("linear", offset, out, in, bias_offset|None), ("act", m)], or None.

    The chain is read by the one recogniser of Linear/activation chains
    (:func:`spectra.operators.layer_chain.parse_chain`, the chain engine's too);
    offsets index the flat parameter vector.  The closed forms vary every
    parameter, laid out layer by layer (weight, then bias): a template with frozen
    parameters or buffers, or another layout, takes the general vmap path.
    """
    if stack.fixed:
        return None
    try:
        steps = parse_chain(stack.template).steps
    except UnsupportedChain:
        return None
    offsets, offset = {}, 0
    for p in trainable_parameters(stack.template):
        offsets[id(p)] = offset
        offset += p.numel()
    chain: list = []
    expected = 0  # where the next Linear's weight must start
    for step in steps:
        if step.kind == "flatten":
            chain.append(("flatten",))
        elif step.kind == "activation":
            chain.append(("act", step.module))
        else:
            m = step.module
            w_off, b_off = offsets[id(m.weight)], None if m.bias is None else offsets[id(m.bias)]
            if w_off != expected or (b_off is not None and b_off != w_off + m.weight.numel()):
                return None
            expected = w_off + m.weight.numel() + (0 if m.bias is None else m.bias.numel())
            chain.append(("linear", w_off, m.out_features, m.in_features, b_off))
    return chain if expected == stack.num_params else None


def _chain_forward(chain: list, thetas: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Outputs of all B nets, laid out ``[B, C, N]`` (samples last).

    Samples-last makes every layer a batched ``[out, in] @ [in, N]`` product
    with the long axis innermost; with ``[B, N, width]`` the tiny width would be
    innermost and the batched matmuls run several times slower (measured here:
    2.3 ms vs 9.7 ms for B=250, N=200, width 6 in float64).
    """
    B = thetas.shape[0]
    h = X  # [N, ...] until the first Linear, then [B, features, N]
    batched = False
    for item in chain:
        if item[0] == "flatten":
            h = h.flatten(1)
        elif item[0] == "linear":
            _, w_off, out_f, in_f, b_off = item
            W = thetas[:, w_off : w_off + out_f * in_f].reshape(B, out_f, in_f)
            h = torch.matmul(W, h.T) if not batched else torch.bmm(W, h)
            batched = True
            if b_off is not None:
                h = h + thetas[:, b_off : b_off + out_f].unsqueeze(2)
        else:
            h = item[1](h)
    return h


def _ce_per_sample(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    B, _, N = out.shape
    return torch.nn.functional.cross_entropy(out, y.long().expand(B, N), reduction="none")


def _mse_per_sample(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    target = y.to(out.dtype) if y.is_floating_point() else \
        torch.nn.functional.one_hot(y.long(), out.shape[1]).to(out.dtype)
    return 0.5 * (out - target.reshape(target.shape[0], -1).T.unsqueeze(0)).pow(2).sum(1)


_PER_SAMPLE = {"cross_entropy": _ce_per_sample, "mse": _mse_per_sample}


GD_STATE_KEYS = ("theta", "steps", "grad_norm", "loss", "converged", "active", "step", "try_lr", "last_lr",
                 "halvings", "min_lr")


def batched_gd(
    stack: StackedNet,
    thetas: torch.Tensor,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    grad_tol: float,
    max_steps: int,
    step_rule: str = "armijo",
    weight_decay: float = 0.0,
    on_step: Callable[[int, int], None] | None = None,
    state: dict[str, Any] | None = None,
    checkpoint: Callable[[dict[str, torch.Tensor]], None] | None = None,
    checkpoint_seconds: float = 60.0,
) -> dict[str, torch.Tensor]:
    """Full-batch GD from each row of ``thetas`` ([B, P]) with :func:`spectra.train`'s rules.

    ``step_rule="armijo"`` is :func:`spectra.train`'s backtracking, one try
    per iteration for every init at once: an init tries ``min(2 s, lr)`` after
    an accepted step ``s`` and half its refused try after a refusal, and takes
    the step only if ``L(w - t g) <= L(w) - ARMIJO_C t |g|^2``.  ``"constant"``
    takes every step ``lr``.  An init stops when its gradient norm is below
    ``grad_tol`` or after ``max_steps`` accepted steps.  ``weight_decay``
    adds ``weight_decay / 2 * |w|^2`` to every loss (0: the paper's loss).

    Returns ``theta`` (final points), ``steps`` (accepted updates), ``grad_norm``
    and ``loss`` at the final point, ``converged`` (grad norm < grad_tol),
    ``accuracy``, ``last_lr`` (the last accepted step: the GD map at the end is
    ``w - last_lr g``), ``min_lr`` (smallest accepted step) and ``halvings``
    (refused tries).  Stopped inits drop out of the computation.
    ``on_step(iteration, active)`` is called after every iteration (progress
    display).

    ``checkpoint(state)`` is called at most every ``checkpoint_seconds`` with
    a snapshot (keys :data:`GD_STATE_KEYS`); passing it back as ``state``
    continues from there, bit-identically to an uninterrupted run.
    """
    import time

    from ..training import ARMIJO_C, ARMIJO_ROUNDING_SLACK, STEP_RULES

    if thetas.ndim != 2 or thetas.shape[1] != stack.num_params:
        raise InvalidInputError(f"thetas must be [B, {stack.num_params}]; got {tuple(thetas.shape)}")
    if step_rule not in STEP_RULES:
        raise InvalidInputError(f"step_rule must be one of {', '.join(STEP_RULES)}; got {step_rule!r}")
    X = X.to(stack.dtype) if X.is_floating_point() else X
    B = thetas.shape[0]
    f64 = torch.float64
    if state is None:
        theta = thetas.detach().clone().to(stack.dtype)
        steps = torch.zeros(B, dtype=torch.long)
        gnorm = torch.full((B,), math.nan, dtype=f64)
        lossv = torch.full((B,), math.nan, dtype=f64)
        converged = torch.zeros(B, dtype=torch.bool)
        active = torch.arange(B)
        try_lr = torch.full((B,), float(lr), dtype=f64)
        last_lr = torch.full((B,), float(lr), dtype=f64)
        halvings = torch.zeros(B, dtype=torch.long)
        min_lr = torch.full((B,), float(lr), dtype=f64)
        start = 0
    else:
        theta, steps, gnorm, lossv, converged, active = (torch.as_tensor(state[k]).clone()
                                                         for k in GD_STATE_KEYS[:6])
        try_lr, last_lr, halvings, min_lr = (torch.as_tensor(state[k]).clone() for k in GD_STATE_KEYS[7:])
        theta = theta.to(stack.dtype)
        converged = converged.to(torch.bool)
        start = int(state["step"])
        if theta.shape != (B, stack.num_params):
            raise InvalidInputError("the saved GD state does not match these inits")
    grad_fn = _grad_fn(stack, weight_decay)
    last_save = time.monotonic()
    armijo = step_rule == "armijo"
    # The running inits are kept compact (th, their gradient g and loss val) and
    # written back to ``theta`` when an init stops or a checkpoint is taken.
    th = theta[active]
    g, val = grad_fn(th, X, y) if active.numel() else (None, None)
    iteration = start
    while active.numel():
        norms = g.norm(dim=1)
        if not bool(torch.isfinite(norms + val).all()):
            bad = int(active[~(torch.isfinite(val) & torch.isfinite(norms))][0])
            raise NonFiniteError(f"training diverged at step {int(steps[bad])} for init {bad} (lr={lr} may be too "
                                 "large)")
        stop = (norms < grad_tol) | (steps[active] >= max_steps)
        if bool(stop.any()):
            idx = active[stop]
            theta[idx] = th[stop]
            gnorm[idx] = norms[stop].to(f64)
            lossv[idx] = val[stop].detach().to(f64)
            converged[idx] = norms[stop] < grad_tol
            keep = ~stop
            active, th, g, val, norms = active[keep], th[keep], g[keep], val[keep], norms[keep]
            if active.numel() == 0:
                break
        t = try_lr[active].to(stack.dtype)
        proposal = th - t.unsqueeze(1) * g
        g_new, val_new = grad_fn(proposal, X, y)
        if armijo:
            wanted = val - ARMIJO_C * t * norms * norms + ARMIJO_ROUNDING_SLACK * val.abs()
            ok = torch.isfinite(val_new) & (val_new <= wanted)
        else:
            ok = torch.ones_like(norms, dtype=torch.bool)
        acc_idx, rej_idx = active[ok], active[~ok]
        steps[acc_idx] += 1
        last_lr[acc_idx] = try_lr[acc_idx]
        min_lr[acc_idx] = torch.minimum(min_lr[acc_idx], try_lr[acc_idx])
        try_lr[acc_idx] = torch.clamp(2.0 * try_lr[acc_idx], max=float(lr))
        try_lr[rej_idx] = 0.5 * try_lr[rej_idx]
        halvings[rej_idx] += 1
        if bool((try_lr[rej_idx] < lr * 2.0 ** -60).any()):
            bad = int(rej_idx[try_lr[rej_idx] < lr * 2.0 ** -60][0])
            raise NonFiniteError(f"no step size decreases the loss of init {bad}; the loss is not differentiable "
                                 "there or the gradient is wrong")
        okc = ok.unsqueeze(1)
        th = torch.where(okc, proposal, th)
        g = torch.where(okc, g_new, g)
        val = torch.where(ok, val_new, val)
        iteration += 1
        if on_step is not None:
            on_step(iteration, int(active.numel()))
        if checkpoint is not None and time.monotonic() - last_save >= checkpoint_seconds:
            theta[active] = th
            checkpoint({"theta": theta, "steps": steps, "grad_norm": gnorm, "loss": lossv,
                        "converged": converged, "active": active, "step": torch.tensor(iteration),
                        "try_lr": try_lr, "last_lr": last_lr, "halvings": halvings, "min_lr": min_lr})
            last_save = time.monotonic()
    with torch.no_grad():
        out = stack.batched_forward(theta, X)
        acc = (out.argmax(dim=-1) == y).to(f64).mean(dim=1) if out.ndim == 3 and not \
            y.is_floating_point() else torch.full((B,), math.nan, dtype=f64)
    return {"theta": theta, "steps": steps, "grad_norm": gnorm, "loss": lossv, "converged": converged,
            "accuracy": acc, "last_lr": last_lr, "min_lr": min_lr, "halvings": halvings}


# Inits per closed-form gradient call: blocks of 256 keep the [block, width, N]
# activations (2.5 MB for width 6, N = 200) near the caches; measured here 22
# vs 28 us per init-step for 1000 inits in one call (CPU time, median of 7).
_GD_BLOCK = 256


def _grad_fn(stack: StackedNet, weight_decay: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                                                                        tuple]:
    """``(thetas, X, y) -> (grads [B, P], losses [B])``, plus ``weight_decay / 2 |theta|^2`` when given."""
    plain = _plain_grad_fn(stack)
    if not weight_decay:
        return plain

    def regularised(thetas: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> tuple:
        g, v = plain(thetas, X, y)
        return g + weight_decay * thetas, v + 0.5 * weight_decay * thetas.pow(2).sum(1)

    return regularised


def _plain_grad_fn(stack: StackedNet) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple]:
    if stack.chain is None or stack.loss_obj.name not in _PER_SAMPLE:
        return torch.func.vmap(torch.func.grad_and_value(stack.loss), in_dims=(0, None, None))

    from ._batched_mlp import chain_grad

    def grad_and_value(thetas: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> tuple:
        if thetas.shape[0] <= _GD_BLOCK:
            losses, grads = chain_grad(stack.chain, thetas, X, y, stack.loss_obj.name)
            return grads, losses
        parts = [chain_grad(stack.chain, thetas[i : i + _GD_BLOCK], X, y, stack.loss_obj.name)
                 for i in range(0, thetas.shape[0], _GD_BLOCK)]
        return torch.cat([p[1] for p in parts]), torch.cat([p[0] for p in parts])

    return grad_and_value


def hessian_chunk_size(stack: StackedNet, num_samples: int, budget_bytes: float = 1.5e9) -> int:
    """How many inits to put in one vmapped Hessian call to stay near ``budget_bytes``.

    ``torch.func.hessian`` is forward-over-reverse: per init it carries P
    tangents through a pass whose activations are ~``num_samples x (sum of
    layer widths)``; the widths are bounded by the parameter count, so the
    estimate ``8 * P * N * (P ** 0.5 + 4) * 6`` bytes per init is on the safe side
    for the small MLPs this is meant for.
    """
    per_init = 8.0 * stack.num_params * num_samples * (math.sqrt(stack.num_params) + 4) * 6
    return max(1, int(budget_bytes // per_init))


def batched_hessian_eigvals(
    stack: StackedNet, thetas: torch.Tensor, X: torch.Tensor, y: torch.Tensor, *, chunk: int | None = None
) -> torch.Tensor:
    """Exact eigenvalues (ascending, ``[B, P]``) of the loss Hessian at each row of ``thetas``."""
    X = X.to(stack.dtype) if X.is_floating_point() else X
    if stack.chain is not None and stack.loss_obj.name in _PER_SAMPLE:
        return _chain_hessian_eigvals(stack, thetas.to(stack.dtype), X, y, chunk)
    chunk = chunk or hessian_chunk_size(stack, X.shape[0])
    hess_fn = torch.func.vmap(torch.func.hessian(stack.loss), in_dims=(0, None, None))
    out = []
    for start in range(0, thetas.shape[0], chunk):
        with warnings.catch_warnings():
            # torch's jvp decompositions call torch.jit.script once, which warns
            # about its own deprecation; nothing the user can act on.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated",
                                    category=DeprecationWarning)
            H = hess_fn(thetas[start : start + chunk].to(stack.dtype), X, y)
        H = 0.5 * (H + H.transpose(1, 2))  # symmetric up to rounding; eigvalsh reads one triangle
        out.append(torch.linalg.eigvalsh(H))
    return torch.cat(out) if out else torch.empty(0, stack.num_params, dtype=stack.dtype)


def _chain_hessian_eigvals(stack: StackedNet, thetas: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
                           chunk: int | None) -> torch.Tensor:
    # Closed-form second-order forward mode through the explicit chain
    # (spectra.experiments._batched_mlp), a few inits at a time: small blocks
    # keep the [inits, width, P, N] tangents near the caches.
    from ._batched_mlp import chain_hessian, hessian_chunk

    B, P = thetas.shape
    first_in = next(item[3] for item in stack.chain if item[0] == "linear")
    chunk = chunk or hessian_chunk(stack.chain, P, X.shape[0], first_in)
    out = []
    for start in range(0, B, chunk):
        H = chain_hessian(stack.chain, thetas[start : start + chunk], X, y, stack.loss_obj.name)
        H = 0.5 * (H + H.transpose(1, 2))  # symmetric up to rounding; eigvalsh reads one triangle
        out.append(torch.linalg.eigvalsh(H))
    return torch.cat(out) if out else torch.empty(0, P, dtype=thetas.dtype)


def looped_reference(
    stack: StackedNet, thetas: torch.Tensor, X: torch.Tensor, y: torch.Tensor, *,
    lr: float, grad_tol: float, max_steps: int,
) -> dict[str, np.ndarray]:
    """The same runs one init at a time: :func:`spectra.train` + ``torch.autograd.functional.hessian``.

    Independent of ``torch.func``: the reference the vectorised path is tested against.
    """
    from ..training import NotConvergedWarning, train

    steps, gnorms, losses, eigs = [], [], [], []
    for theta in thetas:
        model = stack.to_model(theta)
        with warnings.catch_warnings():  # the outcome is returned
            warnings.simplefilter("ignore", NotConvergedWarning)
            hist = train(model, (X, y), loss=stack.loss_obj, optimizer="gd", lr=lr, grad_tol=grad_tol,
                         max_steps=max_steps, log_every=max(1, max_steps), progress=False)
        steps.append(hist.steps_taken)
        gnorms.append(hist.final_grad_norm)
        losses.append(hist.final_loss)
        flat = stack.from_model(model)
        Xc = X.to(stack.dtype) if X.is_floating_point() else X

        def flat_loss(v: torch.Tensor) -> torch.Tensor:
            # functional_call only re-binds the parameters; the Hessian itself
            # comes from reverse-over-reverse autograd, not torch.func transforms.
            return stack.loss_obj(stack.forward(v, Xc), y)

        H = torch.autograd.functional.hessian(flat_loss, flat)
        eigs.append(np.linalg.eigvalsh(0.5 * (H + H.T).numpy()))
    return {"steps": np.asarray(steps), "grad_norm": np.asarray(gnorms), "loss": np.asarray(losses),
            "eigvals": np.asarray(eigs)}
