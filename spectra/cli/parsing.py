"""Parsing the command line: one-line usage errors, ``key=value`` arguments, memory sizes.

>>> collect_pairs(["hidden=6", "activation=tanh"], "--model-arg")
{'hidden': 6, 'activation': 'tanh'}
"""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any, NoReturn, Sequence

from ..errors import InvalidInputError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


class UsageError(Exception):
    """A command line argparse cannot parse (printed as one line, exit status 2)."""


def one_line(text: str) -> str:
    """``text`` with every non-printable character escaped, so an error stays on one line.

    User input reaches error messages, and ``str.splitlines`` (like terminals)
    breaks lines at more than ``\\n``: ``\\r``, ``\\x1e``, ``\\u2028`` ...

    >>> one_line("unrecognized arguments: a\\x1eb\\nc")
    'unrecognized arguments: a\\\\x1eb\\\\nc'
    """
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def parse_key_value(text: str, option: str) -> tuple[str, Any]:
    """``"sizes=[784,10,10]"`` -> ``("sizes", [784, 10, 10])``; values are JSON where they parse, else strings.

    >>> parse_key_value("hidden=6", "--model-arg"), parse_key_value("activation=tanh", "--model-arg")
    (('hidden', 6), ('activation', 'tanh'))
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise InvalidInputError(f"{option} {text!r} must look like key=value with a name as key "
                                "(e.g. hidden=6 or sizes=[784,10,10])")
    raw = raw.strip()
    if raw == "":
        raise InvalidInputError(f"{option} {text!r} has no value after '='")
    try:
        value = json.loads(raw)
    except ValueError:
        if raw[:1] in "[{\"":  # meant as JSON but malformed: do not guess
            raise InvalidInputError(f"{option} {key}={raw}: the value is not valid JSON") from None
        value = raw
    return key, value


def collect_pairs(items: Sequence[str] | None, option: str) -> dict[str, Any]:
    """Repeated ``key=value`` options as one dict; a key given twice is refused."""
    out: dict[str, Any] = {}
    for text in items or ():
        key, value = parse_key_value(text, option)
        if key in out:
            raise InvalidInputError(f"{option} {key} is given twice")
        out[key] = value
    return out


SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20, "mb": 10**6,
               "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12}


def parse_size(text: str) -> int:
    """``"2GiB"`` -> 2147483648; ``K/M/G/T`` and ``KiB...`` are powers of 1024, ``kB/MB/GB/TB`` of 1000.

    >>> parse_size("500MB"), parse_size("1.5G"), parse_size("4096")
    (500000000, 1610612736, 4096)
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a memory size such as 2GiB, 500MB or 1e9")
    value = float(match.group(1)) * SIZE_UNITS[unit]
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive memory size")
    return int(value)


__all__ = ["Parser", "SIZE_UNITS", "UsageError", "collect_pairs", "one_line", "parse_key_value", "parse_size"]
