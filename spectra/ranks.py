"""One process's view of a torchrun launch: a plain process, or one rank of a data-parallel run.

:func:`spectra.pipeline.run` runs each stage of its work in :meth:`Ranks.step`,
so an error on any rank stops every rank with a one-line message instead of
leaving the others waiting.  In a plain process every method does nothing
special.
"""

from __future__ import annotations

import contextlib
from typing import Any

from .errors import DistributedError, InvalidInputError, first_line


class Ranks:
    """torch.distributed as the pipeline sees it: a plain process, or one rank of a torchrun launch.

    Under ``torchrun --nproc-per-node N -m spectra analyze ...`` every rank
    builds the same model, loads only its shard of the data (the whole
    dataset with ``--train``, since training is not data-parallel, or when the
    dataset cannot load a shard), trains alike, analyses its shard, and only
    rank 0 prints and writes.  ``Ranks(timeout)`` joins the launch's process
    group (gloo) if torchrun started this process; :meth:`close` leaves it.
    Each stage runs in
    :func:`spectra.distributed.fail_together`, so an error on any rank stops
    every rank with a one-line message instead of leaving them waiting.
    """

    def __init__(self, timeout: float | None = None) -> None:
        from . import distributed as sd

        if timeout is not None and not timeout > 0:
            raise InvalidInputError(f"--timeout must be a positive number of seconds; got {timeout:g}")
        self.sd = sd
        self.owns_group = False
        if sd.launched_by_torchrun() and not sd.is_initialized():
            # gloo: the command builds models and data on the CPU (NCCL would need CUDA tensors);
            # the timeout bounds every collective of the group
            self.owns_group = sd.init_from_env(backend="gloo", timeout=timeout)
        self.active = sd.is_distributed()
        self.rank, self.world = sd.rank(), sd.world_size()
        self.main = self.rank == 0
        self.store = sd.default_store() if self.active else None  # for farewell(), after close()

    def step(self, what: str) -> Any:
        """A stage every rank runs; when it fails on one rank it fails on all."""
        return self.sd.fail_together(what) if self.active else contextlib.nullcontext()

    def check_shards(self, record: dict[str, int]) -> None:
        """Refuse shards that do not tile one dataset: every rank must load the same number of samples.

        One all-reduce of each rank's ``info["shard"]`` record; every rank then
        reaches the same verdict, so run it in a :meth:`step` of its own.
        """
        if not self.active:
            return
        import torch

        table = torch.zeros(self.world, 3, dtype=torch.float64)
        table[self.rank] = torch.tensor([record["num_samples_total"], record["start"], record["stop"]],
                                        dtype=torch.float64)
        self.sd.all_reduce(table)
        check_tiling([[int(v) for v in row] for row in table.tolist()])

    def share_weights(self, model: Any) -> None:
        """Rank 0's weights on every rank, bit for bit (training may differ in the last bits between hosts)."""
        if not self.active:
            return
        try:
            self.sd.broadcast_parameters(model)
        except Exception as exc:  # noqa: BLE001 - gloo/NCCL errors: a peer crashed or left
            raise DistributedError(f"rank {self.rank}: could not receive rank 0's weights "
                                   f"({first_line(exc)}): "
                                   "another rank crashed or exited; this rank stops too") from exc

    def close(self) -> None:
        if self.owns_group:
            self.sd.destroy()

    def farewell(self) -> None:
        """After printing an error: wait briefly for the other ranks to print theirs (torchrun kills on exit)."""
        if self.active:
            self.sd.farewell(self.store, self.rank, self.world)


def check_tiling(rows: list[list[int]]) -> None:
    """``rows[r] = [num_samples_total, start, stop]`` of rank ``r``: the shards must cut one dataset in order.

    >>> check_tiling([[5, 0, 3], [5, 3, 5]])
    >>> check_tiling([[5, 0, 3], [6, 3, 6]])
    Traceback (most recent call last):
    spectra.errors.InvalidInputError: the ranks loaded datasets of different sizes (rank 0: 5, rank 1: 6 samples); the dataset must be the same on every rank (same arguments and seed)
    """
    totals = [row[0] for row in rows]
    if len(set(totals)) > 1:
        per_rank = ", ".join(f"rank {r}: {t}" for r, t in enumerate(totals))
        raise InvalidInputError(f"the ranks loaded datasets of different sizes ({per_rank} samples); the dataset "
                                "must be the same on every rank (same arguments and seed)")
    stops = [0] + [row[2] for row in rows]
    if any(row[1] != stops[r] for r, row in enumerate(rows)) or stops[-1] != totals[0]:
        cuts = ", ".join(f"rank {r}: {row[1]}:{row[2]}" for r, row in enumerate(rows))
        raise InvalidInputError(f"the ranks' shards do not cut the {totals[0]} samples in order ({cuts})")


__all__ = ["Ranks", "check_tiling"]
