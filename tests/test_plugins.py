"""The plugin system: one test per hook, lazy/idempotent loading, broken plugins.

Plugins here are throw-away module objects registered with
``spectra.plugins.register_plugin``; entry points are simulated with real
``importlib.metadata.EntryPoint`` objects.
"""

from __future__ import annotations

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
                     "plugin": "tiny-plugin", "aliases": []}
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
BUILTINS = {
    "models": {"mlp", "blobnet", "cnn"},
    "datasets": {"blobs", "random", "mnist", "digits"},
    "backends": {"exact", "arpack", "lanczos"},
    "matrices": {"hessian", "ggn", "residual"},
    "losses": {"cross_entropy", "mse"},
    "experiments": {f"fig{i}" for i in range(1, 11)} | {"decomposition"},
    "commands": {"list", "analyze", "show", "demo", "reproduce"},
}


def test_builtins_are_default_plugins_inside_the_package():
    from spectra.default_plugins import DEFAULT_PLUGINS

    assert set(BUILTINS) == set(plugins.KINDS)
    for kind, names in BUILTINS.items():
        reg = plugins.registry(kind)
        assert names <= set(reg.names()), kind
        assert {reg.get(n).plugin for n in names} == {f"spectra.default_plugins.{kind}"}
    assert [p["name"] for p in plugins.list_plugins() if p["source"] == "builtin"] == list(DEFAULT_PLUGINS)
    pm = plugins.get_plugin_manager()
    assert all(pm.get_plugin(name).__name__ == name for name in DEFAULT_PLUGINS)  # registered with pluggy
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
        assert "spectra.default_plugins.models" not in sys.modules, "plugins loaded at import"
        assert spectra.plugins._state.pm is None
        spectra.models.list_models()
        assert "spectra.default_plugins.models" in sys.modules
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
def test_plugin_that_fails_to_import_is_reported_by_name(install_distribution):
    install_distribution("spectra-test-plugins", {
        "missing": "no_such_module_for_spectra", "bad": "bad_spectra_plugin", "good": "good_spectra_plugin",
    }, {
        "good_spectra_plugin": """
            import spectra, torch
            @spectra.hookimpl
            def spectra_register_models(registry):
                registry.register("good-net", lambda: torch.nn.Linear(2, 2))
        """,
        "bad_spectra_plugin": "raise RuntimeError('boom at import')\n",
    })
    with pytest.warns(plugins.PluginWarning) as rec:
        assert isinstance(spectra.models.create("good-net"), torch.nn.Linear)
    messages = [str(w.message) for w in rec]
    assert any("'missing': failed to import 'no_such_module_for_spectra' (entry point): ModuleNotFoundError" in m
               for m in messages)
    assert any("'bad'" in m and "boom at import" in m for m in messages)
    assert {e.plugin for e in plugins.load_errors()} == {"missing", "bad"}
    status = {p["name"]: p for p in plugins.list_plugins()}
    assert status["good"]["ok"] and status["good"]["models"] == ["good-net"]
    assert status["good"]["source"] == "entry point (spectra-test-plugins 1.0)"
    assert not status["bad"]["ok"] and "boom" in status["bad"]["errors"][0]
    # loaded by pluggy's own entry-point machinery, which knows the distribution
    pm = plugins.get_plugin_manager()
    assert [(pm.get_name(p), d.project_name) for p, d in pm.list_plugin_distinfo()] == [("good", "spectra-test-plugins")]
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
                                                   "'spectra.default_plugins.models'"):
        reg = plugins.registry("models")
    assert reg.get("mlp").plugin == "spectra.default_plugins.models"
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
    typo = make_plugin("typo", spectra_register_model=lambda registry: registry.register("typo-net", _tiny_net),
                       spectra_register_datasets=lambda registry: registry.register("typo-data", lambda: None))
    with pytest.warns(plugins.PluginWarning, match="'typo'.*unknown hook.*spectra_register_model; did you mean "
                                                   "'spectra_register_models'"):
        plugins.register_plugin(typo, "typo")
    pm = plugins.get_plugin_manager()
    assert pm.get_plugin("typo") is None  # pluggy's check_pending refused it as a whole
    assert "typo-data" not in plugins.registry("datasets")
    bad_sig = make_plugin("sig", spectra_register_models=lambda registry, extra: None)
    with pytest.warns(plugins.PluginWarning, match="'sig'.*could not be registered"):
        plugins.register_plugin(bad_sig, "sig")
    assert pm.get_plugin("sig") is None
    pm.check_pending()  # nothing half-registered is left behind
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
    with pytest.raises(UnknownNameError, match="unknown registry kind 'model'; known registry kinds: .*; "
                                               "did you mean 'models'"):
        plugins.registry("model")


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


