"""The examples write only where they say: into the folder of their --out option, under runs/ by default.

A static check of each script (no example is run here): one that writes
files takes ``--out``, defaults it to a folder under ``runs/`` (git-ignored),
and names ``--out`` or that folder in its docstring; one without ``--out``
writes nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))
WRITERS = {"savefig", "save", "write_text", "write_bytes", "atomic_write_bytes", "mkdir"}


def _out_default(tree: ast.Module) -> str | None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument" and node.args \
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == "--out":
            return next(k.value.value for k in node.keywords if k.arg == "default")
    return None


def _writes(tree: ast.Module) -> set[str]:
    return {node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr in WRITERS}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_an_example_writes_only_where_it_says(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    default = _out_default(tree)
    if default is None:
        assert not _writes(tree), f"{path.name} writes files ({_writes(tree)}) but has no --out"
        return
    assert Path(default).parts[0] == "runs", f"{path.name}: --out defaults to {default!r}, not a folder under runs/"
    assert "." not in Path(default).name, f"{path.name}: --out should name a folder, not the file {default!r}"
    doc = ast.get_docstring(tree) or ""
    assert "--out" in doc or "OUT" in doc or default in doc, f"{path.name}'s docstring does not say where it writes"


def test_runs_is_git_ignored():
    ignored = (Path(__file__).resolve().parent.parent / ".gitignore").read_text().split()
    assert "runs/" in ignored and "spectra-demo/" in ignored
