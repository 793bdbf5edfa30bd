"""spectra.distributed: sharding, and 2 gloo processes against one process.

The multi-process part launches tests/_distributed_worker.py twice (rank 0 and
1, FileStore rendezvous, CPU gloo) once per module, then checks what each rank
recorded: the sharded spectra equal the single-process ones (float64, 1e-10
relative to the spectral norm), the two ranks agree bitwise, and each failure
scenario stops the other rank with a DistributedError quickly instead of hanging.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import spectra
from spectra import distributed as sd
from spectra import parallel
from spectra.matrices import get as operator_class
from spectra.backends.arpack import ArpackBackend
from spectra.backends.exact import ExactBackend
from spectra.backends.lanczos import LanczosBackend
from spectra.data import Dataset
from spectra.errors import DistributedError, InvalidInputError
from spectra.operators.hessian import HessianOperator

from .curvature_truth import dense_truth
from .token_truth import TokenMixer, dense_token_truth, token_batches

WORKER = Path(__file__).with_name("_distributed_worker.py")
RTOL = 1e-10  # sharded vs single-process, relative to max |eigenvalue|
JOB_TIMEOUT = 90  # seconds for the whole 2-process job (it normally takes ~10 s)

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")


# ------------------------------------------------------------------ sharding (no processes)
@pytest.mark.parametrize("n,world", [(7, 3), (10, 2), (5, 5), (23, 4)])
def test_shard_batch_splits_contiguously_and_completely(n, world):
    X, y = torch.arange(n * 2.0).reshape(n, 2), torch.arange(n)
    parts = [sd.shard((X, y), r, world) for r in range(world)]
    sizes = [len(p[1]) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert torch.equal(torch.cat([p[1] for p in parts]), y)
    assert torch.equal(torch.cat([p[0] for p in parts]), X)


def test_shard_dataset_keeps_type_and_records_the_shard():
    data = Dataset(torch.randn(11, 3), torch.arange(11) % 2, name="toy", info={"seed": 4})
    part = sd.shard(data, 1, 3)
    assert isinstance(part, Dataset) and part.name == "toy" and len(part) == 4
    assert part.info["shard"] == {"rank": 1, "world": 3, "start": 4, "stop": 8, "num_samples_total": 11}
    assert part.info["seed"] == 4


@pytest.mark.parametrize("sizes,world", [([5, 5, 5, 1], 2), ([1, 1, 10], 3), ([10, 1, 1], 2), ([3, 4], 2)])
def test_shard_list_of_batches_gives_whole_batches(sizes, world):
    batches, start = [], 0
    for s in sizes:
        batches.append((torch.zeros(s, 1), torch.arange(start, start + s)))
        start += s
    parts = [sd.shard(batches, r, world) for r in range(world)]
    assert all(len(p) >= 1 for p in parts)
    flat = [b for p in parts for b in p]
    assert [len(b[1]) for b in flat] == sizes  # batches untouched, in order
    assert torch.equal(torch.cat([b[1] for b in flat]), torch.arange(sum(sizes)))


def test_shard_fewer_batches_than_ranks_splits_each_batch():
    batches = [(torch.zeros(5, 1), torch.arange(5)), (torch.zeros(2, 1), torch.arange(5, 7))]
    parts = [sd.shard(batches, r, 3) for r in range(3)]
    got = torch.cat([b[1] for r in range(3) for b in parts[r]]).sort().values
    assert torch.equal(got, torch.arange(7))
    assert [sum(len(b[1]) for b in p) for p in parts] == [3, 2, 2]


def test_shard_torch_dataset_and_refusals():
    tds = torch.utils.data.TensorDataset(torch.zeros(9, 2), torch.arange(9))
    sub = sd.shard(tds, 2, 4)
    assert list(sub.indices) == [5, 6]  # sizes 3, 2, 2, 2
    with pytest.raises(InvalidInputError, match="gets no samples"):
        sd.shard((torch.zeros(2, 1), torch.arange(2)), 2, 3)
    with pytest.raises(InvalidInputError, match="cannot split a DataLoader"):
        sd.shard(torch.utils.data.DataLoader(tds), 0, 2)
    with pytest.raises(InvalidInputError, match="rank"):
        sd.shard((torch.zeros(2, 1), torch.arange(2)), 3, 2)


@pytest.mark.parametrize("matrix", ["hessian", "ggn", "residual", "empirical_fisher", "mc_fisher"])
def test_single_process_helpers_and_refusals(matrix):
    assert not sd.is_distributed() and sd.rank() == 0 and sd.world_size() == 1 and sd.is_main_process()
    assert parallel.data_parallel_requested(False) is False
    assert parallel.data_parallel_requested("auto") is False  # not launched by torchrun
    with pytest.raises(DistributedError, match="not initialised"):
        parallel.data_parallel_requested(True)
    with pytest.raises(InvalidInputError, match="distributed must be"):
        parallel.data_parallel_requested("yes")
    model = torch.nn.Linear(2, 2).double()
    data = (torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.long))
    with pytest.raises(DistributedError, match="not initialised"):
        operator_class(matrix)(model, "cross_entropy", data, distributed=True)
    with pytest.raises(InvalidInputError, match="only to a data-parallel operator"):
        operator_class(matrix)(model, "cross_entropy", data, timeout=5)


# ------------------------------------------------------------------ the 2-process job
def _load_worker_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_dw_consts", WORKER)
    text = WORKER.read_text()
    # only the constants and builders: the worker's top level reads sys.argv
    head = text.split("record: dict")[0].split("RANK, WORLD, STORE, OUT")[0]
    consts = text.split("# Shared with the test (keep in sync): model, data, shards, solver options.")[1]
    consts = consts.split("record: dict")[0]
    ns: dict = {}
    exec(compile(head + consts, str(WORKER), "exec"), ns)  # noqa: S102 - our own file
    _ = spec
    return ns


@pytest.fixture(scope="module", autouse=True)
def launched(tmp_path_factory):
    """Start the 2-process job when the module starts, so it runs while the in-process tests do."""
    out = tmp_path_factory.mktemp("dist")
    store = out / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(key, None)
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), "2", str(store), str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    yield out, procs, start
    for p in procs:  # only if a test failed before collecting them
        if p.poll() is None:
            p.kill()


@pytest.fixture(scope="module")
def job(launched):
    out, procs, start = launched
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=JOB_TIMEOUT)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the 2-process job hung (it has its own timeouts; this is a bug)")
    elapsed = time.perf_counter() - start
    records = []
    for r in range(2):
        path = out / f"rank{r}.json"
        assert path.exists(), f"rank {r} wrote nothing; log:\n{logs[r][-3000:]}"
        rec = json.loads(path.read_text())
        assert "fatal" not in rec, rec["fatal"]
        with np.load(out / f"rank{r}.npz") as npz:
            rec["arrays"] = {k: npz[k] for k in npz.files}
        records.append(rec)
    return {"records": records, "logs": logs, "elapsed": elapsed, "returncodes": [p.returncode for p in procs]}


@contextlib.contextmanager
def _one_torch_thread():
    """Module fixtures run before the per-test one-thread fixture: on a busy 2-core machine, tiny
    products with 2 threads spin-wait (35x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _all_batches(ns):
    """The data and the ranks' batches, in rank order: what one process analyses."""
    X, y = ns["build_data"]()
    return X, y, [(X[a:b], y[a:b]) for r in (0, 1) for a, b in ns["SHARDS"][r]]


@pytest.fixture(scope="module")
def reference():
    with _one_torch_thread():
        return _reference()


def _reference():
    ns = _load_worker_module()
    X, y, batches = _all_batches(ns)
    op = HessianOperator(ns["build_model"](), "cross_entropy", batches)
    ref = {"exact": ExactBackend().run(op).eigenvalues,
           "arpack": ArpackBackend().run(op, **ns["ARPACK"]).eigenvalues}
    r = LanczosBackend().run(op, **ns["LANCZOS"])
    ref["lanczos_nodes"], ref["lanczos_weights"] = r.nodes, r.weights
    sub = HessianOperator(ns["build_model"](), "cross_entropy", batches, params=ns["SUBSET"])
    ref["subset_exact"] = ExactBackend().run(sub).eigenvalues
    ref["dense"] = op.to_dense().numpy()
    ref["num_samples"] = len(y)
    return ref


@pytest.fixture(scope="module")
def every_matrix_reference():
    """One process, the same batches: each matrix on each engine (dense) and analyze's exact eigenvalues."""
    with _one_torch_thread():
        ns = _load_worker_module()
        X, y, batches = _all_batches(ns)
        ref = {}
        for matrix in ns["MATRICES"]:
            options = ns["MATRIX_OPTIONS"].get(matrix, {})
            ref[f"truth_{matrix}"] = dense_truth(matrix, ns["build_model"](), "cross_entropy", X, y, **options)
            for engine in ns["ENGINES"]:
                op = operator_class(matrix)(ns["build_model"](), "cross_entropy", batches, mode=engine, **options)
                ref[f"dense_{matrix}_{engine}"] = op.to_dense().numpy()
            ref[f"analyze_{matrix}"] = spectra.analyze(ns["build_model"](), batches, matrix=matrix, method="exact",
                                                       distributed=False, **options).eigenvalues
        return ref


@pytest.fixture(scope="module")
def token_reference():
    """One process, all the dict batches: each matrix of the token loss on each engine, and its dense truth."""
    with _one_torch_thread():
        ns = _load_worker_module()
        batches, ref = token_batches(), {}
        for matrix in ns["MATRICES"]:
            options = ns["MATRIX_OPTIONS"].get(matrix, {})
            ref[f"truth_{matrix}"] = dense_token_truth(matrix, TokenMixer().double(), batches, **options).numpy()
            for engine in ns["TOKEN_ENGINES"]:
                op = operator_class(matrix)(TokenMixer().double(), "cross_entropy", batches, mode=engine, **options)
                ref[f"dense_{matrix}_{engine}"] = op.to_dense().numpy()
        ref["analyze_mc_fisher"] = spectra.analyze(TokenMixer().double(), batches, matrix="mc_fisher", method="exact",
                                                   distributed=False, **ns["MATRIX_OPTIONS"]["mc_fisher"]).eigenvalues
        return ref


def _step(job, r, name):
    steps = job["records"][r]["steps"]
    assert name in steps, f"rank {r} never reached {name}; log:\n{job['logs'][r][-3000:]}"
    return steps[name]


def test_reference_is_the_dense_hessian(reference):
    # guard the reference itself: exact eigenvalues of the operator = eigvalsh of its dense matrix
    lam = np.linalg.eigvalsh(reference["dense"])
    np.testing.assert_allclose(reference["exact"], lam, atol=1e-12 * np.abs(lam).max())


@pytest.mark.parametrize("key", ["exact", "arpack", "lanczos_nodes", "lanczos_weights", "subset_exact"])
def test_two_ranks_equal_one_process(job, reference, key):
    for r in range(2):
        assert _step(job, r, "spectra")["ok"], _step(job, r, "spectra")
        got, want = job["records"][r]["arrays"][key], reference[key]
        scale = 1.0 if key == "lanczos_weights" else float(np.abs(reference["exact"]).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * scale, err_msg=f"rank {r}, {key}")


@pytest.mark.parametrize("engine", ["chain", "reverse", "forward"])
@pytest.mark.parametrize("matrix", ["hessian", "ggn", "residual", "empirical_fisher", "mc_fisher"])
def test_every_matrix_on_every_engine_two_ranks_equal_one_process_and_truth(job, every_matrix_reference, matrix,
                                                                             engine):
    truth = every_matrix_reference[f"truth_{matrix}"].numpy()
    scale = float(np.abs(truth).max())
    got = [job["records"][r]["arrays"].get(f"dense_{matrix}_{engine}") for r in range(2)]
    for r in range(2):
        assert _step(job, r, "every_matrix")["ok"], _step(job, r, "every_matrix")
        assert job["records"][r]["engines"][f"{matrix}_{engine}"] == engine
        np.testing.assert_allclose(got[r], every_matrix_reference[f"dense_{matrix}_{engine}"], rtol=0,
                                   atol=RTOL * scale, err_msg=f"rank {r}: 2 ranks vs one process")
        np.testing.assert_allclose(got[r], truth, rtol=0, atol=RTOL * scale, err_msg=f"rank {r}: vs truth")
    assert np.array_equal(got[0], got[1])


@pytest.mark.parametrize("matrix", ["hessian", "ggn", "residual", "empirical_fisher", "mc_fisher"])
def test_analyze_every_matrix_distributed_equals_one_process(job, every_matrix_reference, matrix):
    want = every_matrix_reference[f"analyze_{matrix}"]
    for r in range(2):
        assert _step(job, r, "every_matrix")["ok"], _step(job, r, "every_matrix")
        assert job["records"][r][f"analyze_{matrix}_world"] == 2
        np.testing.assert_allclose(job["records"][r]["arrays"][f"analyze_{matrix}"], want, rtol=0,
                                   atol=RTOL * float(np.abs(want).max()))


@pytest.mark.parametrize("form,engine", [("whole_batches", "reverse"), ("whole_batches", "forward"),
                                         ("cut_batch", "reverse")])
@pytest.mark.parametrize("matrix", ["hessian", "ggn", "residual", "empirical_fisher", "mc_fisher"])
def test_token_loss_dict_batches_two_ranks_equal_one_process_and_truth(job, token_reference, matrix, form, engine):
    """Dict batches with ragged -100 padding, sharded by spectra.sharding.shard, weighted by all ranks' tokens."""
    truth = token_reference[f"truth_{matrix}"]
    scale = float(np.abs(truth).max())
    key = f"{matrix}_{form}_{engine}"
    got = [job["records"][r]["arrays"].get(f"token_{key}") for r in range(2)]
    for r in range(2):
        assert _step(job, r, "token_dict_batches")["ok"], _step(job, r, "token_dict_batches")
        rec = job["records"][r]
        # the path: whole batches (3 | 1 + 2 sequences) or one batch cut into samples (3 | 3); every
        # rank counts the 20 real tokens of both shards (9 | 11), not its own
        assert rec["token_shard_rows"] == {"whole_batches": [[3], [1, 2]][r], "cut_batch": [3]}
        info = rec["token_info"][key]
        assert info["unit"] == "token" and info["num_samples"] == 20 and info["product_engine"] == engine
        assert info["outer_products"] == ("per token" if "fisher" in matrix else None)
        np.testing.assert_allclose(got[r], token_reference[f"dense_{matrix}_{engine}"], rtol=0, atol=RTOL * scale,
                                   err_msg=f"rank {r}: 2 ranks vs one process")
        np.testing.assert_allclose(got[r], truth, rtol=0, atol=RTOL * scale, err_msg=f"rank {r}: vs truth")
    assert np.array_equal(got[0], got[1])


def test_token_loss_analyze_distributed_equals_one_process(job, token_reference):
    want = token_reference["analyze_mc_fisher"]
    for r in range(2):
        assert _step(job, r, "token_dict_batches")["ok"], _step(job, r, "token_dict_batches")
        np.testing.assert_allclose(job["records"][r]["arrays"]["token_analyze_mc_fisher"], want, rtol=0,
                                   atol=RTOL * float(np.abs(want).max()))


def test_ranks_agree_bitwise_and_count_all_samples(job, reference):
    a, b = (job["records"][r]["arrays"] for r in range(2))
    for key in ("exact", "arpack", "lanczos_nodes", "lanczos_weights", "subset_exact"):
        assert np.array_equal(a[key], b[key]), key
    for r in range(2):
        rec = job["records"][r]
        assert rec["num_samples"] == reference["num_samples"] == 23
        assert rec["describe"]["shard_samples"] == [13, 10] and rec["describe"]["shard_batches"] == [2, 1]
        assert rec["is_main"] == (r == 0) and rec["world_size"] == 2


def test_replicated_data_is_right_but_warned(job, reference):
    for r in range(2):
        assert _step(job, r, "replicated")["ok"], _step(job, r, "replicated")
        np.testing.assert_allclose(job["records"][r]["arrays"]["replicated_exact"], reference["exact"],
                                   rtol=0, atol=RTOL * np.abs(reference["exact"]).max())
        assert any("same data" in w for w in job["records"][r]["replicated_warnings"])


def test_api_distributed_switch(job, reference):
    steps = job["records"][0]["steps"]
    if "api" not in steps:
        pytest.skip("spectra.analyze has no distributed= parameter in this tree")
    for r in range(2):
        assert _step(job, r, "api")["ok"], _step(job, r, "api")
        np.testing.assert_allclose(job["records"][r]["arrays"]["api_arpack"], reference["arpack"],
                                   rtol=0, atol=RTOL * np.abs(reference["exact"]).max())
        assert job["records"][r]["api_provenance_world"] == 2


def test_api_registry_dataset_loads_only_this_ranks_shard(job):
    """analyze(model, "blobs", distributed=True): rank r asks the registry for shard (r, 2) and gets one process's answer."""
    if "api_by_name" not in job["records"][0]["steps"]:
        pytest.skip("spectra.analyze has no distributed= parameter in this tree")
    import spectra

    ns = _load_worker_module()
    single = spectra.analyze(ns["build_blob_model"](), "blobs", data_args=ns["BLOBS"], method="exact").eigenvalues
    for r in range(2):
        assert _step(job, r, "api_by_name")["ok"], _step(job, r, "api_by_name")
        assert job["records"][r]["api_by_name_shards"] == [[r, 2]]
        assert job["records"][r]["api_by_name_samples"] == ns["BLOBS"]["n"]
        # float32 model and data: agreement to float32 round-off
        np.testing.assert_allclose(job["records"][r]["arrays"]["api_by_name_exact"], single,
                                   rtol=0, atol=1e-5 * np.abs(single).max())


@pytest.mark.parametrize("scenario,failing_type,match", [
    ("product_failure", "SimulatedFailure", "simulated failure on rank 1"),
    ("construction_failure", "InvalidInputError", "cannot take batch"),
    ("early_failure", "InvalidInputError", "no_such_layer"),
    ("solver_failure", "MemoryBudgetError", "exact spectrum"),
])
def test_a_failing_rank_stops_the_other_with_its_message(job, scenario, failing_type, match):
    bad, good = _step(job, 1, scenario), _step(job, 0, scenario)
    assert not bad["ok"] and bad["type"] == failing_type, bad
    assert not good["ok"] and good["type"] == "DistributedError", good
    assert "rank 1" in good["message"] and match in good["message"], good["message"]
    assert good["seconds"] < 10, good  # it stops at the next product, not at a timeout


@pytest.mark.parametrize("scenario,match", [("different_weights", "different model weights"),
                                            ("out_of_step", "out of step")])
def test_disagreeing_ranks_are_refused_on_both(job, scenario, match):
    for r in range(2):
        step = _step(job, r, scenario)
        assert not step["ok"] and step["type"] == "DistributedError" and match in step["message"], step


def test_a_hanging_rank_times_out_and_a_dead_rank_is_noticed(job):
    hang = _step(job, 0, "hang")
    assert not hang["ok"] and hang["type"] == "DistributedError", hang
    assert "did not answer within timeout=1 s" in hang["message"], hang
    assert 0.9 < hang["seconds"] < 2.4, hang  # the timeout (1 s), not the 2.5 s sleep
    death = _step(job, 0, "after_death")
    assert not death["ok"] and death["type"] == "DistributedError", death
    assert death["seconds"] < 10, death  # rank 1 exits ~1.5 s later; the group timeout is 20 s
    assert job["records"][0].get("done") and job["returncodes"][1] == 3
