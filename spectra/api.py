"""``spectra.analyze``: one call from a model and data to a :class:`SpectrumResult`.

>>> import torch, spectra
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()
>>> X, y = torch.randn(50, 2, dtype=torch.float64), torch.randint(0, 2, (50,))
>>> r = spectra.analyze(model, (X, y), method="auto")
>>> r.method, r.num_params, r.provenance["auto_reason"].startswith("exact")
('exact', 17, True)
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import torch

from ._memory import available_memory_bytes, format_bytes
from .errors import InvalidInputError, PluginError
from .losses import LossLike
from .operators.base import SpectralOperator
from .backends.base import expected_products
from .operators.parameters import ParamSelector
from .progress import ProductBar, wanted
from .result import SpectrumResult, versions

# method="auto" runs exact up to this many parameters (P HVPs + an O(P^3) eigh
# stay within about a minute on 2 cores), and only when 3 P^2 float64 fit in a
# quarter of the free memory.
AUTO_EXACT_MAX_PARAMS = 5000
AUTO_MEMORY_FRACTION = 0.25
AUTO = "auto"  # the method name that lets analyze choose
# k and which when a backend needs them and the caller gave none; giving either without a
# method asks for extreme eigenvalues, which method="auto" computes with topk or arpack
# (extremes_method, from the race in BENCHMARKS.md).
DEFAULT_K = 10
DEFAULT_WHICH = "largest"
EXTREMES_METHOD = "topk"
EXTREMES_REFERENCE = "arpack"
# topk searches with products in this dtype and finishes in the model's float64 (low_precision_twin).
LOW_PRECISION_DTYPE = "float32"
# The built-in backends run their own checks on a stand-in operator in check_request (plugins check when run).
BUILTIN_BACKENDS_PLUGIN = "spectra.default_plugins.backends"

_OPERATOR_OPTIONS = {"mode", "cache_graph", "chunk_size", "train_mode", "check_determinism", "reduction",
                     "reader"}
_PARALLEL_OPTIONS = ("timeout", "group")


def operator_class(matrix: str) -> type:
    """The operator class ``analyze(matrix=...)`` builds, from the ``matrices`` registry."""
    from . import matrices

    return matrices.get(matrix)


def operator_options(matrix: str, distributed: bool | str, seed: int,
                     options: dict[str, Any]) -> tuple[type, dict[str, Any], tuple[int, int] | None]:
    """``(class, its options, shard)`` of the operator ``analyze`` builds; its options leave ``options``.

    Under data parallelism (:func:`spectra.parallel.data_parallel_requested`)
    the operator gets ``distributed=True`` and ``shard`` is ``(rank, world)``:
    a registry dataset is then loaded as this rank's shard only.
    """
    from . import parallel

    op_class = operator_class(matrix)
    extra = getattr(op_class, "extra_options", ())  # a matrix's own options (CurvatureOperator.extra_options)
    op_options = {k_: options.pop(k_) for k_ in list(options) if k_ in _OPERATOR_OPTIONS | set(extra)}
    _refuse_other_matrices_options(op_class, options)
    if "seed" in extra:
        op_options.setdefault("seed", seed)  # a Monte-Carlo matrix draws from the analysis's seed
    shard = None
    if parallel.data_parallel_requested(distributed):
        op_options.update({k_: options.pop(k_) for k_ in _PARALLEL_OPTIONS if k_ in options}, distributed=True)
        group = op_options.get("group")
        shard = (parallel.rank(group), parallel.world_size(group))
    return op_class, op_options, shard


def _refuse_other_matrices_options(op_class: type, options: dict[str, Any]) -> None:
    """An option of another matrix (``mc_samples`` with ``matrix="ggn"``) is refused as such, not as a backend's."""
    from . import matrices

    for option in sorted(set(options) - {"seed"}):
        owners = matrices.taking(option)
        if owners:
            raise InvalidInputError(f"{option} is an option of the matrix {', '.join(owners)}; matrix="
                                    f"{getattr(op_class, 'name', op_class.__name__)!r} does not take it")


def get_backend(name: str) -> Any:
    """A new instance of the backend registered under ``name`` (plugins included)."""
    from . import backends

    return backends.get(name)


