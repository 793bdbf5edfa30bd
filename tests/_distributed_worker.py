"""One rank of the 2-process gloo job that tests/test_distributed.py launches.

Run as ``python _distributed_worker.py RANK WORLD STORE_FILE OUT_DIR``.  It joins
a gloo group through a FileStore, computes spectra on its uneven shard, then
walks through the failure scenarios in an order that keeps the group usable
until the last one, writing what happened to ``OUT_DIR/rank{R}.json`` (and the
numbers to ``OUT_DIR/rank{R}.npz``) after each step, so the parent sees
partial progress even if a step hangs.
"""

from __future__ import annotations

import datetime
import inspect
import json
import os
import sys
import time
import traceback

import numpy as np
import torch
from torch import nn

RANK, WORLD, STORE, OUT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)

import torch.distributed as dist  # noqa: E402

from spectra import distributed as sd  # noqa: E402
from spectra.backends.arpack import ArpackBackend  # noqa: E402
from spectra.backends.exact import ExactBackend  # noqa: E402
from spectra.backends.lanczos import LanczosBackend  # noqa: E402
from spectra.errors import DistributedError, MemoryBudgetError  # noqa: E402
from spectra.operators.hessian import HessianOperator  # noqa: E402

# Shared with the test (keep in sync): model, data, shards, solver options.
N, D, C = 23, 4, 3
SHARDS = {0: [(0, 8), (8, 13)], 1: [(13, 23)]}  # rank 0: two batches (13 samples), rank 1: one (10)
ARPACK = {"k": 4, "which": "both", "seed": 0}
LANCZOS = {"num_probes": 3, "num_steps": 8, "seed": 0}
SUBSET = "2"  # the last Linear layer
# every matrix on every engine, data-parallel: (matrix, engine, extra options)
MATRICES = ("hessian", "ggn", "residual", "empirical_fisher", "mc_fisher")
ENGINES = ("chain", "reverse", "forward")
MATRIX_OPTIONS = {"mc_fisher": {"mc_samples": 2, "seed": 4}}
# a token loss on dict batches (tests/token_truth.py): every matrix on these engines, data-parallel
TOKEN_ENGINES = ("reverse", "forward")


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 5), nn.Tanh(), nn.Linear(5, C)).double()


BLOBS = {"n": 15, "seed": 3}  # spectra.datasets.load("blobs", **BLOBS): 2-D inputs, 2 classes


def build_blob_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2))  # float32, like the blobs


def build_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10)
    return torch.randn(N, D, generator=g, dtype=torch.float64), torch.randint(0, C, (N,), generator=g)


def dist_hessian(model, loss, data, **options):
    """The Hessian operator, data-parallel over the process group."""
    return HessianOperator(model, loss, data, distributed=True, **options)


record: dict = {"rank": RANK, "steps": {}}
arrays: dict = {}


def save() -> None:
    with open(os.path.join(OUT, f"rank{RANK}.json.tmp"), "w") as fh:
        json.dump(record, fh, indent=1)
    os.replace(os.path.join(OUT, f"rank{RANK}.json.tmp"), os.path.join(OUT, f"rank{RANK}.json"))
    np.savez(os.path.join(OUT, f"rank{RANK}.npz"), **arrays)


