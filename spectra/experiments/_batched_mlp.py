"""Closed-form gradients and exact Hessians of many small MLPs at once.

Figure 8 trains one tiny net (18-434 parameters) from thousands of points.
For a chain of ``Linear`` layers and elementwise activations the backward
pass and its forward-mode derivative are a handful of batched matrix
products, written out here by hand for all B parameter vectors (rows of
``thetas`` ``[B, P]``) at once:

* :func:`chain_grad` -- losses ``[B]`` and gradients ``[B, P]`` (one forward
  and one backward, no autograd graph);
* :func:`chain_hessian` -- Hessians ``[B, P, P]``: the derivative of that
  backward pass along every unit tangent ``e_t`` at once (forward-over-reverse
  written out), with the T tangents folded into the sample axis so that each
  layer is one ``[out, in] @ [in, T * N]`` product per init.

The layout is samples-last, ``[B, width, N]`` for values and
``[B, width, T, N]`` for tangents: the long axis is innermost and the tiny
widths are the matrix dimensions.

The chain comes from :func:`spectra.experiments._batched._mlp_chain`:
``("flatten",)``, ``("linear", w_off, out, in, b_off | None)``,
``("act", module)``.  Parameter ``t`` of a linear layer's weight is entry
``(i, j)`` with ``t = w_off + i * in + j`` (row-major, as ``nn.Linear``).

>>> import torch
>>> chain = [("linear", 0, 3, 2, 6), ("act", torch.nn.Tanh()), ("linear", 9, 2, 3, 15)]
>>> thetas = torch.randn(4, 17, dtype=torch.float64)
>>> X, y = torch.randn(5, 2, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1])
>>> losses, grads = chain_grad(chain, thetas, X, y, "cross_entropy")
>>> H = chain_hessian(chain, thetas, X, y, "cross_entropy")
>>> grads.shape, H.shape, bool(torch.allclose(H, H.transpose(1, 2)))
(torch.Size([4, 17]), torch.Size([4, 17, 17]), True)
"""

from __future__ import annotations

import torch

from ..operators._activations import activation_derivatives as _act_derivs
from ..operators._activations import times_first_derivative

__all__ = ["chain_grad", "chain_hessian", "hessian_chunk", "output_tangents"]


