"""A small decoder-only transformer language model (GPT-style, pre-LayerNorm, causal attention).

It takes ``input_ids`` ``[N, L]`` (and an optional ``attention_mask``, unused:
padding sits at the end of each sequence, where causal attention never lets
a real token see it) and returns logits ``[N, L, V]``, so dict batches in the
Hugging Face convention go straight in.  Attention runs through
``torch.nn.functional.scaled_dot_product_attention``, whose fused CPU kernel
has no second derivative: spectra's products run it on the math kernel
(:mod:`spectra.attention`).

Its logits at position ``t`` predict token ``t + 1``, so analyse it with
``BatchReader(shift_labels=True)`` when the labels are the input ids
(as Hugging Face's causal models shift them inside their loss).

>>> model = TinyGPT(vocab_size=11, d_model=8, num_heads=2, num_layers=1, max_len=16)
>>> tuple(model(torch.zeros(3, 5, dtype=torch.long)).shape)
(3, 5, 11)
>>> model.num_parameters()
1203
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError

__all__ = ["TinyGPT"]

MLP_EXPANSION = 4  # hidden width of each block's MLP, in multiples of d_model


class _CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        heads = [t.view(n, length, self.num_heads, d // self.num_heads).transpose(1, 2) for t in (q, k, v)]
        out = F.scaled_dot_product_attention(*heads, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(n, length, d))


class _Block(nn.Module):
    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = _CausalSelfAttention(d_model, num_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, MLP_EXPANSION * d_model), nn.GELU(),
                                 nn.Linear(MLP_EXPANSION * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """Token and position embeddings, ``num_layers`` pre-LN blocks, a final LayerNorm and a linear head."""

    def __init__(self, vocab_size: int, d_model: int = 32, num_heads: int = 2, num_layers: int = 1,
                 max_len: int = 64):
        super().__init__()
        if d_model % num_heads:
            raise InvalidInputError(f"d_model ({d_model}) must be a multiple of num_heads ({num_heads})")
        self.max_len = max_len
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(max_len, d_model)
        self.blocks = nn.Sequential(*(_Block(d_model, num_heads) for _ in range(num_layers)))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.max_len:
            raise InvalidInputError(f"sequences of {length} tokens exceed max_len={self.max_len}")
        x = self.tokens(input_ids) + self.positions(torch.arange(length, device=input_ids.device))
        return self.head(self.ln(self.blocks(x)))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
