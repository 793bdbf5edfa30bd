"""Argument checks shared across spectra: one function per kind of value.

Every bad value raises :class:`spectra.errors.InvalidInputError` (or
:class:`~spectra.errors.MemoryBudgetError`) with a message that names the
argument, so a typo on the command line gets a one-line answer.  Plugins may
use them too.

>>> check_int("hidden", 6, 1)
6
>>> check_int("hidden", 0, 1)
Traceback (most recent call last):
...
spectra.errors.InvalidInputError: hidden must be >= 1; got 0
>>> resolve_dtype("double")
torch.float64
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ._memory import format_bytes, physical_memory_bytes
from .errors import InvalidInputError, MemoryBudgetError

MAX_SEED = 2**63 - 1  # torch.manual_seed and numpy's SeedSequence both take this range
# A single allocation may take at most this fraction of the machine's memory.
ALLOCATION_FRACTION = 0.5

_DTYPES = {
    "float16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32, "float": torch.float32,
    "float64": torch.float64, "double": torch.float64,
}


def check_int(what: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (Python or numpy; bools refused) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{what} must be an integer; got {value!r}")
    if minimum is not None and value < minimum:
        raise InvalidInputError(f"{what} must be >= {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise InvalidInputError(f"{what} must be <= {maximum}; got {value}")
    return int(value)


def check_seed(seed: Any) -> int:
    """A seed: an integer in ``[0, 2**63 - 1]``."""
    return check_int("seed", seed, 0, MAX_SEED)


def check_float(what: str, value: Any, positive: bool = False) -> float:
    """A finite real number (``int`` accepted, ``bool`` refused); ``> 0`` if ``positive``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"{what} must be a number; got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidInputError(f"{what} must be finite; got {value}")
    if positive and value <= 0:
        raise InvalidInputError(f"{what} must be > 0; got {value}")
    return value


def check_bool(what: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{what} must be true or false; got {value!r}")
    return value


def check_choice(what: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of ``choices``, compared without case; returned in lower case."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise InvalidInputError(f"{what} must be one of {', '.join(choices)}; got {value!r}")
    return value.lower()


def resolve_dtype(dtype: Any, what: str = "dtype") -> torch.dtype:
    """``None`` -> float64 (spectra's default, as in the paper); a floating torch dtype or its name otherwise."""
    if dtype is None:
        return torch.float64
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise InvalidInputError(f"{what} must be a floating-point dtype; got {dtype}")
        return dtype
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key in _DTYPES:
            return _DTYPES[key]
    raise InvalidInputError(f"{what} must be one of {', '.join(sorted(_DTYPES))} (or None); got {dtype!r}")


def check_allocation(num_bytes: int, what: str) -> None:
    """Refuse (before allocating) anything larger than half the machine's memory."""
    limit = int(physical_memory_bytes() * ALLOCATION_FRACTION)
    if num_bytes > limit:
        raise MemoryBudgetError(
            f"{what} would need {format_bytes(num_bytes)}, more than {ALLOCATION_FRACTION:.0%} of this machine's "
            f"memory ({format_bytes(limit)}); choose a smaller size"
        )


__all__ = ["ALLOCATION_FRACTION", "MAX_SEED", "check_allocation", "check_bool", "check_choice", "check_float",
           "check_int", "check_seed", "resolve_dtype"]
