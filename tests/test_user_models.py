"""Models users bring, against a dense autograd Hessian of the whole-dataset loss written with torch alone.

Each reference is ``torch.autograd.functional.hessian`` of the loss over *all*
the data at once, written with ``torch.nn.functional`` (not spectra's losses or
batch weighting), so it checks the reduction, the units of the mean
(samples or non-ignored tokens) and the batch weights together.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spectra.attention import differentiable_attention
from spectra.batches import BatchReader
from spectra.errors import InvalidInputError
from spectra.operators.ggn import GGNOperator
from spectra.operators.hessian import HessianOperator
from spectra.workloads.tiny_gpt import TinyGPT

RTOL = 1e-9  # float64 eigenvalues against the dense reference, relative to the largest |eigenvalue|


def dense_hessian(model: nn.Module, total_loss: Callable[[Callable[..., Any]], torch.Tensor],
                  names: list[str] | None = None) -> torch.Tensor:
    """Hessian of ``total_loss(call)`` w.r.t. trainable parameters (``names``: these only), ``call`` running the model."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and (names is None or n in names)]
    names, shapes = [n for n, _ in named], [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]
    buffers = dict(model.named_buffers())
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in names}

    def f(flat: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, (t.view(s) for t, s in zip(torch.split(flat, sizes), shapes))))

        def call(*args: Any, **kwargs: Any) -> Any:
            return torch.func.functional_call(model, {**buffers, **fixed, **params}, args, kwargs)
        return total_loss(call)

    flat0 = torch.cat([p.detach().reshape(-1) for _, p in named])
    was_training = model.training
    model.eval()
    try:
        with differentiable_attention():
            return torch.autograd.functional.hessian(f, flat0)
    finally:
        model.train(was_training)


def _mlp(out: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, out)).double()


def _class_data(n: int = 13, c: int = 3, ignored: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, c, (n,), generator=g)
    y[list(ignored)] = -100
    return X, y


def _batches(X: torch.Tensor, y: torch.Tensor, sizes: tuple[int, ...]) -> list:
    out, start = [], 0
    for s in sizes:
        out.append((X[start:start + s], y[start:start + s]))
        start += s
    return out


