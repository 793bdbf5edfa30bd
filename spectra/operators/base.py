"""Base class of spectra's linear operators on flat parameter vectors.

A subclass implements one method, :meth:`SpectralOperator._matmat`, which
multiplies the symmetric ``P x P`` matrix with a block ``V`` of shape
``[P, m]`` (a torch tensor on :attr:`device` with :attr:`dtype`) and returns a
block of the same shape.  It sets ``self.shape``, ``self.dtype`` and
``self.device`` in ``__init__``.  Everything else — vector products, products
counting, dense materialisation in chunks, the SciPy view — comes from here.

>>> import torch
>>> class Diagonal(SpectralOperator):
...     def __init__(self, d):
...         super().__init__(shape=(len(d), len(d)), dtype=d.dtype, device=d.device)
...         self.d = d
...     def _matmat(self, V):
...         return self.d[:, None] * V
>>> op = Diagonal(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
>>> (op @ torch.ones(3, dtype=torch.float64)).tolist(), op.num_matvecs
([1.0, 2.0, 3.0], 1)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InvalidInputError


class SpectralOperator:
    """A symmetric linear operator ``R^P -> R^P`` that counts its products.

    ``num_matvecs`` counts single-vector products: a block of ``m`` columns
    counts ``m``.  ``max_block`` bounds how many columns go through
    :meth:`_matmat` at once (to bound memory); larger blocks are chunked.
    """

    max_block: int | None = None

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device | str):
        if shape[0] != shape[1]:
            raise InvalidInputError(f"a spectral operator must be square; got shape {shape}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = dtype
        self.device = torch.device(device)
        self.num_matvecs = 0

    # -- what subclasses implement -------------------------------------------------
    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- products ------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return self.shape[0]

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """Return ``A @ V`` for ``V`` of shape ``[P, m]`` (computed as blocks)."""
        V = self._check_block(V)
        m = V.shape[1]
        step = self.max_block or m
        if m <= step:
            out = self._matmat(V)
        else:
            out = torch.cat([self._matmat(V[:, i : i + step]) for i in range(0, m, step)], dim=1)
        self.num_matvecs += m
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Return ``A @ v`` for a vector of length ``P``."""
        if v.ndim != 1:
            raise InvalidInputError(f"matvec needs a vector of shape [{self.shape[0]}]; got {tuple(v.shape)}")
        return self.matmat(v[:, None])[:, 0]

    def __matmul__(self, other: torch.Tensor) -> torch.Tensor:
        if isinstance(other, np.ndarray):
            other = torch.as_tensor(other)
        return self.matvec(other) if other.ndim == 1 else self.matmat(other)

    def _check_block(self, V: torch.Tensor) -> torch.Tensor:
        if isinstance(V, np.ndarray):
            V = torch.as_tensor(V)
        if V.ndim != 2 or V.shape[0] != self.shape[1]:
            raise InvalidInputError(
                f"expected a block of shape [{self.shape[1]}, m]; got {tuple(V.shape)}"
            )
        return V.to(device=self.device, dtype=self.dtype)

    # -- views ---------------------------------------------------------------------
    def to_dense(self, block_size: int | None = None) -> torch.Tensor:
        """Materialise the ``P x P`` matrix, ``block_size`` identity columns at a time.

        The result is symmetrised, ``(A + A^T) / 2``, to remove round-off
        asymmetry before an eigen-solver sees it.  A subclass that can do
        better with unit columns overrides :meth:`_unit_columns` and
        :meth:`_symmetrise_dense`.
        """
        P = self.shape[0]
        block = block_size or self.max_block or min(P, 64)
        if self.max_block:
            block = min(block, self.max_block)  # one matmat call per block of unit columns
        dense = torch.empty(P, P, dtype=self.dtype, device=self.device)
        for start in range(0, P, block):
            stop = min(start + block, P)
            E = torch.zeros(P, stop - start, dtype=self.dtype, device=self.device)
            E[torch.arange(start, stop), torch.arange(stop - start)] = 1
            # columns start:stop, stored as rows: contiguous writes (4x faster than
            # strided column writes at P = 7960); the symmetrisation below does not mind
            dense[start:stop, :] = self._unit_columns(E, start).T
        self._symmetrise_dense(dense)
        return dense

    def _unit_columns(self, E: torch.Tensor, start: int) -> torch.Tensor:
        """``A E`` for the identity columns ``start : start + E.shape[1]`` (hook of :meth:`to_dense`)."""
        return self.matmat(E)

    def _symmetrise_dense(self, dense: torch.Tensor) -> None:
        """Make the matrix :meth:`to_dense` filled symmetric, in place (hook of :meth:`to_dense`)."""
        symmetrise_in_place(dense)

    def to_scipy(self) -> Any:
        """A :class:`scipy.sparse.linalg.LinearOperator` in float64 numpy."""
        from scipy.sparse.linalg import LinearOperator

        def apply(X: np.ndarray) -> np.ndarray:
            X = np.asarray(X)
            col = X.ndim == 1
            T = torch.as_tensor(X.reshape(self.shape[1], -1), dtype=self.dtype, device=self.device)
            Y = self.matmat(T).detach().to("cpu", torch.float64).numpy()
            return Y[:, 0] if col else Y

        return LinearOperator(self.shape, matvec=apply, matmat=apply, rmatvec=apply, rmatmat=apply,
                              dtype=np.float64)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(P={self.shape[0]}, dtype={self.dtype}, device={self.device}, "
                f"num_matvecs={self.num_matvecs})")


