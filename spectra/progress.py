"""Progress for long work, in Python as on the command line: tqdm bars on stderr, quiet by option.

``progress=None`` (the default of the functions that take it) shows progress
only to a person watching: when stderr is a terminal.  ``True`` always shows
it, ``False`` never.

>>> wanted(False), wanted(True)
(False, True)
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable

REFRESH_SECONDS = 0.5  # how often a bar that follows a computation from outside is redrawn


def wanted(progress: bool | None) -> bool:
    """Whether to show progress: ``progress`` itself, or (``None``) whether stderr is a terminal."""
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


class ProductBar:
    """Hessian-vector products as they happen: ``op.num_matvecs`` counted against an expected ``total``.

    A background thread reads the operator's product counter every
    ``REFRESH_SECONDS`` (the solver itself is not touched); ``total=None``
    shows the count and the elapsed time only.  The line is removed when the
    block ends.

    >>> from spectra.operators.base import DenseOperator
    >>> import torch
    >>> op = DenseOperator(torch.eye(3))
    >>> with ProductBar(op, total=3, desc="products", enabled=False):
    ...     _ = op.matmat(torch.eye(3))
    """

    def __init__(self, op: Any, total: int | None, desc: str, enabled: bool = True):
        self.op, self.total, self.desc, self.enabled = op, total, desc, enabled
        self._stop = threading.Event()

    def __enter__(self) -> "ProductBar":
        if not self.enabled:
            return self
        from tqdm import tqdm

        self.start = self.op.num_matvecs
        self.bar = tqdm(total=self.total, desc=self.desc, unit="product", file=sys.stderr, leave=False)
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()
        return self

    def _follow(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            self.bar.update(self.op.num_matvecs - self.start - self.bar.n)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self._stop.set()
            self.thread.join()
            self.bar.close()


class StepBar:
    """A bar of ``total`` steps fed by a ``(step, **postfix)`` call, e.g. from a training callback.

    >>> bar = StepBar(3, "steps", enabled=False)
    >>> bar.update(2, loss=0.5); bar.close()
    """

    def __init__(self, total: int | None, desc: str, enabled: bool = True, unit: str = "step"):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)

    def update(self, step: int, **postfix: Any) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "StepBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def stderr_logger(quiet: bool) -> Callable[[str], None]:
    """A ``log(text)`` that prints status lines to stderr, or drops them when ``quiet``."""
    def log(text: str) -> None:
        if not quiet:
            print(text, file=sys.stderr, flush=True)

    return log


__all__ = ["ProductBar", "REFRESH_SECONDS", "StepBar", "stderr_logger", "wanted"]
