"""Data parallelism over ``torch.distributed`` (gloo on CPU, NCCL on GPUs), for every curvature matrix.

Each rank holds a shard of the data and the same model; every curvature
operator built with ``distributed=True`` (or by ``spectra.analyze`` under
torchrun) sums its local work over the ranks (:mod:`.reducer`), failing
together instead of hanging (:mod:`.failstop`).  Launch with
``torchrun --nproc-per-node N script.py`` and in the script::

    import spectra
    from spectra import parallel, sharding
    parallel.init_from_env()                         # gloo on CPU, nccl for CUDA models
    data = sharding.shard(spectra.datasets.load("mnist", n=1000, seed=0))
    result = spectra.analyze(model, data, matrix="ggn", method="arpack", distributed=True)
    if parallel.is_main_process():
        result.save("runs/top10")

>>> from spectra import parallel
>>> parallel.world_size(), parallel.make_reducer(False).is_distributed
(1, False)
"""

from __future__ import annotations

from .failstop import FailStopChannel, all_reduce, default_store, fail_together, farewell
from .process import (broadcast_parameters, destroy, first_line, init_from_env, is_distributed, is_initialized,
                      is_main_process, launched_by_torchrun, rank, torch_distributed, world_size)
from .reducer import DataParallelReducer, LocalReducer, data_parallel_requested, make_reducer

__all__ = [
    "DataParallelReducer", "FailStopChannel", "LocalReducer", "all_reduce", "broadcast_parameters",
    "data_parallel_requested", "default_store", "destroy", "fail_together", "farewell", "first_line",
    "init_from_env", "is_distributed", "is_initialized", "is_main_process", "launched_by_torchrun",
    "make_reducer", "rank", "torch_distributed", "world_size",
]