#: Rows and columns of the tiles the in-place symmetrisations work on (two float64 tiles: 4 MiB).
IN_PLACE_TILE = 512


class DenseOperator(SpectralOperator):
    """A symmetric matrix given explicitly (for tests and closed-form checks).

    >>> op = DenseOperator(torch.eye(3, dtype=torch.float64))
    >>> op.to_dense().trace().item()
    3.0
    """

    def __init__(self, matrix: torch.Tensor | np.ndarray):
        matrix = torch.as_tensor(matrix)
        super().__init__(tuple(matrix.shape), matrix.dtype, matrix.device)
        self.matrix = matrix

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.matrix @ V


def symmetrise_in_place(A: torch.Tensor, tile: int = IN_PLACE_TILE) -> None:
    """``A <- (A + A^T) / 2`` tile by tile, without the two ``P x P`` temporaries of the plain formula.

    >>> A = torch.arange(9.0).reshape(3, 3)
    >>> symmetrise_in_place(A, tile=2)
    >>> A.tolist()
    [[0.0, 2.0, 4.0], [2.0, 4.0, 6.0], [4.0, 6.0, 8.0]]
    """
    P = A.shape[0]
    for i in range(0, P, tile):
        for j in range(i, P, tile):
            upper, lower = A[i : i + tile, j : j + tile], A[j : j + tile, i : i + tile]
            mean = 0.5 * (upper + lower.T)
            upper.copy_(mean)
            lower.copy_(mean.T)


def mirror_upper_in_place(A: torch.Tensor, tile: int = IN_PLACE_TILE) -> None:
    """Copy the upper triangle of ``A`` (diagonal included) onto the lower, tile by tile.

    >>> A = torch.arange(9.0).reshape(3, 3)
    >>> mirror_upper_in_place(A, tile=2)
    >>> A.tolist()
    [[0.0, 1.0, 2.0], [1.0, 4.0, 5.0], [2.0, 5.0, 8.0]]
    """
    P = A.shape[0]
    for i in range(0, P, tile):
        diagonal = A[i : i + tile, i : i + tile]
        diagonal.copy_(torch.triu(diagonal) + torch.triu(diagonal, 1).T)
        for j in range(i + tile, P, tile):
            A[j : j + tile, i : i + tile].copy_(A[i : i + tile, j : j + tile].T)
