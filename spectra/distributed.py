"""Data-parallel Hessian spectra on ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

Each rank holds a shard of the data and the same model.  A Hessian product is
computed locally on the shard, weighted by ``n_b / N`` with ``N`` the sample
count over *all* ranks, and summed over ranks with one all-reduce — so the
operator is exactly the Hessian of the mean loss over the whole dataset, for
uneven shards too.  The eigen-solvers then run identically on every rank: they
see bitwise-identical products (an all-reduce leaves the same bytes on every
rank) and start from the same seeded probes, so every rank ends with the same
result; only rank 0 should write it (:func:`is_main_process`).

Launch with ``torchrun --nproc-per-node N script.py`` (or ``-m spectra analyze``)
and in the script::

    import spectra, spectra.distributed as sd
    sd.init_from_env()                                  # gloo on CPU, nccl for CUDA models
    data = sd.shard(spectra.datasets.load("mnist", n=1000, seed=0))
    result = spectra.analyze(model, data, method="arpack", distributed=True)
    if sd.is_main_process():
        result.save("runs/top10")

Failure policy (fail-stop, no hangs):

* Every collective of the operator is preceded by a small *status* all-reduce
  (a ``[world, 4]`` table: failed flag, collective number, block width, kind).
  A rank whose local work raises (a bad batch, out of memory, a NaN loss on its
  shard) still joins that status all-reduce, flagged, after leaving its message
  in the process group's store; every other rank then raises
  :class:`~spectra.errors.DistributedError` naming the failed rank and its
  message, while the failed rank raises its own original exception.  The same
  table catches ranks that are out of step (different chunk sizes, options or
  methods) before a mismatched all-reduce could hang or mix data.
* Failures outside the operator's products (e.g. a backend's memory check on
  one rank) are reported the same way by :meth:`DistributedHessianOperator.guard`,
  which ``spectra.analyze`` wraps around the planning and the solver.
* Work before or after the operator (loading data, training, writing results on
  rank 0) goes in :func:`fail_together`: one status all-reduce after the block
  tells every rank whether any rank failed in it.  The ``spectra analyze``
  command under torchrun runs every stage this way.
* A rank that dies closes its connections: gloo peers fail at once and raise
  :class:`DistributedError`.  A rank that hangs is caught by ``timeout``
  (seconds, per collective; default: the process group's own timeout, set by
  ``init_process_group(timeout=...)``/:func:`init_from_env`).  After a
  :class:`DistributedError` the process group is in an undefined state:
  destroy it (the process normally exits).
* The first collective also compares the ranks' parameter count, dtype,
  options and a fingerprint of the weights, and refuses ranks whose models
  differ (use :func:`broadcast_parameters` after training on each rank).

>>> shard((torch.arange(5.0)[:, None], torch.arange(5)), rank=1, world=2)[1].tolist()
[3, 4]
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import warnings
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .errors import DistributedError, InvalidInputError
from .operators.hessian import HessianOperator

# status table columns
_FAILED, _SEQ, _NCOLS, _KIND = range(4)
_KINDS = {1: "setup (sample count and model agreement)", 2: "gradient", 3: "Hessian product",
          4: "agreement on a number", 5: "fail_together step"}
_STEP_KIND = 5
# agreement table columns (first collective)
_AGREE_FIELDS = ("num_samples", "num_batches", "num_params", "dtype", "chunk_size", "mode", "reduction",
                 "weights_fingerprint", "weights_scale", "data_fingerprint")
_DTYPE_CODES = {torch.float64: 1, torch.float32: 2, torch.float16: 3, torch.bfloat16: 4}
_REPORT_WAIT_DEFAULT = 60.0  # seconds a failed rank waits to hand its failure to the others
_OPERATOR_IDS = itertools.count()
_STEP_IDS = itertools.count(1)
_REPORTED = "_spectra_reported"  # attribute set on an exception the other ranks have been told about


# ---------------------------------------------------------------- process state
def _dist() -> Any:
    import torch.distributed as dist

    return dist


def is_initialized() -> bool:
    """Whether ``torch.distributed`` is available and a default process group exists."""
    dist = _dist()
    return bool(dist.is_available() and dist.is_initialized())


def world_size() -> int:
    """Number of ranks (1 when torch.distributed is not initialised)."""
    return _dist().get_world_size() if is_initialized() else 1


def rank() -> int:
    """This process's rank (0 when torch.distributed is not initialised)."""
    return _dist().get_rank() if is_initialized() else 0


