"""Shared fixtures: matplotlib off-screen, small float64 model/data cases."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")
