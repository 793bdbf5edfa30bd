"""This process's place in a ``torch.distributed`` job: rank, world size, set-up and tear-down.

Every function works in a plain process too (rank 0 of a world of 1), so code
written for ``torchrun`` runs unchanged without it.

>>> rank(), world_size(), is_main_process(), is_distributed()
(0, 1, True, False)
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
from typing import Any

import torch
from torch import nn

from ..errors import DistributedError, first_line

__all__ = ["broadcast_parameters", "destroy", "first_line", "init_from_env", "is_distributed", "is_initialized",
           "is_main_process", "launched_by_torchrun", "rank", "torch_distributed", "world_size"]


def torch_distributed() -> Any:
    """The ``torch.distributed`` module (imported on first use)."""
    import torch.distributed as dist

    return dist


def is_initialized() -> bool:
    """Whether ``torch.distributed`` is available and a default process group exists."""
    dist = torch_distributed()
    return bool(dist.is_available() and dist.is_initialized())


def world_size(group: Any = None) -> int:
    """Number of ranks in ``group`` (default: the default group; 1 when torch.distributed is not initialised)."""
    return torch_distributed().get_world_size(group) if is_initialized() else 1


def rank(group: Any = None) -> int:
    """This process's rank in ``group`` (0 when torch.distributed is not initialised)."""
    return torch_distributed().get_rank(group) if is_initialized() else 0


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
    dist = torch_distributed()
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
            f"{os.environ.get('MASTER_PORT')}): {first_line(exc)}"
        ) from exc
    return True


def broadcast_parameters(model: nn.Module, src: int = 0, group: Any = None) -> None:
    """Copy rank ``src``'s parameters and buffers into ``model`` on every rank (in place)."""
    if not is_initialized():
        return
    dist = torch_distributed()
    with torch.no_grad():
        for t in itertools.chain(model.parameters(), model.buffers()):
            dist.broadcast(t.data, src=src, group=group)


def destroy() -> None:
    """Destroy the default process group if one exists (harmless otherwise)."""
    if is_initialized():
        with contextlib.suppress(Exception):
            torch_distributed().destroy_process_group()