_process_rank = rank  # shard() takes a parameter named rank


def is_distributed() -> bool:
    """Whether a process group of more than one rank is initialised."""
    return is_initialized() and world_size() > 1


def is_main_process() -> bool:
    """True on rank 0 and in a plain single process: the one that prints and writes results."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """Whether the environment describes a multi-process launch (torchrun sets these variables)."""
    env = os.environ
    try:
        return int(env.get("WORLD_SIZE", "1")) > 1 and "RANK" in env and "MASTER_ADDR" in env
    except ValueError:
        return False


def init_from_env(backend: str | None = None, timeout: float | None = None) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    ``backend`` defaults to ``"nccl"`` when CUDA is available and
    ``LOCAL_RANK`` is set (the rank's GPU becomes the current device), else
    ``"gloo"``.  ``timeout`` (seconds) bounds every collective of the group.
    Returns True if a group is initialised afterwards (False without a
    multi-process launch); calling it twice is harmless.

    >>> init_from_env()  # a plain process: nothing to do
    False
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    dist = _dist()
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed support")
    if backend is None:
        use_cuda = torch.cuda.is_available() and "LOCAL_RANK" in os.environ
        backend = "nccl" if use_cuda else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    kwargs: dict[str, Any] = {"backend": backend}
    if timeout is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=float(timeout))
    try:
        dist.init_process_group(**kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised with what was tried
        raise DistributedError(
            f"could not initialise torch.distributed ({backend}, rank {os.environ.get('RANK')} of "
            f"{os.environ.get('WORLD_SIZE')}, master {os.environ.get('MASTER_ADDR')}:"
            f"{os.environ.get('MASTER_PORT')}): {_first_line(exc)}"
        ) from exc
    return True


def broadcast_parameters(model: nn.Module, src: int = 0, group: Any = None) -> None:
    """Copy rank ``src``'s parameters and buffers into ``model`` on every rank (in place)."""
    dist = _dist()
    if not is_initialized():
        return
    with torch.no_grad():
        for t in itertools.chain(model.parameters(), model.buffers()):
            dist.broadcast(t.data, src=src, group=group)


# ---------------------------------------------------------------------- sharding
def shard_sizes(num: int, world: int) -> list[int]:
    """Sizes of ``world`` contiguous shards of ``num`` items (the first ones one larger).

    >>> shard_sizes(10, 3)
    [4, 3, 3]
    """
    base, extra = divmod(int(num), int(world))
    return [base + (1 if r < extra else 0) for r in range(world)]


def _bounds(sizes: Sequence[int], r: int) -> tuple[int, int]:
    start = sum(sizes[:r])
    return start, start + sizes[r]


