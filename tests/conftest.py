"""Shared fixtures: matplotlib off-screen, small float64 model/data cases."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

# The suite's nets are tiny: a second intra-op thread only adds contention on a
# 2-core machine (a tiny net ran 3.5x slower with 2 threads on a busy machine).
torch.set_num_threads(1)

# The fuzz tests draw the same examples on every run, so CI is reproducible;
# HYPOTHESIS_PROFILE=explore draws new ones (run it now and then, locally).
from hypothesis import settings  # noqa: E402

settings.register_profile("reproducible", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=400, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test starts on one torch thread, whatever an earlier one set (the CLI's --threads,
    an experiment's config), and leaves the count as it found it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def install_distribution(tmp_path, monkeypatch):
    """``install_distribution(dist, entry_points, modules)``: a package on ``sys.path`` as pip leaves it.

    Modules (name -> source) plus a ``.dist-info`` whose ``entry_points.txt``
    lists ``entry_points`` (name -> module) in the ``spectra`` group, so
    plugins are found by pluggy's own entry-point loading, as after
    ``pip install``.  Plugins are reset before and after.
    """
    import textwrap

    from spectra import plugins

    def install(dist: str, entry_points: dict[str, str], modules: dict[str, str] | None = None) -> None:
        folder = tmp_path / f"site-{dist}"
        folder.mkdir()
        for module, code in (modules or {}).items():
            (folder / f"{module}.py").write_text(textwrap.dedent(code))
        info = folder / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(
            f"[{plugins.ENTRY_POINT_GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
        monkeypatch.syspath_prepend(str(folder))
        plugins.reset()

    yield install
    plugins.reset()
