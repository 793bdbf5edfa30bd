"""Fail-stop collectives: when one rank fails, every rank stops with its message, and nothing hangs.

* Every data all-reduce of a :class:`FailStopChannel` is preceded by a small
  *status* all-reduce (a ``[world, 4]`` table: failed flag, collective number,
  block width, kind).  A rank whose local work raises (a bad batch, out of
  memory, a NaN loss on its shard) still joins that status all-reduce,
  flagged, after leaving its message in the process group's store; every
  other rank then raises :class:`~spectra.errors.DistributedError` naming the
  failed rank and its message, while the failed rank raises its own original
  exception.  The same table catches ranks that are out of step (different
  chunk sizes, options or methods) before a mismatched all-reduce could hang
  or mix data.
* Work between collectives (a solver's checks) reports its failures through
  :meth:`FailStopChannel.guard`.
* Work outside any channel (loading data, training, writing results on rank
  0) goes in :func:`fail_together`: one status all-reduce after the block tells
  every rank whether any rank failed in it.
* A rank that dies closes its connections: gloo peers fail at once.  A rank
  that hangs is caught by ``timeout`` (seconds, per collective; default: the
  process group's own timeout).  After a :class:`DistributedError` the process
  group is in an undefined state: destroy it (the process normally exits).

>>> with fail_together("while adding"):  # a plain process: just the block
...     total = 1 + 1
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
from typing import Any, Iterator

import torch

from ..errors import DistributedError
from .process import first_line, is_initialized, torch_distributed, world_size
from .process import rank as process_rank

__all__ = ["FailStopChannel", "all_reduce", "default_store", "fail_together", "farewell"]

# status table columns
_FAILED, _SEQ, _NCOLS, _KIND = range(4)
#: Kinds of collective, as the status table records them.
SETUP, GRADIENT, PRODUCT, AGREEMENT, STEP = 1, 2, 3, 4, 5
_KIND_NAMES = {SETUP: "setup (sample count and model agreement)", GRADIENT: "gradient",
               PRODUCT: "curvature product", AGREEMENT: "agreement on a number", STEP: "fail_together step"}
REPORT_WAIT_SECONDS = 60.0  # how long a failed rank waits to hand its failure to the others
FAREWELL_WAIT_SECONDS = 2.0
_CHANNEL_IDS = itertools.count()
_STEP_IDS = itertools.count(1)
_REPORTED = "_spectra_reported"  # attribute set on an exception the other ranks have been told about


def default_store() -> Any:
    """The default process group's key-value store (None when there is none)."""
    try:
        from torch.distributed import distributed_c10d

        return distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - messages are best effort
        return None


def all_reduce(tensor: torch.Tensor, timeout: float | None = None, group: Any = None) -> None:
    """Sum ``tensor`` over the ranks in place; raise ``RuntimeError`` after ``timeout`` seconds without an answer."""
    dist = torch_distributed()
    if timeout is None:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        return
    work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group, async_op=True)
    if work.wait(timeout=datetime.timedelta(seconds=float(timeout))) is False:
        raise RuntimeError(f"no answer within {timeout:g} s")


def _comm_device(backend: str) -> torch.device:
    # NCCL only moves CUDA tensors; gloo is happiest with CPU ones
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


