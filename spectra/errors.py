"""Exceptions raised by spectra.

Every error a user can cause is a :class:`SpectraError`, so callers (and the
``spectra`` command) can tell "you asked for something impossible" apart from a
bug.  Each subclass also derives from the matching built-in exception, so
``except ValueError`` keeps working for code that does not know spectra.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class SpectraError(Exception):
    """Base class of every error spectra raises on purpose."""


class InvalidInputError(SpectraError, ValueError):
    """A model, dataset, loss or option that spectra cannot use as given."""


class UnknownNameError(SpectraError, LookupError):
    """A registry name (model, dataset, backend, loss) that nobody registered.

    The message lists the names that are known.
    """

    def __init__(self, kind: str, name: str, known: Iterable[str], plural: str | None = None,
                 aliases: dict[str, str] | None = None):
        self.kind, self.name, self.known = kind, name, sorted(known)
        known_txt = ", ".join(self.known) if self.known else "(none registered)"
        plural = plural or kind + ("es" if kind.endswith("s") else "s")  # "losses", not "losss"
        aliases = aliases or {}  # alias -> the name it stands for: suggested as that name
        found = close_matches(str(name), [*self.known, *aliases])
        self.suggestions = list(dict.fromkeys(aliases.get(s, s) for s in found))
        super().__init__(f"unknown {kind} {name!r}; known {plural}: {known_txt}{did_you_mean(self.suggestions)}")

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


class ResultFormatError(SpectraError, ValueError):
    """A saved result is missing, corrupt, or written by a newer spectra."""


class DistributedError(SpectraError, RuntimeError):
    """A torch.distributed peer failed or disagreed."""


class ConvergenceError(SpectraError, RuntimeError):
    """An iterative eigen-solver stopped before it converged; the message says what to change."""


# How alike a typo and a known name must be to be suggested (difflib's ratio): 0.65 keeps 'mpl' -> 'mlp'
# (0.67) and drops 'depth' -> 'width' (0.6, difflib's default cut-off).
SUGGESTION_CUTOFF = 0.65


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The ``choices`` closest to ``word`` (compared without case), best first.

    >>> close_matches("num_prob", ["num_probes", "num_steps", "seed"])
    ['num_probes']
    """
    by_key: dict[str, str] = {}
    for choice in choices:
        by_key.setdefault(choice.casefold(), choice)
    found = difflib.get_close_matches(word.casefold(), list(by_key), n=n, cutoff=SUGGESTION_CUTOFF)
    return [by_key[key] for key in found]


def did_you_mean(suggestions: list[str]) -> str:
    """``"; did you mean 'a' or 'b'?"``, or ``""`` when there is nothing to suggest."""
    if not suggestions:
        return ""
    quoted = [repr(s) for s in suggestions]
    return "; did you mean " + (quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]) + "?"


def first_line(exc: BaseException, max_chars: int | None = None) -> str:
    """The first line of an exception's message, or its type's name if it has none.

    ``max_chars`` cuts a long line (torch's messages can run to hundreds of characters).

    >>> first_line(ValueError("bad value\\nmore detail")), first_line(KeyError())
    ('bad value', 'KeyError')
    >>> first_line(ValueError("x" * 50), max_chars=10)
    'xxxxxxx...'
    """
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if max_chars is None or len(line) <= max_chars else line[:max_chars - 3] + "..."


def describe_exception(exc: BaseException) -> str:
    """``"TypeName: first line of the message"`` (just the type's name when there is no message)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


__all__ = [
    "SpectraError",
    "InvalidInputError",
    "UnknownNameError",
    "MemoryBudgetError",
    "NonDeterministicError",
    "NonFiniteError",
    "PluginError",
    "ResultFormatError",
    "DistributedError",
    "ConvergenceError",
    "close_matches",
    "describe_exception",
    "did_you_mean",
    "first_line",
]
