"""Scaled-dot-product attention that Hessian products can differentiate.

``torch.nn.functional.scaled_dot_product_attention`` (behind
``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer`` and most
``transformers`` models) dispatches to fused kernels.  On CPU the fused
kernel has a first derivative but no second one: a double backward raises
``derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is
not implemented``, and forward-mode AD raises ``NotImplementedError``.  The
math kernel is written in differentiable operations, so reverse-over-reverse,
forward-over-reverse and Gauss-Newton products all work through it.
:func:`differentiable_attention` selects it for a block of code and restores
the caller's choice afterwards; every product spectra computes runs inside
it.

>>> import torch
>>> from torch.nn.attention import SDPBackend
>>> with differentiable_attention():
...     inside = attention_backends()
>>> inside == [SDPBackend.MATH]
True
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from .errors import InvalidInputError

__all__ = ["differentiable_attention", "attention_backends", "PRODUCT_ATTENTION_BACKEND", "explain_attention_error"]

#: The attention kernel whose derivatives are themselves differentiable (torch's math kernel).
PRODUCT_ATTENTION_BACKEND = "MATH"

# Substrings of torch's errors when a fused attention kernel meets a second derivative.
_FUSED_KERNEL_ERRORS = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_fused_attention")


@contextlib.contextmanager
def differentiable_attention() -> Iterator[None]:
    """Run scaled-dot-product attention on torch's math kernel inside the block.

    The kernels the caller allowed before are allowed again on exit, also when
    the block raises (``torch.nn.attention.sdpa_kernel`` saves and restores
    them).  Nested use is harmless.  If a fused kernel still refuses a
    derivative inside the block (a model that forces one itself), the error
    becomes an :class:`~spectra.errors.InvalidInputError` that says so.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, PRODUCT_ATTENTION_BACKEND)):
        try:
            yield
        except RuntimeError as exc:
            explained = explain_attention_error(exc)
            if explained is None:
                raise
            raise InvalidInputError(explained) from exc


def attention_backends() -> list:
    """The scaled-dot-product attention kernels allowed now (as ``SDPBackend`` members), in torch's order."""
    import torch
    from torch.nn.attention import SDPBackend

    flags = {
        SDPBackend.CUDNN_ATTENTION: torch.backends.cuda.cudnn_sdp_enabled(),
        SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled(),
        SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled(),
        SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled(),
    }
    return [backend for backend, enabled in flags.items() if enabled]


def explain_attention_error(exc: BaseException) -> str | None:
    """A sentence for users when ``exc`` is a fused attention kernel refusing a derivative, else None."""
    text = str(exc)
    if not any(name in text for name in _FUSED_KERNEL_ERRORS):
        return None
    return ("the model's scaled-dot-product attention ran on a fused kernel that has no second derivative; "
            "spectra's products select torch's math kernel (spectra.attention.differentiable_attention), so "
            "the model must not force a fused kernel itself (an sdpa_kernel(...) context inside its forward)")
