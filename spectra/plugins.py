"""The plugin manager and the registries it fills: one pluggy hook per kind of entry.

Plugins are loaded lazily, on the first look-up, and only once, by pluggy:

1. the default plugins inside spectra (:mod:`spectra.default_plugins`);
2. third-party plugins, from the entry-point group ``spectra``
   (``PluginManager.load_setuptools_entrypoints``, one entry point at a time);
3. plugins registered in code with :func:`register_plugin`.

After each, ``PluginManager.check_pending`` refuses a plugin that implements a
hook spectra does not have (a misspelt hook name).  A plugin that fails to
import, raises in a hook, or registers a name that is already taken is
reported by name (:func:`load_errors` and a :class:`PluginWarning`);
everything else keeps working.  Each registry is filled the first time it is
needed, one plugin at a time, so the entries know who registered them.

>>> from spectra import plugins
>>> "blobnet" in plugins.registry("models")
True
>>> plugins.registry("models").get("BlobNet").plugin
'spectra.default_plugins.models'
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import pluggy

from . import hookspecs
from .default_plugins import DEFAULT_PLUGINS
from .errors import (InvalidInputError, MemoryBudgetError, PluginError, SpectraError, UnknownNameError,
                     close_matches, describe_exception, did_you_mean)
from .precision import with_default_dtype

ENTRY_POINT_GROUP = "spectra"

# registry kind -> (singular, plural) nouns used in messages; the hook is spectra_register_<kind>
KINDS: dict[str, tuple[str, str]] = {
    "models": ("model", "models"),
    "datasets": ("dataset", "datasets"),
    "backends": ("backend", "backends"),
    "matrices": ("matrix", "matrices"),
    "losses": ("loss", "losses"),
    "experiments": ("experiment", "experiments"),
    "commands": ("command", "commands"),
}


# kinds whose factories are called with the user's keyword arguments (their parameters are listed)
KWARG_KINDS = ("models", "datasets")


def hook_name(kind: str) -> str:
    """``"models"`` -> ``"spectra_register_models"``."""
    return f"spectra_register_{kind}"


class PluginWarning(UserWarning):
    """A plugin failed to load or misbehaved (the message names it)."""


@dataclass(frozen=True)
class Entry:
    """One registered entry: its name and aliases, what it is, who provided it."""

    name: str
    factory: Any
    description: str
    plugin: str
    parameters: tuple[str, ...]
    aliases: tuple[str, ...] = ()

    def signature(self) -> inspect.Signature | None:
        try:
            return inspect.signature(self.factory)
        except (TypeError, ValueError):  # some builtins / C callables have none
            return None

    def accepts(self, param: str) -> bool:
        """Whether the factory takes a keyword ``param`` (by name or through ``**kwargs``)."""
        if self.signature() is None:
            return False
        names, takes_any = accepted_keywords(self.factory)
        return param in names or takes_any


@dataclass
class PluginInfo:
    """A loaded (or failed) plugin, as shown by ``spectra list plugins``."""

    name: str
    source: str  # "builtin", "entry point (<dist> <version>)", "registered in code"
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
    """The entries of one kind; names and aliases are found without regard to case."""

    def __init__(self, kind: str):
        if kind not in KINDS:
            raise UnknownNameError("registry kind", kind, list(KINDS), plural="registry kinds")
        self.kind = kind
        self.noun, self.plural = KINDS[kind]
        self._entries: dict[str, Entry] = {}
        self._keys: dict[str, str] = {}  # casefolded name or alias -> name

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.casefold() in self._keys

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        """The entry called ``name`` (or one of its aliases), in any case.

        Raises :class:`UnknownNameError` listing the known names and the closest ones.
        """
        if not isinstance(name, str):
            raise InvalidInputError(f"a {self.noun} name must be a string; got {type(name).__name__}")
        key = self._keys.get(name.casefold())
        if key is not None:
            return self._entries[key]
        aliases = {a: e.name for e in self._entries.values() for a in e.aliases}
        err = UnknownNameError(self.noun, name, self.names(), plural=self.plural, aliases=aliases)
        broken = sorted({e.plugin for e in _state.errors_snapshot()})
        if broken:  # the name may belong to a plugin that did not load
            err.args = (f"{err.args[0]} (plugins with load errors: {', '.join(broken)}; "
                        "see `spectra list plugins`)",)
        raise err from None

    def _add(self, entry: Entry) -> str | None:
        """Add ``entry``; a problem message instead if one of its names is taken."""
        for key in (entry.name, *entry.aliases):
            taken = self._keys.get(key.casefold())
            if taken is not None:
                owner = self._entries[taken]
                what = f"{self.noun} {entry.name!r}" if key == entry.name else \
                    f"alias {key!r} of {self.noun} {entry.name!r}"
                held = "is already registered by" if key.casefold() == taken.casefold() else \
                    f"is already taken by {self.noun} {taken!r} of"
                return f"{what} {held} plugin {owner.plugin!r}; this registration is ignored"
        self._entries[entry.name] = entry
        for key in (entry.name, *entry.aliases):
            self._keys[key.casefold()] = entry.name
        return None


def _check_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and not any(c.isspace() for c in name)


class Registrar:
    """What a hook receives as ``registry``: ``register(name, factory, description="", aliases=())``.

    Registrations are kept only if the hook returns normally, so a plugin that
    raises half-way leaves nothing behind.
    """

    def __init__(self, registry: Registry, plugin: str):
        self.kind = registry.kind
        self._registry = registry
        self._plugin = plugin
        self._pending: list[Entry] = []
        self.problems: list[str] = []

    def register(self, name: str, factory: Any, description: str = "", aliases: Iterable[str] = ()) -> None:
        """Add ``factory`` under ``name`` (and its ``aliases``); what ``factory`` must be depends on the hook."""
        noun = self._registry.noun
        aliases = (aliases,) if isinstance(aliases, str) else tuple(aliases)
        for text in (name, *aliases):
            if not _check_name(text):
                self.problems.append(f"{noun} name must be a non-empty string without spaces; got {text!r}")
                return
        if self.kind == "experiments":
            if not (callable(getattr(factory, "load", None)) and hasattr(factory, "title")):
                self.problems.append(f"{noun} {name!r}: needs an object with 'title' and 'load()'; "
                                     f"got {type(factory).__name__}")
                return
        elif not callable(factory):
            self.problems.append(f"{noun} {name!r}: factory is not callable ({type(factory).__name__})")
            return
        parameters = describe_parameters(factory) if self.kind in KWARG_KINDS else ()
        self._pending.append(Entry(name, factory, str(description).strip(), self._plugin, parameters, aliases))

    def commit(self) -> None:
        for entry in self._pending:
            problem = self._registry._add(entry)
            if problem is not None:
                self.problems.append(problem)


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


def _register(pm: pluggy.PluginManager, obj: Any, name: str, source: str) -> bool:
    """``pm.register`` with the problems reported by the plugin's name instead of raised."""
    if name in _state.plugins:
        # the plugin already loaded under this name keeps working; only the newcomer is refused
        _report(name, f"a plugin with this name is already loaded (from {_state.plugins[name].source}); "
                      f"the one from {source} is ignored", _state.load_errors, mark=False)
        return False
    _state.plugins[name] = PluginInfo(name, source)
    try:
        pm.register(obj, name=name)
    except Exception as exc:  # noqa: BLE001 - pluggy validation or an object registered twice
        _forget_partial(pm, name)
        _report(name, f"could not be registered: {describe_exception(exc)}", _state.load_errors)
        return False
    _state.order.append(name)
    return _check_pending(pm, name)


