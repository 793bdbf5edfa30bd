"""Converging ReLU nets whose minimum lies on a kink, and certifying that they did.

A ReLU net's loss is smooth except on the switching surfaces where a sample's
pre-activation at some unit is exactly zero.  Its minima usually lie *on*
such surfaces (a crease of the loss, like the minimum of ``|x|``), so the
gradient never becomes small: on either side of the crease it jumps by a
finite amount.  Gradient descent then zig-zags across the crease with
vanishing steps and stops far from the minimum (measured on Figure 9's
2-6-6-2 nets: the loss was still 0.27 where the minimum reached below is
0.22).

:func:`kink_polish` reaches the minimum by continuation: the ReLU units are
replaced by ``softplus(beta z) / beta``, whose minimum is found by
Levenberg-Marquardt steps (:func:`~spectra.experiments._polish.newton_polish`)
for ``beta`` = 1e2, 1e3, ..., 1e6, each stage starting where the previous one
stopped.  As ``beta`` grows the smooth minimum approaches a minimum of the
ReLU loss.

What counts as converged is a statement about the ReLU loss itself
(:func:`relu_stationarity`): the norm of a convex combination of the ReLU
net's one-sided gradients, over the entries within :data:`KINK_BAND` of their
switching surface, must be below the tolerance.  The combination used is the
one the smooth net's derivatives ``sigmoid(beta z)`` pick; since the loss
gradient is multilinear in the units' derivatives, any choice in ``[0, 1]``
is such a convex combination (the product weights), so a small value means 0
is within the tolerance of the Clarke generalised gradient at this point
(with every sign pattern of the near entries realisable nearby, which holds
when their switching surfaces cross transversally).  A weight decay makes
the minimum exist: without it, a net that can separate its training sample
has no minimum at all (the loss keeps falling as the weights grow).

>>> import torch
>>> from spectra.experiments._batched import StackedNet
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
>>> X = torch.randn(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
>>> y = (X[:, 0] + 0.5 * torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) > 0).long()
>>> stack = StackedNet(net)
>>> thetas = 0.5 * torch.randn(2, stack.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
>>> out = kink_polish(stack, thetas, X, y, weight_decay=1e-2, grad_tol=1e-6)
>>> bool(out["converged"].all()), bool((out["grad_norm"] < 1e-6).all())
(True, True)
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..errors import InvalidInputError

#: Sharpness of the softplus stand-ins for ReLU, one Newton stage each, smallest first.
SMOOTHING_BETAS = (1e2, 1e3, 1e4, 1e5, 1e6)
#: A pre-activation within this distance of zero counts as on its unit's switching surface (both sides
#: of the kink are then admitted in the certificate); at the last beta, sigmoid(beta z) is within e^-20 of 0
#: or 1 from |z| = 2e-5 on, so the band only has to exceed that.
KINK_BAND = 1e-4
#: Newton steps a continuation takes, at most, as measured.  With weight decay every stage converges (295 steps
#: on figure 1's 784-2-10 net at quick scale); without it the softplus twins sharpen by scaling their units up,
#: and the stages run to their caps (5 x 300 steps on the MNIST nets 49-16-10 under MSE).
CONTINUATION_STEPS = {"decayed": 300, "undecayed": 1500}
#: Costliest continuation :func:`finish_on_kinks` takes on, in multiply-adds: its steps times
#: :func:`newton_step_cost` (about an hour on one core).  One step at P = 1930 with 300 samples of 10 outputs
#: (1.8e10) took 6 s for the Hessian and 4 s for its eigh on one busy core; costlier nets get
#: :func:`smoothing_detour` instead.
FINISH_MAX_COST = 1.5e13
#: Sharpness of the smooth twin that :func:`smoothing_detour` trains: smooth enough for GD to leave the kink.
DETOUR_BETA = 10.0
#: softplus returns z itself above beta z > 20 (torch's default), exact to e^-20 and free of overflow.
SOFTPLUS_THRESHOLD = 20.0


def newton_step_cost(num_params: int, num_samples: int, num_outputs: int) -> float:
    """Multiply-adds of one Newton step of :func:`kink_polish`: the Hessian (``N C P^2``) and its eigh (``P^3``).

    >>> f"{newton_step_cost(1930, 300, 10):.1e}"
    '1.8e+10'
    """
    return float(num_samples) * num_outputs * num_params**2 + float(num_params) ** 3


def has_relu(module: torch.nn.Module) -> bool:
    """True when ``module`` contains an ``nn.ReLU`` unit (the nets :func:`kink_polish` is for)."""
    return any(isinstance(m, torch.nn.ReLU) for m in module.modules())


def smoothed(template: torch.nn.Module, beta: float) -> torch.nn.Module:
    """A deep copy of ``template`` with every ``nn.ReLU`` replaced by ``nn.Softplus(beta)``.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    >>> smoothed(net, 1e3)[1]
    Softplus(beta=1000.0, threshold=20.0)
    """
    out = copy.deepcopy(template)
    for name, child in list(out.named_children()):
        if isinstance(child, torch.nn.ReLU):
            setattr(out, name, torch.nn.Softplus(beta=beta, threshold=SOFTPLUS_THRESHOLD))
        else:
            setattr(out, name, smoothed(child, beta))
    return out


def relu_stationarity(stack: Any, thetas: torch.Tensor, X: torch.Tensor, y: torch.Tensor, *, weight_decay: float,
                      beta: float, band: float = KINK_BAND) -> torch.Tensor:
    """Per row of ``thetas``: the norm of a convex combination of the ReLU loss's one-sided gradients.

    Entries with ``|z| < band`` take the derivative ``sigmoid(beta z_s)``
    (``z_s`` the smooth net's pre-activation), every other entry the ReLU's own
    0 or 1; the forward values are the ReLU net's.  At a point away from
    every kink this is the ordinary gradient norm.  The loss includes
    ``weight_decay / 2 |theta|^2``.
    """
    if stack.chain is None:
        raise InvalidInputError("relu_stationarity needs a chain of Linear layers and elementwise activations")
    X = X.to(stack.dtype) if X.is_floating_point() else X
    norms = []
    for theta in thetas:
        t = theta.detach().clone().requires_grad_(True)
        h, hs = X, X  # the ReLU net's values (with the chosen derivatives) and the smooth net's
        for item in stack.chain:
            if item[0] == "flatten":
                h, hs = h.flatten(1), hs.flatten(1)
            elif item[0] == "linear":
                _, w_off, out_f, in_f, b_off = item
                W = t[w_off : w_off + out_f * in_f].reshape(out_f, in_f)
                b = t[b_off : b_off + out_f] if b_off is not None else None
                h = torch.nn.functional.linear(h, W, b)
                hs = torch.nn.functional.linear(hs, W.detach(), None if b is None else b.detach())
            elif isinstance(item[1], torch.nn.ReLU):
                z = h.detach()
                slope = torch.where(z.abs() < band, torch.sigmoid(beta * hs), (z > 0).to(z.dtype))
                h = torch.relu(z) + slope * (h - z)  # value relu(z), derivative `slope`
                hs = torch.nn.functional.softplus(hs, beta=beta, threshold=SOFTPLUS_THRESHOLD)
            else:
                h, hs = item[1](h), item[1](hs)
        loss = stack.loss_obj(h, y) + 0.5 * weight_decay * t.pow(2).sum()
        (g,) = torch.autograd.grad(loss, t)
        norms.append(g.norm())
    return torch.stack(norms).to(torch.float64)


def kink_polish(stack: Any, thetas: torch.Tensor, X: torch.Tensor, y: torch.Tensor, *, weight_decay: float,
                grad_tol: float, betas: tuple[float, ...] = SMOOTHING_BETAS, max_iter: int = 300
                ) -> dict[str, torch.Tensor]:
    """Newton continuation from each row of ``thetas`` to a minimum of the ReLU net ``stack``'s regularised loss.

    Returns ``theta``; ``grad_norm`` (:func:`relu_stationarity` at the last
    beta); ``converged`` (``grad_norm < grad_tol``); ``piece_grad_norm`` (the
    gradient autograd reports for the ReLU net, large on a crease); ``loss``
    (the ReLU net's regularised loss); ``iterations`` (Newton steps, all
    stages); ``min_eigenvalue`` (of the smooth net's regularised Hessian at
    the last stage: > 0 at a strict local minimum of the smoothed loss).
    """
    from ._batched import StackedNet, _grad_fn
    from ._polish import newton_polish

    if stack.chain is None or not has_relu(stack.template):
        raise InvalidInputError("kink_polish needs a chain of Linear layers and activations with ReLU units")
    theta = thetas.detach().clone().to(stack.dtype)
    iterations = torch.zeros(theta.shape[0], dtype=torch.long)
    for beta in betas:
        smooth = StackedNet(smoothed(stack.template, beta), loss=stack.loss_obj)
        # the smooth stage stops well below the tolerance: its gradient is the certificate's up to O(1/beta)
        out = newton_polish(smooth, theta, X, y, weight_decay=weight_decay, grad_tol=grad_tol * 1e-3,
                            max_iter=max_iter)
        theta, min_eig = out["theta"], out["min_eigenvalue"]
        iterations += out["iterations"]
    cert = relu_stationarity(stack, theta, X, y, weight_decay=weight_decay, beta=betas[-1])
    g, val = _grad_fn(stack, weight_decay)(theta, X.to(stack.dtype) if X.is_floating_point() else X, y)
    return {"theta": theta, "grad_norm": cert, "converged": cert < grad_tol,
            "piece_grad_norm": g.norm(dim=1).to(torch.float64), "loss": val.to(torch.float64),
            "iterations": iterations, "min_eigenvalue": min_eig}


def finish_on_kinks(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, *, loss: str, weight_decay: float,
                    grad_tol: float) -> dict[str, Any] | None:
    """:func:`kink_polish` for one trained model, in place; None where it does not apply.

    It applies to chains of Linear layers and activations with ReLU units
    whose continuation costs at most :data:`FINISH_MAX_COST` multiply-adds
    (:data:`CONTINUATION_STEPS` times :func:`newton_step_cost`).  Returns the outcome:
    ``method``, ``converged``, ``grad_norm`` (the certificate),
    ``piece_grad_norm``, ``loss`` (with the decay term), ``steps``.
    """
    from ._batched import StackedNet
    from ._common import set_flat_params

    if not has_relu(model):
        return None
    stack = StackedNet(model, loss=loss)
    if stack.chain is None:
        return None
    outputs = [item for item in stack.chain if item[0] == "linear"][-1][2]
    steps = CONTINUATION_STEPS["decayed" if weight_decay else "undecayed"]
    if steps * newton_step_cost(stack.num_params, X.shape[0], outputs) > FINISH_MAX_COST:
        return None
    theta = stack.from_model(model).to(stack.dtype).unsqueeze(0)
    out = kink_polish(stack, theta, X, y, weight_decay=weight_decay, grad_tol=grad_tol)
    set_flat_params(model, out["theta"][0])
    return {"method": "Newton continuation", "converged": bool(out["converged"][0]),
            "grad_norm": float(out["grad_norm"][0]), "piece_grad_norm": float(out["piece_grad_norm"][0]),
            "loss": float(out["loss"][0]), "steps": int(out["iterations"][0])}


def smoothing_detour(model: torch.nn.Module, data: Any, *, loss: str, train_kwargs: dict[str, Any]
                     ) -> dict[str, Any] | None:
    """For a ReLU net too costly for :func:`finish_on_kinks`: GD on its softplus twin, then on it again, in place.

    GD that stalls on a kink of a large net (the backtracking step falls to
    1e-11) can leave it along the smooth twin ``softplus(DETOUR_BETA z) / beta``
    (same parameters); GD on the ReLU net then resumes from there.  Each leg
    gets ``train_kwargs``' budget.  Convergence is the ordinary one: the ReLU
    net's gradient norm below the tolerance.  None for nets without ReLU units.
    """
    import warnings

    from ..training import NotConvergedWarning, train

    if not has_relu(model):
        return None
    twin = smoothed(model, DETOUR_BETA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvergedWarning)
        leg1 = train(twin, data, loss=loss, progress=False, **train_kwargs)
        model.load_state_dict(twin.state_dict())  # the twin differs only in its parameter-free activations
        leg2 = train(model, data, loss=loss, progress=False, **train_kwargs)
    return {"method": f"softplus (beta {DETOUR_BETA:g}) detour, then GD", "converged": bool(leg2.converged),
            "grad_norm": float(leg2.final_grad_norm), "piece_grad_norm": float(leg2.final_grad_norm),
            "loss": float(leg2.final_loss), "steps": int(leg1.steps_taken + leg2.steps_taken)}


__all__ = ["CONTINUATION_STEPS", "DETOUR_BETA", "FINISH_MAX_COST", "KINK_BAND", "SMOOTHING_BETAS", "finish_on_kinks",
           "has_relu", "kink_polish", "newton_step_cost", "relu_stationarity", "smoothed", "smoothing_detour"]
