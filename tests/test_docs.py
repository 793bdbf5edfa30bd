"""The README and the documentation site stay short, true to the code, and about the software.

* the README stays under its size limit and gives the test command CI runs;
* README, docs and BENCHMARKS.md never speak of how the work was organised;
* every repository path they name exists, and the README's links resolve;
* the generated parts of the site (package tree, API blocks, command help) cover the code;
* ``mkdocs build --strict`` passes (where the ``docs`` extra is installed).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_BYTES = 15_000
TEST_COMMAND = "python -m pytest -q"
# a docs build that takes longer than this on a quiet machine needs looking at
DOCS_BUILD_BUDGET_S = 120


def user_documents() -> list[Path]:
    """The files that speak to users: README.md, BENCHMARKS.md and every page under docs/."""
    return [README, ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").rglob("*.md"))]


def load_hooks(name: str):
    """A module from docs/hooks/ (the site's build code), imported by path."""
    spec = importlib.util.spec_from_file_location(f"docs_hooks_{name}", ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the README

def test_readme_is_short():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, (f"README.md is {size} bytes (limit {README_MAX_BYTES}): move detail into a "
                                      "page under docs/ and link it")


def test_readme_gives_the_test_command_that_ci_runs():
    readme = README.read_text(encoding="utf-8")
    ci_commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    assert ci_commands[-1] == TEST_COMMAND, f".ci/run ends with {ci_commands[-1]!r}, not {TEST_COMMAND!r}"
    assert re.search(rf"^{re.escape(TEST_COMMAND)}\s*$", readme, re.MULTILINE), f"README.md lacks {TEST_COMMAND!r}"
    assert "spectra demo --out" in readme, "README.md lacks the command that runs a real analysis"


# ---------------------------------------------------------------- words about the process, not the software

PROCESS_WORDS = [
    (re.compile(r"\bissue[ -]?#?[0-9]+", re.IGNORECASE), "an issue number"),
    (re.compile(r"\bsessions?\b", re.IGNORECASE), "'session'"),
    (re.compile(r"targets? of (the|an?) issues?", re.IGNORECASE), "'targets of the issue'"),
]


@pytest.mark.parametrize(("text", "found"), [
    ("as issue 5 asked", True), ("see issue-12", True), ("Issue #3", True), ("issue12", True),
    ("in the previous session's run", True), ("Against the targets of the issues", True),
    ("a tissue of 5 cells", False), ("the issue of rounding", False), ("possession", False),
])
def test_process_word_patterns(text, found):
    assert any(pattern.search(text) for pattern, _ in PROCESS_WORDS) is found


@pytest.mark.parametrize("path", user_documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_documents_speak_about_the_software_only(path):
    hits = [f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()[:100]}"
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            for pattern, what in PROCESS_WORDS if pattern.search(line)]
    assert not hits, "say what the software does, not how its work was organised:\n" + "\n".join(hits)


# ---------------------------------------------------------------- paths and links

# a path in backticks or a link target, starting at a top-level folder of the repository
REPO_PATH = re.compile(r"(?<![\w./-])(?P<path>(?:spectra|examples|bench|tests|plugins|docs)/[\w./-]*[\w/])")


def named_paths(text: str) -> set[str]:
    """Repository paths named in backticks or as link targets; patterns (``*``, ``<figure>``) left out."""
    spans = re.findall(r"`([^`\n]+)`", text) + re.findall(r"\]\(([^)\s]+)\)", text)
    words = [word.split("#")[0] for span in spans for word in span.split() if not set(word) & set("*<>{}")]
    return {m.group("path").rstrip("/") for word in words for m in REPO_PATH.finditer(word)}


@pytest.mark.parametrize(("text", "paths"), [
    ("see `spectra/api.py` and [x](docs/plugins.md#hooks)", {"spectra/api.py", "docs/plugins.md"}),
    ("`python examples/quickstart.py --out runs/x`", {"examples/quickstart.py"}),
    ("`OUT/<figure>/` and `spectra/operators/*.py`", set()),
    ("the spectra/api.py file outside backticks", set()),
])
def test_named_paths(text, paths):
    assert named_paths(text) == paths


@pytest.mark.parametrize("path", user_documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_named_repository_paths_exist(path):
    base = path.parent
    missing = sorted(p for p in named_paths(path.read_text(encoding="utf-8"))
                     if not (ROOT / p).exists() and not (base / p).exists())
    assert not missing, f"{path.relative_to(ROOT)} names paths that do not exist (moved?): {missing}"


def test_readme_links_resolve():
    targets = re.findall(r"\]\(([^)\s]+)\)", README.read_text(encoding="utf-8"))
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert local, "README.md links no page"
    missing = sorted(t for t in local if not (ROOT / t).exists())
    assert not missing, f"README.md links files that do not exist: {missing}"


# ---------------------------------------------------------------- the generated parts of the site

def test_package_tree_names_every_module(tmp_path):
    hooks = load_hooks("spectra_docs")
    pkg = tmp_path / "pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""The package."""\n')
    (pkg / "fig10.py").write_text('"""Figure ten: :class:`~pkg.a.Thing` and ``code``."""\n')
    (pkg / "fig2.py").write_text("x = 1\n")
    (pkg / "sub" / "__init__.py").write_text('"""A subpackage."""\n')
    (pkg / "sub" / "deep.py").write_text('"""' + "long " * 40 + '"""\n')
    (pkg / "sub" / "__pycache__" / "deep.cpython-311.pyc").write_text("")
    (pkg / "data").mkdir()
    (pkg / "data" / "table.csv").write_text("")
    lines = hooks.layout_lines(pkg)
    assert [name for name, _ in lines] == ["pkg/", "  fig2.py", "  fig10.py", "  sub/", "    deep.py"]
    described = dict(lines)
    assert described["pkg/"] == "The package."
    assert described["  fig10.py"] == "Figure ten: Thing and code."  # reST roles and literals dropped
    assert described["  fig2.py"] == ""
    assert len(described["    deep.py"]) == hooks.DESCRIPTION_WIDTH and described["    deep.py"].endswith("…")


def test_package_tree_covers_spectra():
    hooks = load_hooks("spectra_docs")
    block = hooks.layout_block(ROOT / "spectra")
    modules = sorted(p.relative_to(ROOT / "spectra") for p in (ROOT / "spectra").rglob("*.py")
                     if p.name != "__init__.py" and "__pycache__" not in p.parts)
    names = [line.split()[0] for line in block.splitlines()[1:-1]]
    for module in modules:
        assert module.name in names, f"the generated tree misses spectra/{module}"
    assert block.count("\n") - 1 == len(modules) + sum(1 for p in (ROOT / "spectra").rglob("__init__.py"))


def test_api_pages_name_only_public_names():
    hooks = load_hooks("spectra_docs")
    assert hooks.api_coverage_problems(ROOT / "docs") == []


def test_nav_paths_follow_the_reading_order():
    hooks = load_hooks("spectra_docs")
    nav = [{"Home": "index.md"}, {"API": ["api/index.md", {"B": "api/b.md"}, {"A": "api/a.md"}]}]
    assert hooks.nav_paths(nav) == ["index.md", "api/index.md", "api/b.md", "api/a.md"]


def test_api_index_places_every_public_name(tmp_path, monkeypatch):
    hooks = load_hooks("spectra_docs")
    monkeypatch.setattr(hooks, "public_names", lambda: ["analyze", "load", "train"])
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "analysis.md").write_text("# Analysis\n\n::: spectra.analyze\n\n::: spectra.load\n")
    index = hooks.api_index(tmp_path)
    assert "| [Analysis](analysis.md) | `spectra.analyze`, `spectra.load` |" in index
    assert index.endswith("## Other public names\n\n::: spectra.train\n")  # documented here until a page takes it
    (tmp_path / "api" / "training.md").write_text("# Training\n\n::: spectra.train\n\n::: spectra.gone\n")
    assert "Every public name is on one of the pages above." in hooks.api_index(tmp_path)
    assert hooks.api_coverage_problems(tmp_path) == [
        "docs/api/training.md documents spectra.gone, which spectra.__all__ does not export"]


@pytest.mark.parametrize("name", ["analyze", "SpectrumResult", "models", "hookimpl"])
def test_public_names_resolve_to_where_they_are_defined(name):
    import importlib

    import spectra

    hooks = load_hooks("spectra_docs")
    path = hooks.defining_path(name)
    module_name, _, attr = path.rpartition(".")
    obj = getattr(spectra, name)
    if path == getattr(obj, "__name__", None):  # a module documents itself
        assert importlib.import_module(path) is obj
    else:  # a function, class or instance: the module that defines it, not the package that re-exports it
        assert getattr(importlib.import_module(module_name), attr) is obj and module_name != "spectra"


def test_command_help_is_the_commands_own():
    hooks = load_hooks("spectra_docs")
    assert hooks.command_help("demo").startswith("usage: spectra demo")
    with pytest.raises(RuntimeError, match="no usage"):
        hooks.command_help("no-such-command")


griffe_cases = [
    (":class:`~spectra.result.SpectrumResult`", "`SpectrumResult`"),
    (":func:`spectra.analyze` and :meth:`~a.B.c`", "`spectra.analyze` and `c`"),
    ("splits the Hessian::\n\n    H = G + R", "splits the Hessian:\n\n    H = G + R"),
    ("Example\n>>> f(1)  # doctest: +SKIP\n2\n\nafter", "Example\n\n```pycon\n>>> f(1)\n2\n```\n\nafter"),
    ("    >>> x = [\n    ...   1]\n    >>> x\n    [1]", "    ```pycon\n    >>> x = [\n    ...   1]\n    >>> x\n    [1]\n    ```"),
    ("plain ``code`` stays", "plain ``code`` stays"),
]


@pytest.mark.parametrize(("rest", "markdown"), griffe_cases)
def test_docstrings_become_markdown(rest, markdown):
    pytest.importorskip("griffe", reason="the docs extra is not installed: pip install -e '.[docs]'")
    assert load_hooks("griffe_rest").to_markdown(rest) == markdown


# ---------------------------------------------------------------- the site builds

def test_site_builds_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra is not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    # no --quiet: it hides the warnings that --strict would count, and the build then passes
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=DOCS_BUILD_BUDGET_S * 2)
    seconds = time.perf_counter() - start
    output = run.stdout + run.stderr
    assert run.returncode == 0 and "WARNING" not in output, f"mkdocs build --strict failed:\n{output[-4000:]}"
    # the generated parts are in the pages: the package tree, the command help, the API from docstrings
    architecture = (site / "architecture" / "index.html").read_text(encoding="utf-8")
    assert "api.py" in architecture and "backends/" in architecture
    assert "usage: spectra analyze" in (site / "cli" / "index.html").read_text(encoding="utf-8")
    assert "spectra.analyze" in (site / "api" / "analysis" / "index.html").read_text(encoding="utf-8")
    # doctest examples are highlighted as Python sessions (a prompt token), not quoted as '>' block quotes
    errors = (site / "api" / "errors" / "index.html").read_text(encoding="utf-8")
    assert '<span class="gp">&gt;&gt;&gt; </span>' in errors and "<blockquote>" not in errors
    assert seconds < DOCS_BUILD_BUDGET_S, f"the docs build took {seconds:.0f} s"