def _forget_partial(pm: pluggy.PluginManager, name: str) -> None:
    """Undo what a failed ``pm.register`` left behind (pluggy adds hooks one by one and stops at the bad one)."""
    if pm.get_plugin(name) is not None:
        pm.unregister(name=name)


def _check_pending(pm: pluggy.PluginManager, name: str) -> bool:
    """pluggy's ``check_pending``: a plugin implementing a hook spectra lacks is unregistered and reported."""
    try:
        pm.check_pending()
        return True
    except pluggy.PluginValidationError:
        plugin = pm.get_plugin(name)
        unknown = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [] if not caller.has_spec())
        known = [hook_name(kind) for kind in KINDS]
        hints = "".join(did_you_mean(close_matches(u, known)) for u in unknown)
        _report(name, f"implements unknown hook(s) {', '.join(unknown)}{hints} (known hooks: {', '.join(known)}); "
                      "the plugin is not loaded", _state.load_errors)
        pm.unregister(plugin, name=name)
        _state.order.remove(name)
        return False


def _entry_points() -> dict[str, str]:
    """Name -> module of the ``spectra`` entry-point group; a name two packages claim is reported."""
    values: dict[str, list[str]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        targets = values.setdefault(ep.name, [])
        if ep.value not in targets:  # the same distribution can be visible twice on sys.path
            targets.append(ep.value)
    for name, targets in values.items():
        if len(targets) > 1:
            _report(name, f"the entry point name is claimed by several packages ({', '.join(targets)}); "
                          "only one is loaded", _state.load_errors, mark=False)
    return {name: targets[0] for name, targets in values.items()}


def _load_entry_point(pm: pluggy.PluginManager, name: str, value: str) -> None:
    before = {id(plugin) for plugin, _ in pm.list_plugin_distinfo()}
    try:
        loaded = pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
    except pluggy.PluginValidationError as exc:  # imported, but its hooks do not match the hookspecs
        _forget_partial(pm, name)
        _state.plugins.setdefault(name, PluginInfo(name, "entry point"))
        _report(name, f"could not be registered: {describe_exception(exc)}", _state.load_errors)
        return
    except Exception as exc:  # noqa: BLE001 - ImportError, SyntaxError, anything raised at import
        clash = name in _state.plugins
        _state.plugins.setdefault(name, PluginInfo(name, "entry point"))
        _report(name, f"failed to import {value!r} (entry point): {describe_exception(exc)}", _state.load_errors,
                mark=not clash)
        return
    if not loaded:
        return
    source = next((f"entry point ({dist.project_name} {dist.version})" for plugin, dist in pm.list_plugin_distinfo()
                   if id(plugin) not in before), "entry point")
    _state.plugins[name] = PluginInfo(name, source)
    _state.order.append(name)
    _check_pending(pm, name)


def _load() -> pluggy.PluginManager:
    with _state.lock:
        if _state.pm is not None:
            return _state.pm
        pm = pluggy.PluginManager("spectra")
        pm.add_hookspecs(hookspecs)
        _state.pm = pm  # set first: a plugin's import may look things up re-entrantly
        for module_name in DEFAULT_PLUGINS:
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # noqa: BLE001 - reported, the others keep working
                _state.plugins[module_name] = PluginInfo(module_name, "builtin")
                _report(module_name, f"failed to import: {describe_exception(exc)}", _state.load_errors)
                continue
            _register(pm, module, module_name, "builtin")
        for name, value in _entry_points().items():
            if name not in _state.plugins:
                _load_entry_point(pm, name, value)
        return pm


def _fill(registry: Registry, only: str | None = None) -> None:
    """Call the registry's hook through pluggy, one plugin at a time, in loading order.

    One plugin per call (``subset_hook_caller``) so that a plugin that raises
    is reported alone and the others still register, and so every entry
    knows its plugin.
    """
    pm = _load()
    name_of_hook = hook_name(registry.kind)
    implementers = {impl.plugin_name for impl in getattr(pm.hook, name_of_hook).get_hookimpls()}
    for name in list(_state.order):
        if name not in implementers or (only is not None and name != only):
            continue
        plugin = pm.get_plugin(name)
        caller = pm.subset_hook_caller(name_of_hook, remove_plugins=[p for p in pm.get_plugins() if p is not plugin])
        registrar = Registrar(registry, name)
        try:
            caller(registry=registrar)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the others down
            _report(name, f"raised in {name_of_hook}: {describe_exception(exc)}", _state.hook_errors)
            continue
        registrar.commit()
        for problem in registrar.problems:
            _report(name, problem, _state.hook_errors)


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (one of :data:`KINDS`), loading plugins once."""
    with _state.lock:
        reg = _state.registries.get(kind)
        if reg is None:
            reg = Registry(kind)  # validates kind
            _fill(reg)
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
        if _register(pm, plugin, name, "registered in code"):
            for reg in _state.registries.values():
                _fill(reg, only=name)  # extend the registries already built
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
    """One dict per plugin: name, source, ok, errors, and what it registered of each kind."""
    regs = {kind: registry(kind) for kind in KINDS}
    out = []
    for name, info in _state.plugins.items():
        provided = {kind: [e.name for e in reg if e.plugin == name] for kind, reg in regs.items()}
        out.append({"name": info.name, "source": info.source, "ok": info.ok,
                    "errors": list(info.errors), **provided})
    return out


def list_entries(kind: str) -> list[dict[str, Any]]:
    """``[{"name", "description", "parameters", "plugin", "aliases"}, ...]`` sorted by name."""
    return [
        {"name": e.name, "description": e.description, "parameters": list(e.parameters), "plugin": e.plugin,
         "aliases": list(e.aliases)}
        for e in registry(kind)
    ]


def accepted_keywords(func: Callable[..., Any]) -> tuple[list[str], bool]:
    """``(names it takes by keyword, whether it also takes **kwargs)`` from ``func``'s signature."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return [], True  # no signature to check against: let the call decide
    names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params.values())


