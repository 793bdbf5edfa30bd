"""The same seeds give bit-identical results on the same machine (compared with ==, no tolerance).

Python: build the model and data from seeds twice, analyse with each backend,
compare every array exactly; a different seed must change the stochastic
backends (so the comparison can fail).  Command line: the same ``spectra
analyze`` (training included) in two processes writes identical arrays.npz.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import spectra

ARRAYS = ("eigenvalues", "eigenvectors", "nodes", "weights", "residuals")
METHODS = {
    "exact": {"return_eigenvectors": True},
    "arpack": {"k": 4, "which": "both", "return_eigenvectors": True},
    "lanczos": {"num_probes": 3, "num_steps": 12},
    "lanczos-lowmem": {"num_probes": 3, "num_steps": 12, "engine": "lowmem"},
}



def _fresh(seed: int = 0):
    """An untrained 2-4-4-2 blob net (42 parameters, negative eigenvalues) and its data, from seeds alone."""
    model = spectra.models.create("blobnet", hidden=4, dtype="float64", seed=seed)
    data = spectra.datasets.load("blobs", n=60, seed=seed, dtype="float64")
    return model, data


def _arrays(result: spectra.SpectrumResult) -> dict[str, np.ndarray]:
    return {k: getattr(result, k) for k in ARRAYS if getattr(result, k) is not None}


def _assert_identical(a: spectra.SpectrumResult, b: spectra.SpectrumResult) -> None:
    xa, xb = _arrays(a), _arrays(b)
    assert xa.keys() == xb.keys() and xa
    for key in xa:
        assert xa[key].dtype == xb[key].dtype and xa[key].shape == xb[key].shape, key
        assert np.array_equal(xa[key], xb[key]), f"{key} differs: max |diff| {np.abs(xa[key] - xb[key]).max()}"
    assert a.num_matvecs == b.num_matvecs


@pytest.mark.parametrize("name", list(METHODS))
def test_same_seeds_same_bits(name: str) -> None:
    method = name.split("-")[0]
    runs = []
    for _ in range(2):
        model, data = _fresh()
        runs.append(spectra.analyze(model, data, method=method, seed=3, **METHODS[name]))
    _assert_identical(*runs)
    if method == "arpack":
        assert runs[0].eigenvalues.min() < 0 < runs[0].eigenvalues.max()  # both ends really computed


def test_one_model_analysed_twice_is_identical() -> None:
    """The operator keeps no state between analyses that could change the answer (cached graph, counters)."""
    model, data = _fresh()
    first = spectra.analyze(model, data, method="lanczos", seed=1, num_probes=2, num_steps=10)
    second = spectra.analyze(model, data, method="lanczos", seed=1, num_probes=2, num_steps=10)
    _assert_identical(first, second)


def test_seeds_matter() -> None:
    """The comparison above can fail: other seeds give other probes and other weights."""
    model, data = _fresh()
    a = spectra.analyze(model, data, method="lanczos", seed=0, num_probes=3, num_steps=12)
    b = spectra.analyze(model, data, method="lanczos", seed=1, num_probes=3, num_steps=12)
    assert not np.array_equal(a.nodes, b.nodes)
    other, _ = _fresh(seed=1)
    c = spectra.analyze(other, data, method="exact")
    d = spectra.analyze(model, data, method="exact")
    assert not np.array_equal(c.eigenvalues, d.eigenvalues)


def test_command_line_twice_writes_identical_arrays(tmp_path: Path) -> None:
    argv = ["analyze", "--model", "blobnet", "--model-arg", "hidden=2", "--dataset", "blobs", "--dataset-arg",
            "n=40", "--train", "gd", "--lr", "0.5", "--max-steps", "20", "--method", "lanczos", "--probes", "3",
            "--steps", "10", "--seed", "7", "--quiet", "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    procs = [subprocess.Popen([sys.executable, "-m", "spectra", *argv, str(tmp_path / f"run{i}")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    loaded = []
    for i in range(2):
        with np.load(tmp_path / f"run{i}" / "arrays.npz", allow_pickle=False) as npz:
            loaded.append({k: npz[k] for k in npz.files})
    assert loaded[0].keys() == loaded[1].keys() and {"nodes", "weights"} <= loaded[0].keys()
    for key in loaded[0]:
        assert np.array_equal(loaded[0][key], loaded[1][key]), key
    a, b = (spectra.load(tmp_path / f"run{i}") for i in range(2))
    assert a.provenance["training"]["steps_taken"] == b.provenance["training"]["steps_taken"] == 20
    assert a.provenance["loss_value"] == b.provenance["loss_value"]  # the trained weights agree too
