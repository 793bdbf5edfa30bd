"""`spectra reproduce decomposition` at a smoke-test size: files, and facts that must hold exactly.

Facts checked: G is positive semi-definite (cross-entropy); for ReLU nets the
residual R = H - G has zero diagonal blocks per layer (the output is linear in
each layer's weights), so tr R = 0 and tr H = tr G; shares v^T G v / lambda
are consistent with the saved spectra.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from spectra.experiments.decomposition import run

SMALL = {"blob_hidden": 2, "blob_n": 60, "blob_max_steps": 300, "mnist_sizes": [784, 1, 10], "mnist_n": 30,
         "mnist_max_steps": 60, "stages": ["trained"]}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("decomp")
    return run(out, scale="tiny", quiet=True, overrides=SMALL), out / "decomposition"


def test_files_and_registry_entry(result):
    res, folder = result
    for f in ("results.json", "report.md", "arrays.npz", "decomposition_spectra.png",
              "decomposition_outlier_shares.png"):
        assert (folder / f).is_file(), f
    saved = json.loads((folder / "results.json").read_text())
    assert set(saved["measured"]) == {"blobs_trained", "mnist_trained"}
    assert "explained by G" in (folder / "report.md").read_text()
    from spectra.experiments import EXPERIMENTS

    assert "decomposition" in EXPERIMENTS


def test_exact_facts(result):
    res, folder = result
    with np.load(folder / "arrays.npz", allow_pickle=False) as z:
        for key, m in res["measured"].items():
            H, G, R = z[f"{key}_eig_H"], z[f"{key}_eig_G"], z[f"{key}_eig_R"]
            scale = np.abs(H).max()
            assert G.min() > -1e-10 * scale, key  # G is PSD
            assert abs(R.sum()) < 1e-9 * scale * R.size, key  # tr R = 0 for ReLU nets
            assert H.sum() == pytest.approx(G.sum(), rel=1e-9, abs=1e-12)
            assert m["num_classes"] == (2 if key.startswith("blobs") else 10)
            assert m["H"]["num_params"] == (18 if key.startswith("blobs") else 805)
            assert 0 <= m["K_G_top_explained"] <= len(m["G_share_top"])
            assert m["large_H_explained_by_G"] <= m["large_H"]