def check_kwargs(entry: Entry, kwargs: dict[str, Any], noun: str) -> None:
    """Refuse unknown or missing keyword arguments before calling a factory."""
    sig = entry.signature()
    if sig is None:
        return
    params = sig.parameters
    accepted, accepts_any = accepted_keywords(entry.factory)
    accepted_txt = ", ".join(entry.parameters) if entry.parameters else "no arguments"
    if not accepts_any:
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise InvalidInputError(
                f"{noun} {entry.name!r} has no argument {unknown[0]!r}; it accepts: {accepted_txt}"
                f"{did_you_mean(close_matches(unknown[0], accepted))}"
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
    noun, name = KINDS[kind][0], entry.name
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
            f"{noun} {name!r} (plugin {entry.plugin!r}) rejected its arguments: {describe_exception(exc)}; "
            f"it accepts: {accepted}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - a plugin bug, reported by plugin name
        raise PluginError(
            f"{noun} {name!r} from plugin {entry.plugin!r} failed: {describe_exception(exc)}"
        ) from exc


__all__ = [
    "ENTRY_POINT_GROUP", "Entry", "KINDS", "LoadError", "PluginInfo", "PluginWarning", "Registrar", "Registry",
    "accepted_keywords", "call_factory", "check_kwargs", "describe_parameters", "get_entry", "get_plugin_manager",
    "hook_name", "list_entries", "list_plugins", "load_errors", "register_plugin", "registry", "reset",
    "unregister_plugin",
]
