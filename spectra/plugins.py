"""The plugin manager and the registries of models, datasets and backends.

Plugins are loaded lazily, on the first look-up, and only once:

1. the built-in plugins, by importing ``spectra_builtins.models``,
   ``spectra_builtins.datasets`` and ``spectra_builtins.backends`` directly (so a
   source checkout works without installed entry points);
2. third-party plugins, from the entry-point group ``spectra``;
3. plugins registered in code with :func:`register_plugin`.

A plugin that fails to import, raises in a hook, or registers a name that is
already taken is reported by name (:func:`load_errors` and a
:class:`PluginWarning`); everything else keeps working.

>>> from spectra import plugins
>>> "blobnet" in plugins.registry("models")
True
>>> plugins.registry("models").get("blobnet").plugin
'spectra_builtins.models'
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pluggy

from . import hookspecs
from .errors import InvalidInputError, MemoryBudgetError, PluginError, SpectraError, UnknownNameError
from .precision import with_default_dtype

ENTRY_POINT_GROUP = "spectra"
BUILTIN_MODULES = ("spectra_builtins.models", "spectra_builtins.datasets", "spectra_builtins.backends")

# registry kind -> (hook name, singular noun used in messages)
KINDS: dict[str, tuple[str, str]] = {
    "models": ("spectra_register_models", "model"),
    "datasets": ("spectra_register_datasets", "dataset"),
    "backends": ("spectra_register_backends", "backend"),
}


class PluginWarning(UserWarning):
    """A plugin failed to load or misbehaved (the message names it)."""


@dataclass(frozen=True)
class Entry:
    """One registered factory: what it is called, what it takes, who provided it."""

    name: str
    factory: Callable[..., Any]
    description: str
    plugin: str
    parameters: tuple[str, ...]

    def signature(self) -> inspect.Signature | None:
        try:
            return inspect.signature(self.factory)
        except (TypeError, ValueError):  # some builtins / C callables have none
            return None

    def accepts(self, param: str) -> bool:
        """Whether the factory takes a keyword ``param`` (by name or through ``**kwargs``)."""
        sig = self.signature()
        if sig is None:
            return False
        return param in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


@dataclass
class PluginInfo:
    """A loaded (or failed) plugin, as shown by ``spectra list plugins``."""

    name: str
    source: str  # "builtin", "entry point <dist> <version>", "registered in code"
    ok: bool = True
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LoadError:
    """A problem with one plugin; ``str()`` gives the one-line message."""

    plugin: str
    message: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r}: {self.message}"


def describe_parameters(factory: Callable[..., Any]) -> tuple[str, ...]:
    """``("sizes", "activation='relu'", ...)`` from the factory's signature."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return ()
    out = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            out.append(f"**{p.name}")
        elif p.kind is p.VAR_POSITIONAL:
            continue  # factories are called with keywords only
        elif p.default is p.empty:
            out.append(p.name)
        else:
            out.append(f"{p.name}={p.default!r}")
    return tuple(out)


class Registry:
    """The entries of one kind (``"models"``, ``"datasets"`` or ``"backends"``)."""

    def __init__(self, kind: str):
        if kind not in KINDS:
            raise InvalidInputError(f"unknown registry kind {kind!r}; known: {', '.join(KINDS)}")
        self.kind = kind
        self.noun = KINDS[kind][1]
        self._entries: dict[str, Entry] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        """The entry called ``name``; :class:`UnknownNameError` listing the known ones if none."""
        if not isinstance(name, str):
            raise InvalidInputError(f"a {self.noun} name must be a string; got {type(name).__name__}")
        try:
            return self._entries[name]
        except KeyError:
            err = UnknownNameError(self.noun, name, self.names())
            broken = sorted({e.plugin for e in _state.errors_snapshot()})
            if broken:  # the name may belong to a plugin that did not load
                err.args = (f"{err.args[0]} (plugins with load errors: {', '.join(broken)}; "
                            "see `spectra list plugins`)",)
            raise err from None


