"""The Hessian of a dataset loss as a linear operator (exact Pearlmutter products).

For a loss with ``reduction="mean"`` over batches ``b`` of sizes ``n_b``
(``N = sum n_b``), the operator is ``H = sum_b (n_b / N) * H_b`` where ``H_b``
is the Hessian of the batch's mean loss: exactly the Hessian of the mean loss
over the whole dataset, whatever the batch sizes.  For ``reduction="sum"`` it
is ``sum_b H_b``.

Two exact product modes:

``"reverse"`` (reverse-over-reverse, double backward)
    ``g = dL/dθ`` is built with ``create_graph=True``; ``H V`` is the backward
    of ``<g, V>``, all columns of ``V`` in one call (``is_grads_batched``).
    With ``cache_graph`` the first backward's graph is kept and reused by every
    product, so a product costs one backward instead of a forward and two.
``"forward"`` (forward-over-reverse)
    ``torch.func.jvp`` of ``torch.func.grad`` through ``functional_call``,
    vmapped over the columns of ``V``.

``"chain"`` (the R-operator written out, :mod:`spectra.operators.chain`)
    for an ``nn.Sequential`` of ``Linear`` layers and elementwise activations
    (after an optional ``Flatten``) under the built-in cross-entropy or MSE
    loss: no autograd graph, a few matrix products per layer and block.

``mode="auto"`` picks ``"chain"`` when the model is such a chain, else
``"reverse"``.  Reverse-over-reverse was 1.7-2.4x faster than ``jvp(grad)``
on CPU, and the chain products 1.1-1.4x faster again than the cached double
backward, in our measurements (bench/bench_core.py).  A chain operator checks
itself against autograd when it is built: each batch's gradient must agree,
and (with ``check_determinism``) one product must equal autograd's.  If
either disagrees, ``"auto"`` falls back to ``"reverse"`` and records why in
:meth:`HessianOperator.describe`; an explicit ``mode="chain"`` raises.

>>> import torch
>>> model = torch.nn.Linear(3, 2).double()
>>> X, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
>>> H = HessianOperator(model, "cross_entropy", (X, y))
>>> H.shape
(8, 8)
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..batches import BatchReader
from ..errors import InvalidInputError, NonDeterministicError, NonFiniteError
from .base import _mirror_upper_in_place
from .chain import ChainState, LayerChain, UnsupportedChain
from .dataset import (  # noqa: F401  (DEFAULT_CHUNK_SIZE, ParamSelector, select_parameters: re-exported)
    AUTO_CACHE_MAX_BYTES,
    DEFAULT_CHUNK_SIZE,
    DatasetOperator,
    ParamSelector,
    model_mode,
    select_parameters,
)


class HessianOperator(DatasetOperator):
    """Exact Hessian of ``loss(model(X), y)`` over a dataset, w.r.t. chosen parameters.

    Parameters
    ----------
    model:
        A ``torch.nn.Module``; its parameters' dtype and device set the operator's.
    loss:
        ``"cross_entropy"``, ``"mse"``, a :class:`spectra.losses.Loss`, or a
        callable ``(output, target) -> scalar`` averaging over its batch.
    data:
        ``(X, y)``, a list of batches, a non-shuffling DataLoader, or a
        :class:`spectra.data.Dataset`.
    params:
        Which parameters (see :func:`select_parameters`); default all trainable.
    mode:
        ``"auto"`` (``"chain"`` where it applies, else ``"reverse"``),
        ``"chain"``, ``"reverse"`` or ``"forward"``.
    cache_graph:
        Keep the gradient graph (chain mode: the stored forward values)
        between products (not in forward mode).  ``"auto"``
        caches when the data is in memory and its inputs take at most
        ``AUTO_CACHE_MAX_BYTES``.  A cached operator is a snapshot: rebuild it
        after changing the model's weights.
    chunk_size:
        Most columns pushed through one batched product (bounds memory).
    train_mode:
        Evaluate the model in train mode (default: eval mode, so dropout is off
        and BatchNorm uses its running statistics).
    check_determinism:
        Multiply one random vector twice and refuse if the answers differ.
    """

    auto_cache_max_bytes = AUTO_CACHE_MAX_BYTES
    modes = ("auto", "chain", "reverse", "forward")

    # The constructor is DatasetOperator's: it checks the arguments, picks the
    # parameters and sets the batch weights, then calls _prepare.
    def _prepare(self, *, mode: str, check_determinism: bool, **_options: Any) -> None:
        self._cached: list[tuple[torch.Tensor, ...]] | None = None
        self._chain: LayerChain | None = None
        self._chain_states: list[ChainState] | None = None
        self._unit_block: int | None = None  # set by to_dense while it sends unit columns
        self.chain_note: str | None = None  # why "auto" did not use the chain products
        self.forward_path: str | None = None  # forward mode: jvp(grad), or the fallback and why
        if mode in ("auto", "chain"):
            try:
                if self.reader.settings() != BatchReader().bind(self.model, self.loss).settings():
                    raise UnsupportedChain("the batches are read by a custom BatchReader")
                self._chain = LayerChain.of(self.model, self.params, self.loss)
                self.mode = "chain"
            except UnsupportedChain as exc:
                self._refuse_chain(mode, str(exc))
        try:
            self.loss_value, self.gradient = self._first_pass()
        except _ChainMismatch as exc:
            self._refuse_chain(mode, str(exc), disagreement=True)
            self.loss_value, self.gradient = self._first_pass()
        self.grad_norm = float(self.gradient.norm())
        self.check_matvecs = 0
        if check_determinism:
            self._check_determinism(mode)

    #: Whether ``mode="auto"`` may switch to autograd products when the chain disagrees with
    #: autograd on this process's data.  A data-parallel subclass sets False: a switch on one
    #: rank alone would desynchronise the ranks' collective calls, so it raises instead.
    chain_fallback_allowed: bool = True

    def _refuse_chain(self, mode: str, reason: str, disagreement: bool = False) -> None:
        """Use autograd products instead of the chain ones (``"auto"``), or refuse (``"chain"``)."""
        if mode == "chain":
            raise InvalidInputError(f"mode='chain' cannot be used here: {reason}; use mode='auto' or 'reverse'")
        if disagreement and not self.chain_fallback_allowed:
            raise InvalidInputError(f"the chain products cannot be used here: {reason}; pass mode='reverse'")
        self._chain, self._chain_states, self.mode = None, None, "reverse"
        self.chain_note = reason

    # ------------------------------------------------------------------ helpers
    def _forward_loss(self, X: Any, y: Any, batch_index: int) -> torch.Tensor:
        try:
            output = self.reader.call(self.model, X)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidInputError(
                f"the model cannot take batch {batch_index} with {self.reader.describe(X)}: {first}"
            ) from exc
        self.loss.check_target(output, y)
        try:
            value = self.loss(output, y)
        except (RuntimeError, ValueError, IndexError) as exc:
            raise InvalidInputError(
                f"the loss {self.loss.name!r} cannot take outputs of shape {tuple(output.shape)} with "
                f"targets of shape {tuple(y.shape)} ({y.dtype}): {str(exc).strip().splitlines()[0]}"
            ) from exc
        if value.ndim != 0:
            raise InvalidInputError(
                f"the loss must return a scalar; it returned shape {tuple(value.shape)}"
            )
        return value

    def _first_pass(self) -> tuple[float, torch.Tensor]:
        """Validate every batch, record the loss and gradient, build the cache if asked."""
        total_loss = 0.0
        grad = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        keep_graph = self.cache_graph and self._chain is None
        cached = [] if keep_graph else None
        states = [] if self.cache_graph and self._chain is not None else None
        with model_mode(self.model, self.train_mode):
            for b, X, y, w in self._batches():
                value = self._forward_loss(X, y, b)
                if not bool(torch.isfinite(value)):
                    raise NonFiniteError(f"the loss is {float(value.detach())} on batch {b}; the Hessian is undefined")
                g = torch.autograd.grad(w * value, self.params, create_graph=keep_graph, allow_unused=True)
                g = tuple(torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, self.params))
                if cached is not None:
                    cached.append(g)
                flat = self.flatten(gi.detach() for gi in g)
                if self._chain is not None:
                    state = self._checked_chain_state(X, y, w, b, flat)
                    if states is not None:
                        states.append(state)
                total_loss += w * float(value.detach())
                grad += flat
        self._cached = cached
        self._chain_states = states
        reduced = self._reduce(torch.cat([grad, torch.tensor([total_loss], dtype=self.dtype, device=self.device)]))
        if not bool(torch.isfinite(reduced[:-1]).all()):
            pieces = zip(self.param_names, self.unflatten(reduced[:-1]))
            bad = [n for n, g in pieces if not bool(torch.isfinite(g).all())]
            raise NonFiniteError(
                f"the gradient of the loss contains NaN or Inf (parameter {bad[0]!r}) although the loss is "
                "finite; the Hessian is undefined here (a non-differentiable point such as sqrt(0)?)"
            )
        return float(reduced[-1]), reduced[:-1]

    def _checked_chain_state(self, X: torch.Tensor, y: torch.Tensor, w: float, b: int,
                             autograd_gradient: torch.Tensor) -> ChainState:
        """The chain's stored values for a batch, once its gradient agrees with autograd's."""
        assert self._chain is not None
        try:
            state = self._chain.state(X, y, w)
        except UnsupportedChain as exc:
            raise _ChainMismatch(str(exc)) from exc
        pieces = self._chain.gradient(state, len(self.params))
        mine = self.flatten(torch.zeros_like(p) if t is None else t for t, p in zip(pieces, self.params))
        scale = max(float(autograd_gradient.norm()), float(torch.finfo(self.dtype).tiny))
        diff = float((mine - autograd_gradient).norm()) / scale
        if diff > _agreement_tolerance(self.dtype):
            raise _ChainMismatch(f"its gradient differs from autograd's by {diff:.1e} (relative) on batch {b}")
        return state

    def _check_determinism(self, mode: str = "reverse") -> None:
        gen = torch.Generator().manual_seed(12345)
        v = torch.randn(self.shape[0], 1, generator=gen, dtype=torch.float64).to(self.device, self.dtype)
        before = self.num_matvecs
        # One product through fresh forward passes and one through the operator's
        # usual path (the cached graph, if any): a cached graph would otherwise
        # freeze one dropout mask and hide the randomness.
        a = self._reduce(self._matmat_forward(v) if self.mode == "forward" else self._matmat_reverse(v, fresh=True))
        b = self.matmat(v)
        self.num_matvecs = before
        self.check_matvecs = 2
        if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
            raise NonFiniteError("a Hessian-vector product contains NaN or Inf; the Hessian is undefined here")
        scale = max(float(a.norm()), float(b.norm()), 1e-300)
        tol = _agreement_tolerance(self.dtype)
        diff = float((a - b).norm()) / scale
        if diff > tol and self.mode == "chain":
            # autograd against autograd tells a wrong chain product from a random Hessian
            again = self._reduce(self._matmat_reverse(v, fresh=True))
            self.check_matvecs = 3
            if float((again - a).norm()) / scale <= tol:
                self._refuse_chain(mode, f"its product differs from autograd's by {diff:.1e} (relative)",
                                   disagreement=True)
                if self.cache_graph:
                    self.loss_value, self.gradient = self._first_pass()
                b, diff = a, 0.0
        if diff > tol:
            suspects = [type(m).__name__ for m in self.model.modules()
                        if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                                          nn.AlphaDropout, nn.modules.batchnorm._BatchNorm))]
            hint = f" (the model has {', '.join(sorted(set(suspects)))})" if suspects else ""
            raise NonDeterministicError(
                f"the Hessian is not deterministic: the same vector gave products differing by "
                f"{diff:.2e} (relative){hint}; analyse in eval mode, without dropout, with a fixed data order"
            )

    # --------------------------------------------------------------- products
    def _matmat_reverse(self, V: torch.Tensor, fresh: bool = False) -> torch.Tensor:
        """``H V`` by the chain products, or by autograd (always, when ``fresh``: a graph built anew)."""
        pieces = self.unflatten(V)  # each [m, *shape]
        if self._chain is not None and not fresh:
            return self._matmat_chain(V, pieces)
        out = torch.zeros_like(V)
        grads = self._cached if (self._cached is not None and not fresh) else self._fresh_grads()
        with model_mode(self.model, self.train_mode):
            for g in grads:
                out += self._batched_or_by_column(functools.partial(self._grad_block, g), pieces)
        return out

    def _matmat_chain(self, V: torch.Tensor, pieces: list[torch.Tensor], gauss_newton: bool = False) -> torch.Tensor:
        """``H V`` (or, with ``gauss_newton``, ``G V``) by the chain products, over all batches."""
        assert self._chain is not None
        hints: dict[str, Any] = {"gauss_newton": gauss_newton}
        if getattr(self, "_unit_block", None) is not None:
            # to_dense's unit columns start:stop: rows above `start` are mirrored later, not computed
            start, stop = self._unit_block, self._unit_block + V.shape[1]
            offsets = [0]
            for numel in self.param_numels:
                offsets.append(offsets[-1] + numel)
            spans = list(zip(offsets, offsets[1:]))
            nonzero = [a < stop and b > start for a, b in spans]
            hints["first_row"] = [min(max(start - a, 0), b - a) for a, b in spans]
            hints["nonzero_rows"] = {
                i: piece.reshape(piece.shape[0] * piece.shape[1], -1).any(1).nonzero().squeeze(1)
                for i, piece in enumerate(pieces) if nonzero[i] and piece.ndim == 3}
        else:
            # zero pieces drop their terms; one host sync
            nonzero = torch.stack([p.any() for p in pieces]).tolist()
        chosen = [p if keep else None for p, keep in zip(pieces, nonzero)]
        out = torch.zeros_like(V)
        if not any(nonzero):
            return out
        states = self._chain_states if self._chain_states is not None else \
            (self._chain.state(X, y, w) for _b, X, y, w in self._batches())
        for state in states:
            out += self._flatten_block(tuple(self._chain.product(state, chosen, **hints)), V.shape[1])
        return out

    # to_dense with the chain products: each block of unit columns is computed
    # only from the diagonal down (its upper part mirrors rows computed earlier),
    # and the unit vectors' forward products touch only their own rows (about a
    # quarter of the work of general blocks); the upper triangle is then copied
    # onto the lower, so the result is exactly symmetric.  Other modes keep the
    # base class's (A + A^T) / 2.
    def _unit_columns(self, E: torch.Tensor, start: int) -> torch.Tensor:
        if self._chain is None:
            return super()._unit_columns(E, start)
        self._unit_block = start  # tells _matmat_chain: E's columns start at `start` (entries above stay unset)
        try:
            return self.matmat(E)
        finally:
            self._unit_block = None

    def _symmetrise_dense(self, dense: torch.Tensor) -> None:
        if self._chain is None:
            super()._symmetrise_dense(dense)
        else:
            _mirror_upper_in_place(dense)  # the computed part is the upper triangle of the rows stored

    def _fresh_grads(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """Per-batch weighted gradients with their graphs, built one batch at a time."""
        for b, X, y, w in self._batches():
            value = self._forward_loss(X, y, b)
            yield torch.autograd.grad(w * value, self.params, create_graph=True)

    def _forward_batch(self, output_fn: Callable[..., torch.Tensor], primal: tuple[torch.Tensor, ...],
                       tangents: list[torch.Tensor], y: torch.Tensor, w: float) -> tuple[torch.Tensor, ...]:
        from ..forward_ad import hessian_columns

        try:
            columns, self.forward_path = hessian_columns(lambda theta: w * self.loss(output_fn(*theta), y),
                                                         primal, tangents)
            return columns
        except RuntimeError as exc:
            if "random" not in str(exc):
                raise
            # vmap refuses random ops (dropout, noise) in the model: the same refusal
            # the determinism check gives in reverse mode
            raise NonDeterministicError(
                "the model draws random numbers in its forward pass, so the Hessian is not "
                "deterministic; analyse in eval mode, without dropout or noise"
            ) from exc

    # ------------------------------------------------------------- metadata
    def describe(self) -> dict[str, Any]:
        """Provenance of this operator, for results."""
        return {
            "matrix": "hessian",
            "num_params": self.shape[0],
            "num_samples": self.num_samples,
            "num_batches": self.source.num_batches,
            "batch_sizes": self.source.batch_sizes if self.source.num_batches <= 64 else None,
            "loss": self.loss.name,
            **self.loss.describe(),
            "unit": self.unit,
            "batch_weighting": "n_b / N" if self.loss.reduction == "mean" else "1",
            "hvp_mode": self.mode,
            "chain_products": "used" if self.mode == "chain" else (self.chain_note or "not requested"),
            **({"forward_products": self.forward_path} if self.mode == "forward" else {}),
            "batch_reader": self.reader.settings(),
            "cache_graph": self.cache_graph,
            "model_mode": "train" if self.train_mode else "eval",
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "param_names": self.param_names,
            "loss_value": self.loss_value,
            "grad_norm": self.grad_norm,
            "data": dict(self.source.info),
        }


class _ChainMismatch(Exception):
    """The chain products cannot serve this data, or disagree with autograd; the message says how."""


def _agreement_tolerance(dtype: torch.dtype) -> float:
    """Relative difference allowed between two exact computations of the same product."""
    return 1e-9 if dtype == torch.float64 else 1e-4


def dense_bytes(num_params: int, itemsize: int = 8) -> int:
    """Bytes of one dense ``P x P`` matrix."""
    return int(num_params) ** 2 * itemsize


def _isqrt(x: float) -> int:
    return int(math.isqrt(int(x)))