def choose_method(num_params: int, device: Any = "cpu", memory_limit: int | None = None) -> tuple[str, str]:
    """The backend ``method="auto"`` picks for ``num_params``, and why."""
    from .backends.exact import exact_memory_bytes

    need = exact_memory_bytes(num_params)
    have = available_memory_bytes(device) if memory_limit is None else int(memory_limit)
    budget = AUTO_MEMORY_FRACTION * have
    if num_params <= AUTO_EXACT_MAX_PARAMS and need <= budget:
        return "exact", (f"exact: P={num_params} <= {AUTO_EXACT_MAX_PARAMS} and the dense Hessian needs "
                         f"{format_bytes(need)} <= {AUTO_MEMORY_FRACTION:.0%} of {format_bytes(have)} free")
    why = (f"P={num_params} > {AUTO_EXACT_MAX_PARAMS}" if num_params > AUTO_EXACT_MAX_PARAMS
           else f"the dense Hessian needs {format_bytes(need)} > {AUTO_MEMORY_FRACTION:.0%} of {format_bytes(have)} free")
    return "lanczos", f"lanczos: {why}"


def extremes_method(which: str, low_precision: bool) -> tuple[str, str]:
    """The backend for extreme eigenvalues asked for without a method, and why.

    ``topk`` where it is the faster or the safer one: at the small end (``which``
    ``"smallest"`` or ``"both"``), where ARPACK can take tens of products per parameter
    on a singular Hessian and ``topk`` switches to the dense path; and for the largest
    end when it can search with float32 products (``low_precision``: a float64 operator
    with a float32 twin, :func:`low_precision_twin`), where it took 0.54-0.90x ARPACK's
    time on MNIST MLPs and a CNN. ``arpack`` otherwise: with float64 products only,
    ``topk`` took 1.05-1.34x ARPACK's time (BENCHMARKS.md, top-10 race).

    >>> extremes_method("largest", True)[0], extremes_method("largest", False)[0]
    ('topk', 'arpack')
    >>> extremes_method("smallest", False)[0]
    'topk'
    """
    if which in ("smallest", "both"):
        return EXTREMES_METHOD, ("the small end: topk switches to the dense path where ARPACK would need many "
                                 "products per parameter (a singular Hessian)")
    if low_precision:
        return EXTREMES_METHOD, ("topk searches with float32 products and finishes in float64: about 0.5-0.7x "
                                 "ARPACK's time, ARPACK having only float64 products")
    return EXTREMES_REFERENCE, ("no float32 twin of the operator (float32 model, a sampled matrix, or data "
                                "parallelism): with the same products topk needs more of them than ARPACK")


def _plan(op: Any, method: str, *, memory_limit: int | None, on_memory: str, k: int | None, which: str | None,
          num_probes: int, num_steps: int, seed: int, return_eigenvectors: bool,
          options: dict[str, Any]) -> tuple[str, str, str | None, Any, dict[str, Any]]:
    """The backend to run on ``op`` and its arguments: ``(method, auto_reason, memory_fallback, backend, arguments)``.

    The backend gets the common arguments its ``run`` names (:func:`spectra.backends.base.backend_arguments`).
    """
    from . import plugins
    from .backends.base import backend_arguments

    if not isinstance(method, str):
        raise InvalidInputError(f"method must be a string; got {type(method).__name__}")
    reason = "requested"
    if method.lower() == AUTO and (k is not None or which is not None):
        wanted = DEFAULT_WHICH if which is None else which
        method, why = extremes_method(wanted, has_low_precision_twin(op))
        reason = (f"{method}: extreme eigenvalues asked for (k={DEFAULT_K if k is None else k}, "
                  f"which={wanted!r}); {why}")
    elif method.lower() == AUTO:
        method, reason = choose_method(op.shape[0], op.device, memory_limit)
    else:
        method = plugins.get_entry("backends", method).name  # as registered, whatever the case typed
    options = dict(options)
    fallback = None
    if on_memory == "lanczos":
        method, fallback = _memory_fallback(method, op, memory_limit, num_probes, num_steps, options)
    backend = get_backend(method)
    common = {"k": DEFAULT_K if k is None else k, "which": DEFAULT_WHICH if which is None else which, "seed": seed,
              "num_probes": num_probes, "num_steps": num_steps, "return_eigenvectors": return_eigenvectors,
              "memory_limit": memory_limit}
    return method, reason, fallback, backend, backend_arguments(backend, common, options, _OPERATOR_OPTIONS)


class _StandIn(SpectralOperator):
    """An operator of the right size that stops at its first product (for :func:`check_request`)."""

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        raise _Checked

    def to_dense(self, block_size: int | None = None) -> torch.Tensor:
        raise _Checked


class _Checked(Exception):
    pass