class Registrar:
    """What a hook receives as ``registry``: ``register(name, factory, description="")``.

    Registrations are kept only if the hook returns normally, so a plugin that
    raises half-way leaves nothing behind.
    """

    def __init__(self, registry: Registry, plugin: str):
        self.kind = registry.kind
        self._registry = registry
        self._plugin = plugin
        self._pending: list[Entry] = []
        self.problems: list[str] = []

    def register(self, name: str, factory: Callable[..., Any], description: str = "") -> None:
        """Add ``factory`` under ``name`` (called later with keyword arguments)."""
        noun = self._registry.noun
        if not isinstance(name, str) or not name or name != name.strip() or any(c.isspace() for c in name):
            self.problems.append(f"{noun} name must be a non-empty string without spaces; got {name!r}")
            return
        if not callable(factory):
            self.problems.append(f"{noun} {name!r}: factory is not callable ({type(factory).__name__})")
            return
        if not isinstance(description, str):
            description = str(description)
        self._pending.append(Entry(name, factory, description.strip(), self._plugin,
                                   describe_parameters(factory)))

    def commit(self) -> None:
        entries = self._registry._entries
        for e in self._pending:
            if e.name in entries:
                self.problems.append(
                    f"{self._registry.noun} {e.name!r} is already registered by plugin "
                    f"{entries[e.name].plugin!r}; this registration is ignored"
                )
            else:
                entries[e.name] = e


class _State:
    """Everything loaded so far; rebuilt by :func:`reset`."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pm: pluggy.PluginManager | None = None
        self.plugins: dict[str, PluginInfo] = {}
        self.order: list[str] = []  # registration order: built-ins win name clashes
        self.load_errors: list[LoadError] = []  # import / registration problems
        self.hook_errors: list[LoadError] = []  # problems while filling registries
        self.registries: dict[str, Registry] = {}
        self.warned: set[str] = set()

    def errors_snapshot(self) -> list[LoadError]:
        return list(self.load_errors) + list(self.hook_errors)


_state = _State()


def _report(plugin: str, message: str, bucket: list[LoadError], mark: bool = True) -> None:
    err = LoadError(plugin, message)
    bucket.append(err)
    info = _state.plugins.get(plugin)
    if info is not None and mark:
        info.ok = False
        info.errors.append(message)
    text = f"spectra: {err}"
    if text not in _state.warned:  # one warning per distinct problem per process
        _state.warned.add(text)
        warnings.warn(text, PluginWarning, stacklevel=3)


def _describe_exc(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _add(pm: pluggy.PluginManager, obj: Any, name: str, source: str) -> bool:
    if name in _state.plugins:
        # the plugin already loaded under this name keeps working; only the newcomer is refused
        _report(name, f"a plugin with this name is already loaded (from {_state.plugins[name].source}); "
                      f"the one from {source} is ignored", _state.load_errors, mark=False)
        return False
    _state.plugins[name] = PluginInfo(name, source)
    try:
        pm.register(obj, name=name)
    except Exception as exc:  # noqa: BLE001 - pluggy validation or duplicate object
        _report(name, f"could not be registered: {_describe_exc(exc)}", _state.load_errors)
        return False
    unknown = [impl.function.__name__ for impl in _unverified_impls(pm, obj)]
    if unknown:
        _report(name, f"implements unknown hook(s) {', '.join(sorted(unknown))}; "
                      f"known hooks: {', '.join(v[0] for v in KINDS.values())}", _state.load_errors)
    _state.order.append(name)
    return True


def _unverified_impls(pm: pluggy.PluginManager, obj: Any) -> list[Any]:
    """Hook implementations of ``obj`` that match no hookspec (likely typos)."""
    out = []
    for hook_name in dir(pm.hook):
        if hook_name.startswith("_"):
            continue
        caller = getattr(pm.hook, hook_name)
        if getattr(caller, "spec", True) is None:
            out.extend(i for i in caller.get_hookimpls() if i.plugin is obj)
    return out


def _import_builtin(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name not in ("spectra_builtins", module_name):
            raise
    # A source checkout that was not installed: the built-ins sit next to spectra/.
    plugins_dir = Path(__file__).resolve().parent.parent / "plugins"
    if (plugins_dir / "spectra_builtins" / "__init__.py").is_file() and str(plugins_dir) not in sys.path:
        sys.path.append(str(plugins_dir))
    return importlib.import_module(module_name)


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    seen, out = set(), []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = (ep.name, ep.value)
        if key not in seen:  # a distribution visible twice on sys.path
            seen.add(key)
            out.append(ep)
    return out


def _load() -> pluggy.PluginManager:
    with _state.lock:
        if _state.pm is not None:
            return _state.pm
        pm = pluggy.PluginManager("spectra")
        pm.add_hookspecs(hookspecs)
        _state.pm = pm  # set first: a plugin's import may look things up re-entrantly
        for module_name in BUILTIN_MODULES:
            try:
                module = _import_builtin(module_name)
            except Exception as exc:  # noqa: BLE001 - reported, others keep working
                _state.plugins[module_name] = PluginInfo(module_name, "builtin")
                _report(module_name, f"failed to import: {_describe_exc(exc)}", _state.load_errors)
                continue
            _add(pm, module, module_name, "builtin")
        for ep in _entry_points():
            dist = getattr(ep, "dist", None)
            source = "entry point" + (f" ({dist.name} {dist.version})" if dist is not None else "")
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - ImportError, SyntaxError, anything at import
                clash = ep.name in _state.plugins
                _state.plugins.setdefault(ep.name, PluginInfo(ep.name, source))
                _report(ep.name, f"failed to import {ep.value!r} ({source}): {_describe_exc(exc)}",
                        _state.load_errors, mark=not clash)
                continue
            _add(pm, obj, ep.name, source)
        return pm


def _call_hooks(registry: Registry, only: str | None = None) -> None:
    """Fill ``registry`` from every plugin's hook, one plugin at a time.

    Each implementation is called on its own (not through ``pm.hook``) so that
    one plugin raising does not stop the others, and so every entry knows
    which plugin provided it.
    """
    pm = _load()
    hook_name = KINDS[registry.kind][0]
    impls = getattr(pm.hook, hook_name).get_hookimpls()
    rank = {name: i for i, name in enumerate(_state.order)}
    impls = sorted(impls, key=lambda i: rank.get(i.plugin_name, len(rank)))
    for impl in impls:
        if only is not None and impl.plugin_name != only:
            continue
        if getattr(impl, "hookwrapper", False) or getattr(impl, "wrapper", False):
            continue  # wrappers make no sense for registration hooks
        registrar = Registrar(registry, impl.plugin_name)
        try:
            impl.function(*[registrar for _ in impl.argnames])
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take others down
            _report(impl.plugin_name, f"raised in {hook_name}: {_describe_exc(exc)}", _state.hook_errors)
            continue
        registrar.commit()
        for problem in registrar.problems:
            _report(impl.plugin_name, problem, _state.hook_errors)


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (``"models"``, ``"datasets"``, ``"backends"``), loading plugins once."""
    with _state.lock:
        reg = _state.registries.get(kind)
        if reg is None:
            reg = Registry(kind)  # validates kind
            _call_hooks(reg)
            _state.registries[kind] = reg
        return reg


