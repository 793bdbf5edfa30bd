"""MkDocs hooks that keep the site in step with the code it documents.

Three things in the pages are generated when the site is built, so they cannot go stale:

* ``::: spectra.NAME`` (an API block naming a public name of ``spectra/__init__.py``)
  is pointed at the module that defines ``NAME`` today, so API pages name the public
  API and survive code moving between modules;
* ``<!-- spectra-api-index -->`` becomes the table of API pages and their names, followed
  by the API of every public name that no page places yet, so a new public name is
  documented from the day it is added;
* ``<!-- spectra-tree: spectra -->`` becomes the tree of that folder of the repository
  (``spectra``, ``examples``, ...), one line per module or package with the first line
  of its docstring;
* ``<!-- spectra-help: analyze -->`` becomes the output of ``spectra analyze --help``
  (``<!-- spectra-help -->`` alone: ``spectra --help``).

The functions below also run without MkDocs (``tests/test_docs.py`` imports this file).
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "spectra"
API_DIR = "api"
HELP_COLUMNS = "100"  # argparse wraps help text at $COLUMNS; fixed so the page does not depend on the terminal

API_BLOCK = re.compile(r"^::: spectra\.(?P<name>\w+)[ \t]*(?P<options>\n    options:[ \t]*$)?", re.MULTILINE)
TREE_MARKER = re.compile(r"^<!-- spectra-tree:[ \t]*(?P<folder>[\w./-]+) -->[ \t]*$", re.MULTILINE)
API_INDEX_MARKER = "<!-- spectra-api-index -->"
HELP_MARKER = re.compile(r"^<!-- spectra-help(?::[ \t]*(?P<command>[\w-]+))? -->[ \t]*$", re.MULTILINE)
ROLE = re.compile(r":\w+:`(?P<tilde>~?)(?P<target>[^`]+)`")  # reST cross-references such as :class:`~a.B`
SKIPPED_DIRS = {"__pycache__"}
DESCRIPTION_WIDTH = 88


# ---------------------------------------------------------------- public API blocks

def public_names() -> list[str]:
    """The names ``spectra`` exports (its ``__all__``), ``__version__`` left out."""
    import spectra

    return sorted(name for name in spectra.__all__ if not name.startswith("__"))


def defining_path(name: str) -> str:
    """The dotted path of the object behind ``spectra.NAME``, where it is defined today.

    >>> defining_path("analyze")  # doctest: +SKIP
    'spectra.api.analyze'
    """
    import inspect
    import sys

    import spectra

    if name not in public_names():
        raise LookupError(f"spectra has no public name {name!r} (spectra.__all__ lists: {', '.join(public_names())})")
    obj = getattr(spectra, name)
    if inspect.ismodule(obj):
        return obj.__name__
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if module and qualname and module.startswith(PACKAGE):
        return f"{module}.{qualname}"
    # an instance (a pluggy marker, a constant): the spectra module whose source assigns the name
    for module_name, mod in sorted(sys.modules.items()):
        if module_name.startswith(PACKAGE + ".") and getattr(mod, name, None) is obj and _assigns(mod, name):
            return f"{module_name}.{name}"
    raise LookupError(f"cannot tell where spectra.{name} is defined")


def _assigns(module: Any, name: str) -> bool:
    source = getattr(module, "__file__", None)
    if not source or not source.endswith(".py"):
        return False
    tree = ast.parse(Path(source).read_text(encoding="utf-8"))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def resolve_api_blocks(markdown: str) -> str:
    """Point every ``::: spectra.NAME`` block at the object's defining module, headed ``spectra.NAME``."""

    def replace(match: re.Match) -> str:
        # the page's own options block, if any, follows the two lines added here
        name = match.group("name")
        return (f"::: {defining_path(name)}\n"
                f"    options:\n"
                f"      heading: \"spectra.{name}\"\n"
                f"      toc_label: \"{name}\"")

    return API_BLOCK.sub(replace, markdown)


def documented_names(docs_dir: Path) -> dict[str, list[str]]:
    """``NAME -> [page, ...]`` for every ``::: spectra.NAME`` block under ``docs/api/``."""
    found: dict[str, list[str]] = {}
    for page in sorted((docs_dir / API_DIR).glob("*.md")):
        for match in API_BLOCK.finditer(page.read_text(encoding="utf-8")):
            found.setdefault(match.group("name"), []).append(f"{API_DIR}/{page.name}")
    return found


def api_coverage_problems(docs_dir: Path) -> list[str]:
    """API blocks that name something ``spectra.__all__`` does not export (empty when none do)."""
    public = set(public_names())
    return [f"docs/{pages[0]} documents spectra.{name}, which spectra.__all__ does not export"
            for name, pages in sorted(documented_names(docs_dir).items()) if name not in public]


def unplaced_names(docs_dir: Path) -> list[str]:
    """Public names that no API page places; the API index documents them itself."""
    return sorted(set(public_names()) - set(documented_names(docs_dir)))


