"""A griffe extension that renders spectra's docstrings (reST habits) as Markdown.

spectra's docstrings are written for ``help()`` and doctest: cross-references as
``:class:`~spectra.result.SpectrumResult```, literal blocks after ``::``, and
examples as bare ``>>>`` lines.  Markdown would show the roles verbatim and the
examples as nested block quotes, so the API pages get, per docstring:

* a role becomes inline code of its target (``~`` keeps the last component, as in Sphinx);
* ``text::`` becomes ``text:`` (the indented block after it is already a Markdown code block);
* each run of doctest lines (``>>>``, ``...`` and the expected output up to a blank
  line) becomes a fenced ``pycon`` block, without its ``# doctest:`` directives.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(?P<tilde>~?)(?P<target>[^`]+)`")
LITERAL_INTRO = re.compile(r"(?<=\S)::$", re.MULTILINE)
PROMPT = re.compile(r"^(?P<indent>\s*)>>> ?")
DIRECTIVE = re.compile(r"\s*#\s*doctest:.*$")


def role_to_code(match: re.Match) -> str:
    target = match.group("target")
    return f"`{target.rsplit('.', 1)[-1] if match.group('tilde') else target}`"


def fence_doctests(text: str) -> str:
    """Wrap each run of doctest lines in a fenced ``pycon`` block at its own indentation."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        prompt = PROMPT.match(lines[i])
        if not prompt:
            out.append(lines[i])
            i += 1
            continue
        indent = prompt.group("indent")
        block = []
        while i < len(lines) and lines[i].strip():
            line = lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip()
            block.append(DIRECTIVE.sub("", line))
            i += 1
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}```pycon", *(f"{indent}{line}" for line in block), f"{indent}```"]
    return "\n".join(out)


def to_markdown(text: str) -> str:
    text = ROLE.sub(role_to_code, text)
    text = LITERAL_INTRO.sub(":", text)
    return fence_doctests(text)


class RestToMarkdown(griffe.Extension):
    """Rewrites every docstring griffe collects (see the module docstring)."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if getattr(obj, "docstring", None) is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
