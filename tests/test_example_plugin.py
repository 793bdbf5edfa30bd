"""The example third-party plugin, end to end, found through its entry point.

The fast test puts the package's folder on ``sys.path`` next to a temporary
``.dist-info`` whose ``entry_points.txt`` is generated from the package's own
``pyproject.toml``, so it checks what pip would install.  The slow test really
pip-installs a copy (no network: ``--no-deps --no-build-isolation``) and runs
the ``spectra`` command on it in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import spectra
from spectra import plugins

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "plugins" / "spectra-example-plugin"


@pytest.fixture
def example_installed(tmp_path, monkeypatch):
    meta = tomllib.loads((PLUGIN_DIR / "pyproject.toml").read_text())["project"]
    dist_info = tmp_path / f"spectra_example_plugin-{meta['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    eps = meta["entry-points"]["spectra"]
    (dist_info / "entry_points.txt").write_text(
        "[spectra]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    plugins.reset()
    yield
    plugins.reset()
    sys.modules.pop("spectra_example_plugin", None)


def test_example_plugin_is_found_through_its_entry_point(example_installed):
    status = {p["name"]: p for p in plugins.list_plugins()}
    assert status["example"] == {
        "name": "example", "source": "entry point (spectra-example-plugin 0.1.0)", "ok": True, "errors": [],
        "models": ["xor-net"], "datasets": ["xor"], "backends": [], "matrices": [], "losses": [],
        "experiments": [], "commands": [],
    }
    assert plugins.load_errors() == []


def test_analyse_through_the_example_plugin_by_name(example_installed):
    result = spectra.analyze("xor-net", "xor", method="exact",
                             model_args={"hidden": 3, "dtype": "float64"},
                             data_args={"n": 40, "dtype": "float64", "seed": 2})
    assert result.num_params == 5 * 3 + 2 == 17
    assert result.provenance["data"]["name"] == "xor"
    assert result.provenance["data"]["plugin"] == "example"
    # reference: dense autograd Hessian of the same loss, numpy eigvalsh
    net = spectra.models.create("xor-net", hidden=3, dtype="float64")
    data = spectra.datasets.load("xor", n=40, dtype="float64", seed=2)
    names = [n for n, _ in net.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    shapes = [p.shape for p in net.parameters()]

    def loss_of(theta):
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            parts[n] = theta[i:i + s.numel()].reshape(s)
            i += s.numel()
        return torch.nn.functional.cross_entropy(torch.func.functional_call(net, parts, (data.X,)), data.y)

    H = torch.autograd.functional.hessian(loss_of, flat).numpy()
    np.testing.assert_allclose(result.eigenvalues, np.linalg.eigvalsh(H), atol=1e-10)


def test_example_dataset_is_balanced_xor(example_installed):
    d = spectra.datasets.load("xor", n=400, std=0.1)
    assert torch.bincount(d.y).tolist() == [200, 200]
    assert torch.equal(d.y, (d.X[:, 0] * d.X[:, 1] < 0).long())  # std 0.1: no cluster crosses an axis
    with pytest.raises(spectra.errors.InvalidInputError, match="dataset 'xor': n must be an integer >= 4"):
        spectra.datasets.load("xor", n=2)


@pytest.mark.slow
def test_pip_installed_example_plugin_works_from_the_command_line(tmp_path, monkeypatch):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    shutil.copytree(PLUGIN_DIR, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=120,
    )
    if pip.returncode != 0:
        pytest.skip(f"pip could not build the example plugin here: {pip.stderr.strip()[-300:]}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    out_dir = tmp_path / "run"
    run = subprocess.run(
        [sys.executable, "-m", "spectra", "analyze", "--model", "xor-net", "--dataset", "xor",
         "--dataset-arg", "n=40", "--method", "exact", "--quiet", "--out", str(out_dir)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    result = spectra.load(out_dir)
    assert result.num_params == 5 * 4 + 2 and result.provenance["data"]["plugin"] == "example"
    # the installed metadata (not our hand-made dist-info) names the distribution
    monkeypatch.syspath_prepend(str(target))
    plugins.reset()
    try:
        status = {p["name"]: p for p in plugins.list_plugins()}
        origin = sys.modules["spectra_example_plugin"].__file__
    finally:
        plugins.reset()
        sys.modules.pop("spectra_example_plugin", None)
    assert status["example"]["source"] == "entry point (spectra-example-plugin 0.1.0)"
    assert status["example"]["ok"] and origin.startswith(str(target))
