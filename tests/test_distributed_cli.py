"""``torchrun --nproc-per-node 2 -m spectra analyze ...``: the real command on 2 gloo ranks.

Four torchrun launches start together when the module starts (they mostly
wait on imports, so side by side they cost about one): exact (after GD
training), arpack and lanczos on a 29-parameter blob net with 51 samples
(uneven shards 26 + 25), and one whose data has a NaN in the last sample, so
that only rank 1's shard is bad.  Each successful launch is compared with the
single-process command run in this process on the same inputs: float64, the
same eigenvalues / Lanczos nodes to 1e-10 relative to max |lambda| (weights to
1e-10 absolute), one output folder, written by rank 0 alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spectra import cli

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")

RTOL = 1e-10  # 2 ranks vs 1 process, relative to max |eigenvalue|
JOB_TIMEOUT = 150  # seconds for each launch; they take ~8 s alone, ~25 s side by side on 2 busy cores
BASE = ["analyze", "--model", "blobnet", "--model-arg", "hidden=3", "--dataset-arg", "n=51", "--quiet"]
METHODS = {
    "exact": ["--method", "exact", "--train", "gd", "--lr", "0.5", "--max-steps", "30", "--grad-tol", "0"],
    "arpack": ["--method", "arpack", "--k", "4", "--which", "both"],
    "lanczos": ["--method", "lanczos", "--probes", "3", "--steps", "10"],
}
SHARDS = [26, 25]  # 51 samples on 2 ranks

# A plugin whose dataset is the blobs with a NaN in the last sample: only rank 1's shard holds it.
PLUGIN = '''
import spectra
from spectra import hookimpl


def nanblobs(n=51, seed=0, dtype=None):
    data = spectra.datasets.load("blobs", n=n, seed=seed, dtype=dtype)
    data.X[-1, 0] = float("nan")
    return data


@hookimpl
def spectra_register_datasets(registry):
    registry.register("nanblobs", nanblobs, "blobs with a NaN in the last sample (test)")
'''


def _torchrun(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    # --standalone: a rendezvous on a free port chosen by torchrun (no port races between launches)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "spectra", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    base = tmp_path_factory.mktemp("distcli")
    plugin = base / "plugin"
    (plugin / "spectra_distcli_test-0.1.dist-info").mkdir(parents=True)
    (plugin / "spectra_distcli_test-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: spectra-distcli-test\nVersion: 0.1\n")
    (plugin / "spectra_distcli_test-0.1.dist-info" / "entry_points.txt").write_text(
        "[spectra]\ndistcli_test = spectra_distcli_test\n")
    (plugin / "spectra_distcli_test.py").write_text(PLUGIN)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
           and not k.startswith("TORCHELASTIC")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(plugin), env.get("PYTHONPATH", "")]))
    jobs = {}
    start = time.perf_counter()
    for name, extra in [*METHODS.items(), ("nan", ["--method", "arpack", "--k", "3", "--timeout", "60"])]:
        cwd = base / name
        cwd.mkdir()
        dataset = "nanblobs" if name == "nan" else "blobs"
        jobs[name] = (_torchrun([*BASE, "--dataset", dataset, *extra, "--out", "out"], cwd, env), cwd)
    yield jobs, start
    for proc, _ in jobs.values():  # only if a test failed before collecting them
        if proc.poll() is None:
            proc.kill()


def _finish(launched, name: str) -> dict:
    jobs, start = launched
    proc, cwd = jobs[name]
    try:
        stdout, stderr = proc.communicate(timeout=JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun launch {name!r} hung; stderr:\n{stderr[-3000:]}")
    return {"rc": proc.returncode, "stdout": stdout, "stderr": stderr, "cwd": cwd,
            "seconds": time.perf_counter() - start}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same commands in one plain process (in this process: no torchrun, no process group)."""
    base = tmp_path_factory.mktemp("single")
    for name, extra in METHODS.items():
        assert cli.main([*BASE, "--dataset", "blobs", *extra, "--out", str(base / name)]) == 0
    return base


def _load(folder: Path) -> tuple[dict, dict]:
    meta = json.loads((folder / "result.json").read_text())
    with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return meta, arrays


@pytest.mark.parametrize("method", list(METHODS))
def test_two_ranks_write_what_one_process_writes(launched, single, method, capsys):
    job = _finish(launched, method)
    assert job["rc"] == 0, job["stderr"][-3000:]
    # rank 0 alone printed and wrote: one summary, one folder, no staging leftovers
    assert job["stdout"].count("blobnet on blobs: P=29, N=51") == 1, job["stdout"]
    assert job["stdout"].count("wrote out/") == 1, job["stdout"]
    assert sorted(p.name for p in job["cwd"].iterdir()) == ["out"]
    assert "Traceback" not in job["stderr"] and "spectra: warning" not in job["stderr"], job["stderr"][-3000:]

    meta, got = _load(job["cwd"] / "out")
    ref_meta, want = _load(single / method)
    prov = meta["provenance"]
    assert prov["distributed"]["world_size"] == 2 and prov["distributed"]["backend"] == "gloo"
    assert prov["distributed"]["shard_samples"] == SHARDS
    assert meta["num_samples"] == ref_meta["num_samples"] == sum(SHARDS)
    assert meta["num_params"] == ref_meta["num_params"] == 29
    assert "distributed" not in ref_meta["provenance"]

    scale = float(np.abs(want["nodes" if method == "lanczos" else "eigenvalues"]).max())
    keys = ["nodes", "weights"] if method == "lanczos" else ["eigenvalues"]
    for key in keys:
        atol = RTOL * (1.0 if key == "weights" else scale)
        assert got[key].shape == want[key].shape, key
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=atol, err_msg=key)
    if method == "exact":  # trained on every rank, rank 0's weights broadcast: the same training record
        assert prov["training"]["steps_taken"] == ref_meta["provenance"]["training"]["steps_taken"] == 30
        assert (job["cwd"] / "out" / "training.json").is_file()


def test_a_bad_shard_on_rank_1_stops_both_ranks_with_its_message(launched):
    job = _finish(launched, "nan")
    assert job["rc"] != 0 and job["seconds"] < JOB_TIMEOUT
    lines = [ln for ln in job["stderr"].splitlines() if ln.startswith("spectra: error:")]
    # the failing rank says what is wrong; rank 0 says why it stopped, quoting rank 1
    assert any(ln.startswith("spectra: error: rank 1: batch 0: the inputs X contain NaN") for ln in lines), lines
    assert any(ln.startswith("spectra: error: rank 0: stopping because another rank failed (rank 1: "
                             "NonFiniteError: batch 0: the inputs X contain NaN") for ln in lines), lines
    assert len(lines) == 2, lines
    assert not (job["cwd"] / "out").exists() and list(job["cwd"].iterdir()) == []


def test_fail_together_in_a_plain_process_runs_the_block_and_reraises():
    from spectra import distributed as sd

    with sd.fail_together("while adding"):
        total = 1 + 1
    assert total == 2
    with pytest.raises(KeyError, match="x"):
        with sd.fail_together("while looking up"):
            {}["x"]
    sd.farewell()  # no process group: nothing to wait for
