"""An example spectra plugin: the ``xor`` dataset and the ``xor-net`` model.

spectra finds this module through the entry point ``example`` in the
``spectra`` group (see ``pyproject.toml``) and calls the two hooks below.

>>> import spectra
>>> data = spectra.datasets.load("xor", n=8)      # doctest: +SKIP
>>> net = spectra.models.create("xor-net")        # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch

import spectra
from spectra.errors import InvalidInputError

__version__ = "0.1.0"


def xor(n: int = 200, std: float = 0.3, seed: int = 0, dtype: str | None = None) -> spectra.Dataset:
    """Four Gaussian clusters at (±1, ±1); label 1 where the coordinates' signs differ."""
    # Validate what users type on the command line: spectra turns these into
    # a one-line "dataset 'xor': ..." message.
    if isinstance(n, bool) or not isinstance(n, int) or n < 4:
        raise InvalidInputError(f"n must be an integer >= 4; got {n!r}")
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 < std < 1e6:
        raise InvalidInputError(f"std must be a positive number; got {std!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"seed must be an integer >= 0; got {seed!r}")
    torch_dtype = {None: torch.get_default_dtype(), "float32": torch.float32, "float64": torch.float64}.get(dtype)
    if torch_dtype is None:
        raise InvalidInputError(f"dtype must be float32 or float64; got {dtype!r}")

    rng = np.random.default_rng(seed)
    corner = np.arange(n) % 4  # balanced: the four corners in turn
    centres = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])[corner]
    X = centres + std * rng.standard_normal((n, 2))
    y = (corner >= 2).astype(np.int64)  # corners 2 and 3 have mixed signs
    perm = rng.permutation(n)
    info = {"name": "xor", "n": n, "std": float(std), "seed": seed, "num_classes": 2}
    return spectra.Dataset(torch.from_numpy(X[perm]).to(torch_dtype), torch.from_numpy(y[perm]),
                           name="xor", info=info)


def xor_net(hidden: int = 4, dtype: str | None = None, seed: int = 0) -> torch.nn.Module:
    """A 2-hidden-2 tanh net: ``5 * hidden + 2`` parameters."""
    if isinstance(hidden, bool) or not isinstance(hidden, int) or not 1 <= hidden <= 10_000:
        raise InvalidInputError(f"hidden must be an integer in 1..10000; got {hidden!r}")
    torch_dtype = {None: torch.get_default_dtype(), "float32": torch.float32, "float64": torch.float64}.get(dtype)
    if torch_dtype is None:
        raise InvalidInputError(f"dtype must be float32 or float64; got {dtype!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"seed must be an integer >= 0; got {seed!r}")
    with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's RNG
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Linear(2, hidden, dtype=torch_dtype),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, 2, dtype=torch_dtype),
        )


@spectra.hookimpl
def spectra_register_datasets(registry):
    registry.register("xor", xor, "four Gaussian clusters at (±1, ±1), XOR labels (example plugin)")


@spectra.hookimpl
def spectra_register_models(registry):
    registry.register("xor-net", xor_net, "2-h-2 tanh net for the xor data (example plugin)")