# (name, model, loss, data, operator options, reference total loss, expected path)
def _cases() -> list:
    X, y = _class_data()
    Xi, yi = _class_data(ignored=(0, 1, 2, 9))
    Xr = torch.randn(13, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return [
        ("ce-sum-three-batches", _mlp(), "cross_entropy", _batches(X, y, (5, 5, 3)), {"reduction": "sum"},
         lambda call: F.cross_entropy(call(X), y, reduction="sum"), {"reduction": "sum", "hvp_mode": "reverse"}),
        ("ce-ignored-labels-uneven", _mlp(), "cross_entropy", _batches(Xi, yi, (4, 6, 3)), {},
         lambda call: F.cross_entropy(call(Xi), yi, ignore_index=-100),
         {"reduction": "mean", "num_samples": 9, "hvp_mode": "reverse"}),
        ("ce-ignored-labels-forward", _mlp(), "cross_entropy", _batches(Xi, yi, (4, 6, 3)), {"mode": "forward"},
         lambda call: F.cross_entropy(call(Xi), yi, ignore_index=-100), {"num_samples": 9, "hvp_mode": "forward"}),
        ("mse-sum-two-batches", _mlp(), "mse", _batches(X, Xr, (8, 5)), {"reduction": "sum"},
         lambda call: 0.5 * F.mse_loss(call(X), Xr, reduction="sum"), {"reduction": "sum", "hvp_mode": "reverse"}),
        ("ce-mean-chain", _mlp(), "cross_entropy", _batches(X, y, (5, 5, 3)), {},
         lambda call: F.cross_entropy(call(X), y), {"reduction": "mean", "hvp_mode": "chain"}),
    ]


# ---------------------------------------------------------------- sequence models and attention
VOCAB, LENGTH = 7, 6


def _tiny_gpt() -> nn.Module:
    torch.manual_seed(3)
    return TinyGPT(VOCAB, d_model=4, num_heads=2, num_layers=1, max_len=LENGTH).double()


def _token_batches() -> list[dict[str, torch.Tensor]]:
    """Two dict batches of ragged sequences (real lengths 6, 4, 2 | 5, 3), labels -100 on padding."""
    g = torch.Generator().manual_seed(4)
    out = []
    for lengths in ((6, 4, 2), (5, 3)):
        ids = torch.randint(1, VOCAB, (len(lengths), LENGTH), generator=g)
        labels = ids.clone()
        for row, n in enumerate(lengths):
            ids[row, n:] = 0
            labels[row, n:] = -100
        out.append({"input_ids": ids, "labels": labels})
    return out


def _next_token_loss(call: Callable[..., Any], batches: list, shift: bool = True,
                     reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over every counted token of all batches at once (torch alone)."""
    logits, labels = [], []
    for b in batches:
        out = call(input_ids=b["input_ids"])
        out = getattr(out, "logits", out)
        if shift:
            logits.append(out[:, :-1].reshape(-1, out.shape[-1]))
            labels.append(b["labels"][:, 1:].reshape(-1))
        else:
            logits.append(out.reshape(-1, out.shape[-1]))
            labels.append(b["labels"].reshape(-1))
    return F.cross_entropy(torch.cat(logits), torch.cat(labels), ignore_index=-100, reduction=reduction)


class _HFStyleLM(nn.Module):
    """Returns an object with ``.logits`` (as Hugging Face models do); labels already aligned."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.embed = nn.Embedding(VOCAB, 3)
        self.head = nn.Linear(3, VOCAB)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.head(torch.tanh(self.embed(input_ids))), loss=None)


class _Attention(nn.Module):
    """``nn.MultiheadAttention`` (scaled-dot-product attention inside) pooled into a classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        h, _ = self.attn(x, x, x, need_weights=False)
        return self.out(h).mean(1)


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0, batch_first=True)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.layer(x)).mean(1)


def _sequences(n: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(8)
    return torch.randn(n, 3, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _sequence_cases() -> list:
    batches = _token_batches()
    Xs, ys = _sequences()
    Xr = torch.randn(13, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    X, _ = _class_data()
    shift = BatchReader(shift_labels=True)
    return [
        ("dict-causal-lm-ignore-index", _tiny_gpt(), "cross_entropy", batches, {"reader": shift},
         lambda call: _next_token_loss(call, batches),
         {"unit": "token", "num_samples": 15, "hvp_mode": "reverse"}),
        ("dict-causal-lm-sum", _tiny_gpt(), "cross_entropy", batches, {"reader": shift, "reduction": "sum"},
         lambda call: _next_token_loss(call, batches, reduction="sum"), {"reduction": "sum"}),
        ("dict-causal-lm-forward", _tiny_gpt(), "cross_entropy", batches, {"reader": shift, "mode": "forward"},
         lambda call: _next_token_loss(call, batches), {"hvp_mode": "forward", "forward_products": "jvp(grad)"}),
        ("dict-logits-output", _HFStyleLM().double(), "cross_entropy", batches, {},
         lambda call: _next_token_loss(call, batches, shift=False), {"unit": "token", "num_samples": 20}),
        ("multihead-attention-reverse", _Attention().double(), "cross_entropy", [(Xs[:4], ys[:4]), (Xs[4:], ys[4:])],
         {"mode": "reverse"}, lambda call: F.cross_entropy(call(Xs), ys), {"hvp_mode": "reverse"}),
        ("multihead-attention-forward", _Attention().double(), "cross_entropy", (Xs, ys), {"mode": "forward"},
         lambda call: F.cross_entropy(call(Xs), ys), {"hvp_mode": "forward"}),
        ("transformer-encoder-layer", _Encoder().double(), "cross_entropy", (Xs, ys), {},
         lambda call: F.cross_entropy(call(Xs), ys), {"hvp_mode": "reverse"}),
        ("forward-nn-MSELoss", _mlp(), nn.MSELoss(), [(X[:8], Xr[:8, :3]), (X[8:], Xr[8:, :3])],
         {"mode": "forward"}, lambda call: (8 * F.mse_loss(call(X[:8]), Xr[:8, :3])
                                            + 5 * F.mse_loss(call(X[8:]), Xr[8:, :3])) / 13,
         {"hvp_mode": "forward", "forward_products": "jvp(jacrev)"}),
        ("forward-F-mse_loss", _mlp(), F.mse_loss, (X, Xr[:, :3]), {"mode": "forward"},
         lambda call: F.mse_loss(call(X), Xr[:, :3]), {"forward_products": "jvp(jacrev)"}),
    ]


CASES = _cases() + _sequence_cases()


@pytest.mark.parametrize("name,model,loss,data,options,total_loss,path", CASES, ids=[c[0] for c in CASES])
def test_eigenvalues_match_dense_autograd(name, model, loss, data, options, total_loss, path):
    H = dense_hessian(model, total_loss)
    op = HessianOperator(model, loss, data, **options)
    info = op.describe()
    for key, value in path.items():
        assert str(info[key]).startswith(str(value)), (key, info[key])
    got = torch.linalg.eigvalsh(op.to_dense())
    want = torch.linalg.eigvalsh(H)
    assert float((got - want).abs().max()) <= RTOL * float(want.abs().max())


def test_gauss_newton_of_a_dict_batch_language_model():
    """G = J^T S J of the token loss, against jacobians and the loss Hessian from autograd."""
    model, batches = _tiny_gpt(), _token_batches()
    G = GGNOperator(model, "cross_entropy", batches, reader=BatchReader(shift_labels=True)).to_dense()
    names = [n for n, _ in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    sizes = [p.numel() for p in model.parameters()]
    total = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    reference = torch.zeros_like(G)
    with differentiable_attention():
        for b in batches:
            def logits_of(flat, b=b):
                pieces = [t.view(p.shape) for t, p in zip(torch.split(flat, sizes), model.parameters())]
                return torch.func.functional_call(model, dict(zip(names, pieces)), (b["input_ids"],))[:, :-1]

            J = torch.autograd.functional.jacobian(logits_of, flat0).reshape(-1, flat0.numel())
            labels = b["labels"][:, 1:].reshape(-1)
            out0 = logits_of(flat0).detach().reshape(-1, VOCAB)
            S = torch.autograd.functional.hessian(
                lambda o: F.cross_entropy(o.view(-1, VOCAB), labels, ignore_index=-100, reduction="sum"), out0)
            S = S.reshape(out0.numel(), out0.numel()) / total
            reference += J.T @ S @ J
    assert float((G - reference).norm() / reference.norm()) <= 1e-10


class _Square(torch.autograd.Function):
    """A custom autograd function without torch.func support (no setup_context, no jvp)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class _CustomFunctionNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(10)
        self.layer = nn.Linear(4, 3)

    def forward(self, x):
        return _Square.apply(self.layer(x))


def test_forward_mode_refuses_clearly_where_reverse_works():
    model = _CustomFunctionNet().double()
    data = _class_data()
    with pytest.raises(InvalidInputError, match="use mode='reverse'"):
        HessianOperator(model, "cross_entropy", data, mode="forward")
    H = dense_hessian(model, lambda call: F.cross_entropy(call(data[0]), data[1]))
    op = HessianOperator(model, "cross_entropy", data, mode="reverse")
    assert float((op.to_dense() - H).norm() / H.norm()) <= 1e-12


class _ForcesFusedKernel(_Attention):
    """Forces a fused attention kernel inside its own forward (which has no second derivative)."""

    def forward(self, x):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return super().forward(x)


def test_attention_kernel_restored_and_forced_fused_kernel_explained():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from spectra.attention import attention_backends

    data = _sequences()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
        op = HessianOperator(_Attention().double(), "cross_entropy", data)
        op.matvec(torch.ones(op.shape[0], dtype=torch.float64))
        assert attention_backends() == [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]  # the caller's choice
    with pytest.raises(InvalidInputError, match="fused kernel"):
        HessianOperator(_ForcesFusedKernel().double(), "cross_entropy", data)