def shard_record(num: int, rank: int, world: int) -> dict[str, int]:
    """Where rank ``rank`` of ``world`` cuts ``num`` samples: the ``info["shard"]`` record of :func:`shard`.

    ``{"rank", "world", "start", "stop", "num_samples_total"}``: the rank holds
    samples ``start:stop``.  A dataset loader that loads only its shard (the
    ``shard=(rank, world)`` keyword, see :mod:`spectra.hookspecs`) picks those
    rows and stores this record, so that it returns what ``shard()`` of the
    whole dataset would.  Refuses a rank that would get no samples.

    >>> shard_record(10, 1, 3)
    {'rank': 1, 'world': 3, 'start': 4, 'stop': 7, 'num_samples_total': 10}
    """
    for value, what in ((num, "num"), (rank, "rank"), (world, "world")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputError(f"shard_record needs integers; got {what}={value!r}")
    if world < 1 or not 0 <= rank < world or num < 0:
        raise InvalidInputError(f"shard needs 0 <= rank < world and num >= 0; got rank={rank}, world={world}, "
                                f"num={num}")
    # shard_sizes() arithmetically, without a list of `world` sizes (world may be anything a user typed)
    base, extra = divmod(num, world)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    if stop == start:
        raise InvalidInputError(
            f"rank {rank} of {world} gets no samples: {num} samples cannot be shared by {world} ranks"
        )
    return {"rank": rank, "world": world, "start": start, "stop": stop, "num_samples_total": num}


def shard(data: Any, rank: int | None = None, world: int | None = None) -> Any:
    """This rank's contiguous part of ``data``; ``rank``/``world`` default to the process group's.

    * a :class:`spectra.data.Dataset` or a batch ``(X, y)``: samples split into
      ``world`` contiguous pieces whose sizes differ by at most one (same type back;
      a Dataset's ``info`` records the shard);
    * a list of batches: whole consecutive batches per rank, balanced by sample
      count, when there are at least ``world`` batches; otherwise a contiguous
      range of the samples, cut out of the batches it overlaps;
    * a map-style ``torch.utils.data.Dataset``: a contiguous ``Subset``.

    The shards of all ranks together are ``data`` exactly, in order.  A
    DataLoader cannot be split after the fact: shard its dataset and build one
    loader per rank (``shuffle=False``).

    >>> X, y = torch.zeros(7, 2), torch.arange(7)
    >>> [len(shard((X, y), r, 3)[1]) for r in range(3)]
    [3, 2, 2]
    """
    from .data import Dataset, _is_batch

    rank = _process_rank() if rank is None else int(rank)
    world = world_size() if world is None else int(world)
    if world < 1 or not 0 <= rank < world:
        raise InvalidInputError(f"shard needs 0 <= rank < world; got rank={rank}, world={world}")
    if isinstance(data, Dataset):
        record = shard_record(len(data), rank, world)
        a, b = record["start"], record["stop"]
        return Dataset(data.X[a:b], data.y[a:b], name=data.name, info={**data.info, "shard": record})
    if _is_batch(data):
        X, y = data
        sizes = shard_sizes(len(X), world)
        _refuse_empty(sizes, rank, world, len(X))
        a, b = _bounds(sizes, rank)
        return type(data)((X[a:b], y[a:b])) if isinstance(data, tuple) else [X[a:b], y[a:b]]
    if isinstance(data, torch.utils.data.DataLoader):
        raise InvalidInputError(
            "shard() cannot split a DataLoader; shard its dataset and build one loader per rank: "
            "DataLoader(spectra.distributed.shard(loader.dataset), batch_size=..., shuffle=False)"
        )
    if isinstance(data, (list, tuple)) and data and all(_is_batch(b) for b in data):
        if len(data) >= world:
            a, b = _balanced_batch_bounds([len(batch[0]) for batch in data], world, rank)
            return list(data[a:b])
        # fewer batches than ranks: this rank's contiguous range of the concatenated
        # samples, cut out of the batches it overlaps
        lengths = [len(batch[0]) for batch in data]
        sizes = shard_sizes(sum(lengths), world)
        _refuse_empty(sizes, rank, world, sum(lengths))
        lo, hi = _bounds(sizes, rank)
        pieces, offset = [], 0
        for (X, y), n in zip(data, lengths):
            a, b = max(lo - offset, 0), min(hi - offset, n)
            if a < b:
                pieces.append((X[a:b], y[a:b]))
            offset += n
        return pieces
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        sizes = shard_sizes(len(data), world)
        _refuse_empty(sizes, rank, world, len(data))
        a, b = _bounds(sizes, rank)
        return torch.utils.data.Subset(data, range(a, b))
    raise InvalidInputError(
        "shard() takes a spectra Dataset, a batch (X, y), a list of (X, y) batches or a map-style "
        f"torch Dataset; got {type(data).__name__}"
    )


def _refuse_empty(sizes: list[int], rank: int, world: int, total: int) -> None:
    if sizes[rank] == 0:
        raise InvalidInputError(
            f"rank {rank} of {world} gets no samples: {total} samples cannot be shared by {world} ranks"
        )


def _balanced_batch_bounds(batch_sizes: list[int], world: int, rank: int) -> tuple[int, int]:
    """Cut consecutive batches into ``world`` non-empty groups with about equal sample counts."""
    total = sum(batch_sizes)
    cumulative = list(itertools.accumulate(batch_sizes))
    cuts = [0]
    for r in range(1, world):
        target = total * r / world
        # first batch boundary at or past the target, keeping every group non-empty
        j = next((i + 1 for i, c in enumerate(cumulative) if c >= target), len(batch_sizes))
        j = max(j, cuts[-1] + 1)
        j = min(j, len(batch_sizes) - (world - r))
        cuts.append(j)
    cuts.append(len(batch_sizes))
    return cuts[rank], cuts[rank + 1]


# ---------------------------------------------------------------------- operator
class DistributedHessianOperator(HessianOperator):
    """:class:`~spectra.operators.hessian.HessianOperator` over data sharded across ranks.

    Takes the arguments of ``HessianOperator`` (``data`` is this rank's shard)
    plus ``group`` (default: the default process group) and ``timeout``
    (seconds any one collective may wait for the other ranks; ``None`` = the
    process group's timeout).  Every rank must construct it with the same model
    weights and options, and then call the same methods in the same order.
    """

    is_distributed = True
    chain_fallback_allowed = False  # a chain that disagrees with autograd on one rank raises on all

    def __init__(self, model: nn.Module, loss: Any = "cross_entropy", data: Any = None, *,
                 group: Any = None, timeout: float | None = None, **kwargs: Any):
        if not is_initialized():
            raise DistributedError(
                "torch.distributed is not initialised: launch with torchrun and call "
                "spectra.distributed.init_from_env() (or torch.distributed.init_process_group) first"
            )
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise InvalidInputError(f"timeout must be a positive number of seconds or None; got {timeout!r}")
        dist = _dist()
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        self.timeout = None if timeout is None else float(timeout)
        self._op_id = next(_OPERATOR_IDS)
        self._seq = 0
        self._failed = False
        self._table: torch.Tensor | None = None
        try:
            super().__init__(model, loss, data, **kwargs)
        except Exception as exc:
            self._report_failure(exc)
            raise

    # ---------------------------------------------------------- HessianOperator hooks
    def _global_num_samples(self, local: int) -> int:
        row = self._agreement_row(local)
        table = torch.zeros(self.world_size, len(row), dtype=torch.float64, device=self._comm_device())
        table[self.rank] = torch.tensor(row, dtype=torch.float64)
        self._collective(table, kind=1, ncols=len(row))
        self._table = table.cpu()
        self._check_agreement(self._table)
        return int(self._table[:, 0].sum().item())

    def _reduce(self, local: torch.Tensor) -> torch.Tensor:
        local = local.contiguous()
        kind, ncols = (2, local.numel()) if local.ndim == 1 else (3, local.shape[-1])
        self._collective(local, kind=kind, ncols=ncols)
        return local

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        try:
            return super()._matmat(V)
        except Exception as exc:
            self._report_failure(exc)
            raise

    # ------------------------------------------------------------------ public helpers
    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Report an exception raised inside the block to the other ranks, then re-raise it.

        Wrap any code that runs on every rank between the operator's products
        (a solver) so that a failure on one rank stops the others at their next
        product instead of leaving them waiting.
        """
        try:
            yield
        except Exception as exc:
            self._report_failure(exc)
            raise

    def agree_min(self, value: float) -> float:
        """The minimum of ``value`` over all ranks (a collective: call it on every rank)."""
        row = torch.zeros(self.world_size, dtype=torch.float64, device=self._comm_device())
        row[self.rank] = float(value)
        self._collective(row, kind=4, ncols=1)
        return float(row.min().item())

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        table = self._table
        if table is not None:
            out["num_batches"] = int(table[:, 1].sum().item())
            out["batch_sizes"] = None  # per-rank lists; see distributed.shard_samples
        out["distributed"] = {
            "world_size": self.world_size,
            "backend": self.backend,
            "shard_samples": None if table is None else [int(n) for n in table[:, 0].tolist()],
            "shard_batches": None if table is None else [int(n) for n in table[:, 1].tolist()],
            "batch_weighting": "n_b / N over all ranks, summed by all-reduce",
            "timeout_s": self.timeout,
            "collectives": self._seq,
        }
        return out

    # ------------------------------------------------------------------ internals
    def _comm_device(self) -> torch.device:
        # NCCL only moves CUDA tensors; gloo is happiest with CPU ones.  (Not self.device:
        # a rank that fails early reports before the operator knows its device.)
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _agreement_row(self, local: int) -> list[float]:
        flat = torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for p in self.params])
        # a fixed, position-dependent weighting catches permuted or shifted weights too
        w = torch.cos(torch.arange(flat.numel(), dtype=torch.float64) * 0.6180339887)
        chunk = getattr(self, "max_block", None)
        return [float(local), float(self.source.num_batches), float(self.shape[0]),
                float(_DTYPE_CODES.get(self.dtype, 9)), float(chunk or 0),
                1.0 if getattr(self, "mode", "reverse") == "reverse" else 2.0,
                1.0 if self.loss.reduction == "mean" else 2.0,
                float((flat * w).sum()), float((flat * w).abs().sum()), self._data_fingerprint()]

    def _data_fingerprint(self) -> float:
        """A number that differs between shards of different data (first batch only; NaN if not in memory)."""
        if not self.source.in_memory:
            return float("nan")
        X, _y = next(iter(self.source))
        x = X.reshape(-1)[:100_000].detach().to("cpu", torch.float64)
        return float((x * torch.cos(torch.arange(x.numel(), dtype=torch.float64))).sum()) + 1e6 * X.shape[0]

    def _check_agreement(self, table: torch.Tensor) -> None:
        names = dict(enumerate(_AGREE_FIELDS))
        for col in range(2, 7):
            values = table[:, col].tolist()
            if len(set(values)) > 1:
                per_rank = ", ".join(f"rank {r}: {v:g}" for r, v in enumerate(values))
                raise self._fail(f"the ranks disagree on {names[col]} ({per_rank}); every rank must build "
                                 "the operator from the same model, parameter selection and options")
        fp, scale = table[:, 7], table[:, 8]
        tol = 1e-10 * float(scale.max()) + 1e-300
        if float((fp - fp[0]).abs().max()) > tol:
            raise self._fail(
                "the ranks hold different model weights (fingerprints "
                + ", ".join(f"rank {r}: {v:.15g}" for r, v in enumerate(fp.tolist()))
                + "); seed the model identically or call spectra.distributed.broadcast_parameters(model)"
            )

        data = table[:, 9]
        if self.world_size > 1 and bool(torch.isfinite(data).all()) and bool((data == data[0]).all()) \
                and bool((table[:, 0] == table[0, 0]).all()):
            warnings.warn(
                f"all {self.world_size} ranks hold the same data: the Hessian is still right (each rank weighs "
                f"its copy by 1/{self.world_size}) but every rank does the full work and num_samples counts "
                "each sample once per rank; give each rank its part with spectra.distributed.shard(data)",
                stacklevel=4,
            )

    def _fail(self, message: str) -> DistributedError:
        self._failed = True
        return DistributedError(f"rank {self.rank}: {message}")

    def _store(self) -> Any:
        try:
            from torch.distributed import distributed_c10d

            return distributed_c10d._get_default_store()
        except Exception:  # noqa: BLE001 - messages are best effort
            return None

    def _key(self, seq: int, r: int) -> str:
        return f"spectra/op{self._op_id}/c{seq}/rank{r}"

    def _all_reduce(self, tensor: torch.Tensor, what: str) -> None:
        dist = _dist()
        try:
            if self.timeout is None:
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
            else:
                work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
                if work.wait(timeout=datetime.timedelta(seconds=self.timeout)) is False:
                    raise RuntimeError(f"no answer within {self.timeout:g} s")
        except DistributedError:
            raise
        except Exception as exc:  # gloo/NCCL errors: a peer crashed, left or hung
            limit = f"timeout={self.timeout:g} s" if self.timeout is not None else "the process group's timeout"
            raise self._fail(
                f"the {what} all-reduce (collective #{self._seq}) failed ({_first_line(exc).rstrip('.!')}): "
                f"another rank crashed, exited or did not answer within {limit}; this rank stops too"
            ) from exc

    def _status(self, kind: int, ncols: int, error: BaseException | None = None) -> None:
        """The status all-reduce that precedes every data all-reduce (see the module docstring)."""
        if self._failed and error is None:
            raise DistributedError(f"rank {self.rank}: an earlier distributed failure stopped this operator")
        self._seq += 1
        table = torch.zeros(self.world_size, 4, dtype=torch.float64, device=self._comm_device())
        table[self.rank] = torch.tensor([1.0 if error is not None else 0.0, self._seq, ncols, kind],
                                        dtype=torch.float64)
        if error is not None:
            _leave_message(self._store(), self._key(self._seq, self.rank), self.rank, error)
        self._all_reduce(table, "status")
        table = table.cpu()
        failed = [r for r in range(self.world_size) if table[r, _FAILED] > 0 and r != self.rank]
        if failed and error is None:
            messages = "; ".join(f"rank {r}: {self._message(int(table[r, _SEQ]), r)}" for r in failed)
            raise self._fail(f"stopping because another rank failed ({messages})")
        if error is None:
            rows = [tuple(table[r, 1:].tolist()) for r in range(self.world_size)]
            if len(set(rows)) > 1:
                detail = ", ".join(f"rank {r} at #{int(s)} ({_KINDS.get(int(k), k)}, {int(n)} columns)"
                                   for r, (s, n, k) in enumerate(rows))
                raise self._fail(f"the ranks are out of step: {detail}; every rank must run the same "
                                 "analysis with the same options")

    def _message(self, seq: int, r: int) -> str:
        store = self._store()
        key = self._key(seq, r)
        return _read_message(store, key, r)

    def _collective(self, tensor: torch.Tensor, kind: int, ncols: int) -> None:
        self._status(kind, ncols)
        self._all_reduce(tensor, _KINDS[kind])

    def _report_failure(self, exc: BaseException) -> None:
        """Hand a local failure to the other ranks (they are waiting in a status all-reduce)."""
        _mark_reported(exc)  # an enclosing fail_together() must not report it a second time
        if isinstance(exc, DistributedError) or self._failed:
            return
        self._failed = True
        timeout, self.timeout = self.timeout, self.timeout or _REPORT_WAIT_DEFAULT
        try:
            self._status(0, 0, error=exc)
        except Exception:  # noqa: BLE001 - the peers may be gone; the original error matters
            pass
        finally:
            self.timeout = timeout


# ------------------------------------------------------ failing together outside the operator
@contextlib.contextmanager
def fail_together(what: str, *, timeout: float | None = None, group: Any = None) -> Iterator[None]:
    """Run a block on every rank; when it raises on any rank, it raises on every rank.

    After the block every rank joins one small status all-reduce (the
    operator's ``[world, 4]`` table, so a rank stuck in an operator product is
    told too).  The failing rank re-raises its own exception; the others
    raise :class:`~spectra.errors.DistributedError` naming the failed rank and
    its message (left in the process group's store).  Exceptions the operator
    has already reported to the others (and every ``DistributedError``) are
    re-raised without a second exchange.  ``what`` ("while loading the data")
    goes into the message; ``timeout`` (seconds) bounds the wait for the
    other ranks (default: the process group's timeout).  In a plain process
    it only runs the block.

    >>> with fail_together("while adding"):  # a plain process: just the block
    ...     total = 1 + 1
    """
    error: Exception | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every failure is handed to the other ranks
        error = exc
    if is_initialized() and _dist().get_world_size(group) > 1 and not _was_reported(error):
        _exchange_status(what, error, timeout, group)
    if error is not None:
        raise error


def _exchange_status(what: str, error: Exception | None, timeout: float | None, group: Any) -> None:
    dist = _dist()
    me, world = dist.get_rank(group), dist.get_world_size(group)
    step = next(_STEP_IDS)
    device = (torch.device("cuda", torch.cuda.current_device()) if str(dist.get_backend(group)) == "nccl"
              else torch.device("cpu"))
    table = torch.zeros(world, 4, dtype=torch.float64, device=device)
    table[me] = torch.tensor([1.0 if error is not None else 0.0, step, 0, _STEP_KIND], dtype=torch.float64)
    store = _default_store()
    if error is not None:
        _mark_reported(error)
        _leave_message(store, f"spectra/step{step}/rank{me}", me, error)
        timeout = timeout or _REPORT_WAIT_DEFAULT
    try:
        _all_reduce_within(table, timeout, group)
    except Exception as exc:  # noqa: BLE001 - a peer crashed, exited or hung
        if error is not None:
            return  # this rank's own failure is the message that matters
        limit = f"{timeout:g} s" if timeout is not None else "the process group's timeout"
        raise DistributedError(
            f"rank {me}: the status all-reduce {what} failed ({_first_line(exc).rstrip('.!')}): another rank "
            f"crashed, exited or did not answer within {limit}; this rank stops too") from exc
    if error is not None:
        return
    table = table.cpu()
    failed = [r for r in range(world) if table[r, _FAILED] > 0 and r != me]
    if failed:
        messages = "; ".join(f"rank {r}: {_read_message(store, f'spectra/step{step}/rank{r}', r)}"
                             for r in failed)
        raise DistributedError(f"rank {me}: stopping because another rank failed {what} ({messages})")
    kinds = table[:, _KIND].tolist()
    steps = table[:, _SEQ].tolist()
    if any(k != _STEP_KIND for k in kinds) or len(set(steps)) > 1:
        detail = ", ".join(f"rank {r} at {_KINDS.get(int(k), k)} #{int(s)}"
                           for r, (s, k) in enumerate(zip(steps, kinds)))
        raise DistributedError(f"rank {me}: the ranks are out of step {what}: {detail}; every rank must run "
                               "the same command with the same options")


def _all_reduce_within(tensor: torch.Tensor, timeout: float | None, group: Any) -> None:
    dist = _dist()
    if timeout is None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        return
    work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group, async_op=True)
    if work.wait(timeout=datetime.timedelta(seconds=float(timeout))) is False:
        raise RuntimeError(f"no answer within {timeout:g} s")


def _default_store() -> Any:
    try:
        from torch.distributed import distributed_c10d

        return distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - messages are best effort
        return None


def _failure_key(r: int) -> str:
    # a rank's latest failure, for a peer that looks under another collective's key
    # (one rank failed in a fail_together step while the other waited in an operator product)
    return f"spectra/failure/rank{r}"


def _leave_message(store: Any, key: str, r: int, error: BaseException) -> None:
    if store is None:
        return
    text = f"{type(error).__name__}: {error}"
    with contextlib.suppress(Exception):
        store.set(key, text)
        store.set(_failure_key(r), text)


def _read_message(store: Any, key: str, r: int) -> str:
    if store is not None:
        for k in (key, _failure_key(r)):
            with contextlib.suppress(Exception):
                if store.check([k]):
                    return store.get(k).decode("utf-8", "replace")
    return "(no message)"


def _mark_reported(exc: BaseException) -> None:
    with contextlib.suppress(Exception):
        setattr(exc, _REPORTED, True)


def _was_reported(exc: BaseException | None) -> bool:
    return exc is not None and (isinstance(exc, DistributedError) or bool(getattr(exc, _REPORTED, False)))


def farewell(store: Any = None, rank: int | None = None, world: int | None = None, timeout: float = 2.0) -> None:
    """Before a rank exits with an error: mark it done, then wait (at most ``timeout`` s) for the others.

    torchrun stops every rank as soon as one exits with an error, so without
    this a rank could be killed before it printed why it stopped.  Call it on
    every rank that fails, after printing.  ``store``, ``rank`` and ``world``
    default to the process group's (pass ones kept from before :func:`destroy`).
    Never raises; does nothing without a store.
    """
    with contextlib.suppress(Exception):
        store = _default_store() if store is None else store
        me = _process_rank() if rank is None else int(rank)
        world = world_size() if world is None else int(world)
        if store is None or world < 2:
            return
        store.set(f"spectra/farewell/rank{me}", "1")
        others = [f"spectra/farewell/rank{r}" for r in range(world) if r != me]
        store.wait(others, datetime.timedelta(seconds=float(timeout)))


def destroy() -> None:
    """Destroy the default process group if one exists (harmless otherwise)."""
    if is_initialized():
        with contextlib.suppress(Exception):
            _dist().destroy_process_group()


def operator_class(distributed: bool | str) -> type[HessianOperator]:
    """The operator ``spectra.analyze(distributed=...)`` builds.

    ``False``: the plain operator.  ``"auto"``: the distributed one when a group
    of more than one rank is initialised, or when torchrun launched this
    process (the group is then initialised here with :func:`init_from_env`).
    ``True``: like ``"auto"`` but an error when there is no multi-rank launch.
    """
    if distributed is False or distributed is None:
        return HessianOperator
    if distributed not in (True, "auto"):
        raise InvalidInputError(f"distributed must be True, False or 'auto'; got {distributed!r}")
    if not is_initialized():
        init_from_env()
    if is_distributed():
        return DistributedHessianOperator
    if distributed is True:
        if is_initialized():
            return DistributedHessianOperator  # a one-rank group: legal, if pointless
        raise DistributedError(
            "distributed=True but torch.distributed is not initialised and this process was not "
            "launched by torchrun; launch with 'torchrun --nproc-per-node N ...' or use distributed='auto'"
        )
    return HessianOperator


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = [
    "DistributedHessianOperator", "broadcast_parameters", "destroy", "fail_together", "farewell", "init_from_env",
    "is_distributed",
    "is_initialized", "is_main_process", "launched_by_torchrun", "operator_class", "rank", "shard",
    "shard_record", "shard_sizes", "world_size",
]
