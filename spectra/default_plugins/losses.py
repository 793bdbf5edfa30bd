"""Built-in losses: ``cross_entropy`` (aliases ``ce``, ``nll``, ``crossentropy``) and ``mse``.

The loss objects and their aliases are defined in :mod:`spectra.losses`.
"""

from __future__ import annotations

from typing import Any

from spectra.hookspecs import hookimpl

DESCRIPTIONS = {
    "cross_entropy": "softmax + negative log-likelihood, mean over samples or tokens ([N, C] or [N, L, V] "
                     "logits; labels -100 ignored)",
    "mse": "mean over units of 1/2 ||f - y||^2; integer labels are one-hot encoded (-100 ignored)",
}


@hookimpl
def spectra_register_losses(registry: Any) -> None:
    from spectra.losses import BUILTIN_LOSSES, LOSS_ALIASES

    for name, loss in BUILTIN_LOSSES.items():
        aliases = tuple(alias for alias, target in LOSS_ALIASES.items() if target == name)
        registry.register(name, loss, DESCRIPTIONS.get(name, ""), aliases=aliases)