# ------------------------------------------------------ the other hooks, one test each
class _ShiftedHessian:
    """A plugin matrix: H + 1.5 I, built on spectra's Hessian operator (composition, as a plugin would)."""

    SHIFT = 1.5

    @classmethod
    def build(cls):
        from spectra.operators.base import SpectralOperator
        from spectra.operators.hessian import HessianOperator

        class ShiftedHessian(SpectralOperator):
            def __init__(self, model, loss, data, params=None, **options):
                self.hessian = HessianOperator(model, loss, data, params=params, **options)
                super().__init__(self.hessian.shape, self.hessian.dtype, self.hessian.device)
                self.num_samples, self.check_matvecs = self.hessian.num_samples, self.hessian.check_matvecs

            def _matmat(self, V):
                return self.hessian.matmat(V) + cls.SHIFT * V

            def describe(self):
                return {**self.hessian.describe(), "matrix": "shifted-hessian"}

        return ShiftedHessian


def test_hook_spectra_register_matrices():
    def hook(registry):
        registry.register("shifted-hessian", _ShiftedHessian.build, "H + 1.5 I", aliases=("h+",))

    plugins.register_plugin(make_plugin("m", spectra_register_matrices=hook), "matrix-plugin")
    model = spectra.models.create("blobnet", hidden=2, dtype="float64")
    data = spectra.datasets.load("blobs", n=30, dtype="float64")
    shifted = spectra.analyze(model, data, method="exact", matrix="H+")  # an alias, in another case
    plain = spectra.analyze(model, data, method="exact")
    assert shifted.provenance["matrix"] == "shifted-hessian"
    np.testing.assert_allclose(shifted.eigenvalues, plain.eigenvalues + _ShiftedHessian.SHIFT, atol=1e-10)
    assert spectra.matrices.get("shifted-hessian").__name__ == "ShiftedHessian"


def test_hook_spectra_register_losses():
    from spectra.losses import Loss, resolve_loss

    mse = resolve_loss("mse")
    third = Loss("third-mse", lambda out, target: mse(out, target) / 3, "mean")

    def hook(registry):
        registry.register("third-mse", third, "a third of mse", aliases=("tmse",))

    plugins.register_plugin(make_plugin("l", spectra_register_losses=hook), "loss-plugin")
    assert resolve_loss("TMSE") is third
    model = spectra.models.create("blobnet", hidden=2, dtype="float64")
    data = spectra.datasets.load("blobs", n=30, dtype="float64")
    ours = spectra.analyze(model, data, method="exact", loss="third-mse")
    ref = spectra.analyze(model, data, method="exact", loss="mse")
    assert ours.provenance["loss"] == "third-mse"
    np.testing.assert_allclose(ours.eigenvalues, ref.eigenvalues / 3, atol=1e-12)


class _CountingExperiment:
    """A plugin experiment: counts the samples of a blobs draw (an object with title and load())."""

    title = "Counting blobs"

    @staticmethod
    def run(ctx):
        n = ctx.cfg["n"]
        data = spectra.datasets.load("blobs", n=n, seed=ctx.seed)
        return {"measured": {"n": len(data), "label_one": int(data.y.sum())}, "claims": []}

    def load(self):
        return self.run, {scale: {"n": n} for scale, n in (("tiny", 6), ("quick", 60), ("paper", 600))}


