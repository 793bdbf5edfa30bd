"""What the dataset-backed curvature operators share: their arguments, setup and per-batch loops.

:class:`~spectra.operators.hessian.HessianOperator`,
:class:`~spectra.operators.ggn.GGNOperator` and
:class:`~spectra.operators.residual.ResidualOperator` all describe a matrix of
``loss(model(X), y)`` summed over the batches ``b`` of a dataset, each batch
weighted by ``w_b = n_b / N`` for a mean-reduced loss (``1`` for a summed one).
:class:`DatasetOperator` takes their common arguments once, checks them, picks
the parameters, wraps the data, sets the weights, and runs the per-batch loops;
a subclass adds what its matrix needs.

>>> import torch
>>> from spectra.operators.hessian import HessianOperator
>>> model = torch.nn.Linear(3, 2).double()
>>> X, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
>>> H = HessianOperator(model, "cross_entropy", [(X[:6], y[:6]), (X[6:], y[6:])], params="weight")
>>> isinstance(H, DatasetOperator), H.param_names, H.shape
(True, ['weight'], (6, 6))
>>> [w for _, _, _, w in H._batches()]
[0.75, 0.25]
"""

from __future__ import annotations

import contextlib
import fnmatch
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import torch
from torch import nn

from ..attention import differentiable_attention
from ..batches import BatchReader
from ..data import BatchSource, as_batch_source
from ..errors import InvalidInputError, NonDeterministicError, NonFiniteError
from ..losses import Loss, LossLike, resolve_loss
from ..precision import check_product_dtype
from .base import SpectralOperator

__all__ = ["DatasetOperator", "ParamSelector", "model_mode", "select_parameters"]

ParamSelector = Union[None, str, Sequence[str], Callable[[str, torch.Tensor], bool]]

# Cache the gradient graph automatically when the in-memory inputs are at most this big.
AUTO_CACHE_MAX_BYTES = 512 * 2**20
DEFAULT_CHUNK_SIZE = 32


