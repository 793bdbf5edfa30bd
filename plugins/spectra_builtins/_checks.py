"""Argument checks shared by the built-in factories.

Every bad value raises :class:`spectra.errors.InvalidInputError` (or
:class:`~spectra.errors.MemoryBudgetError`) with a message that names the
argument, so ``spectra analyze --model-arg`` typos get a one-line answer.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from spectra.errors import InvalidInputError, MemoryBudgetError

_DTYPES = {
    "float16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32, "float": torch.float32,
    "float64": torch.float64, "double": torch.float64,
}


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


def check_int(value: Any, what: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An ``int`` (bools refused) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{what} must be an integer; got {value!r}")
    if minimum is not None and value < minimum:
        raise InvalidInputError(f"{what} must be >= {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise InvalidInputError(f"{what} must be <= {maximum}; got {value}")
    return int(value)


def check_seed(seed: Any) -> int:
    return check_int(seed, "seed", 0, 2**63 - 1)


def check_float(value: Any, what: str, positive: bool = False) -> float:
    """A finite real number (``int`` accepted, ``bool`` refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"{what} must be a number; got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InvalidInputError(f"{what} must be finite; got {value}")
    if positive and value <= 0:
        raise InvalidInputError(f"{what} must be > 0; got {value}")
    return value


def check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{what} must be true or false; got {value!r}")
    return value


def check_choice(value: Any, what: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise InvalidInputError(f"{what} must be one of {', '.join(choices)}; got {value!r}")
    return value.lower()


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 8 GiB
        return 8 * 2**30


def check_allocation(num_bytes: int, what: str) -> None:
    """Refuse (before allocating) anything larger than half the machine's memory."""
    limit = _physical_memory() // 2
    if num_bytes > limit:
        raise MemoryBudgetError(
            f"{what} would need {num_bytes / 2**30:.1f} GiB, more than half this machine's memory "
            f"({limit / 2**30:.1f} GiB); choose a smaller size"
        )