def check_request(num_params: int, *, method: str = "auto", k: int | None = None, which: str | None = None,
                  num_probes: int = 10, num_steps: int = 80, seed: int = 0, memory_limit: int | None = None,
                  on_memory: str = "refuse", dtype: torch.dtype = torch.float64, device: Any = "cpu",
                  **options: Any) -> str:
    """Refuse now what :func:`analyze` would refuse for a model of ``num_params`` parameters.

    Runs the chosen backend's own checks (``k < P``, ``2 <= num_steps <= P``,
    memory) on a stand-in operator that stops at its first product, so a bad
    request costs nothing before expensive work such as training.  Returns the
    method that would run.

    >>> check_request(74, method="arpack", k=5)
    'arpack'
    >>> check_request(74, method="lanczos", num_steps=100)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    spectra.errors.InvalidInputError: num_steps=100 exceeds P=74: ...
    """
    from . import plugins

    if on_memory not in ("refuse", "lanczos"):
        raise InvalidInputError(f"on_memory must be 'refuse' or 'lanczos'; got {on_memory!r}")
    op = _StandIn((int(num_params), int(num_params)), dtype, device)
    method, _, _, backend, run_options = _plan(
        op, method, memory_limit=memory_limit, on_memory=on_memory, k=k, which=which, num_probes=num_probes,
        num_steps=num_steps, seed=seed, return_eigenvectors=False, options=options)
    if plugins.get_entry("backends", method).plugin != BUILTIN_BACKENDS_PLUGIN:
        return method  # a plugin backend may do anything with an operator; it checks when it runs
    try:
        backend.run(op, **run_options)
    except _Checked:
        pass
    return method


def _memory_fallback(method: str, op: Any, memory_limit: int | None, num_probes: int, num_steps: int,
                     options: dict[str, Any]) -> tuple[str, str | None]:
    """``on_memory="lanczos"``: exact -> lanczos when the dense Hessian does not fit, and the
    low-memory Lanczos engine when the basis does not fit; ``options`` gains ``engine``."""
    from .backends.exact import exact_memory_bytes
    from .backends.lanczos import BASIS_ENGINES, DEFAULT_ENGINE, lanczos_memory_bytes

    if method not in ("exact", "lanczos"):
        return method, None
    P = op.shape[0]
    have = available_memory_bytes(op.device) if memory_limit is None else int(memory_limit)
    notes = []
    if method == "exact" and exact_memory_bytes(P) > have:
        notes.append(f"exact needs {format_bytes(exact_memory_bytes(P))} > {format_bytes(have)}: ran lanczos")
        method = "lanczos"
    if method == "lanczos" and options.get("engine", DEFAULT_ENGINE) in BASIS_ENGINES:
        probes = options.get("probes")
        n_probes = num_probes if probes is None else (1 if probes.ndim == 1 else probes.shape[1])
        itemsize = torch.empty((), dtype=options.get("lanczos_dtype", torch.float64)).element_size()
        need = lanczos_memory_bytes(P, n_probes, num_steps, itemsize)
        if need > have:
            notes.append(f"the Lanczos basis needs {format_bytes(need)} > {format_bytes(have)}: engine='lowmem'")
            options["engine"] = "lowmem"
    return method, "; ".join(notes) or None


def _label(matrix: str) -> str:
    """How a progress line names the matrix: "Hessian", or its registry name."""
    from . import plugins

    name = plugins.get_entry("matrices", matrix).name
    return "Hessian" if name == "hessian" else name


def _resolve_model(model: Any, model_args: dict[str, Any] | None) -> torch.nn.Module:
    if isinstance(model, str):
        from . import models

        return models.create(model, **(model_args or {}))
    if model_args:
        raise InvalidInputError("model_args is only used when model is a registry name")
    if not isinstance(model, torch.nn.Module):
        raise InvalidInputError(
            f"model must be a torch.nn.Module or a registry name; got a {type(model).__name__} "
            "(wrap a function in an nn.Module whose parameters are the ones to analyse)"
        )
    return model