def nav_paths(nav: Any) -> list[str]:
    """The page paths of an MkDocs ``nav`` setting, in reading order."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [path for value in nav.values() for path in nav_paths(value)]
    if isinstance(nav, list):
        return [path for item in nav for path in nav_paths(item)]
    return []


def api_index(docs_dir: Path, nav_order: list[str] | None = None) -> str:
    """The table of API pages (in ``nav_order`` where given) and their names, then the public names no page places."""
    order = {path: i for i, path in enumerate(nav_order or [])}
    pages = sorted((docs_dir / API_DIR).glob("*.md"), key=lambda p: (order.get(f"{API_DIR}/{p.name}", len(order)), p.name))
    rows = ["| page | public names |", "|---|---|"]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        names = [m.group("name") for m in API_BLOCK.finditer(text)]
        if names:
            title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), page.stem)
            rows.append(f"| [{title}]({page.name}) | {', '.join(f'`spectra.{n}`' for n in names)} |")
    unplaced = unplaced_names(docs_dir)
    rows += ["", "## Other public names", ""]
    rows += ([f"::: spectra.{name}\n" for name in unplaced] if unplaced
             else ["Every public name is on one of the pages above."])
    return "\n".join(rows)


# ---------------------------------------------------------------- the package tree

def first_docstring_line(path: Path) -> str:
    """The first line of a module's docstring (reST markup dropped), or ''."""
    if not path.is_file():
        return ""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except SyntaxError:
        return ""
    line = (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""
    line = ROLE.sub(lambda m: m.group("target").rsplit(".", 1)[-1] if m.group("tilde") else m.group("target"), line)
    line = line.replace("``", "")
    return line if len(line) <= DESCRIPTION_WIDTH else line[: DESCRIPTION_WIDTH - 1] + "…"


def natural_key(path: Path) -> list:
    """Sort key that puts fig2 before fig10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def package_entries(directory: Path) -> Iterator[Path]:
    """Python files and the folders holding any, directly in ``directory``: files first, each sorted."""
    children = sorted(directory.iterdir(), key=natural_key)
    yield from (p for p in children if p.suffix == ".py" and p.name != "__init__.py")
    yield from (p for p in children if p.is_dir() and p.name not in SKIPPED_DIRS and any(p.rglob("*.py")))


def layout_lines(directory: Path, depth: int = 0) -> list[tuple[str, str]]:
    """``(indented name, description)`` for every module and subpackage under ``directory``."""
    lines: list[tuple[str, str]] = []
    if depth == 0:
        lines.append((directory.name + "/", first_docstring_line(directory / "__init__.py")))
    for entry in package_entries(directory):
        indent = "  " * (depth + 1)
        if entry.is_dir():
            lines.append((f"{indent}{entry.name}/", first_docstring_line(entry / "__init__.py")))
            lines += layout_lines(entry, depth + 1)
        else:
            lines.append((f"{indent}{entry.name}", first_docstring_line(entry)))
    return lines


def layout_block(directory: Path) -> str:
    """A folder's tree as a fenced block: every module and package, with its docstring's first line."""
    if not directory.is_dir():
        raise FileNotFoundError(f"a spectra-tree marker names {directory}, which is not a folder")
    lines = layout_lines(directory)
    width = max(len(name) for name, _ in lines) + 2
    body = "\n".join(f"{name:<{width}}{description}".rstrip() for name, description in lines)
    return f"```text\n{body}\n```"


# ---------------------------------------------------------------- command-line help

def command_help(command: str | None) -> str:
    """What ``spectra [COMMAND] --help`` prints, at a fixed width."""
    from spectra.cli import main

    argv = ([command] if command else []) + ["--help"]
    out = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main(argv)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    text = out.getvalue().strip()
    if not text.startswith("usage:"):
        raise RuntimeError(f"'spectra {' '.join(argv)}' printed no usage (is {command!r} a command?)")
    return text


def expand_help_markers(markdown: str) -> str:
    return HELP_MARKER.sub(lambda m: f"```text\n{command_help(m.group('command'))}\n```", markdown)


# ---------------------------------------------------------------- MkDocs hook entry points

def on_pre_build(config: Any, **kwargs: Any) -> None:
    problems = api_coverage_problems(Path(config["docs_dir"]))
    if problems:
        from mkdocs.exceptions import PluginError

        raise PluginError("the API reference and spectra.__all__ disagree:\n  " + "\n  ".join(problems))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    if API_INDEX_MARKER in markdown:
        markdown = markdown.replace(API_INDEX_MARKER, api_index(Path(config["docs_dir"]), nav_paths(config["nav"])))
    markdown = resolve_api_blocks(markdown)
    markdown = TREE_MARKER.sub(lambda m: layout_block(ROOT / m.group("folder")), markdown)
    return expand_help_markers(markdown)