def _times_s1(s1: torch.Tensor | str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``sigma'(z) * g``, broadcast over g's tangent axis (2, in the ``[B, width, T, N]`` layout)."""
    return times_first_derivative(s1, a, g, tangent_axis=2)


# ----------------------------------------------------------------------------- loss heads

def _targets(y: torch.Tensor, C: int, dtype: torch.dtype) -> torch.Tensor:
    """Targets laid out ``[C, N]``: one-hot for integer labels."""
    if y.is_floating_point():
        return y.to(dtype).reshape(y.shape[0], -1).T
    return torch.nn.functional.one_hot(y.long(), C).to(dtype).T


def _head(f: torch.Tensor, y: torch.Tensor, loss: str,
          keep_p: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-init mean loss ``[B]``, ``N * dL/df`` ``[B, C, N]`` and softmax ``p`` (None for mse, or unless ``keep_p``).

    The 1/N of the mean is left to the caller, who applies it once to the
    small ``[B, P]`` (or ``[B, P, P]``) result.
    """
    Y = _targets(y, f.shape[1], f.dtype)
    if loss == "cross_entropy":
        logp = torch.log_softmax(f, dim=1)
        B, _, N = f.shape
        if y.is_floating_point():  # class probabilities as targets
            losses = -(logp * Y).sum(1).mean(1)
        else:
            losses = -logp.gather(1, y.long().reshape(1, 1, N).expand(B, 1, N)).squeeze(1).mean(1)
        p = logp.exp_()
        return losses, (p - Y if keep_p else p.sub_(Y)), (p if keep_p else None)
    if loss == "mse":
        r = f - Y
        return 0.5 * r.pow(2).sum(1).mean(1), r, None
    raise ValueError(f"no closed form for loss {loss!r}")


# ----------------------------------------------------------------------------- gradient

def _linear(item: tuple, thetas: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, W h + b)`` for all inits; ``h`` is ``[in, N]`` (shared input) or ``[B, in, N]``."""
    _, w_off, out_f, in_f, b_off = item
    B = thetas.shape[0]
    W = thetas[:, w_off : w_off + out_f * in_f].reshape(B, out_f, in_f)
    if h.ndim == 2:  # shared input: one [B*out, in] @ [in, N] product
        flat = W.reshape(B * out_f, in_f)
        z = torch.mm(flat, h) if b_off is None else \
            torch.addmm(thetas[:, b_off : b_off + out_f].reshape(B * out_f, 1), flat, h)
        return W, z.reshape(B, out_f, -1)
    if b_off is None:
        return W, torch.bmm(W, h)
    return W, torch.baddbmm(thetas[:, b_off : b_off + out_f].unsqueeze(2), W, h)


def _input(chain: list, X: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The shared input ``[features, N]`` after any flatten/activation before the first linear."""
    h = X
    k = 0
    while chain[k][0] != "linear":
        h = h.flatten(1) if chain[k][0] == "flatten" else chain[k][1](h)
        k += 1
    return h.reshape(h.shape[0], -1).T.contiguous(), k


def chain_grad(chain: list, thetas: torch.Tensor, X: torch.Tensor, y: torch.Tensor,
               loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean losses ``[B]`` and their gradients ``[B, P]`` at each row of ``thetas``."""
    B, P = thetas.shape
    h, k0 = _input(chain, X.to(thetas.dtype))
    N = h.shape[1]
    tape = []
    for item in chain[k0:]:
        if item[0] == "linear":
            W, z = _linear(item, thetas, h)
            tape.append((item, h, W))
            h = z
        elif item[0] == "act":
            h, s1, _ = _act_derivs(item[1], h, 1)
            tape.append((item, s1, h))
        else:  # _mlp_chain refuses a flatten after the first linear
            raise ValueError("flatten inside the chain")
    losses, g, _ = _head(h, y, loss, keep_p=False)
    grads = thetas.new_empty(B, P)
    for k in range(len(tape) - 1, -1, -1):
        item = tape[k][0]
        if item[0] == "act":
            g = _times_s1(tape[k][1], tape[k][2], g)
            continue
        _, w_off, out_f, in_f, b_off = item
        a, W = tape[k][1], tape[k][2]
        # dL/dW = sum_n g_n a_n^T
        if a.ndim == 2:
            gw = torch.mm(g.reshape(B * out_f, N), a.T)
        else:
            gw = torch.bmm(g, a.transpose(1, 2))
        grads[:, w_off : w_off + out_f * in_f] = gw.reshape(B, -1)
        if b_off is not None:
            grads[:, b_off : b_off + out_f] = g.sum(2)
        if k > 0:
            g = torch.bmm(W.transpose(1, 2), g)
    return losses, grads.div_(N)


# ----------------------------------------------------------------------------- Hessian

def hessian_chunk(chain: list, num_params: int, num_samples: int, num_inputs: int,
                  budget_bytes: float = 1e7) -> int:
    """How many inits :func:`chain_hessian` should take at once.

    One tangent tensor ``[inits, width, P, N]`` is kept near ``budget_bytes``;
    a few such tensors are alive at once.  Small blocks stay near the CPU
    caches, which measured faster than one huge block (and bound memory).
    """
    width = max([num_inputs] + [item[2] for item in chain if item[0] == "linear"])
    return max(1, int(budget_bytes // (8.0 * width * num_params * num_samples)))


def _own_tangents(item: tuple, h: torch.Tensor, B: int, start: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """``d z / d theta_t`` for the layer's own parameters ``t``: ``[B, out, n_own, N]`` and the layer's end offset.

    ``d z_i / d W_ij = h_j`` and ``d z_i / d b_i = 1``; every other entry is 0.
    """
    _, w_off, out_f, in_f, b_off = item
    n_w = out_f * in_f
    end = w_off + n_w + (out_f if b_off is not None else 0)
    if w_off != start or (b_off is not None and b_off != w_off + n_w):
        raise ValueError("the chain's parameters are not laid out layer by layer, weight then bias")
    N = h.shape[-1]
    own = torch.zeros(B, out_f, end - start, N, dtype=dtype, device=h.device)
    t = torch.arange(n_w, device=h.device)
    rows, cols = t // in_f, t % in_f
    own[:, rows, t, :] = h[cols] if h.ndim == 2 else h[:, cols]
    if b_off is not None:
        i = torch.arange(out_f, device=h.device)
        own[:, i, n_w + i, :] = 1.0
    return own, end


def output_tangents(chain: list, thetas: torch.Tensor, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Outputs ``f`` ``[B, C, N]``, their Jacobians ``df/dtheta`` laid out ``[B, C, P, N]``, and the tape.

    The forward tangent of every parameter at once (see :func:`chain_hessian`);
    the tape holds what the second-order terms need.
    """
    B, P = thetas.shape
    dt = thetas.dtype
    h, k0 = _input(chain, X.to(dt))
    dh, T = None, 0  # tangent of h [B, width, T, N] for the first T parameters
    tape = []
    for item in chain[k0:]:
        if item[0] == "linear":
            W, z = _linear(item, thetas, h)
            own, end = _own_tangents(item, h, B, T, dt)
            tape.append((item, dh, W, T))
            if dh is None:
                dz = own
            else:
                N = h.shape[-1]
                moved = torch.bmm(W, dh.reshape(B, dh.shape[1], T * N)).reshape(B, item[2], T, N)
                dz = torch.cat([moved, own], dim=2)
            h, dh, T = z, dz, end
        else:
            a, s1, s2 = _act_derivs(item[1], h, 2)
            tape.append((item, s1, s2, dh, a, T))
            dh = _times_s1(s1, a, dh)
            h = a
    if T != P:
        raise ValueError(f"the chain holds {T} parameters, thetas {P}")
    return h, dh, tape


def chain_hessian(chain: list, thetas: torch.Tensor, X: torch.Tensor, y: torch.Tensor, loss: str,
                  gauss_newton_only: bool = False) -> torch.Tensor:
    """The exact loss Hessian at each row of ``thetas``: ``[B, P, P]`` (or only its Gauss-Newton part).

    Second-order forward mode written out.  With ``z_l = W_l a_(l-1) + b_l``,
    ``a_l = sigma(z_l)`` and per-sample loss ``l(f)``, the Hessian is

    * ``J^T (d^2 l / df^2) J`` (Gauss-Newton; ``J = df/dtheta`` is the forward tangent at the output),
    * plus, for each layer, ``g_l,i * d a_(l-1),j / d theta_v`` in row ``W_l,ij`` and column ``v`` of an
      earlier layer (and its transpose), where ``g_l = dl/dz_l`` (the backward signal), because
      ``d^2 z_l = 2 dW_l da_(l-1) + W_l d^2 a_(l-1)``,
    * plus, for smooth activations, ``sum_(i,n) (dl/da_l)_i sigma''(z_l)_i dz_l,i/dtheta_u dz_l,i/dtheta_v``,

    summed over the samples and divided by N.  Only forward tangents are
    needed (no tangent of the backward pass), and the tangents of a layer's
    parameters start at that layer: ``dz_l`` has as many tangent columns as
    there are parameters up to layer l.  ``gauss_newton_only`` returns the
    first term alone (``G``; ``H - G`` is the residual ``R``).
    """
    B, P = thetas.shape
    h, dh, tape = output_tangents(chain, thetas, X)
    N = h.shape[-1]
    losses, g, p = _head(h, y, loss)
    C = h.shape[1]
    # Gauss-Newton part: sum_n df^T (d^2 l / df^2) df
    if p is None:  # mse: d^2 l / df^2 = I
        d = dh.permute(0, 2, 1, 3).reshape(B, P, C * N)
        H = torch.bmm(d, d.transpose(1, 2))
    elif C == 2:  # softmax of two classes: d^2 l / df^2 = p0 p1 [[1, -1], [-1, 1]]
        d = dh[:, 0] - dh[:, 1]
        H = torch.bmm(d * (p[:, 0] * p[:, 1]).unsqueeze(1), d.transpose(1, 2))
    else:  # diag(p) - p p^T
        q = (p.sqrt().unsqueeze(2) * dh).permute(0, 2, 1, 3).reshape(B, P, C * N)
        s = (p.unsqueeze(2) * dh).sum(1)
        H = torch.bmm(q, q.transpose(1, 2)) - torch.bmm(s, s.transpose(1, 2))
    if gauss_newton_only:
        return H.div_(N)
    # the rest, from the backward signal g (N * dl/d(layer value))
    for k in range(len(tape) - 1, -1, -1):
        rec = tape[k]
        if rec[0][0] == "act":
            _, s1, s2, dz, a, Tk = rec
            if s2 is not None:
                w = (g * s2).reshape(B, 1, -1)
                dzp = dz.permute(0, 2, 1, 3).reshape(B, Tk, -1)
                H[:, :Tk, :Tk] += torch.bmm(dzp * w, dzp.transpose(1, 2))
            g = _times_s1(s1, a, g)
            continue
        (_, w_off, out_f, in_f, b_off), da, W, Tk = rec
        if da is not None:
            # row W_l,ij, column v < w_off: sum_n g_i,n da_j,v,n
            cross = torch.bmm(da.reshape(B, in_f * Tk, N), g.transpose(1, 2))  # [B, in*Tk, out]
            cross = cross.reshape(B, in_f, Tk, out_f).permute(0, 3, 1, 2).reshape(B, out_f * in_f, Tk)
            H[:, w_off : w_off + out_f * in_f, :Tk] += cross
            H[:, :Tk, w_off : w_off + out_f * in_f] += cross.transpose(1, 2)
        if k > 0:
            g = torch.bmm(W.transpose(1, 2), g)
    return H.div_(N)
