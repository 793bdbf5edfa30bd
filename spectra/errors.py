"""Exceptions raised by spectra.

Every error a user can cause is a :class:`SpectraError`, so callers (and the
``spectra`` command) can tell "you asked for something impossible" apart from a
bug.  Each subclass also derives from the matching built-in exception, so
``except ValueError`` keeps working for code that does not know spectra.
"""

from __future__ import annotations


class SpectraError(Exception):
    """Base class of every error spectra raises on purpose."""


class InvalidInputError(SpectraError, ValueError):
    """A model, dataset, loss or option that spectra cannot use as given."""


class UnknownNameError(SpectraError, LookupError):
    """A registry name (model, dataset, backend, loss) that nobody registered.

    The message lists the names that are known.
    """

    def __init__(self, kind: str, name: str, known: list[str] | tuple[str, ...]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        known_txt = ", ".join(self.known) if self.known else "(none registered)"
        plural = kind + ("es" if kind.endswith("s") else "s")  # "losses", not "losss"
        super().__init__(f"unknown {kind} {name!r}; known {plural}: {known_txt}")

    def __str__(self) -> str:  # LookupError would otherwise repr() the message
        return self.args[0]


class MemoryBudgetError(SpectraError, MemoryError):
    """A computation would need more memory than allowed; nothing was allocated."""


class NonDeterministicError(SpectraError, RuntimeError):
    """The Hessian operator gives different answers for the same vector.

    Usually dropout or BatchNorm in train mode, or a shuffling data loader.
    """


class NonFiniteError(SpectraError, FloatingPointError):
    """NaN or Inf in the data, the weights or the loss."""


class PluginError(SpectraError, RuntimeError):
    """A plugin failed to load or misbehaved; the message names the plugin."""


class ConvergenceError(SpectraError, RuntimeError):
    """An iterative eigen-solver stopped before it converged; the message says what to change."""


class ResultFormatError(SpectraError, ValueError):
    """A saved result is missing, corrupt, or written by a newer spectra."""


class DistributedError(SpectraError, RuntimeError):
    """A torch.distributed peer failed or disagreed."""


__all__ = [
    "SpectraError",
    "InvalidInputError",
    "UnknownNameError",
    "MemoryBudgetError",
    "NonDeterministicError",
    "NonFiniteError",
    "PluginError",
    "ConvergenceError",
    "ResultFormatError",
    "DistributedError",
]
