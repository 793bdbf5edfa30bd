"""The plugin system: one test per hook, lazy/idempotent loading, broken plugins.

Plugins here are throw-away module objects registered with
``spectra.plugins.register_plugin``; entry points are simulated with real
``importlib.metadata.EntryPoint`` objects.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
import types
import warnings

import numpy as np
import pytest
import torch

import spectra
from spectra import plugins
from spectra.errors import InvalidInputError, PluginError, SpectraError, UnknownNameError
from spectra.result import SpectrumResult


@pytest.fixture(autouse=True)
def fresh_plugins():
    plugins.reset()
    yield
    plugins.reset()


def make_plugin(name: str, **hooks) -> types.ModuleType:
    mod = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(mod, hook_name, spectra.hookimpl(fn))
    return mod


def _tiny_net(width: int = 3):
    return torch.nn.Sequential(torch.nn.Linear(2, width), torch.nn.Tanh(), torch.nn.Linear(width, 2)).double()


# ------------------------------------------------------------- one test per hook
def test_hook_spectra_register_models():
    def hook(registry):
        registry.register("tiny-net", _tiny_net, "a 2-w-2 tanh net")

    plugins.register_plugin(make_plugin("tiny", spectra_register_models=hook), "tiny-plugin")
    net = spectra.models.create("tiny-net", width=5)
    assert sum(p.numel() for p in net.parameters()) == 2 * 5 + 5 + 5 * 2 + 2
    (entry,) = [m for m in spectra.models.list_models() if m["name"] == "tiny-net"]
    assert entry == {"name": "tiny-net", "description": "a 2-w-2 tanh net", "parameters": ["width=3"],
                     "plugin": "tiny-plugin"}
    assert net.spectra_spec == {"name": "tiny-net", "kwargs": {"width": 5}, "plugin": "tiny-plugin"}


def test_hook_spectra_register_datasets():
    def line(n=6, seed=0):
        g = torch.Generator().manual_seed(seed)
        X = torch.randn(n, 2, generator=g, dtype=torch.float64)
        return X, (X[:, 0] > 0).long()  # a bare (X, y) pair is wrapped into a Dataset

    def hook(registry):
        registry.register("line", line, "points split by a line")

    plugins.register_plugin(make_plugin("linep", spectra_register_datasets=hook), "line-plugin")
    data = spectra.datasets.load("line", n=7, seed=3)
    assert isinstance(data, spectra.Dataset) and len(data) == 7
    assert data.info["plugin"] == "line-plugin" and data.info["arguments"] == {"n": 7, "seed": 3}
    assert "line" in [d["name"] for d in spectra.datasets.list_datasets()]


class _EighBackend:
    """A plugin backend: dense matrix + numpy eigvalsh (an independent reference)."""

    name, is_exact = "numpy-eigh", True

    def run(self, op, **options):
        H = op.to_dense().detach().cpu().numpy()
        return SpectrumResult(method="exact", eigenvalues=np.linalg.eigvalsh(H), num_params=H.shape[0],
                              num_matvecs=op.num_matvecs, provenance={"backend": "numpy-eigh"})


def test_hook_spectra_register_backends():
    def hook(registry):
        registry.register("numpy-eigh", _EighBackend, "dense + numpy")

    plugins.register_plugin(make_plugin("npb", spectra_register_backends=hook), "numpy-backend")
    assert isinstance(spectra.backends.get("numpy-eigh"), _EighBackend)
    # analyze runs the plugin backend by name; compare with the built-in exact backend
    model = spectra.models.create("blobnet", hidden=2, dtype="float64")
    data = spectra.datasets.load("blobs", n=40, dtype="float64")
    ours = spectra.analyze(model, data, method="numpy-eigh")
    ref = spectra.analyze(model, data, method="exact")
    assert ours.provenance["backend"] == "numpy-eigh"
    np.testing.assert_allclose(ours.eigenvalues, ref.eigenvalues, atol=1e-10)


# ------------------------------------------------------------------ built-ins
def test_builtins_registered_by_their_modules():
    expect = {
        "models": ({"mlp", "blobnet", "cnn"}, "spectra_builtins.models"),
        "datasets": ({"blobs", "random", "mnist", "digits"}, "spectra_builtins.datasets"),
        "backends": ({"exact", "arpack", "lanczos"}, "spectra_builtins.backends"),
    }
    for kind, (names, plugin) in expect.items():
        reg = plugins.registry(kind)
        assert names <= set(reg.names())
        assert {reg.get(n).plugin for n in names} == {plugin}
    assert plugins.load_errors() == []


def test_builtin_backends_are_the_core_classes():
    from spectra.backends.arpack import ArpackBackend
    from spectra.backends.exact import ExactBackend
    from spectra.backends.lanczos import LanczosBackend

    for name, cls in [("exact", ExactBackend), ("arpack", ArpackBackend), ("lanczos", LanczosBackend)]:
        assert type(spectra.backends.get(name)) is cls


def test_analyze_accepts_registry_names_and_matches_autograd_hessian():
    r = spectra.analyze("blobnet", "blobs", method="exact",
                        model_args={"hidden": 2, "dtype": "float64", "seed": 1},
                        data_args={"n": 30, "std": 0.7, "dtype": "float64"})
    model = spectra.models.create("blobnet", hidden=2, dtype="float64", seed=1)
    data = spectra.datasets.load("blobs", n=30, std=0.7, dtype="float64")
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]

    def loss_of(*flat):
        out = torch.func.functional_call(model, dict(zip(names, flat)), (data.X,))
        return torch.nn.functional.cross_entropy(out, data.y)

    blocks = torch.autograd.functional.hessian(loss_of, tuple(p.detach() for p in params))
    sizes = [p.numel() for p in params]
    H = torch.cat([torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(params))], 1)
                   for i in range(len(params))], 0).numpy()
    np.testing.assert_allclose(r.eigenvalues, np.linalg.eigvalsh(H), atol=1e-10)
    assert r.num_params == 18 and r.provenance["data"]["name"] == "blobs"


# ------------------------------------------------------- laziness, idempotence
def test_loading_is_lazy_and_light():
    code = textwrap.dedent("""
        import sys
        import spectra, spectra.plugins, spectra.backends, spectra.models, spectra.datasets
        assert "spectra_builtins.models" not in sys.modules, "plugins loaded at import"
        assert spectra.plugins._state.pm is None
        spectra.models.list_models()
        assert "spectra_builtins.models" in sys.modules
        for heavy in ("scipy.sparse.linalg", "linear_operator", "sklearn", "matplotlib"):
            assert heavy not in sys.modules, heavy
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_loading_is_idempotent():
    calls = []

    def hook(registry):
        calls.append(1)
        registry.register("count-net", _tiny_net)

    plugins.register_plugin(make_plugin("counter", spectra_register_models=hook), "counter")
    for _ in range(3):
        spectra.models.create("count-net")
        plugins.registry("models")
        plugins.get_plugin_manager()
    assert calls == [1]
    assert plugins.registry("models") is plugins.registry("models")
    pm = plugins.get_plugin_manager()
    assert pm is plugins.get_plugin_manager()