def get_entry(kind: str, name: str) -> Entry:
    """The entry ``name`` of ``kind``; :class:`UnknownNameError` (listing known names) if absent."""
    return registry(kind).get(name)


def get_plugin_manager() -> pluggy.PluginManager:
    """The loaded :class:`pluggy.PluginManager` (loads plugins on first call)."""
    return _load()


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object (a module or any object with ``@hookimpl`` functions).

    Meant for tests and notebooks; packages should use the ``spectra``
    entry-point group.  Returns the plugin's name.  Problems are reported like
    those of any other plugin.

    >>> import types, spectra
    >>> mod = types.ModuleType("doc_plugin")
    >>> mod.spectra_register_models = spectra.hookimpl(
    ...     lambda registry: registry.register("doc-net", lambda: __import__("torch").nn.Linear(2, 2)))
    >>> register_plugin(mod, "doc-plugin")
    'doc-plugin'
    >>> registry("models").get("doc-net").plugin
    'doc-plugin'
    >>> unregister_plugin("doc-plugin")
    """
    if name is None:
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin):x}"
    with _state.lock:
        pm = _load()
        if _add(pm, plugin, name, "registered in code"):
            for kind, reg in _state.registries.items():
                _call_hooks(reg, only=name)  # extend the registries already built
        return name


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin` (registries are rebuilt)."""
    with _state.lock:
        pm = _load()
        if name not in _state.plugins:
            raise UnknownNameError("plugin", name, list(_state.plugins))
        obj = pm.get_plugin(name)
        if obj is not None:
            pm.unregister(obj, name=name)
        del _state.plugins[name]
        if name in _state.order:
            _state.order.remove(name)
        _state.load_errors = [e for e in _state.load_errors if e.plugin != name]
        _state.hook_errors = []
        _state.registries = {}


