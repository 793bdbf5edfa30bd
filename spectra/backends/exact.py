"""Exact backend: materialise the dense Hessian from batched HVPs, then ``eigh``.

Cost: ``P`` Hessian-vector products (in blocks) plus an ``O(P^3)``
eigendecomposition; memory about ``3 P^2`` numbers.  It refuses, before
allocating anything, when that does not fit.

>>> import torch
>>> from spectra.operators.base import DenseOperator
>>> r = ExactBackend().run(DenseOperator(torch.diag(torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64))))
>>> r.eigenvalues.tolist()
[-1.0, 2.0, 3.0]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..errors import MemoryBudgetError
from ..result import SpectrumResult
from .base import available_memory_bytes, format_bytes, refuses_unknown_options

# dense matrix + its symmetrised copy / eigenvector output + LAPACK workspace
DENSE_COPIES = 3


def exact_memory_bytes(num_params: int, itemsize: int = 8) -> int:
    """Peak bytes the exact backend needs for ``num_params`` parameters (float64 eigh)."""
    return DENSE_COPIES * int(num_params) ** 2 * max(itemsize, 8)


class ExactBackend:
    """All eigenvalues (and optionally eigenvectors) of the dense matrix."""

    name = "exact"
    is_exact = True

    def expected_products(self, num_params: int, **arguments: Any) -> int:
        """One product per parameter: the dense matrix, column by column (for progress bars)."""
        return int(num_params)

    @refuses_unknown_options
    def run(self, op: Any, *, return_eigenvectors: bool = False, return_hessian: bool = False,
            block_size: int | None = None, memory_limit: int | None = None) -> SpectrumResult:
        P = op.shape[0]
        need = exact_memory_bytes(P)
        have = available_memory_bytes(op.device) if memory_limit is None else int(memory_limit)
        if need > have:
            raise MemoryBudgetError(
                f"the exact spectrum of P={P} parameters needs about {format_bytes(need)} "
                f"({DENSE_COPIES} dense {P}x{P} float64 matrices) but only {format_bytes(have)} is available; "
                "use method='lanczos' (a density) or method='arpack' (the extreme eigenvalues)"
            )
        start = time.perf_counter()
        before = op.num_matvecs
        dense = op.to_dense(block_size=block_size)
        build_seconds = time.perf_counter() - start
        # eigh in float64 whatever the model's dtype: round-off of float32 eigh
        # would blur exactly the near-zero eigenvalues the analysis is about.
        dense64 = dense.to(torch.float64)
        if return_eigenvectors:
            evals, evecs = torch.linalg.eigh(dense64)
            eigenvectors = evecs.cpu().numpy()
        else:
            evals, eigenvectors = torch.linalg.eigvalsh(dense64), None
        seconds = time.perf_counter() - start
        arrays = {"hessian": dense64.cpu().numpy()} if return_hessian else {}
        return SpectrumResult(
            method=self.name,
            is_exact=self.is_exact,
            eigenvalues=evals.cpu().numpy().astype(np.float64),
            eigenvectors=eigenvectors,
            num_params=P,
            num_matvecs=op.num_matvecs - before,
            provenance={"build_seconds": build_seconds, "solver_seconds": seconds,
                        "eigh_dtype": "float64", "symmetrised": True},
            arrays=arrays,
        )