def test_reset_and_unregister():
    plugins.register_plugin(make_plugin("p", spectra_register_models=lambda registry: registry.register(
        "gone-net", _tiny_net)), "p")
    assert "gone-net" in plugins.registry("models")
    plugins.unregister_plugin("p")
    assert "gone-net" not in plugins.registry("models")
    assert "mlp" in plugins.registry("models")
    with pytest.raises(UnknownNameError):
        plugins.unregister_plugin("p")


# ------------------------------------------------------------- broken plugins
def _entry_point(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group=plugins.ENTRY_POINT_GROUP)


def test_plugin_that_fails_to_import_is_reported_by_name(monkeypatch, tmp_path):
    (tmp_path / "good_spectra_plugin.py").write_text(textwrap.dedent("""
        import spectra, torch
        @spectra.hookimpl
        def spectra_register_models(registry):
            registry.register("good-net", lambda: torch.nn.Linear(2, 2))
    """))
    (tmp_path / "bad_spectra_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [_entry_point("missing", "no_such_module_for_spectra"), _entry_point("bad", "bad_spectra_plugin"),
           _entry_point("good", "good_spectra_plugin")]
    monkeypatch.setattr(plugins, "_entry_points", lambda: eps)
    with pytest.warns(plugins.PluginWarning) as rec:
        assert isinstance(spectra.models.create("good-net"), torch.nn.Linear)
    messages = [str(w.message) for w in rec]
    assert any("'missing'" in m and "ModuleNotFoundError" in m for m in messages)
    assert any("'bad'" in m and "boom at import" in m for m in messages)
    assert {e.plugin for e in plugins.load_errors()} == {"missing", "bad"}
    status = {p["name"]: p for p in plugins.list_plugins()}
    assert status["good"]["ok"] and status["good"]["models"] == ["good-net"]
    assert not status["bad"]["ok"] and "boom" in status["bad"]["errors"][0]
    # an unknown name points at the plugins that failed
    with pytest.raises(UnknownNameError, match="plugins with load errors: bad, missing"):
        spectra.models.create("nope")