def reset() -> None:
    """Forget every loaded plugin; the next look-up loads them again (entry points re-read)."""
    global _state
    with _state.lock:
        _state = _State()


def load_errors() -> list[LoadError]:
    """Problems met so far (plugins are loaded and every registry filled first)."""
    for kind in KINDS:
        registry(kind)
    return _state.errors_snapshot()


def list_plugins() -> list[dict[str, Any]]:
    """One dict per plugin: name, source, ok, errors, and what it registered."""
    regs = {kind: registry(kind) for kind in KINDS}
    out = []
    for name, info in _state.plugins.items():
        provided = {kind: [e.name for e in reg if e.plugin == name] for kind, reg in regs.items()}
        out.append({"name": info.name, "source": info.source, "ok": info.ok,
                    "errors": list(info.errors), **provided})
    return out


def list_entries(kind: str) -> list[dict[str, Any]]:
    """``[{"name", "description", "parameters", "plugin"}, ...]`` sorted by name."""
    return [
        {"name": e.name, "description": e.description, "parameters": list(e.parameters), "plugin": e.plugin}
        for e in registry(kind)
    ]


def check_kwargs(entry: Entry, kwargs: dict[str, Any], noun: str) -> None:
    """Refuse unknown or missing keyword arguments before calling a factory."""
    sig = entry.signature()
    if sig is None:
        return
    params = sig.parameters
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted_txt = ", ".join(entry.parameters) if entry.parameters else "no arguments"
    if not accepts_any:
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise InvalidInputError(
                f"{noun} {entry.name!r} has no argument {unknown[0]!r}; it accepts: {accepted_txt}"
            )
    missing = [n for n in accepted if params[n].default is params[n].empty and n not in kwargs]
    if missing:
        raise InvalidInputError(
            f"{noun} {entry.name!r} needs argument {missing[0]!r}; it accepts: {accepted_txt}"
        )


def call_factory(kind: str, name: str, kwargs: dict[str, Any]) -> tuple[Any, Entry]:
    """Look ``name`` up and call its factory with ``kwargs``, translating failures.

    Unknown or missing arguments and a ``TypeError`` from the call become
    :class:`InvalidInputError` listing the accepted arguments; spectra errors
    pass through (prefixed with the entry's name); anything else the factory
    raises becomes :class:`PluginError` naming the plugin.
    """
    entry = get_entry(kind, name)
    noun = KINDS[kind][1]
    if kind in ("models", "datasets"):  # one default dtype for Python and the CLI (spectra.precision)
        kwargs = with_default_dtype(kwargs, entry.accepts("dtype"))
    check_kwargs(entry, kwargs, noun)
    try:
        return entry.factory(**kwargs), entry
    except (InvalidInputError, MemoryBudgetError) as exc:
        if type(exc) in (InvalidInputError, MemoryBudgetError) and not str(exc).startswith(f"{noun} {name!r}"):
            raise type(exc)(f"{noun} {name!r}: {exc}") from exc
        raise
    except SpectraError:
        raise
    except TypeError as exc:
        accepted = ", ".join(entry.parameters) if entry.parameters else "no arguments"
        raise InvalidInputError(
            f"{noun} {name!r} (plugin {entry.plugin!r}) rejected its arguments: {_describe_exc(exc)}; "
            f"it accepts: {accepted}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a plugin bug, reported by plugin name
        raise PluginError(
            f"{noun} {name!r} from plugin {entry.plugin!r} failed: {_describe_exc(exc)}"
        ) from exc


__all__ = [
    "ENTRY_POINT_GROUP", "call_factory", "Entry", "LoadError", "PluginInfo", "PluginWarning", "Registrar", "Registry",
    "check_kwargs", "describe_parameters", "get_entry", "get_plugin_manager", "list_entries",
    "list_plugins", "load_errors", "register_plugin", "registry", "reset", "unregister_plugin",
]
