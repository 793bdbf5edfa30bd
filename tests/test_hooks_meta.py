"""Meta-test (datasette's habit): every hook has a test and is documented.

A hook ``spectra_register_X`` needs a test function ``test_hook_spectra_register_X``
somewhere under tests/, and a section of docs/plugins.md (the plugin guide, which
the README links to) headed by its exact signature ``spectra_register_X(registry)``.
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
    from spectra.plugins import KINDS, hook_name

    assert hookspec_names() == sorted(hook_name(kind) for kind in KINDS)  # one hook per registry
    assert len(hookspec_names()) == 7
    assert all(hook_signature(name) == f"{name}(registry)" for name in hookspec_names())


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


def _plugin_guide_sections() -> dict[str, str]:
    """docs/plugins.md's ``###`` sections: heading -> body."""
    sections, heading = {}, None
    for line in (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("### "):
            heading = line[4:].strip()
            sections[heading] = ""
        elif line.startswith("#"):
            heading = None
        elif heading is not None:
            sections[heading] += line + "\n"
    return sections


@pytest.mark.parametrize("hook", hookspec_names())
def test_every_hook_is_documented_with_its_signature(hook):
    sections = _plugin_guide_sections()
    heading = f"`{hook_signature(hook)}`"
    assert heading in sections, f"docs/plugins.md has no section headed {heading}"
    body = sections[heading]
    assert "registry.register(" in body, f"the section on {hook} shows no registration"
    assert len(body.split()) >= 25, f"the section on {hook} is too short to say what the factory returns"


def test_the_readme_points_to_the_plugin_guide():
    assert "docs/plugins.md" in (ROOT / "README.md").read_text(encoding="utf-8")
