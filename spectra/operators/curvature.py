"""The one data loop behind every curvature matrix of a loss over a dataset.

A curvature matrix of ``loss(model(X), y)`` over batches ``b`` is a weighted
sum of per-batch matrices, ``sum_b w_b M_b`` with ``w_b = count_b / N``
for a mean-reduced loss (``1`` for a summed one), so a short last batch is not
over-weighted.  :class:`CurvatureOperator` does everything such a matrix
needs once: it checks the arguments, picks the parameters, reads the batches
(through :class:`~spectra.batches.BatchReader`), sets the weights, picks the
product engine (:func:`~spectra.operators.engines.select_engine`), runs the
first pass (loss, gradient, validation of every batch, caching of what the
products reuse), multiplies a random vector twice to refuse a random matrix
(dropout, shuffling), sums through its reducer (one process, or data-parallel
over ``torch.distributed``: :mod:`spectra.parallel`), and writes the
provenance.

A matrix is a subclass that sets :attr:`~CurvatureOperator.name` and
:attr:`~CurvatureOperator.needs` and implements one method,
``_batch_product(engine, context, block)``: one batch's product by the engine,
from its prepared context (see :mod:`spectra.operators.engines.base`).  The Hessian:

>>> import torch
>>> from spectra.operators.engines import HESSIAN
>>> class MyHessian(CurvatureOperator):
...     name = "my_hessian"
...     needs = frozenset({HESSIAN})
...     def _batch_product(self, engine, context, block):
...         return engine.hessian(context, block)
>>> model = torch.nn.Linear(3, 2).double()
>>> X, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
>>> op = MyHessian(model, "cross_entropy", [(X[:6], y[:6]), (X[6:], y[6:])])
>>> op.shape, [b.weight for b in op.batches()], op.engine.name
((8, 8), [0.75, 0.25], 'reverse')
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

from ..attention import differentiable_attention
from ..batches import Batch, BatchReader
from ..data import BatchSource, as_batch_source
from ..errors import InvalidInputError, NonDeterministicError, NonFiniteError
from ..losses import Loss, LossLike, resolve_loss
from ..precision import check_product_dtype
from ..parallel import first_line, make_reducer
from .base import SpectralOperator, mirror_upper_in_place
from .engines import ChainMismatch, fall_back, select_engine
from .engines.base import HESSIAN, Block, ForwardPass, ProductEngine
from .engines.reverse import ReverseEngine
from .model_state import model_mode, random_modules
from .parameters import ParameterLayout, ParamSelector, select_parameters

__all__ = ["AUTO_CACHE_MAX_BYTES", "CurvatureOperator", "DEFAULT_CHUNK_SIZE", "DETERMINISM_CHECK_SEED",
           "agreement_tolerance"]

#: ``cache_graph="auto"`` keeps the per-batch contexts when the in-memory inputs take at most this many bytes.
AUTO_CACHE_MAX_BYTES = 512 * 2**20
#: Most columns pushed through one batched product by default.
DEFAULT_CHUNK_SIZE = 32
#: Seed of the random vector the determinism check multiplies twice.
DETERMINISM_CHECK_SEED = 12345


def agreement_tolerance(dtype: torch.dtype) -> float:
    """Relative difference allowed between two exact computations of the same product."""
    return 1e-9 if dtype == torch.float64 else 1e-4


class CurvatureOperator(SpectralOperator):
    """A curvature matrix of ``loss(model(X), y)`` over a dataset, w.r.t. chosen parameters.

    Parameters
    ----------
    model:
        A ``torch.nn.Module``; its parameters' dtype and device set the operator's.
    loss:
        ``"cross_entropy"``, ``"mse"``, a :class:`spectra.losses.Loss`, or a
        callable ``(output, target) -> scalar`` averaging over its batch
        (``reduction="sum"`` if it sums).
    data:
        ``(X, y)``, a list of batches, a non-shuffling DataLoader, or a
        :class:`spectra.data.Dataset`.
    params:
        Which parameters (see :func:`~spectra.operators.parameters.select_parameters`);
        default all trainable.
    mode:
        The product engine: ``"auto"`` (``"chain"`` where it applies, else
        ``"reverse"``), ``"chain"``, ``"reverse"`` or ``"forward"``
        (:mod:`spectra.operators.engines`).
    cache_graph:
        Keep each batch's prepared context (autograd graphs, or the chain's
        stored values) between products.  ``"auto"`` caches when the data is
        in memory and its inputs take at most :data:`AUTO_CACHE_MAX_BYTES`.
        A cached operator is a snapshot: rebuild it after changing the weights.
    chunk_size:
        Most columns pushed through one batched product (bounds memory).
    train_mode:
        Evaluate the model in train mode (default: eval mode, so dropout is off
        and BatchNorm uses its running statistics).
    check_determinism:
        Multiply one random vector twice and refuse if the answers differ.
    reduction:
        ``"mean"`` or ``"sum"``, for a callable loss.
    distributed, group, timeout:
        Data parallelism over ``torch.distributed`` (``data`` is then this
        rank's shard): see :func:`spectra.parallel.make_reducer`.
    reader:
        How batches are read (:class:`~spectra.batches.BatchReader`).
    """

    #: The matrix's name in ``analyze(matrix=...)`` and the provenance.
    name: str = ""
    #: How messages call it ("the Hessian").
    title: str = "the matrix"
    #: What its products need from an engine's context (:mod:`spectra.operators.engines.base`).
    needs: frozenset[str] = frozenset()
    #: Constructor options beyond the common ones (``analyze`` passes them through).
    extra_options: tuple[str, ...] = ()
    auto_cache_max_bytes: int = AUTO_CACHE_MAX_BYTES

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
        distributed: bool | str = False,
        group: Any = None,
        timeout: float | None = None,
        reader: BatchReader | None = None,
    ):
        self.reducer = make_reducer(distributed, group, timeout)
        self.is_distributed = self.reducer.is_distributed
        # a failure on one rank stops the others; attention runs on a kernel with second derivatives
        with self.reducer.guard(), differentiable_attention():
            self._set_up(model, loss, data, params, mode, cache_graph, chunk_size, train_mode, reduction, reader)
            if check_determinism:
                self._check_determinism()

    # ------------------------------------------------------------ what a matrix adds
    def _batch_product(self, engine: ProductEngine, context: Any, block: Block) -> list[torch.Tensor | None]:
        """One batch's product with the block by ``engine``, per parameter ``[m, *shape]`` (None: zero)."""
        raise NotImplementedError

    def _check_options(self) -> None:
        """Check the matrix's own options (set as attributes before ``__init__``) and the loss."""

    def _extend_context(self, context: Any) -> None:
        """Add what the matrix's products need to an engine's batch context (e.g. a Fisher's factors)."""

    def settings(self) -> dict[str, Any]:
        """The matrix's own options, for the provenance and the ranks' agreement."""
        return {}

    # ------------------------------------------------------------------ set-up
    def _set_up(self, model: nn.Module, loss: LossLike, data: Any, params: ParamSelector, mode: str,
                cache_graph: bool | str, chunk_size: int | None, train_mode: bool, reduction: str | None,
                reader: BatchReader | None) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if data is None:
            raise InvalidInputError("data is required: pass (X, y), a list of batches or a DataLoader")
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                       or chunk_size < 1):
            raise InvalidInputError(f"chunk_size must be a positive integer or None; got {chunk_size!r}")
        self.model = model
        self.loss: Loss = resolve_loss(loss, reduction)
        self._check_options()
        if reader is not None and not isinstance(reader, BatchReader):
            raise InvalidInputError(f"reader must be a spectra.batches.BatchReader; got {type(reader).__name__}")
        self.reader = (reader or BatchReader()).bind(model, self.loss)  # the loss counts a batch's units
        self.source: BatchSource = as_batch_source(data)
        named = select_parameters(model, params)
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]
        _check_parameters(named)
        if train_mode:
            dropout = random_modules(model, active_dropout_only=True)
            if dropout:
                # a new dropout mask at every product: the operator would be a random matrix
                raise NonDeterministicError(
                    f"train_mode=True with dropout ({', '.join(dropout)}) makes every curvature product "
                    "random; analyse in eval mode (the default, train_mode=False)"
                )
        self.layout = ParameterLayout(self.params)
        super().__init__((self.layout.num_params,) * 2, self.params[0].dtype, self.params[0].device)
        self.param_shapes, self.param_numels = self.layout.shapes, self.layout.numels
        self.train_mode = bool(train_mode)
        self.max_block = chunk_size
        self.requested_mode = mode
        self.engine, self.engine_note = select_engine(self, mode)
        self._cache_request = cache_graph
        self.cache_graph = self._wants_cache(cache_graph)
        counts, rows = self.reader.counts(self.source)  # samples, or counted tokens
        self.unit = self.reader.unit(self.source)
        self.num_samples, first_row = self.reducer.setup(self, sum(counts), sum(rows))
        if self.num_samples == 0:
            raise InvalidInputError(f"no {self.unit} of the data counts: every target is ignore_index")
        self._weights = [n / self.num_samples if self.loss.reduction == "mean" else 1.0 for n in counts]
        self._offsets = [first_row + sum(rows[:b]) for b in range(len(rows))]
        self._counts, self._rows = counts, rows
        self._batched_ok = True
        self._unit_start: int | None = None  # set by to_dense while it sends unit columns
        self.check_matvecs = 0
        try:
            self._first_pass()
        except ChainMismatch as exc:
            self._switch_engine(str(exc))
            self._first_pass()
        self.grad_norm = float(self.gradient.norm())

    def _wants_cache(self, cache_graph: bool | str) -> bool:
        if cache_graph == "auto":
            itemsize = torch.empty((), dtype=self.dtype).element_size()
            cache_graph = self.source.in_memory and self.source.numel() * itemsize <= self.auto_cache_max_bytes
        return bool(cache_graph) and self.engine.caches

    def _switch_engine(self, reason: str) -> None:
        """The chain cannot serve: autograd products instead (``"auto"``), or refuse."""
        self.engine = fall_back(self, self.requested_mode, reason, disagreement=True,
                                allowed=not self.is_distributed)
        self.engine_note = reason
        self.cache_graph = self._wants_cache(self._cache_request)
        self._contexts = None  # the chain's contexts: the next first pass builds the new engine's

    # ------------------------------------------------------------------ the batches
    def batches(self) -> Iterator[Batch]:
        """Every batch, on the operator's device and dtype, with its weight ``w_b``."""
        for b, raw in enumerate(self.source):
            if self._counts[b] == 0:
                continue  # no counted unit (all of its labels ignored): no weight, and its mean would be 0/0
            inputs, target = self.reader.to(*self.reader.split(raw), self.device, self.dtype)
            yield Batch(b, inputs, target, self._counts[b], self._weights[b], self._offsets[b], self._rows[b])

    def forward_pass(self, batch: Batch, *, gradient: bool = True, create_graph: bool = False) -> ForwardPass:
        """The batch's output and weighted loss (graphs kept), validated, and the weighted gradient."""
        with torch.enable_grad():
            try:
                output = self.reader.call(self.model, batch.inputs)
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                raise InvalidInputError(f"the model cannot take batch {batch.index} with "
                                        f"{self.reader.describe(batch.inputs)}: {first_line(exc)}") from exc
            if not isinstance(output, torch.Tensor):
                raise InvalidInputError(f"the model must return a tensor; it returned {type(output).__name__}")
            value = self._loss_value(output, batch)
            loss = batch.weight * value
            grads = None
            if gradient:
                g = torch.autograd.grad(loss, self.params, create_graph=create_graph, retain_graph=True,
                                        allow_unused=True)
                grads = tuple(torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, self.params))
        return ForwardPass(output, loss, grads, value)

    def _loss_value(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        self.loss.check_target(output, batch.target)
        try:
            value = self.loss(output, batch.target)
        except (RuntimeError, ValueError, IndexError) as exc:
            raise InvalidInputError(
                f"the loss {self.loss.name!r} cannot take outputs of shape {tuple(output.shape)} with "
                f"targets of shape {tuple(batch.target.shape)} ({batch.target.dtype}): {first_line(exc)}"
            ) from exc
        if value.ndim != 0:
            raise InvalidInputError(f"the loss must return a scalar; it returned shape {tuple(value.shape)}")
        return value

    def _context(self, batch: Batch, engine: ProductEngine, forward: ForwardPass | None = None) -> Any:
        context = engine.prepare(batch, self.needs, forward)
        self._extend_context(context)
        return context

    def _first_pass(self) -> None:
        """Validate every batch, record the loss and gradient, keep the contexts if asked."""
        engine = self.engine
        create_graph = self.cache_graph and isinstance(engine, ReverseEngine) and HESSIAN in self.needs
        contexts: list[Any] | None = [] if self.cache_graph else None
        total_loss = 0.0
        grad = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        with model_mode(self.model, self.train_mode):
            for batch in self.batches():
                forward = self.forward_pass(batch, create_graph=create_graph)
                value = float(forward.value.detach())
                if not torch.isfinite(torch.tensor(value)):
                    raise NonFiniteError(f"the loss is {value} on batch {batch.index}; the curvature is undefined")
                flat = self.layout.flatten(g.detach() for g in forward.grads)
                if contexts is not None or engine.verifies:
                    context = self._context(batch, engine, forward)
                    engine.verify(context, flat)
                    if contexts is not None:
                        contexts.append(context)
                total_loss += batch.weight * value
                grad += flat
        self._contexts = contexts
        reduced = self.reducer.reduce(torch.cat([grad, grad.new_tensor([total_loss])]))
        if not bool(torch.isfinite(reduced[:-1]).all()):
            pieces = zip(self.param_names, self.layout.unflatten(reduced[:-1]))
            bad = [n for n, g in pieces if not bool(torch.isfinite(g).all())]
            raise NonFiniteError(
                f"the gradient of the loss contains NaN or Inf (parameter {bad[0]!r}) although the loss is "
                "finite; the curvature is undefined here (a non-differentiable point such as sqrt(0)?)"
            )
        self.loss_value, self.gradient = float(reduced[-1]), reduced[:-1]

    # ------------------------------------------------------------------ products
    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        with self.reducer.guard(), differentiable_attention():
            return self.reducer.reduce(self._local_product(V, self.engine, fresh=False))

    def _local_product(self, V: torch.Tensor, engine: ProductEngine, fresh: bool) -> torch.Tensor:
        """This process's sum over its batches of ``w_b M_b V`` (``fresh``: contexts built anew)."""
        block = Block(self.layout.unflatten(V), V.shape[1], unit_start=self._unit_start)
        out = torch.zeros_like(V)
        with model_mode(self.model, self.train_mode):
            if self._contexts is not None and not fresh and engine is self.engine:
                contexts = iter(self._contexts)
            else:
                contexts = (self._context(batch, engine) for batch in self.batches())
            for context in contexts:
                out += self.layout.flatten_block(self._product_by_columns(engine, context, block), block.m, V)
        return out

    def _product_by_columns(self, engine: ProductEngine, context: Any, block: Block) -> list:
        """All columns in one call; once that fails (an op without a batching rule), column by column."""
        if engine.always_batched or (self._batched_ok and block.m > 1):
            try:
                return self._batch_product(engine, context, block)
            except RuntimeError:
                if engine.always_batched:
                    raise
                self._batched_ok = False
        columns = [self._batch_product(engine, context, Block([p[j] for p in block.pieces], 1, batched=False))
                   for j in range(block.m)]
        return [None if all(c[i] is None for c in columns) else
                torch.cat([torch.zeros_like(block.pieces[i][:1]) if c[i] is None else c[i] for c in columns])
                for i in range(len(block.pieces))]

    @property
    def mode(self) -> str:
        """The name of the product engine in use (``"chain"``, ``"reverse"`` or ``"forward"``)."""
        return self.engine.name

    # to_dense with an engine that can: each block of unit columns is computed only
    # from the diagonal down (its upper part mirrors rows computed earlier), and the
    # upper triangle is copied onto the lower, so the result is exactly symmetric.
    def _unit_columns(self, E: torch.Tensor, start: int) -> torch.Tensor:
        if not self.engine.triangular_dense:
            return super()._unit_columns(E, start)
        self._unit_start = start
        try:
            return self.matmat(E)
        finally:
            self._unit_start = None

    def _symmetrise_dense(self, dense: torch.Tensor) -> None:
        if self.engine.triangular_dense:
            mirror_upper_in_place(dense)
        else:
            super()._symmetrise_dense(dense)

    # ------------------------------------------------------------------ determinism
    def _check_determinism(self) -> None:
        """Two products of one seeded vector must agree; a chain product must agree with autograd's."""
        gen = torch.Generator().manual_seed(DETERMINISM_CHECK_SEED)
        v = torch.randn(self.shape[0], 1, generator=gen, dtype=torch.float64).to(self.device, self.dtype)
        reference = ReverseEngine(self) if self.engine.name == "chain" else self.engine
        before = self.num_matvecs
        # One product through fresh contexts and one through the operator's usual path
        # (the cached contexts, if any): a cache would otherwise freeze one dropout mask.
        a = self.reducer.reduce(self._local_product(v, reference, fresh=True))
        b = self.matmat(v)
        self.num_matvecs = before
        self.check_matvecs = 2
        if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
            raise NonFiniteError(f"a product with {self.title} contains NaN or Inf; it is undefined here")
        scale = max(float(a.norm()), float(b.norm()), float(torch.finfo(torch.float64).tiny))
        tol = agreement_tolerance(self.dtype)
        diff = float((a - b).norm()) / scale
        if diff > tol and reference is not self.engine:
            # autograd against autograd tells a wrong chain product from a random matrix
            again = self.reducer.reduce(self._local_product(v, reference, fresh=True))
            self.check_matvecs = 3
            if float((again - a).norm()) / scale <= tol:
                self._switch_engine(f"its product differs from autograd's by {diff:.1e} (relative)")
                if self.cache_graph:
                    self._first_pass()
                diff = 0.0
        if diff > tol:
            suspects = random_modules(self.model)
            hint = f" (the model has {', '.join(suspects)})" if suspects else ""
            raise NonDeterministicError(
                f"{self.title} is not deterministic: the same vector gave products differing by "
                f"{diff:.2e} (relative){hint}; analyse in eval mode, without dropout, with a fixed data order"
            )

    # ------------------------------------------------------------------ public helpers
    def flatten(self, tensors: Any) -> torch.Tensor:
        """Concatenate per-parameter tensors into one flat vector of length P."""
        return self.layout.flatten(tensors)

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Split a flat vector (or a block ``[P, m]``) into per-parameter pieces."""
        return self.layout.unflatten(vector)

    def guard(self) -> Any:
        """A block (a solver between products) whose failure the other ranks must hear of."""
        return self.reducer.guard()

    def agree_min(self, value: float) -> float:
        """The minimum of ``value`` over all ranks (a collective under data parallelism)."""
        return self.reducer.agree_min(value)

    def estimated_dense_bytes(self) -> int:
        return self.shape[0] ** 2 * torch.empty((), dtype=self.dtype).element_size()

    def describe(self) -> dict[str, Any]:
        """Provenance of this operator, for results."""
        used = self.engine.name == "chain"
        info = {
            "matrix": self.name,
            **self.settings(),
            "num_params": self.shape[0],
            "num_samples": self.num_samples,
            "num_batches": self.source.num_batches,
            "batch_sizes": self.source.batch_sizes if self.source.num_batches <= 64 else None,
            **self.loss.describe(),
            "unit": self.unit,
            "batch_weighting": "n_b / N" if self.loss.reduction == "mean" else "1",
            "batch_reader": self.reader.settings(),
            "product_engine": self.engine.name,
            "hvp_mode": self.engine.name,  # the name older results use
            "chain_products": "used" if used else (self.engine_note or "not requested"),
            **({"forward_products": self.engine.path} if getattr(self.engine, "path", None) else {}),
            "cache_graph": self.cache_graph,
            "model_mode": "train" if self.train_mode else "eval",
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "param_names": self.param_names,
            "loss_value": self.loss_value,
            "grad_norm": self.grad_norm,
            "data": dict(self.source.info),
        }
        info.update(self.reducer.describe())
        return info


def _check_parameters(named: list[tuple[str, nn.Parameter]]) -> None:
    dtypes = {p.dtype for _, p in named}
    if len(dtypes) > 1:
        raise InvalidInputError(f"selected parameters mix dtypes {sorted(map(str, dtypes))}; use one dtype")
    check_product_dtype(next(iter(dtypes)))
    devices = {p.device for _, p in named}
    if len(devices) > 1:
        raise InvalidInputError(f"selected parameters live on several devices {sorted(map(str, devices))}")
    for n, p in named:
        if not bool(torch.isfinite(p.detach()).all()):
            raise NonFiniteError(f"the model's parameter {n!r} contains NaN or Inf")