def test_plugin_that_raises_in_a_hook_leaves_nothing_half_registered():
    def hook(registry):
        registry.register("half-net", _tiny_net)
        raise ValueError("hook failed")

    plugins.register_plugin(make_plugin("raiser", spectra_register_models=hook), "raiser")
    with pytest.warns(plugins.PluginWarning, match="'raiser'.*raised in spectra_register_models.*hook failed"):
        names = plugins.registry("models").names()
    assert "half-net" not in names and "mlp" in names
    assert spectra.models.create("blobnet", hidden=2) is not None


def test_duplicate_names_keep_the_first_and_report_the_second():
    def hook(registry):
        registry.register("mlp", _tiny_net, "an impostor")
        registry.register("fine-net", _tiny_net)

    plugins.register_plugin(make_plugin("dup", spectra_register_models=hook), "dup")
    with pytest.warns(plugins.PluginWarning, match="'dup'.*model 'mlp' is already registered by plugin "
                                                   "'spectra_builtins.models'"):
        reg = plugins.registry("models")
    assert reg.get("mlp").plugin == "spectra_builtins.models"
    assert reg.get("fine-net").plugin == "dup"


@pytest.mark.parametrize(
    "bad_call, match",
    [
        (lambda registry: registry.register("has space", _tiny_net), "without spaces"),
        (lambda registry: registry.register("", _tiny_net), "non-empty"),
        (lambda registry: registry.register("x-net", 42), "not callable"),
    ],
)
def test_bad_registrations_are_reported(bad_call, match):
    plugins.register_plugin(make_plugin("b", spectra_register_models=bad_call), "bad-reg")
    with pytest.warns(plugins.PluginWarning, match=match):
        plugins.registry("models")
    assert [e.plugin for e in plugins.load_errors()] == ["bad-reg"]


def test_misspelled_hook_and_bad_signature_are_reported():
    typo = make_plugin("typo", spectra_register_model=lambda registry: None)
    with pytest.warns(plugins.PluginWarning, match="'typo'.*unknown hook.*spectra_register_model"):
        plugins.register_plugin(typo, "typo")
    bad_sig = make_plugin("sig", spectra_register_models=lambda registry, extra: None)
    with pytest.warns(plugins.PluginWarning, match="'sig'.*could not be registered"):
        plugins.register_plugin(bad_sig, "sig")
    assert "mlp" in plugins.registry("models")


def test_duplicate_plugin_name_is_refused_without_breaking_the_first():
    plugins.register_plugin(make_plugin("a", spectra_register_models=lambda registry: registry.register(
        "a-net", _tiny_net)), "same")
    with pytest.warns(plugins.PluginWarning, match="'same'.*already loaded"):
        plugins.register_plugin(make_plugin("b", spectra_register_models=lambda registry: registry.register(
            "b-net", _tiny_net)), "same")
    assert "a-net" in plugins.registry("models") and "b-net" not in plugins.registry("models")
    assert {p["name"]: p["ok"] for p in plugins.list_plugins()}["same"] is True


