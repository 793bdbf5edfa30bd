"""Data parallelism for every curvature matrix: the reducer a curvature operator sums through.

A curvature operator (:class:`~spectra.operators.curvature.CurvatureOperator`)
computes its first pass and every product on the batches it holds, weighted by
``count_b / N`` with ``N`` the count over *all* ranks, and hands each local sum
to its reducer.  :class:`LocalReducer` (one process) returns it as is;
:class:`DataParallelReducer` sums it over the ranks with one all-reduce, so
the operator is exactly the matrix of the whole dataset, for uneven shards
too.  The eigen-solvers then run identically on every rank: they see
bitwise-identical products (an all-reduce leaves the same bytes on every rank)
and start from the same seeded probes, so every rank ends with the same
result; only rank 0 should write it (:func:`~spectra.parallel.is_main_process`).

The first collective compares the ranks' parameter count, dtype, chunk size,
matrix and options, and a fingerprint of the weights, and refuses ranks whose
models differ (use :func:`~spectra.parallel.broadcast_parameters` after training
on each rank).  Failures follow :mod:`spectra.parallel.failstop`.

>>> reducer = make_reducer(False)
>>> reducer.is_distributed, data_parallel_requested("auto")  # a plain process
(False, False)
"""

from __future__ import annotations

import contextlib
import warnings
import zlib
from typing import TYPE_CHECKING, Any, Iterator

import torch

from ..batches import tensors_in
from ..errors import DistributedError, InvalidInputError
from .failstop import AGREEMENT, GRADIENT, PRODUCT, SETUP, FailStopChannel
from .process import init_from_env, is_distributed, is_initialized

if TYPE_CHECKING:
    from ..operators.curvature import CurvatureOperator

__all__ = ["DataParallelReducer", "LocalReducer", "data_parallel_requested", "make_reducer"]

# agreement table columns (first collective): summed counts, then what every rank must share
_COUNT, _ROWS, _BATCHES, _PARAMS, _DTYPE, _CHUNK, _SETTINGS, _WEIGHTS, _WEIGHTS_SCALE, _DATA = range(10)
_MUST_AGREE = {_PARAMS: "num_params", _DTYPE: "dtype", _CHUNK: "chunk_size",
               _SETTINGS: "the matrix, engine and options"}
_DTYPE_CODES = {torch.float64: 1, torch.float32: 2, torch.float16: 3, torch.bfloat16: 4}
_GOLDEN = 0.6180339887  # frequency of the position-dependent weighting of the weight fingerprint
_FINGERPRINT_ENTRIES = 100_000  # inputs of the first batch that enter the data fingerprint
_FINGERPRINT_RTOL = 1e-10
_FINGERPRINT_ROW_WEIGHT = 1e6  # the batch's size enters the data fingerprint too