def select_parameters(model: nn.Module, params: ParamSelector = None) -> list[tuple[str, nn.Parameter]]:
    """Trainable ``(name, parameter)`` pairs of ``model`` chosen by ``params``.

    ``params`` may be ``None`` (all trainable), a name, a glob (``"0.*"``), a
    module prefix (``"layers.0"`` selects ``layers.0.weight`` and
    ``layers.0.bias``), a list of those, or a predicate ``(name, p) -> bool``.

    >>> [n for n, _ in select_parameters(torch.nn.Sequential(torch.nn.Linear(2, 2)), "0.w*")]
    ['0.weight']
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


class DatasetOperator(SpectralOperator):
    """A curvature matrix of ``loss(model(X), y)`` over a dataset, w.r.t. chosen parameters.

    The constructor takes the arguments documented on
    :class:`~spectra.operators.hessian.HessianOperator`, checks them, and sets
    the state every subclass uses: ``model``, ``loss``, ``source``,
    ``params``/``param_names``/``param_shapes``/``param_numels``,
    ``num_samples``, the batch weights, ``train_mode``, ``mode``,
    ``max_block`` and ``cache_graph``.  A subclass implements

    ``_prepare(**options)``
        the rest of its construction (a first pass over the data, inner
        operators), called last with the keyword arguments the operator was
        given, so that inner operators can be built on the same terms;
    ``_matmat_reverse(V)``
        its product with a block ``V`` of shape ``[P, m]`` by autograd
        (helpers: :meth:`_batches`, :meth:`_batched_or_by_column`,
        :meth:`_grad_block`);
    ``_forward_batch(output_fn, primal, tangents, y, w)``
        one batch's product in ``"forward"`` mode, through ``torch.func``, as
        per-parameter blocks ``[m, *shape]``; :meth:`_matmat_forward` sums it
        over the batches;
    ``describe()``
        the operator's provenance;

    or, for an operator made of others, ``_matmat`` itself.  It may set
    :attr:`auto_cache_max_bytes`.  Data-parallel subclasses override
    :meth:`_global_num_samples` and :meth:`_reduce`.
    """

    #: The product modes this operator accepts.
    modes: tuple[str, ...] = ("auto", "reverse", "forward")
    #: ``cache_graph="auto"`` caches when the in-memory inputs take at most this many bytes.
    auto_cache_max_bytes: int = AUTO_CACHE_MAX_BYTES
    #: Batched products compute broadcast-factor ``bmm`` calls as one wide matrix
    #: product (:mod:`spectra.operators._fold`); same numbers, 1.2-2x faster blocks on CPU.
    fold_batched_products: bool = True

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
        reduction: str | None = None,
        reader: BatchReader | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if data is None:
            raise InvalidInputError("data is required: pass (X, y), a list of batches or a DataLoader")
        if mode not in self.modes:
            names = ", ".join(repr(m) for m in self.modes)
            raise InvalidInputError(f"mode must be one of {names} for {type(self).__name__}; got {mode!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise InvalidInputError(f"chunk_size must be a positive integer or None; got {chunk_size!r}")

        if reader is not None and not isinstance(reader, BatchReader):
            raise InvalidInputError(f"reader must be a spectra.batches.BatchReader; got {type(reader).__name__}")
        self.model = model
        self.loss: Loss = resolve_loss(loss, reduction)
        self.reader = (reader or BatchReader()).bind(model, self.loss)
        self.source: BatchSource = as_batch_source(data)
        named = select_parameters(model, params)
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]
        dtypes = {p.dtype for p in self.params}
        if len(dtypes) > 1:
            raise InvalidInputError(f"selected parameters mix dtypes {sorted(map(str, dtypes))}; use one dtype")
        check_product_dtype(next(iter(dtypes)))
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
        # "auto" and "chain" start as "reverse"; a subclass may switch to "chain" in _prepare
        self.mode = "forward" if mode == "forward" else "reverse"
        self.max_block = chunk_size
        # (a data-parallel subclass compares the settings above across ranks here)
        # the loss's units per batch: samples, or target tokens that are not ignore_index
        split = [self.reader.split(raw) for raw in self.source]
        self.batch_units = [self.reader.count(inputs, target) for inputs, target in split]
        self.unit = self.loss.unit(split[0][1]) if self.reader.units is None else "unit"
        del split
        self.num_samples = self._global_num_samples(sum(self.batch_units))
        if self.num_samples == 0:
            raise InvalidInputError(f"no {self.unit} of the data counts: every target is ignore_index")
        self._weights = [self._batch_weight(n_b) for n_b in self.batch_units]
        self.cache_graph = self._wants_cache(cache_graph)
        self._batched_ok = True
        with differentiable_attention():  # attention kernels with second derivatives (spectra.attention)
            self._prepare(params=params, mode=mode, cache_graph=cache_graph, chunk_size=chunk_size,
                          train_mode=train_mode, check_determinism=check_determinism, reduction=reduction,
                          reader=reader)

    # ------------------------------------------------------- what subclasses add
    def _prepare(self, **options: Any) -> None:
        raise NotImplementedError

    def _forward_batch(self, output_fn: Callable[..., torch.Tensor], primal: tuple[torch.Tensor, ...],
                       tangents: list[torch.Tensor], y: torch.Tensor, w: float) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _matmat_reverse(self, V: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def _wants_cache(self, cache_graph: bool | str) -> bool:
        if cache_graph == "auto":
            itemsize = torch.empty((), dtype=self.dtype).element_size()
            cache_graph = self.source.in_memory and self.source.numel() * itemsize <= self.auto_cache_max_bytes
        # only the reverse-mode products have graphs worth keeping
        return bool(cache_graph) and self.mode == "reverse"

    def _batch_weight(self, n_b: int) -> float:
        # mean over all units of the dataset: a batch's mean counts by its share of the units
        return n_b / self.num_samples if self.loss.reduction == "mean" else 1.0

    def _batches(self) -> Iterator[tuple[int, Any, Any, float]]:
        """``(b, inputs, target, w_b)`` for every batch with units, on the operator's device and dtype."""
        for b, raw in enumerate(self.source):
            if self.batch_units[b] == 0:
                continue  # no counted unit: no weight (its mean would be 0/0)
            inputs, target = self.reader.to(*self.reader.split(raw), self.device, self.dtype)
            yield b, inputs, target, self._weights[b]

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

    def _flatten_block(self, hv: tuple[torch.Tensor | None, ...], m: int) -> torch.Tensor:
        """Per-parameter blocks ``[m, *shape]`` (``None``: zero) as one flat block ``[P, m]``."""
        parts = [torch.zeros(m, n, dtype=self.dtype, device=self.device) if h is None else h.reshape(m, -1)
                 for h, n in zip(hv, self.param_numels)]
        return torch.cat(parts, dim=1).T

    def _grad_block(self, outputs: Any, grad_outputs: Any, m: int, batched: bool) -> torch.Tensor:
        """Vector-Jacobian products of ``outputs`` w.r.t. the parameters, as a flat block ``[P, m]``.

        ``batched``: ``grad_outputs`` carry a leading axis of ``m`` columns;
        otherwise they are one column (``m = 1``).
        """
        outputs = (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
        grad_outputs = (grad_outputs,) if isinstance(grad_outputs, torch.Tensor) else tuple(grad_outputs)
        # A zero cotangent adds nothing: drop it, and the backward work behind it.
        # Blocks of unit vectors (to_dense) are zero outside one parameter tensor.
        # (one host sync for all of them: this runs for every batch of every product)
        flags = torch.stack([go.any() for go in grad_outputs]).tolist()
        nonzero = [i for i, flag in enumerate(flags) if flag]
        if not nonzero:
            return torch.zeros(self.shape[0], m, dtype=self.dtype, device=self.device)
        if len(nonzero) < len(grad_outputs):
            outputs = tuple(outputs[i] for i in nonzero)
            grad_outputs = tuple(grad_outputs[i] for i in nonzero)
        if batched and self.fold_batched_products:
            from ._fold import fold_shared_factor_bmm

            with fold_shared_factor_bmm():
                g = torch.autograd.grad(outputs, self.params, grad_outputs=grad_outputs, retain_graph=True,
                                        is_grads_batched=True, allow_unused=True)
        else:
            g = torch.autograd.grad(outputs, self.params, grad_outputs=grad_outputs, retain_graph=True,
                                    is_grads_batched=batched, allow_unused=True)
        if not batched:
            g = tuple(None if t is None else t[None] for t in g)
        return self._flatten_block(g, m)

    def _batched_or_by_column(self, product: Callable[[list[torch.Tensor], int, bool], torch.Tensor],
                              pieces: list[torch.Tensor]) -> torch.Tensor:
        """``product(pieces, m, True)`` on all ``m`` columns at once, else ``product(column, 1, False)`` per column.

        ``pieces`` are per-parameter blocks ``[m, *shape]``; a column is the
        per-parameter pieces ``[*shape]`` of one of them.  ``product`` returns
        a flat ``[P, m]`` (or ``[P, 1]``) block.  Once a batched product fails
        (an op without a batching rule), the operator goes column by column.
        """
        m = pieces[0].shape[0]
        if self._batched_ok and m > 1:
            try:
                return product(pieces, m, True)
            except RuntimeError:
                self._batched_ok = False
        return torch.cat([product([p[j] for p in pieces], 1, False) for j in range(m)], dim=1)

    # --------------------------------------------------------------- products
    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        with differentiable_attention():
            local = self._matmat_forward(V) if self.mode == "forward" else self._matmat_reverse(V)
        return self._reduce(local)

    # Hooks for data-parallel subclasses (spectra.distributed): the sample count
    # over all shards, and the sum of a local block over all shards.
    def _global_num_samples(self, local: int) -> int:
        return local

    def _reduce(self, local: torch.Tensor) -> torch.Tensor:
        return local

    def _matmat_forward(self, V: torch.Tensor) -> torch.Tensor:
        """The sum over batches of :meth:`_forward_batch`, with the model as a function of the parameters."""
        from torch.func import functional_call

        names = self.param_names
        chosen = set(names)
        frozen = {n: p.detach() for n, p in self.model.named_parameters() if n not in chosen}
        buffers = dict(self.model.named_buffers())
        primal = tuple(p.detach() for p in self.params)
        tangents = self.unflatten(V)  # each [m, *shape]
        out = torch.zeros_like(V)
        with model_mode(self.model, self.train_mode):
            for _b, inputs, y, w in self._batches():

                def output_fn(*theta: torch.Tensor, inputs: Any = inputs) -> torch.Tensor:
                    state = {**frozen, **buffers, **dict(zip(names, theta))}
                    return self.reader.call(lambda *a, **k: functional_call(self.model, state, a, k), inputs)

                out += self._flatten_block(self._forward_batch(output_fn, primal, tangents, y, w), V.shape[1])
        return out

    # ------------------------------------------------------------- metadata
    def estimated_dense_bytes(self) -> int:
        return self.shape[0] ** 2 * torch.empty((), dtype=self.dtype).element_size()