# -------------------------------------------------- factory failure translation
def _factory_plugin():
    def raises(n=1):
        raise ZeroDivisionError("plugin bug")

    def typed(width=3):
        return torch.nn.Linear(2, width + "x")  # TypeError for an int width

    def not_a_module():
        return "a string"

    def hook(registry):
        registry.register("raises", raises)
        registry.register("typed", typed)
        registry.register("not-module", not_a_module)
        registry.register("loose", lambda **kw: _tiny_net(**kw))

    plugins.register_plugin(make_plugin("f", spectra_register_models=hook), "factory-plugin")


@pytest.mark.parametrize(
    "name, kwargs, error, match",
    [
        ("nope", {}, UnknownNameError, r"unknown model 'nope'; known models: .*blobnet, cnn"),
        ("raises", {}, PluginError, r"model 'raises' from plugin 'factory-plugin' failed: ZeroDivisionError"),
        ("typed", {"width": 2}, InvalidInputError, r"model 'typed' \(plugin 'factory-plugin'\) rejected"),
        ("typed", {"depth": 2}, InvalidInputError, r"has no argument 'depth'; it accepts: width=3"),
        ("not-module", {}, PluginError, r"returned a str, not a torch.nn.Module"),
        ("loose", {"height": 1}, InvalidInputError, r"rejected its arguments.*height"),
        ("mlp", {}, InvalidInputError, r"model 'mlp' needs argument 'sizes'"),
        ("mlp", {"sizes": [3, "a"]}, InvalidInputError, r"model 'mlp': sizes\[1\] must be an integer"),
    ],
)
def test_factory_failures_become_spectra_errors(name, kwargs, error, match):
    _factory_plugin()
    with pytest.raises(error, match=match):
        spectra.models.create(name, **kwargs)


def test_non_string_name_and_bad_kind():
    with pytest.raises(InvalidInputError, match="must be a string"):
        spectra.models.create(3)
    with pytest.raises(InvalidInputError, match="unknown registry kind"):
        plugins.registry("losses")


def test_dataset_and_backend_factories_are_checked():
    def hook_d(registry):
        registry.register("bad-data", lambda: [1, 2, 3])
        registry.register("empty-data", lambda: (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)))

    def hook_b(registry):
        registry.register("no-run", lambda: object())

    plugins.register_plugin(make_plugin("d", spectra_register_datasets=hook_d,
                                        spectra_register_backends=hook_b), "checks")
    with pytest.raises(PluginError, match="'checks' returned a list"):
        spectra.datasets.load("bad-data")
    with pytest.raises(PluginError, match="returned no samples"):
        spectra.datasets.load("empty-data")
    with pytest.raises(PluginError, match="without a run"):
        spectra.backends.get("no-run")
    with pytest.raises(UnknownNameError, match="known backends: arpack, exact, lanczos"):
        spectra.backends.get("eigen")
    assert issubclass(PluginError, SpectraError)


def test_warnings_are_not_repeated():
    plugins.register_plugin(make_plugin("r", spectra_register_models=lambda registry: 1 / 0), "once")
    with pytest.warns(plugins.PluginWarning):
        plugins.registry("models")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plugins.load_errors()  # already reported: no second warning


def test_source_checkout_without_install_finds_the_builtins(monkeypatch):
    """If ``spectra_builtins`` is not importable (an uninstalled checkout), plugins/ next to spectra/ is used."""
    import importlib
    from pathlib import Path

    plugins_dir = str(Path(plugins.__file__).resolve().parent.parent / "plugins")
    real_import = importlib.import_module
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != plugins_dir])

    def uninstalled(name, package=None):
        if name.startswith("spectra_builtins") and plugins_dir not in sys.path:
            raise ModuleNotFoundError(f"No module named {name!r}", name="spectra_builtins")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", uninstalled)
    assert {"mlp", "blobnet", "cnn"} <= set(plugins.registry("models").names())
    assert plugins_dir in sys.path and plugins.load_errors() == []
