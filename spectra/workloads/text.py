"""A character-level text corpus that is always available offline: the Python standard library's source.

The files come from the running interpreter's own ``Lib`` folder
(``sysconfig.get_paths()["stdlib"]``), so no download is ever needed; which
files and which Python version were read is recorded in the corpus ``info``
(the text differs slightly between Python versions).

Tokens are characters: the printable ASCII range, newline, and one token
for anything else, after a padding token ``0``.  Batches follow the Hugging
Face convention: dicts with ``input_ids`` ``[N, L]`` and ``labels`` (the
same ids, ``-100`` on padding, so a causal LM's loss shifts them by one).
Sequences are cut at line ends, so their lengths are ragged.

>>> corpus = load_corpus(files=("bisect.py",), max_chars=2000)
>>> batches = sequence_batches(corpus, seq_len=32, batch_size=8, num_batches=2)
>>> sorted(batches[0]), tuple(batches[0]["input_ids"].shape)
(['input_ids', 'labels'], (8, 32))
>>> bool((batches[0]["labels"] == -100).any())  # ragged: padded at the end of short lines
True
"""

from __future__ import annotations

import string
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidInputError
from ..losses import IGNORE_INDEX

__all__ = ["Corpus", "load_corpus", "sequence_batches", "VOCAB", "PAD_ID", "DEFAULT_FILES", "encode", "decode"]

#: Modules present in every CPython 3.10+ standard library, in a fixed order.
DEFAULT_FILES = ("textwrap.py", "heapq.py", "bisect.py", "fnmatch.py", "colorsys.py", "shlex.py", "queue.py",
                 "string.py", "glob.py", "random.py")
PAD_ID = 0
_UNKNOWN = "\x00"
#: Token i is VOCAB[i]: padding, unknown, newline, then printable ASCII without other whitespace.
VOCAB = ("<pad>", _UNKNOWN, "\n") + tuple(c for c in string.printable if c not in "\t\n\r\x0b\x0c")
_INDEX = {c: i for i, c in enumerate(VOCAB) if i > 0}


def encode(text: str) -> list[int]:
    """Token ids of ``text`` (unknown characters share one id)."""
    unknown = _INDEX[_UNKNOWN]
    return [_INDEX.get(c, unknown) for c in text]


def decode(ids: Any) -> str:
    """Text of token ids (padding dropped)."""
    return "".join(VOCAB[int(i)] for i in ids if int(i) != PAD_ID)


@dataclass
class Corpus:
    """Lines of text with a record of where they came from."""

    lines: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)


def load_corpus(files: tuple[str, ...] = DEFAULT_FILES, max_chars: int | None = None,
                folder: str | Path | None = None) -> Corpus:
    """Read ``files`` from the standard library (or ``folder``), tabs as four spaces, blank lines dropped."""
    root = Path(folder) if folder is not None else Path(sysconfig.get_paths()["stdlib"])
    lines: list[str] = []
    total = 0
    used = []
    for name in files:
        path = root / name
        if not path.is_file():
            raise InvalidInputError(f"corpus file {name!r} is not in {root}; pass files=... that exist there")
        used.append(name)
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.replace("\t", "    ").rstrip()
            if not line.strip():
                continue
            lines.append(line + "\n")
            total += len(line) + 1
            if max_chars is not None and total >= max_chars:
                break
        if max_chars is not None and total >= max_chars:
            break
    if not lines:
        raise InvalidInputError(f"no text read from {', '.join(files)} in {root}")
    info = {"name": "python-stdlib-source", "folder": str(root), "files": used, "chars": total,
            "python": sys.version.split()[0]}
    return Corpus(lines, info)


def _sequences(corpus: Corpus, seq_len: int) -> list[list[int]]:
    """Consecutive lines packed into sequences of at most ``seq_len`` tokens, cut at line ends."""
    out, current = [], []
    for line in corpus.lines:
        ids = encode(line)[:seq_len]
        if current and len(current) + len(ids) > seq_len:
            out.append(current)
            current = []
        current = current + ids
    if current:
        out.append(current)
    return [s for s in out if len(s) >= 2]


def sequence_batches(corpus: Corpus, seq_len: int = 64, batch_size: int = 16, num_batches: int | None = None,
                     start: int = 0) -> list[dict[str, torch.Tensor]]:
    """Dict batches ``{"input_ids", "labels"}`` of ragged sequences, padded to ``seq_len``.

    ``start`` skips that many sequences first (a held-out split takes the
    sequences after the training ones).
    """
    if seq_len < 2 or batch_size < 1:
        raise InvalidInputError(f"seq_len must be >= 2 and batch_size >= 1; got {seq_len}, {batch_size}")
    seqs = _sequences(corpus, seq_len)[start:]
    if num_batches is not None:
        seqs = seqs[: num_batches * batch_size]
    if not seqs:
        raise InvalidInputError(f"the corpus ({corpus.info.get('chars')} characters) gives no sequence after {start}")
    batches = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        ids = torch.full((len(chunk), seq_len), PAD_ID, dtype=torch.long)
        labels = torch.full((len(chunk), seq_len), IGNORE_INDEX, dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, :len(seq)] = torch.tensor(seq)
            labels[row, :len(seq)] = torch.tensor(seq)
        batches.append({"input_ids": ids, "labels": labels})
    return batches
