"""Progress for long work, in Python as on the command line: tqdm bars on stderr, quiet by option.

``progress=None`` (the default of the functions that take it) shows progress
only to a person watching: when stderr is a terminal.  ``True`` always shows
it, ``False`` never.

>>> wanted(False), wanted(True)
(False, True)
>>> with Elapsed("a short computation", enabled=False):
...     total = sum(range(10))
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable

REFRESH_SECONDS = 0.5  # how often the elapsed-time line is redrawn


def wanted(progress: bool | None) -> bool:
    """Whether to show progress: ``progress`` itself, or (``None``) whether stderr is a terminal."""
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


class Elapsed:
    """A line that shows the elapsed time while a computation with no steps to count runs.

    A background thread redraws it every ``REFRESH_SECONDS``; the line is
    removed when the block ends.
    """

    def __init__(self, desc: str, enabled: bool = True):
        self.desc, self.enabled = desc, enabled
        self._stop = threading.Event()

    def __enter__(self) -> "Elapsed":
        if not self.enabled:
            return self
        from tqdm import tqdm

        self.bar = tqdm(total=None, desc=self.desc, bar_format="{desc} [{elapsed}]", file=sys.stderr, leave=False)
        self.thread = threading.Thread(target=self._tick, daemon=True)
        self.thread.start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            self.bar.refresh()

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


__all__ = ["Elapsed", "REFRESH_SECONDS", "StepBar", "stderr_logger", "wanted"]
