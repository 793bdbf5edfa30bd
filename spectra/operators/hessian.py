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

``mode="auto"`` picks ``"reverse"``: it was 1.7-2.4x faster than ``jvp(grad)``
on CPU in our measurements (bench/bench_core.py).

>>> import torch
>>> model = torch.nn.Linear(3, 2).double()
>>> X, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
>>> H = HessianOperator(model, "cross_entropy", (X, y))
>>> H.shape
(8, 8)
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import torch
from torch import nn

from ..data import BatchSource, as_batch_source
from ..errors import InvalidInputError, NonDeterministicError, NonFiniteError
from ..losses import Loss, LossLike, resolve_loss
from .base import SpectralOperator

ParamSelector = Union[None, str, Sequence[str], Callable[[str, torch.Tensor], bool]]

# Cache the gradient graph automatically when the in-memory inputs are at most this big.
AUTO_CACHE_MAX_BYTES = 512 * 2**20
DEFAULT_CHUNK_SIZE = 32


def select_parameters(model: nn.Module, params: ParamSelector = None) -> list[tuple[str, nn.Parameter]]:
    """Trainable ``(name, parameter)`` pairs of ``model`` chosen by ``params``.

    ``params`` may be ``None`` (all trainable), a name, a glob (``"0.*"``), a
    module prefix (``"layers.0"`` selects ``layers.0.weight`` and
    ``layers.0.bias``), a list of those, or a predicate ``(name, p) -> bool``.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        total = sum(1 for _ in model.parameters())
        raise InvalidInputError(
            "the model has no trainable parameters"
            + (f" ({total} parameter tensors, all with requires_grad=False)" if total else "")
        )
    if params is None:
        return named
    if callable(params) and not isinstance(params, str):
        chosen = [(n, p) for n, p in named if params(n, p)]
    else:
        patterns = [params] if isinstance(params, str) else list(params)
        chosen = []
        for pattern in patterns:
            hits = [(n, p) for n, p in named
                    if n == pattern or n.startswith(pattern + ".") or fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise InvalidInputError(
                    f"no trainable parameter matches {pattern!r}; trainable parameters: "
                    + ", ".join(n for n, _ in named)
                )
            chosen.extend(h for h in hits if all(h[0] != c[0] for c in chosen))
        order = {n: i for i, (n, _) in enumerate(named)}
        chosen.sort(key=lambda item: order[item[0]])
    if not chosen:
        raise InvalidInputError("the parameter selection chose no trainable parameter")
    return chosen


_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


@contextlib.contextmanager
def model_mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Put every submodule in train/eval mode for the block, then restore each one.

    In train mode BatchNorm uses the batch statistics but does not update its
    running statistics: analysing a model must not change it (and an in-place
    buffer update would break ``torch.func`` transforms).
    """
    saved = [(m, m.training) for m in model.modules()]
    norms = [(m, m.track_running_stats) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.train(train)
    if train:
        for m, _ in norms:
            m.track_running_stats = False
    try:
        yield
    finally:
        for m, was_training in saved:
            m.training = was_training
        for m, tracked in norms:
            m.track_running_stats = tracked


class HessianOperator(SpectralOperator):
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
        ``"reverse"``, ``"forward"`` or ``"auto"`` (= ``"reverse"``).
    cache_graph:
        Keep the gradient graph between products (reverse mode only).  ``"auto"``
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

    def __init__(
        self,
        model: nn.Module,
        loss: LossLike = "cross_entropy",
        data: Any = None,
        *,
        params: ParamSelector = None,
        mode: str = "auto",
        cache_graph: bool | str = "auto",
        chunk_size: int | None = DEFAULT_CHUNK_SIZE,
        train_mode: bool = False,
        check_determinism: bool = True,
        reduction: str = "mean",
    ):
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if data is None:
            raise InvalidInputError("data is required: pass (X, y), a list of batches or a DataLoader")
        if mode not in ("auto", "reverse", "forward"):
            raise InvalidInputError(f"mode must be 'auto', 'reverse' or 'forward'; got {mode!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise InvalidInputError(f"chunk_size must be a positive integer or None; got {chunk_size!r}")

        self.model = model
        self.loss: Loss = resolve_loss(loss, reduction)
        self.source: BatchSource = as_batch_source(data)
        named = select_parameters(model, params)
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) > 1:
            raise InvalidInputError(f"selected parameters mix dtypes {sorted(map(str, dtypes))}; use one dtype")
        devices = {p.device for p in self.params}
        if len(devices) > 1:
            raise InvalidInputError(f"selected parameters live on several devices {sorted(map(str, devices))}")
        for n, p in named:
            if not bool(torch.isfinite(p.detach()).all()):
                raise NonFiniteError(f"the model's parameter {n!r} contains NaN or Inf")
        if train_mode:
            dropout = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _DROPOUT) and m.p > 0})
            if dropout:
                # a new dropout mask at every product: the operator would be a random matrix
                raise NonDeterministicError(
                    f"train_mode=True with dropout ({', '.join(dropout)}) makes every Hessian product "
                    "random; analyse in eval mode (the default, train_mode=False)"
                )
        P = sum(p.numel() for p in self.params)
        super().__init__((P, P), self.params[0].dtype, self.params[0].device)
        self.param_shapes = [p.shape for p in self.params]
        self.param_numels = [p.numel() for p in self.params]
        self.train_mode = bool(train_mode)
        self.mode = "reverse" if mode == "auto" else mode
        self.max_block = chunk_size
        self.num_samples = self._global_num_samples(self.source.num_samples)
        self._weights = [self._batch_weight(n_b) for n_b in self.source.batch_sizes]

        if cache_graph == "auto":
            itemsize = torch.empty((), dtype=self.dtype).element_size()
            cache_graph = self.source.in_memory and self.source.numel() * itemsize <= AUTO_CACHE_MAX_BYTES
        if cache_graph and self.mode != "reverse":
            cache_graph = False  # only the double-backward path has a graph worth keeping
        self.cache_graph = bool(cache_graph)
        self._batched_ok = True
        self._cached: list[tuple[torch.Tensor, ...]] | None = None

        self.loss_value, self.gradient = self._first_pass()
        self.grad_norm = float(self.gradient.norm())
        self.check_matvecs = 0
        if check_determinism:
            self._check_determinism()

    # ------------------------------------------------------------------ helpers
    def _batch_weight(self, n_b: int) -> float:
        return n_b / self.num_samples if self.loss.reduction == "mean" else 1.0

    def _to_device(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        X = X.to(self.device)
        if X.is_floating_point():
            X = X.to(self.dtype)
        y = y.to(self.device)
        if y.is_floating_point():
            y = y.to(self.dtype)
        return X, y

    def _forward_loss(self, X: torch.Tensor, y: torch.Tensor, batch_index: int) -> torch.Tensor:
        try:
            output = self.model(X)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidInputError(
                f"the model cannot take batch {batch_index} with inputs of shape {tuple(X.shape)} "
                f"({X.dtype}): {first}"
            ) from exc
        if not isinstance(output, torch.Tensor):
            raise InvalidInputError(f"the model must return a tensor; it returned {type(output).__name__}")
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

    def flatten(self, tensors: Iterable[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors into one flat vector of length P."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat vector (or a block ``[P, m]``) into per-parameter pieces."""
        pieces = torch.split(vector, self.param_numels, dim=0)
        if vector.ndim == 1:
            return [piece.view(shape) for piece, shape in zip(pieces, self.param_shapes)]
        m = vector.shape[1]
        return [piece.T.reshape(m, *shape) for piece, shape in zip(pieces, self.param_shapes)]

    def _first_pass(self) -> tuple[float, torch.Tensor]:
        """Validate every batch, record the loss and gradient, build the cache if asked."""
        total_loss = 0.0
        grad = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        cached = [] if self.cache_graph else None
        with model_mode(self.model, self.train_mode):
            for b, ((X, y), w) in enumerate(zip(self.source, self._weights)):
                X, y = self._to_device(X, y)
                value = self._forward_loss(X, y, b)
                if not bool(torch.isfinite(value)):
                    raise NonFiniteError(f"the loss is {float(value.detach())} on batch {b}; the Hessian is undefined")
                g = torch.autograd.grad(w * value, self.params, create_graph=self.cache_graph,
                                        allow_unused=True)
                g = tuple(torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, self.params))
                if cached is not None:
                    cached.append(g)
                total_loss += w * float(value.detach())
                grad += self.flatten(gi.detach() for gi in g)
        self._cached = cached
        reduced = self._reduce(torch.cat([grad, torch.tensor([total_loss], dtype=self.dtype, device=self.device)]))
        if not bool(torch.isfinite(reduced[:-1]).all()):
            pieces = zip(self.param_names, self.unflatten(reduced[:-1]))
            bad = [n for n, g in pieces if not bool(torch.isfinite(g).all())]
            raise NonFiniteError(
                f"the gradient of the loss contains NaN or Inf (parameter {bad[0]!r}) although the loss is "
                "finite; the Hessian is undefined here (a non-differentiable point such as sqrt(0)?)"
            )
        return float(reduced[-1]), reduced[:-1]

    def _check_determinism(self) -> None:
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
        tol = 1e-9 if self.dtype == torch.float64 else 1e-4
        diff = float((a - b).norm()) / scale
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
    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        local = self._matmat_forward(V) if self.mode == "forward" else self._matmat_reverse(V)
        return self._reduce(local)

    # Hooks for data-parallel subclasses (spectra.distributed): the sample count
    # over all shards, and the sum of a local block over all shards.
    def _global_num_samples(self, local: int) -> int:
        return local

    def _reduce(self, local: torch.Tensor) -> torch.Tensor:
        return local

    def _matmat_reverse(self, V: torch.Tensor, fresh: bool = False) -> torch.Tensor:
        pieces = self.unflatten(V)  # each [m, *shape]
        out = torch.zeros_like(V)
        grads = self._cached if (self._cached is not None and not fresh) else self._fresh_grads()
        with model_mode(self.model, self.train_mode):
            for g in grads:
                out += self._backward_of_grad(g, pieces, V.shape[1])
        return out

    def _fresh_grads(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """Per-batch weighted gradients with their graphs, built one batch at a time."""
        for b, (X, y) in enumerate(self.source):
            X, y = self._to_device(X, y)
            value = self._forward_loss(X, y, b)
            yield torch.autograd.grad(self._weights[b] * value, self.params, create_graph=True)

    def _backward_of_grad(self, g: tuple[torch.Tensor, ...], pieces: list[torch.Tensor], m: int) -> torch.Tensor:
        if self._batched_ok and m > 1:
            try:
                hv = torch.autograd.grad(g, self.params, grad_outputs=pieces, retain_graph=True,
                                         is_grads_batched=True, allow_unused=True)
                return self._flatten_block(hv, m)
            except RuntimeError:
                # Some ops have no batching rule; fall back to one column at a time.
                self._batched_ok = False
        cols = []
        for j in range(m):
            hv = torch.autograd.grad(g, self.params, grad_outputs=[piece[j] for piece in pieces],
                                     retain_graph=True, allow_unused=True)
            cols.append(self._flatten_block(tuple(h[None] if h is not None else None for h in hv), 1))
        return torch.cat(cols, dim=1)

    def _flatten_block(self, hv: tuple[torch.Tensor | None, ...], m: int) -> torch.Tensor:
        parts = [torch.zeros(m, n, dtype=self.dtype, device=self.device) if h is None else h.reshape(m, -1)
                 for h, n in zip(hv, self.param_numels)]
        return torch.cat(parts, dim=1).T

    def _matmat_forward(self, V: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call, grad, jvp, vmap

        names = self.param_names
        frozen = {n: p.detach() for n, p in self.model.named_parameters() if n not in set(names)}
        buffers = dict(self.model.named_buffers())
        primal = tuple(p.detach() for p in self.params)
        tangents = self.unflatten(V)  # each [m, *shape]
        out = torch.zeros_like(V)
        with model_mode(self.model, self.train_mode):
            for b, (X, y) in enumerate(self.source):
                X, y = self._to_device(X, y)
                w = self._weights[b]

                def batch_loss(theta: tuple[torch.Tensor, ...]) -> torch.Tensor:
                    state = {**frozen, **buffers, **dict(zip(names, theta))}
                    return w * self.loss(functional_call(self.model, state, (X,)), y)

                grad_fn = grad(batch_loss)

                def hvp(*tangent: torch.Tensor) -> tuple[torch.Tensor, ...]:
                    return jvp(grad_fn, (primal,), (tuple(tangent),))[1]

                try:
                    hv = vmap(hvp)(*tangents)
                except RuntimeError as exc:
                    if "random" not in str(exc):
                        raise
                    # vmap refuses random ops (dropout, noise) in the model: the same refusal
                    # the determinism check gives in reverse mode
                    raise NonDeterministicError(
                        "the model draws random numbers in its forward pass, so the Hessian is not "
                        "deterministic; analyse in eval mode, without dropout or noise"
                    ) from exc
                out += self._flatten_block(hv, V.shape[1])
        return out

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
            "reduction": self.loss.reduction,
            "batch_weighting": "n_b / N" if self.loss.reduction == "mean" else "1",
            "hvp_mode": self.mode,
            "cache_graph": self.cache_graph,
            "model_mode": "train" if self.train_mode else "eval",
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "param_names": self.param_names,
            "loss_value": self.loss_value,
            "grad_norm": self.grad_norm,
            "data": dict(self.source.info),
        }

    def estimated_dense_bytes(self) -> int:
        return self.shape[0] ** 2 * torch.empty((), dtype=self.dtype).element_size()


def dense_bytes(num_params: int, itemsize: int = 8) -> int:
    """Bytes of one dense ``P x P`` matrix."""
    return int(num_params) ** 2 * itemsize


def _isqrt(x: float) -> int:
    return int(math.isqrt(int(x)))