class FailStopChannel:
    """The collectives of one participant (a data-parallel operator) on every rank, failing together.

    Every rank must create its channel alike and call the same collectives in
    the same order.  ``timeout`` (seconds) bounds each collective (``None``:
    the process group's timeout).
    """

    def __init__(self, group: Any = None, timeout: float | None = None):
        dist = torch_distributed()
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        self.timeout = timeout
        self.device = _comm_device(self.backend)
        self.failed = False
        self.collectives = 0
        self._id = next(_CHANNEL_IDS)

    def collective(self, tensor: torch.Tensor, kind: int, ncols: int) -> None:
        """The status all-reduce, then the sum of ``tensor`` over the ranks (in place)."""
        self._status(kind, ncols)
        self._all_reduce(tensor, _KIND_NAMES[kind])

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Report an exception raised inside the block to the other ranks, then re-raise it."""
        try:
            yield
        except Exception as exc:
            self.report_failure(exc)
            raise

    def fail(self, message: str) -> DistributedError:
        """A :class:`DistributedError` for this rank; the channel refuses further collectives."""
        self.failed = True
        return DistributedError(f"rank {self.rank}: {message}")

    def report_failure(self, exc: BaseException) -> None:
        """Hand a local failure to the other ranks (they are waiting in a status all-reduce)."""
        _mark_reported(exc)  # an enclosing fail_together() must not report it a second time
        if isinstance(exc, DistributedError) or self.failed:
            return
        self.failed = True
        timeout, self.timeout = self.timeout, self.timeout or REPORT_WAIT_SECONDS
        try:
            self._status(0, 0, error=exc)
        except Exception:  # noqa: BLE001 - the peers may be gone; the original error matters
            pass
        finally:
            self.timeout = timeout

    # ------------------------------------------------------------------ internals
    def _key(self, seq: int, r: int) -> str:
        return f"spectra/op{self._id}/c{seq}/rank{r}"

    def _all_reduce(self, tensor: torch.Tensor, what: str) -> None:
        try:
            all_reduce(tensor, self.timeout, self.group)
        except DistributedError:
            raise
        except Exception as exc:  # gloo/NCCL errors: a peer crashed, left or hung
            limit = f"timeout={self.timeout:g} s" if self.timeout is not None else "the process group's timeout"
            raise self.fail(
                f"the {what} all-reduce (collective #{self.collectives}) failed "
                f"({first_line(exc).rstrip('.!')}): another rank crashed, exited or did not answer within "
                f"{limit}; this rank stops too"
            ) from exc

    def _status(self, kind: int, ncols: int, error: BaseException | None = None) -> None:
        if self.failed and error is None:
            raise DistributedError(f"rank {self.rank}: an earlier distributed failure stopped this operator")
        self.collectives += 1
        table = torch.zeros(self.world_size, 4, dtype=torch.float64, device=self.device)
        table[self.rank] = torch.tensor([1.0 if error is not None else 0.0, self.collectives, ncols, kind],
                                        dtype=torch.float64)
        store = default_store()
        if error is not None:
            _leave_message(store, self._key(self.collectives, self.rank), self.rank, error)
        self._all_reduce(table, "status")
        table = table.cpu()
        failed = [r for r in range(self.world_size) if table[r, _FAILED] > 0 and r != self.rank]
        if failed and error is None:
            messages = "; ".join(f"rank {r}: {_read_message(store, self._key(int(table[r, _SEQ]), r), r)}"
                                 for r in failed)
            raise self.fail(f"stopping because another rank failed ({messages})")
        if error is None:
            rows = [tuple(table[r, 1:].tolist()) for r in range(self.world_size)]
            if len(set(rows)) > 1:
                detail = ", ".join(f"rank {r} at #{int(s)} ({_KIND_NAMES.get(int(k), k)}, {int(n)} columns)"
                                   for r, (s, n, k) in enumerate(rows))
                raise self.fail(f"the ranks are out of step: {detail}; every rank must run the same "
                                "analysis with the same options")


# ------------------------------------------------------ failing together outside a channel
@contextlib.contextmanager
def fail_together(what: str, *, timeout: float | None = None, group: Any = None) -> Iterator[None]:
    """Run a block on every rank; when it raises on any rank, it raises on every rank.

    After the block every rank joins one small status all-reduce (the
    channels' ``[world, 4]`` table, so a rank stuck in an operator product is
    told too).  The failing rank re-raises its own exception; the others
    raise :class:`~spectra.errors.DistributedError` naming the failed rank and
    its message (left in the process group's store).  Exceptions a channel
    has already reported to the others (and every ``DistributedError``) are
    re-raised without a second exchange.  ``what`` ("while loading the data")
    goes into the message; ``timeout`` (seconds) bounds the wait for the
    other ranks (default: the process group's timeout).  In a plain process
    it only runs the block.
    """
    error: Exception | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - every failure is handed to the other ranks
        error = exc
    if is_initialized() and world_size(group) > 1 and not _was_reported(error):
        _exchange_status(what, error, timeout, group)
    if error is not None:
        raise error


def _exchange_status(what: str, error: Exception | None, timeout: float | None, group: Any) -> None:
    dist = torch_distributed()
    me, world = dist.get_rank(group), dist.get_world_size(group)
    step = next(_STEP_IDS)
    table = torch.zeros(world, 4, dtype=torch.float64, device=_comm_device(str(dist.get_backend(group))))
    table[me] = torch.tensor([1.0 if error is not None else 0.0, step, 0, STEP], dtype=torch.float64)
    store = default_store()
    if error is not None:
        _mark_reported(error)
        _leave_message(store, f"spectra/step{step}/rank{me}", me, error)
        timeout = timeout or REPORT_WAIT_SECONDS
    try:
        all_reduce(table, timeout, group)
    except Exception as exc:  # noqa: BLE001 - a peer crashed, exited or hung
        if error is not None:
            return  # this rank's own failure is the message that matters
        limit = f"{timeout:g} s" if timeout is not None else "the process group's timeout"
        raise DistributedError(
            f"rank {me}: the status all-reduce {what} failed ({first_line(exc).rstrip('.!')}): another rank "
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
    if any(k != STEP for k in kinds) or len(set(steps)) > 1:
        detail = ", ".join(f"rank {r} at {_KIND_NAMES.get(int(k), k)} #{int(s)}"
                           for r, (s, k) in enumerate(zip(steps, kinds)))
        raise DistributedError(f"rank {me}: the ranks are out of step {what}: {detail}; every rank must run "
                               "the same command with the same options")


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


def farewell(store: Any = None, rank: int | None = None, world: int | None = None,
             timeout: float = FAREWELL_WAIT_SECONDS) -> None:
    """Before a rank exits with an error: mark it done, then wait (at most ``timeout`` s) for the others.

    torchrun stops every rank as soon as one exits with an error, so without
    this a rank could be killed before it printed why it stopped.  Call it on
    every rank that fails, after printing.  ``store``, ``rank`` and ``world``
    default to the process group's (pass ones kept from before
    :func:`~spectra.parallel.destroy`).  Never raises; does nothing without a store.
    """
    with contextlib.suppress(Exception):
        store = default_store() if store is None else store
        me = process_rank() if rank is None else int(rank)
        world = world_size() if world is None else int(world)
        if store is None or world < 2:
            return
        store.set(f"spectra/farewell/rank{me}", "1")
        others = [f"spectra/farewell/rank{r}" for r in range(world) if r != me]
        store.wait(others, datetime.timedelta(seconds=float(timeout)))
