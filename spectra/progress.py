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

    A background thread reads the operators' product counters every
    ``REFRESH_SECONDS`` (the solver itself is not touched); ``total=None``
    shows the count and the elapsed time only.  :meth:`follow` adds another
    operator whose products count too (a float32 twin that a solver searches
    with before it finishes on ``op``).  The line is removed when the block
    ends; :meth:`count` is the number counted so far.

    >>> from spectra.operators.base import DenseOperator
    >>> import torch
    >>> op, twin = DenseOperator(torch.eye(3)), DenseOperator(torch.eye(3))
    >>> with ProductBar(op, total=None, desc="products", enabled=False) as bar:
    ...     _ = op.matmat(torch.eye(3))
    ...     _ = bar.follow(twin).matmat(torch.eye(3)[:, :2])
    >>> bar.count()
    5
    """

    def __init__(self, op: Any, total: int | None, desc: str, enabled: bool = True):
        self.total, self.desc, self.enabled = total, desc, enabled
        self._followed: list[tuple[Any, int]] = []  # (operator, its counter when following began)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.bar = None
        self.follow(op)

    def follow(self, op: Any) -> Any:
        """Count ``op``'s products from now on too; returns ``op``."""
        with self._lock:
            self._followed.append((op, op.num_matvecs))
        return op

    def count(self) -> int:
        """Products counted so far, over every followed operator."""
        with self._lock:
            return sum(op.num_matvecs - start for op, start in self._followed)

    def __enter__(self) -> "ProductBar":
        if not self.enabled:
            return self
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, desc=self.desc, unit="product", file=sys.stderr, leave=False)
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()
        return self

    def _follow(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            self._refresh()

    def _refresh(self) -> None:
        self.bar.update(self.count() - self.bar.n)

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self._stop.set()
            self.thread.join()
            self._refresh()
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
