"""Shared fixtures: matplotlib off-screen, small float64 model/data cases."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

# The suite's nets are tiny: a second intra-op thread only adds contention on a
# 2-core machine (a tiny net ran 3.5x slower with 2 threads on a busy machine).
torch.set_num_threads(1)