class LocalReducer:
    """One process: every sum is already complete (and the interface every reducer has)."""

    is_distributed = False

    def setup(self, op: "CurvatureOperator", count: int, rows: int) -> tuple[int, int]:
        """``(total count, index of this process's first sample)`` over all ranks."""
        return count, 0

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over all ranks of a local vector (the first pass) or block ``[P, m]`` (a product)."""
        return tensor

    def guard(self) -> contextlib.AbstractContextManager:
        """A block whose failure the other ranks must hear of."""
        return contextlib.nullcontext()

    def agree_min(self, value: float) -> float:
        """The minimum of ``value`` over all ranks."""
        return value

    def describe(self) -> dict[str, Any]:
        return {}


class DataParallelReducer(LocalReducer):
    """Sums over the ranks of ``group`` by all-reduce, through a fail-stop channel.

    ``timeout``: seconds any one collective may wait for the other ranks
    (``None``: the process group's timeout).
    """

    is_distributed = True

    def __init__(self, group: Any = None, timeout: float | None = None):
        if not is_initialized():
            raise DistributedError(
                "torch.distributed is not initialised: launch with torchrun and call "
                "spectra.parallel.init_from_env() (or torch.distributed.init_process_group) first"
            )
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or timeout <= 0):
            raise InvalidInputError(f"timeout must be a positive number of seconds or None; got {timeout!r}")
        self.channel = FailStopChannel(group, None if timeout is None else float(timeout))
        self._table: torch.Tensor | None = None

    @property
    def world_size(self) -> int:
        return self.channel.world_size

    def setup(self, op: "CurvatureOperator", count: int, rows: int) -> tuple[int, int]:
        row = _agreement_row(op, count, rows)
        table = torch.zeros(self.world_size, len(row), dtype=torch.float64, device=self.channel.device)
        table[self.channel.rank] = torch.tensor(row, dtype=torch.float64)
        self.channel.collective(table, SETUP, len(row))
        self._table = table.cpu()
        self._check_agreement(self._table)
        offset = int(self._table[: self.channel.rank, _ROWS].sum().item())
        return int(self._table[:, _COUNT].sum().item()), offset

    def reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        kind, ncols = (GRADIENT, tensor.numel()) if tensor.ndim == 1 else (PRODUCT, tensor.shape[-1])
        self.channel.collective(tensor, kind, ncols)
        return tensor

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        with self.channel.guard():
            yield

    def agree_min(self, value: float) -> float:
        row = torch.zeros(self.world_size, dtype=torch.float64, device=self.channel.device)
        row[self.channel.rank] = float(value)
        self.channel.collective(row, AGREEMENT, 1)
        return float(row.min().item())

    def describe(self) -> dict[str, Any]:
        table = self._table
        out: dict[str, Any] = {}
        if table is not None:
            out["num_batches"] = int(table[:, _BATCHES].sum().item())
            out["batch_sizes"] = None  # per-rank lists; see distributed.shard_samples
        out["distributed"] = {
            "world_size": self.world_size,
            "backend": self.channel.backend,
            "shard_samples": None if table is None else [int(n) for n in table[:, _ROWS].tolist()],
            "shard_batches": None if table is None else [int(n) for n in table[:, _BATCHES].tolist()],
            "batch_weighting": "count_b / N over all ranks, summed by all-reduce",
            "timeout_s": self.channel.timeout,
            "collectives": self.channel.collectives,
        }
        return out

    def _check_agreement(self, table: torch.Tensor) -> None:
        for col, name in _MUST_AGREE.items():
            values = table[:, col].tolist()
            if len(set(values)) > 1:
                per_rank = ", ".join(f"rank {r}: {v:g}" for r, v in enumerate(values))
                raise self.channel.fail(f"the ranks disagree on {name} ({per_rank}); every rank must build "
                                        "the operator from the same model, parameter selection and options")
        fp, scale = table[:, _WEIGHTS], table[:, _WEIGHTS_SCALE]
        tol = _FINGERPRINT_RTOL * float(scale.max()) + float(torch.finfo(torch.float64).tiny)
        if float((fp - fp[0]).abs().max()) > tol:
            raise self.channel.fail(
                "the ranks hold different model weights (fingerprints "
                + ", ".join(f"rank {r}: {v:.15g}" for r, v in enumerate(fp.tolist()))
                + "); seed the model identically or call spectra.parallel.broadcast_parameters(model)"
            )
        data = table[:, _DATA]
        if self.world_size > 1 and bool(torch.isfinite(data).all()) and bool((data == data[0]).all()) \
                and bool((table[:, _ROWS] == table[0, _ROWS]).all()):
            warnings.warn(
                f"all {self.world_size} ranks hold the same data: the matrix is still right (each rank weighs "
                f"its copy by 1/{self.world_size}) but every rank does the full work and num_samples counts "
                "each sample once per rank; give each rank its part with spectra.sharding.shard(data)",
                stacklevel=5,
            )


def _agreement_row(op: "CurvatureOperator", count: int, rows: int) -> list[float]:
    flat = op.layout.flatten_params(op.params).to("cpu", torch.float64)
    # a fixed, position-dependent weighting catches permuted or shifted weights too
    w = torch.cos(torch.arange(flat.numel(), dtype=torch.float64) * _GOLDEN)
    settings = repr((op.name, op.engine.name, op.loss.reduction, sorted(op.settings().items())))
    return [float(count), float(rows), float(op.source.num_batches), float(op.shape[0]),
            float(_DTYPE_CODES.get(op.dtype, 9)), float(op.max_block or 0), float(zlib.crc32(settings.encode())),
            float((flat * w).sum()), float((flat * w).abs().sum()), _data_fingerprint(op)]


def _data_fingerprint(op: "CurvatureOperator") -> float:
    """A number that differs between shards of different data (first batch only; NaN if not in memory)."""
    if not op.source.in_memory:
        return float("nan")
    inputs, _ = op.reader.split(next(iter(op.source)))
    first = next((t for _, t in tensors_in(inputs) if t.ndim > 0), None)  # a dict batch: its first tensor
    if first is None:
        return float("nan")
    x = first.reshape(-1)[:_FINGERPRINT_ENTRIES].detach().to("cpu", torch.float64)
    weighted = float((x * torch.cos(torch.arange(x.numel(), dtype=torch.float64))).sum())
    return weighted + _FINGERPRINT_ROW_WEIGHT * first.shape[0]


def make_reducer(distributed: bool | str = False, group: Any = None, timeout: float | None = None) -> LocalReducer:
    """The reducer for ``distributed`` (as :func:`data_parallel_requested` reads it)."""
    if data_parallel_requested(distributed):
        return DataParallelReducer(group, timeout)
    if group is not None or timeout is not None:
        raise InvalidInputError("group and timeout apply only to a data-parallel operator (distributed=True)")
    return LocalReducer()


def data_parallel_requested(distributed: bool | str) -> bool:
    """Whether ``distributed`` asks for data parallelism here.

    ``False``: no.  ``"auto"``: when a group of more than one rank is
    initialised, or when torchrun launched this process (the group is then
    initialised here with :func:`~spectra.parallel.init_from_env`).  ``True``:
    yes, and an error when there is no process group (a one-rank group is
    legal, if pointless).
    """
    if distributed is False or distributed is None:
        return False
    if distributed not in (True, "auto"):
        raise InvalidInputError(f"distributed must be True, False or 'auto'; got {distributed!r}")
    if not is_initialized():
        init_from_env()
    if is_distributed():
        return True
    if distributed is True:
        if is_initialized():
            return True
        raise DistributedError(
            "distributed=True but torch.distributed is not initialised and this process was not "
            "launched by torchrun; launch with 'torchrun --nproc-per-node N ...' or use distributed='auto'"
        )
    return False
