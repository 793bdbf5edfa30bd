"""The torchrun helpers users call, under the name scripts already use: ``import spectra.distributed as sd``.

Everything here lives in :mod:`spectra.parallel` (process helpers, fail-stop
collectives, the data-parallel reduction every curvature matrix uses) and
:mod:`spectra.sharding` (cutting a dataset into one part per rank); this
module gathers the public names in one place.  Every curvature operator
takes ``distributed=True`` to run data-parallel.

>>> shard((torch.arange(5.0)[:, None], torch.arange(5)), rank=1, world=2)[1].tolist()
[3, 4]
"""

from __future__ import annotations

import torch  # noqa: F401  (the doctest above)

from .parallel import (all_reduce, broadcast_parameters, default_store, destroy, fail_together, farewell,
                       init_from_env, is_distributed, is_initialized, is_main_process, launched_by_torchrun,
                       rank, world_size)
from .sharding import shard, shard_record, shard_sizes


__all__ = [
    "all_reduce", "broadcast_parameters", "default_store", "destroy",
    "fail_together", "farewell", "init_from_env", "is_distributed", "is_initialized", "is_main_process",
    "launched_by_torchrun", "rank", "shard", "shard_record", "shard_sizes", "world_size",
]
