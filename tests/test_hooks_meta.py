"""Meta-test (datasette's habit): every hook has a test and is documented.

A hook ``spectra_register_X`` needs a test function ``test_hook_spectra_register_X``
somewhere under tests/, and its exact signature ``spectra_register_X(registry)``
in README.md (the plugin section, whose source text is docs/plugins.md).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from spectra import hookspecs

ROOT = Path(__file__).resolve().parent.parent


def hookspec_names() -> list[str]:
    return sorted(name for name, fn in vars(hookspecs).items()
                  if callable(fn) and hasattr(fn, "spectra_spec"))


def hook_signature(name: str) -> str:
    return f"{name}{inspect.signature(getattr(hookspecs, name))}"


def test_hookspecs_found():
    assert hookspec_names() == ["spectra_register_backends", "spectra_register_datasets",
                                "spectra_register_models"]
    assert hook_signature("spectra_register_models") == "spectra_register_models(registry)"


def _test_function_names() -> set[str]:
    names = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                names.add(node.name)
    return names


@pytest.mark.parametrize("hook", hookspec_names())
def test_every_hook_has_a_test(hook):
    assert f"test_hook_{hook}" in _test_function_names(), f"no test named test_hook_{hook} under tests/"


@pytest.mark.parametrize("doc", ["README.md", "docs/plugins.md"])
@pytest.mark.parametrize("hook", hookspec_names())
def test_every_hook_is_documented_with_its_signature(hook, doc):
    path = ROOT / doc
    assert path.is_file(), f"{doc} is missing"
    text = path.read_text(encoding="utf-8")
    assert hook_signature(hook) in text, f"{doc} does not document {hook_signature(hook)}"
