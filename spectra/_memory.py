"""How much memory there is, and bytes as people read them.

>>> format_bytes(3 * 2**20), format_bytes(512)
('3.0 MiB', '512 B')
"""

from __future__ import annotations

import os
from typing import Any

# What we assume where the operating system does not tell (not POSIX, no /proc).
ASSUMED_MEMORY_BYTES = 8 * 2**30


def physical_memory_bytes() -> int:
    """The machine's physical memory (``ASSUMED_MEMORY_BYTES`` where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return ASSUMED_MEMORY_BYTES


def available_memory_bytes(device: Any = "cpu") -> int:
    """Bytes that can be allocated now on ``device`` (best effort)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return ASSUMED_MEMORY_BYTES


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'`` (powers of 1024)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


__all__ = ["ASSUMED_MEMORY_BYTES", "available_memory_bytes", "format_bytes", "physical_memory_bytes"]