def _float_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter (None if it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


_PRODUCT_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _in_dtype(model: torch.nn.Module, dtype: str | torch.dtype) -> torch.nn.Module:
    """``model`` itself if its parameters are already ``dtype``, else a copy converted to it."""
    import copy

    resolved = _PRODUCT_DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if resolved not in _PRODUCT_DTYPES.values():
        raise InvalidInputError(f"product_dtype must be 'float32' or 'float64'; got {dtype!r}")
    if all(p.dtype == resolved for p in model.parameters() if p.is_floating_point()):
        return model
    return copy.deepcopy(model).to(resolved)


def has_low_precision_twin(op: Any) -> bool:
    """Whether :func:`low_precision_twin` builds a float32 twin of ``op``: a float64 operator of a matrix
    that draws no random samples, in one process."""
    return (op.dtype == torch.float64 and "seed" not in getattr(op, "extra_options", ())
            and not getattr(op, "is_distributed", False))


def low_precision_twin(op: Any, op_class: type, model: torch.nn.Module, loss: LossLike, data: Any,
                       params: ParamSelector, op_options: dict[str, Any]) -> Callable[[], Any] | None:
    """What ``topk`` gets as ``low_precision`` from :func:`analyze`: a builder of the same operator on a
    float32 copy of the model, or None where there is no such twin.

    Float32 products cost 0.4-0.6x float64 ones on CPU, so ``topk`` runs its
    search on the twin and finishes in float64 (BENCHMARKS.md, top-10 race).
    None when the products are float32 already, the matrix draws random
    samples (a float32 copy could draw other ones), or under data parallelism
    (a second operator would need its own collective set-up).  The twin skips
    the determinism check: the float64 operator made it on the same model.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2)).double()
    >>> X, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 0, 1])
    >>> from spectra.operators.hessian import HessianOperator
    >>> op = HessianOperator(net, "cross_entropy", (X, y))
    >>> low_precision_twin(op, HessianOperator, net, "cross_entropy", (X, y), None, {})().dtype
    torch.float32
    """
    if not has_low_precision_twin(op):
        return None

    def build() -> Any:
        twin = _in_dtype(model, LOW_PRECISION_DTYPE)
        return op_class(twin, loss, data, params=params, **{**op_options, "check_determinism": False})

    return build


def _resolve_data(data: Any, data_args: dict[str, Any] | None, shard: tuple[int, int] | None = None) -> Any:
    if isinstance(data, str):
        from . import datasets

        return datasets.load(data, shard=shard, **(data_args or {}))
    if data_args:
        raise InvalidInputError("data_args is only used when data is a registry name")
    return data


def analyze(
    model: torch.nn.Module | str,
    data: Any,
    *,
    loss: LossLike = "cross_entropy",
    method: str = "auto",
    params: ParamSelector = None,
    k: int | None = None,
    which: str | None = None,
    num_probes: int = 10,
    num_steps: int = 80,
    seed: int = 0,
    return_eigenvectors: bool = False,
    model_args: dict[str, Any] | None = None,
    data_args: dict[str, Any] | None = None,
    memory_limit: int | None = None,
    matrix: str = "hessian",
    distributed: bool | str = "auto",
    on_memory: str = "refuse",
    product_dtype: str | torch.dtype | None = None,
    progress: bool | None = None,
    **options: Any,
) -> SpectrumResult:
    """Eigenvalues of the Hessian of ``loss`` over ``data`` at the model's current weights.

    ``method``: ``"exact"`` (all ``P`` eigenvalues), ``"topk"`` (``k``
    eigenvalues at the ``which`` end(s): ``"largest"``, ``"smallest"``,
    ``"both"``, by block Krylov-Schur; ``k`` defaults to 10, ``which`` to
    ``"largest"``), ``"arpack"`` (the same by ARPACK, the reference),
    ``"lanczos"`` (SLQ density with ``num_probes`` probes of ``num_steps``
    steps), ``"auto"`` (``topk`` when ``k`` or ``which`` is given; otherwise
    exact when the dense Hessian fits comfortably, lanczos if not; the result
    says which and why), or a backend registered by a plugin.

    ``model`` and ``data`` may be registry names (``"mlp"``, ``"mnist"``) with
    ``model_args``/``data_args``.  Remaining ``options`` go to the curvature
    operator (:class:`~spectra.operators.curvature.CurvatureOperator`:
    ``mode``, ``cache_graph``, ``chunk_size``, ``train_mode``,
    ``check_determinism``, ``reduction``, ``reader``, and a matrix's own, such
    as ``mc_samples``) or to the backend.  Batches may be tuples, dicts
    (Hugging Face: ``model(**inputs)``, target under ``labels``, ``.logits``
    read) or nested structures; ``reader`` (a
    :class:`~spectra.batches.BatchReader`) describes any other convention.

    ``matrix``: ``"hessian"`` (default), ``"ggn"`` (the Gauss-Newton part
    ``G = J^T H_loss J``), ``"residual"`` (``R = H - G``),
    ``"empirical_fisher"`` (mean of per-sample gradient outer products) or
    ``"fisher"``/``"mc_fisher"`` (the Fisher with labels drawn from the
    model, ``mc_samples`` per sample, seeded by ``seed``); see docs/matrices.md.

    ``distributed``: ``"auto"`` (default) runs data-parallel over
    torch.distributed when a multi-rank group is initialised or torchrun
    launched the process (``data`` is then this rank's shard; a registry name
    is loaded and sharded here), ``True`` requires it, ``False`` never; every
    matrix runs data-parallel.  Options ``timeout`` and ``group`` go to the
    reducer (:mod:`spectra.parallel`).

    ``product_dtype``: run the Hessian products in this dtype (``"float32"``
    or ``"float64"``) on a private copy of the model; the model itself is not
    touched.  Float32 products of a float64 model measured 2.2x faster on
    CPU, each with a relative error near 1e-7: far below what an SLQ
    density can resolve, but it limits eigenvalues to about 1e-6 relative.
    The solvers keep their own precision (Lanczos: ``lanczos_dtype``,
    float64 by default; exact: ``eigh`` in float64).  Default: the model's dtype.

    ``progress``: a bar on stderr that counts the Hessian-vector products
    against what the backend expects (``None``, the default: only when stderr
    is a terminal; ``False``: never).

    Names are found in any case: ``method="Exact"``, ``matrix="GGN"``,
    ``loss="MSE"``; the loss ``cross_entropy`` is also ``"ce"``, ``"nll"`` and
    ``"crossentropy"`` (``spectra list losses`` shows every name and alias).

    ``memory_limit`` (bytes; default: the memory free now) bounds the dense
    Hessian of ``exact`` and the Lanczos basis.  When they do not fit,
    ``on_memory="refuse"`` (default) raises
    :class:`~spectra.errors.MemoryBudgetError` before allocating;
    ``on_memory="lanczos"`` runs Lanczos instead of exact, with the low-memory
    engine if the basis does not fit either, and records the switch in
    ``provenance["memory_fallback"]``.
    """
    if on_memory not in ("refuse", "lanczos"):
        raise InvalidInputError(f"on_memory must be 'refuse' or 'lanczos'; got {on_memory!r}")
    model = _resolve_model(model, model_args)
    model_dtype = _float_dtype(model)
    if product_dtype is not None:
        model = _in_dtype(model, product_dtype)
    op_class, op_options, shard = operator_options(matrix, distributed, seed, options)
    data = _resolve_data(data, data_args, shard)
    start = time.perf_counter()
    op = op_class(model, loss, data, params=params, **op_options)
    setup_seconds = time.perf_counter() - start
    guard = getattr(op, "guard", contextlib.nullcontext)
    if getattr(op, "is_distributed", False) and memory_limit is None:
        # every rank must decide alike (auto method, memory checks): use the smallest free memory
        memory_limit = int(op.agree_min(available_memory_bytes(op.device)))

    requested = method
    with guard():  # a failure on one rank, planning included, stops the others (spectra.distributed)
        method, reason, fallback, backend, run_options = _plan(
            op, method, memory_limit=memory_limit, on_memory=on_memory, k=k, which=which, num_probes=num_probes,
            num_steps=num_steps, seed=seed, return_eigenvectors=return_eigenvectors, options=options)
        total = expected_products(backend, op.shape[0], run_options)
        with ProductBar(op, total, f"computing the {_label(matrix)} spectrum ({method})", wanted(progress)) as bar:
            if method == EXTREMES_METHOD and "low_precision" not in options:
                twin = low_precision_twin(op, op_class, model, loss, data, params, op_options)
                # the bar counts the twin's float32 products too, as soon as topk builds it
                run_options["low_precision"] = None if twin is None else (lambda: bar.follow(twin()))
            result = backend.run(op, **run_options)
    if not isinstance(result, SpectrumResult):
        from .plugins import get_entry

        raise PluginError(f"backend {method!r} from plugin {get_entry('backends', method).plugin!r} returned "
                          f"{type(result).__name__}, not a SpectrumResult")
    result.is_exact = bool(getattr(backend, "is_exact", False))  # the backend's own claim, whatever it named itself
    result.num_samples = op.num_samples
    model_spec = getattr(model, "spectra_spec", None)
    result.provenance = {
        **({"model": model_spec} if model_spec else {}),
        "method": result.method,
        "requested_method": requested,
        "auto_reason": reason,
        **op.describe(),
        **result.provenance,
        "seed": seed,
        "on_memory": on_memory,
        "memory_fallback": fallback,
        "num_matvecs": result.num_matvecs,
        "determinism_check_matvecs": op.check_matvecs,
        "model_dtype": None if model_dtype is None else str(model_dtype).replace("torch.", ""),
        "setup_seconds": setup_seconds,
        "wall_seconds": time.perf_counter() - start,
        "versions": versions(),
    }
    return result