def test_hook_spectra_register_experiments(tmp_path):
    plugins.register_plugin(make_plugin("e", spectra_register_experiments=lambda registry: registry.register(
        "count-blobs", _CountingExperiment(), _CountingExperiment.title)), "experiment-plugin")
    results = spectra.experiments.run("Count-Blobs", tmp_path, scale="tiny", quiet=True)
    assert results["measured"] == {"n": 6, "label_one": 3}
    assert (tmp_path / "count-blobs" / "results.json").is_file()
    assert spectra.experiments.config("count-blobs", "paper") == {"n": 600}


def test_hook_spectra_register_commands(capsys):
    from spectra import cli

    def add_hello(subparsers):
        p = subparsers.add_parser("hello", help="greet")
        p.add_argument("--name", default="world")
        p.set_defaults(handler=lambda args: print(f"hello {args.name}") or 0)

    def add_broken(subparsers):
        raise RuntimeError("no parser today")

    def hook(registry):
        registry.register("hello", add_hello, "greet")
        registry.register("broken", add_broken, "fails")

    plugins.register_plugin(make_plugin("c", spectra_register_commands=hook), "command-plugin")
    assert cli.main(["hello", "--name", "spectra"]) == 0
    out, err = capsys.readouterr()
    assert out == "hello spectra\n"
    assert err == ("spectra: warning: command 'broken' from plugin 'command-plugin' is not available: "
                   "RuntimeError: no parser today\n")  # one line, and the other commands still work
    assert cli.main(["list", "commands", "--json"]) == 0
    listed = {c["name"]: c["plugin"] for c in __import__("json").loads(capsys.readouterr().out)}
    assert listed["hello"] == "command-plugin" and listed["analyze"] == "spectra.default_plugins.commands"


# ---------------------------------------------------------- names: case, aliases, suggestions
@pytest.mark.parametrize("kind, typed, name", [
    ("models", "MLP", "mlp"), ("datasets", "Blobs", "blobs"), ("backends", "EXACT", "exact"),
    ("matrices", "GGN", "ggn"), ("matrices", "Gauss_Newton", "ggn"), ("losses", "NLL", "cross_entropy"),
    ("losses", "CrossEntropy", "cross_entropy"), ("losses", "ce", "cross_entropy"), ("experiments", "FIG4", "fig4"),
    ("commands", "Analyze", "analyze"),
])
def test_names_are_found_in_any_case_and_by_alias(kind, typed, name):
    assert plugins.get_entry(kind, typed).name == name
    assert typed in plugins.registry(kind)


@pytest.mark.parametrize("kind, typo, suggestion", [
    ("models", "mpl", "mlp"), ("datasets", "blob", "blobs"), ("backends", "lanczo", "lanczos"),
    ("matrices", "hesian", "hessian"), ("losses", "cross-entropy", "cross_entropy"),
    ("experiments", "decompose", "decomposition"), ("commands", "analyse", "analyze"),
])
def test_unknown_names_suggest_the_closest(kind, typo, suggestion):
    noun, plural = plugins.KINDS[kind]
    with pytest.raises(UnknownNameError, match=f"unknown {noun} '{typo}'; known {plural}: .*; did you mean "
                                               f"'{suggestion}'"):
        plugins.get_entry(kind, typo)


def test_names_that_differ_only_in_case_or_take_an_alias_are_refused():
    def hook(registry):
        registry.register("MLP", _tiny_net, "a clash in case only")
        registry.register("mine", lambda out, y: out.sum(), "a loss", aliases=("NLL",))

    plugins.register_plugin(make_plugin("clash", spectra_register_models=hook, spectra_register_losses=hook), "clash")
    with pytest.warns(plugins.PluginWarning, match="model 'MLP' is already registered by plugin "
                                                   "'spectra.default_plugins.models'"):
        assert plugins.get_entry("models", "MLP").plugin == "spectra.default_plugins.models"
    with pytest.warns(plugins.PluginWarning, match="alias 'NLL' of loss 'mine' is already taken by loss "
                                                   "'cross_entropy' of plugin 'spectra.default_plugins.losses'"):
        assert "mine" not in plugins.registry("losses")


def test_spectra_plugins_is_an_attribute_of_spectra():
    code = textwrap.dedent("""
        import spectra
        assert callable(spectra.plugins.register_plugin)
        assert spectra.matrices.get("hessian").__name__ == "HessianOperator"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