def outcome(name: str, fn) -> None:
    """Run one scenario step and record its exception type, message and duration."""
    t0 = time.perf_counter()
    try:
        fn()
        record["steps"][name] = {"ok": True, "seconds": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001 - recorded for the parent
        record["steps"][name] = {"ok": False, "type": type(exc).__name__, "message": str(exc),
                                 "seconds": time.perf_counter() - t0,
                                 "traceback": traceback.format_exc()[-2000:]}
    save()


class SimulatedFailure(Exception):
    """Raised by FailingForward; not a type the core wraps into InvalidInputError."""


class FailingForward(nn.Module):
    """Wraps a model; on ``fail_rank`` its forward raises from the ``after``-th call on."""

    def __init__(self, inner: nn.Module, fail: bool, after: int, sleep: float = 0.0, die: bool = False):
        super().__init__()
        self.inner, self.fail, self.after, self.calls = inner, fail, after, 0
        self.sleep, self.die = sleep, die

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail and self.calls >= self.after:
            if self.sleep:
                time.sleep(self.sleep)
            if self.die:
                os._exit(3)
            raise SimulatedFailure(f"simulated failure on rank {RANK} in forward call {self.calls}")
        return self.inner(x)


def main() -> None:
    dist.init_process_group("gloo", init_method=f"file://{STORE}", rank=RANK, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=20))
    X, y = build_data()
    mine = [(X[a:b], y[a:b]) for a, b in SHARDS[RANK]]
    record["world_size"] = sd.world_size()
    record["is_main"] = sd.is_main_process()

    # 1. the three backends on the sharded operator (plus a parameter subset)
    def spectra_runs() -> None:
        op = dist_hessian(build_model(), "cross_entropy", mine, timeout=20)
        record["num_samples"] = op.num_samples
        record["describe"] = op.describe()["distributed"]
        with op.guard():
            arrays["exact"] = ExactBackend().run(op).eigenvalues
            arrays["arpack"] = ArpackBackend().run(op, **ARPACK).eigenvalues
            r = LanczosBackend().run(op, **LANCZOS)
            arrays["lanczos_nodes"], arrays["lanczos_weights"] = r.nodes, r.weights
        sub = dist_hessian(build_model(), "cross_entropy", mine, params=SUBSET)
        arrays["subset_exact"] = ExactBackend().run(sub).eigenvalues

    outcome("spectra", spectra_runs)

    # 1b. through spectra.analyze, when the API has the distributed switch
    import spectra

    if "distributed" in inspect.signature(spectra.analyze).parameters:
        def via_api() -> None:
            r = spectra.analyze(build_model(), mine, method="arpack", distributed=True, **ARPACK)
            arrays["api_arpack"] = r.eigenvalues
            record["api_provenance_world"] = r.provenance.get("distributed", {}).get("world_size")
        outcome("api", via_api)

    # 1b'. a registry dataset by name: each rank loads only its shard (datasets.load(shard=...))
    if "distributed" in inspect.signature(spectra.analyze).parameters:
        def by_name() -> None:
            import spectra.datasets as registry

            loaded = []
            real = registry.load

            def spy(name, **kwargs):
                loaded.append(kwargs.get("shard"))
                return real(name, **kwargs)

            registry.load = spy
            try:
                r = spectra.analyze(build_blob_model(), "blobs", data_args=BLOBS, method="exact", distributed=True)
            finally:
                registry.load = real
            arrays["api_by_name_exact"] = r.eigenvalues
            record["api_by_name_shards"] = [list(s) if s is not None else None for s in loaded]
            record["api_by_name_samples"] = r.num_samples
        outcome("api_by_name", by_name)

    # 1d. every matrix on every engine, and through analyze(matrix=...)
    def every_matrix() -> None:
        from spectra.matrices import get as operator_class

        engines = {}
        for matrix in MATRICES:
            for engine in ENGINES:
                op = operator_class(matrix)(build_model(), "cross_entropy", mine, mode=engine, distributed=True,
                                            timeout=20, **MATRIX_OPTIONS.get(matrix, {}))
                arrays[f"dense_{matrix}_{engine}"] = op.to_dense().numpy()
                engines[f"{matrix}_{engine}"] = op.describe()["product_engine"]
            r = spectra.analyze(build_model(), mine, matrix=matrix, method="exact", distributed=True,
                                **MATRIX_OPTIONS.get(matrix, {}))
            arrays[f"analyze_{matrix}"] = r.eigenvalues
            record[f"analyze_{matrix}_world"] = r.provenance["distributed"]["world_size"]
        record["engines"] = engines

    outcome("every_matrix", every_matrix)

    # 1e. dict batches of a token loss with ragged -100 padding, cut by spectra.sharding.shard: whole
    # batches per rank, and one dict batch cut into samples; weighted by the tokens of all ranks
    def token_dict_batches() -> None:
        from token_truth import TokenMixer, token_batches

        from spectra.matrices import get as operator_class
        from spectra.sharding import shard

        batches = token_batches()
        one_batch = {key: torch.cat([b[key] for b in batches]) for key in batches[0]}
        shards = {"whole_batches": shard(batches, RANK, WORLD), "cut_batch": [shard(one_batch, RANK, WORLD)]}
        record["token_shard_rows"] = {k: [int(b["labels"].shape[0]) for b in v] for k, v in shards.items()}
        token_info = {}
        for matrix in MATRICES:
            for form, engine in [("whole_batches", e) for e in TOKEN_ENGINES] + [("cut_batch", "reverse")]:
                op = operator_class(matrix)(TokenMixer().double(), "cross_entropy", shards[form], mode=engine,
                                            distributed=True, timeout=20, **MATRIX_OPTIONS.get(matrix, {}))
                arrays[f"token_{matrix}_{form}_{engine}"] = op.to_dense().numpy()
                info = op.describe()
                token_info[f"{matrix}_{form}_{engine}"] = {key: info.get(key) for key in (
                    "unit", "num_samples", "product_engine", "outer_products")}
        record["token_info"] = token_info
        r = spectra.analyze(TokenMixer().double(), shards["whole_batches"], matrix="mc_fisher", method="exact",
                            distributed=True, **MATRIX_OPTIONS["mc_fisher"])
        arrays["token_analyze_mc_fisher"] = r.eigenvalues

    outcome("token_dict_batches", token_dict_batches)

    # 1c. replicated data (every rank holds all of it): right Hessian, with a warning
    def replicated() -> None:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            op = dist_hessian(build_model(), "cross_entropy", (X, y), timeout=20)
        record["replicated_warnings"] = [str(w.message) for w in caught]
        arrays["replicated_exact"] = ExactBackend().run(op).eigenvalues

    outcome("replicated", replicated)

    # 2. a rank whose forward raises inside a Hessian product
    def product_failure() -> None:
        op = dist_hessian(FailingForward(build_model(), RANK == 1, after=10 ** 9),
                                           "cross_entropy", mine, timeout=20, cache_graph=False)
        op.model.after = op.model.calls + 1  # from now on rank 1 fails
        with op.guard():
            ArpackBackend().run(op, **ARPACK)

    outcome("product_failure", product_failure)

    # 3. a rank whose shard is bad: fails while the operator is being built
    def construction_failure() -> None:
        data = mine if RANK == 0 else [(X[:3, :2], y[:3])]  # wrong feature count on rank 1
        dist_hessian(build_model(), "cross_entropy", data, timeout=20)

    outcome("construction_failure", construction_failure)

    # 3b. a rank that fails before its first collective (its parameter selection matches nothing)
    def early_failure() -> None:
        dist_hessian(build_model(), "cross_entropy", mine, timeout=20,
                                      params="0" if RANK == 0 else "no_such_layer")

    outcome("early_failure", early_failure)

    # 4. a failure between products on one rank (a backend's memory check)
    def solver_failure() -> None:
        op = dist_hessian(build_model(), "cross_entropy", mine, timeout=20)
        with op.guard():
            ExactBackend().run(op, memory_limit=10 if RANK == 1 else None)

    outcome("solver_failure", solver_failure)

    # 5. ranks with different weights are refused
    def different_weights() -> None:
        model = build_model()
        if RANK == 1:
            with torch.no_grad():
                model[0].weight[0, 0] += 1e-3
        dist_hessian(model, "cross_entropy", mine, timeout=20)

    outcome("different_weights", different_weights)

    # 6. ranks out of step (different block widths) are refused, not mixed
    def out_of_step() -> None:
        op = dist_hessian(build_model(), "cross_entropy", mine, timeout=20)
        op.matmat(torch.ones(op.shape[0], 2 if RANK == 0 else 3, dtype=torch.float64))

    outcome("out_of_step", out_of_step)

    # 7. rank 1 hangs (then dies): rank 0 must stop at the timeout, then see the death
    def hang() -> None:
        op = dist_hessian(
            FailingForward(build_model(), RANK == 1, after=10 ** 9, sleep=2.5, die=True),
            "cross_entropy", mine, timeout=1.0, cache_graph=False)
        op.model.after = op.model.calls + 1
        op.matmat(torch.ones(op.shape[0], 1, dtype=torch.float64))

    outcome("hang", hang)

    def after_death() -> None:
        # no timeout here: only the peer's death can end this
        dist_hessian(build_model(), "cross_entropy", mine)

    record["death_wait_started"] = time.time()
    outcome("after_death", after_death)
    record["done"] = True
    save()


if __name__ == "__main__":
    try:
        main()
    except Exception:  # noqa: BLE001
        record["fatal"] = traceback.format_exc()
        save()
        raise
    os._exit(0)  # do not wait on a broken process group at interpreter exit
