"""Built-in models: ``mlp``, ``blobnet`` and ``cnn``.

Every factory takes ``dtype`` (default ``None`` = float64, spectra's default
for exact spectra, the same in Python and the CLI; see :mod:`spectra.precision`) and
``seed`` (default 0: the same arguments give the same initial weights; ``None``
draws from torch's global generator).  Seeding never disturbs the caller's
global torch RNG state.

>>> import spectra
>>> net = spectra.models.create("blobnet", hidden=6)
>>> sum(p.numel() for p in net.parameters())
74
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from spectra.errors import InvalidInputError
from spectra.hookspecs import hookimpl

from spectra.validation import check_allocation, check_bool, check_choice, check_int, check_seed, resolve_dtype

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
_MAX_WIDTH = 10**7  # larger layers are typos, not models


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Initialise under ``seed`` without touching the global RNG (``None``: use it)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_seed(seed))
        yield


def _check_sizes(sizes: Any, what: str = "sizes") -> list[int]:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise InvalidInputError(f"{what} must be a list of layer widths such as [784, 10, 10]; got {sizes!r}")
    if len(sizes) < 2:
        raise InvalidInputError(f"{what} needs at least an input and an output width; got {list(sizes)!r}")
    return [check_int(f"{what}[{i}]", s, 1, _MAX_WIDTH) for i, s in enumerate(sizes)]


def _build_mlp(sizes: list[int], activation: str, bias: bool, dtype: torch.dtype) -> nn.Sequential:
    num_params = sum(a * b + (b if bias else 0) for a, b in zip(sizes[:-1], sizes[1:]))
    check_allocation(num_params * torch.empty((), dtype=dtype).element_size(), f"an MLP with sizes {sizes}")
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        layers[f"fc{i}"] = nn.Linear(a, b, bias=bias, dtype=dtype)
        if i < len(sizes) - 1:
            layers[f"act{i}"] = _ACTIVATIONS[activation]()
    return nn.Sequential(layers)


def mlp(
    sizes: Sequence[int],
    activation: str = "relu",
    bias: bool = True,
    dtype: Any = None,
    seed: int | None = 0,
) -> nn.Module:
    """Fully connected net ``sizes[0] -> ... -> sizes[-1]``; inputs are flattened first.

    ``activation``: ``relu``, ``tanh`` or ``sigmoid`` between layers (none after
    the last).  ``[784, k, 10]`` is the paper's MNIST net, with
    ``(784+1)*k + (k+1)*10`` parameters.
    """
    sizes = _check_sizes(sizes)
    activation = check_choice("activation", activation, tuple(_ACTIVATIONS))
    bias = check_bool("bias", bias)
    dtype = resolve_dtype(dtype)
    with _seeded(seed):
        return _build_mlp(sizes, activation, bias, dtype)


def blobnet(hidden: int = 6, dtype: Any = None, seed: int | None = 0) -> nn.Module:
    """The paper's 2-h-h-2 ReLU net for two Gaussian blobs: ``h**2 + 6*h + 2`` parameters.

    ``hidden`` = 2, 6, 10, 14, 18 gives 18, 74, 162, 282, 434 parameters.
    """
    hidden = check_int("hidden", hidden, 1, 10**5)
    dtype = resolve_dtype(dtype)
    with _seeded(seed):
        return _build_mlp([2, hidden, hidden, 2], "relu", True, dtype)


def cnn(
    num_classes: int = 10,
    channels: Sequence[int] = (4, 8),
    kernel_size: int = 5,
    in_channels: int = 1,
    image_size: int = 28,
    activation: str = "relu",
    dtype: Any = None,
    seed: int | None = 0,
) -> nn.Module:
    """A small CNN for ``[N, in_channels, image_size, image_size]`` images.

    Each entry of ``channels`` adds conv(kernel_size, no padding) -> activation
    -> 2x2 max-pool; a linear layer maps to ``num_classes``.  The default (MNIST,
    1x28x28) has 2,202 parameters.
    """
    num_classes = check_int("num_classes", num_classes, 1, _MAX_WIDTH)
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not 1 <= len(channels) <= 6:
        raise InvalidInputError(f"channels must be a list of 1 to 6 channel counts such as [4, 8]; got {channels!r}")
    channels = [check_int(f"channels[{i}]", c, 1, 4096) for i, c in enumerate(channels)]
    kernel_size = check_int("kernel_size", kernel_size, 1, 64)
    in_channels = check_int("in_channels", in_channels, 1, 4096)
    image_size = check_int("image_size", image_size, 1, 4096)
    activation = check_choice("activation", activation, tuple(_ACTIVATIONS))
    dtype = resolve_dtype(dtype)

    side, num_params, prev = image_size, 0, in_channels
    for c in channels:
        side = (side - kernel_size + 1) // 2
        if side < 1:
            raise InvalidInputError(
                f"a {image_size}x{image_size} image is too small for {len(channels)} conv+pool stages "
                f"with kernel_size={kernel_size}; use fewer channels entries or a smaller kernel"
            )
        num_params += prev * c * kernel_size**2 + c
        prev = c
    features = prev * side * side
    num_params += features * num_classes + num_classes
    check_allocation(num_params * torch.empty((), dtype=dtype).element_size(), "this CNN")

    with _seeded(seed):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        prev = in_channels
        for i, c in enumerate(channels, start=1):
            layers[f"conv{i}"] = nn.Conv2d(prev, c, kernel_size, dtype=dtype)
            layers[f"act{i}"] = _ACTIVATIONS[activation]()
            layers[f"pool{i}"] = nn.MaxPool2d(2)
            prev = c
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(features, num_classes, dtype=dtype)
        return nn.Sequential(layers)


@hookimpl
def spectra_register_models(registry: Any) -> None:
    registry.register("mlp", mlp, "fully connected net, sizes=[in, hidden..., out]; flattens image inputs")
    registry.register("blobnet", blobnet, "the paper's 2-h-h-2 ReLU net for the blobs data (h^2+6h+2 params)")
    registry.register("cnn", cnn, "small CNN for 1x28x28 images (conv-pool x2 + linear, 2,202 params)")
