"""Closed-form batched MLP gradients and Hessians (spectra.experiments._batched_mlp) against autograd.

References are independent of the code under test: ``torch.autograd.functional.hessian``
/ ``jacobian`` (reverse-over-reverse autograd) per init, and ``numpy.linalg.eigvalsh``.
Tolerances: float64 throughout; the closed form and autograd sum the same terms in a
different order, so Hessians agree to 1e-10 relative to the largest entry (measured
~1e-15) and gradients to 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectra.experiments import _batched as bt
from spectra.experiments._batched_mlp import chain_grad, chain_hessian, hessian_chunk

nn = torch.nn



def _net(kind: str) -> nn.Module:
    torch.manual_seed(0)
    nets = {
        "relu 2-6-6-2 (blobnet)": lambda: nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(),
                                                        nn.Linear(6, 2)),
        "tanh, 3 classes": lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)),
        "sigmoid + gelu": lambda: nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 4), nn.GELU(),
                                                nn.Linear(4, 2)),
        "leaky relu, softplus": lambda: nn.Sequential(nn.Linear(3, 5), nn.LeakyReLU(0.1), nn.Linear(5, 4),
                                                      nn.Softplus(), nn.Linear(4, 3)),
        "no biases": lambda: nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False)),
        "one linear layer": lambda: nn.Sequential(nn.Linear(3, 3)),
        "flatten first, identity": lambda: nn.Sequential(nn.Flatten(), nn.Linear(6, 3), nn.Identity(), nn.ReLU(),
                                                         nn.Linear(3, 2)),
        "activation after the output": lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2),
                                                             nn.Tanh()),
        "deep relu": lambda: nn.Sequential(*[m for _ in range(3) for m in (nn.Linear(3, 3), nn.ReLU())],
                                           nn.Linear(3, 2)),
    }
    return nets[kind]().double()


CASES = [
    ("relu 2-6-6-2 (blobnet)", "cross_entropy"),
    ("relu 2-6-6-2 (blobnet)", "mse"),
    ("tanh, 3 classes", "cross_entropy"),
    ("tanh, 3 classes", "mse"),
    ("sigmoid + gelu", "cross_entropy"),
    ("leaky relu, softplus", "cross_entropy"),
    ("leaky relu, softplus", "mse"),
    ("no biases", "cross_entropy"),
    ("one linear layer", "cross_entropy"),
    ("flatten first, identity", "mse"),
    ("activation after the output", "cross_entropy"),
    ("deep relu", "cross_entropy"),
]


def _problem(kind: str, loss: str, B: int = 3, N: int = 9, float_targets: bool = False):
    stack = bt.StackedNet(_net(kind), loss=loss)
    assert stack.chain is not None, "the closed-form path must be the one under test"
    first = next(item for item in stack.chain if item[0] == "linear")
    gen = torch.Generator().manual_seed(1)
    in_shape = (N, 2, 3) if kind.startswith("flatten") else (N, first[3])
    X = torch.randn(*in_shape, dtype=torch.float64, generator=gen)
    C = [item for item in stack.chain if item[0] == "linear"][-1][2]
    y = torch.randint(0, C, (N,), generator=gen)
    if float_targets:
        y = torch.randn(N, C, dtype=torch.float64, generator=gen)
    thetas = 0.8 * torch.randn(B, stack.num_params, dtype=torch.float64, generator=gen)
    return stack, thetas, X, y


def _autograd(stack, theta, X, y):
    def f(v):
        return stack.loss_obj(stack.forward(v, X), y)

    return f(theta), torch.autograd.functional.jacobian(f, theta), torch.autograd.functional.hessian(f, theta)


@pytest.mark.parametrize("kind,loss", CASES)
def test_closed_form_hessian_and_gradient_match_autograd(kind, loss):
    stack, thetas, X, y = _problem(kind, loss)
    H = chain_hessian(stack.chain, thetas, X, y, loss)
    losses, grads = chain_grad(stack.chain, thetas, X, y, loss)
    for b in range(thetas.shape[0]):
        ref_loss, ref_grad, ref_H = _autograd(stack, thetas[b], X, y)
        scale = ref_H.abs().max()
        assert scale > 0
        assert (H[b] - ref_H).abs().max() <= 1e-10 * scale, kind
        assert (grads[b] - ref_grad).abs().max() <= 1e-12 * max(1.0, float(ref_grad.abs().max()))
        assert abs(float(losses[b] - ref_loss)) <= 1e-12 * max(1.0, abs(float(ref_loss)))


def test_mse_with_float_targets_matches_autograd():
    stack, thetas, X, y = _problem("tanh, 3 classes", "mse", float_targets=True)
    H = chain_hessian(stack.chain, thetas, X, y, "mse")
    for b in range(thetas.shape[0]):
        ref_H = _autograd(stack, thetas[b], X, y)[2]
        assert (H[b] - ref_H).abs().max() <= 1e-10 * ref_H.abs().max()


def test_relu_at_exactly_zero_follows_autograd():
    # theta = 0: every pre-activation is exactly 0, where relu' is taken as 0 (torch's convention)
    stack, thetas, X, y = _problem("relu 2-6-6-2 (blobnet)", "cross_entropy", B=2)
    thetas[0] = 0.0
    thetas[1, 12:18] = 0.0  # first-layer biases 0 and ...
    thetas[1, 0:12] = 0.0  # ... weights 0: the first hidden layer sits at z = 0
    H = chain_hessian(stack.chain, thetas, X, y, "cross_entropy")
    _, g = chain_grad(stack.chain, thetas, X, y, "cross_entropy")
    for b in range(2):
        _, ref_g, ref_H = _autograd(stack, thetas[b], X, y)
        torch.testing.assert_close(H[b], ref_H, rtol=0, atol=1e-12)
        torch.testing.assert_close(g[b], ref_g, rtol=0, atol=1e-14)


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_batched_eigenvalues_match_numpy_and_do_not_depend_on_chunking(chunk):
    stack, thetas, X, y = _problem("relu 2-6-6-2 (blobnet)", "cross_entropy", B=5, N=20)
    eigs = bt.batched_hessian_eigvals(stack, thetas, X, y, chunk=chunk).numpy()
    for b in range(5):
        ref = np.linalg.eigvalsh(_autograd(stack, thetas[b], X, y)[2].numpy())
        np.testing.assert_allclose(eigs[b], ref, rtol=0, atol=1e-10 * np.abs(ref).max())
        # the top eigenvalue, the one figure 8 reports, to 1e-10 relative
        assert abs(eigs[b, -1] - ref[-1]) <= 1e-10 * abs(ref[-1])


def test_hessian_chunk_scales_with_the_problem():
    chain = bt.StackedNet(_net("relu 2-6-6-2 (blobnet)")).chain
    small, big = hessian_chunk(chain, 74, 200, 2), hessian_chunk(chain, 74, 20000, 2)
    assert small >= 1 and big == 1 and small > big


def test_gd_gradient_in_blocks_matches_one_call_and_autograd():
    # more inits than one closed-form block: the blocked gradients must be the same numbers
    stack, _, X, y = _problem("relu 2-6-6-2 (blobnet)", "cross_entropy", N=7)
    B = bt._GD_BLOCK + 37
    thetas = torch.randn(B, stack.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grads, losses = bt._grad_fn(stack)(thetas, X, y)
    whole_losses, whole = chain_grad(stack.chain, thetas, X, y, "cross_entropy")
    torch.testing.assert_close(grads, whole, rtol=0, atol=1e-15)
    torch.testing.assert_close(losses, whole_losses, rtol=0, atol=1e-15)
    for b in (0, bt._GD_BLOCK, B - 1):
        _, ref_grad, _ = _autograd(stack, thetas[b], X, y)
        torch.testing.assert_close(grads[b], ref_grad, rtol=0, atol=1e-13)
