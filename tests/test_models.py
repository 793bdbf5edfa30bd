"""Built-in models: parameter counts against closed forms, shapes, seeding, dtype, bad arguments."""

from __future__ import annotations

import pytest
import torch

import spectra
from spectra.errors import InvalidInputError, MemoryBudgetError, SpectraError


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("hidden, expected", [(2, 18), (6, 74), (10, 162), (14, 282), (18, 434)])
def test_blobnet_parameter_counts_match_the_paper(hidden, expected):
    net = spectra.models.create("blobnet", hidden=hidden)
    assert num_params(net) == expected == hidden**2 + 6 * hidden + 2
    assert net(torch.zeros(5, 2, dtype=torch.float64)).shape == (5, 2)
    assert sum(isinstance(m, torch.nn.ReLU) for m in net.modules()) == 2


@pytest.mark.parametrize("k", [1, 10, 30])
def test_mlp_784_k_10_parameter_count(k):
    net = spectra.models.create("mlp", sizes=[784, k, 10])
    assert num_params(net) == (784 + 1) * k + (k + 1) * 10
    # image-shaped inputs are flattened
    assert net(torch.rand(3, 1, 28, 28, dtype=torch.float64)).shape == (3, 10)


@pytest.mark.parametrize(
    "kwargs, count, act",
    [
        ({"sizes": [4, 3, 2]}, 4 * 3 + 3 + 3 * 2 + 2, torch.nn.ReLU),
        ({"sizes": [4, 3, 2], "bias": False}, 4 * 3 + 3 * 2, torch.nn.ReLU),
        ({"sizes": [4, 3, 3, 2], "activation": "tanh"}, 15 + 12 + 8, torch.nn.Tanh),
        ({"sizes": [4, 2], "activation": "TANH"}, 10, None),  # no hidden layer, no activation
    ],
)
def test_mlp_variants(kwargs, count, act):
    net = spectra.models.create("mlp", **kwargs)
    assert num_params(net) == count
    acts = [m for m in net.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.Tanh, torch.nn.Sigmoid))]
    assert len(acts) == len(kwargs["sizes"]) - 2
    if act is not None:
        assert all(isinstance(a, act) for a in acts)
    # the last layer has no activation after it: outputs can be negative
    assert list(net.children())[-1].__class__ is torch.nn.Linear


def test_cnn_is_small_and_fits_mnist_images():
    net = spectra.models.create("cnn")
    assert num_params(net) == (1 * 4 * 25 + 4) + (4 * 8 * 25 + 8) + (8 * 4 * 4 * 10 + 10) == 2202
    assert net(torch.rand(2, 1, 28, 28, dtype=torch.float64)).shape == (2, 10)
    wide = spectra.models.create("cnn", channels=[2], kernel_size=3, image_size=8, num_classes=3)
    assert wide(torch.rand(2, 1, 8, 8, dtype=torch.float64)).shape == (2, 3)
    assert num_params(wide) == (9 * 2 + 2) + (2 * 3 * 3 * 3 + 3)


@pytest.mark.parametrize("name, kwargs", [("mlp", {"sizes": [5, 4, 3]}), ("blobnet", {"hidden": 3}), ("cnn", {})])
def test_seed_gives_the_same_weights_and_leaves_global_rng_alone(name, kwargs):
    state = torch.get_rng_state()
    a = spectra.models.create(name, seed=7, **kwargs)
    b = spectra.models.create(name, seed=7, **kwargs)
    c = spectra.models.create(name, seed=8, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)
    # seed=None draws from the global generator
    torch.manual_seed(3)
    d = spectra.models.create(name, seed=None, **kwargs)
    torch.manual_seed(3)
    e = spectra.models.create(name, seed=None, **kwargs)
    assert all(torch.equal(p, q) for p, q in zip(d.parameters(), e.parameters()))


def test_dtype_default_is_float64_and_can_be_set():
    # float64 whatever torch's default (spectra.precision.DEFAULT_DTYPE: Python and the CLI agree)
    assert next(spectra.models.create("blobnet").parameters()).dtype == torch.float64
    for spec, dtype in [("float64", torch.float64), ("double", torch.float64), (torch.float32, torch.float32)]:
        assert next(spectra.models.create("cnn", dtype=spec).parameters()).dtype == dtype
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        assert next(spectra.models.create("mlp", sizes=[2, 2]).parameters()).dtype == torch.float64
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("mlp", {"sizes": [784]}, "at least an input and an output"),
        ("mlp", {"sizes": "784,10"}, "sizes must be a list"),
        ("mlp", {"sizes": [784, 0, 10]}, r"sizes\[1\] must be >= 1"),
        ("mlp", {"sizes": [784, 2.5, 10]}, r"sizes\[1\] must be an integer"),
        ("mlp", {"sizes": [2, True]}, r"sizes\[1\] must be an integer"),
        ("mlp", {"sizes": [2, 2], "activation": "gelu"}, "activation must be one of relu, tanh, sigmoid"),
        ("mlp", {"sizes": [2, 2], "bias": "yes"}, "bias must be true or false"),
        ("mlp", {"sizes": [2, 2], "dtype": "int64"}, "dtype must be one of"),
        ("mlp", {"sizes": [2, 2], "dtype": torch.int64}, "floating-point"),
        ("mlp", {"sizes": [2, 2], "seed": -1}, "seed must be >= 0"),
        ("blobnet", {"hidden": 0}, "hidden must be >= 1"),
        ("blobnet", {"hidden": "6"}, "hidden must be an integer"),
        ("cnn", {"image_size": 8}, "too small"),
        ("cnn", {"channels": []}, "channels must be a list"),
        ("cnn", {"channels": [4, -1]}, r"channels\[1\] must be >= 1"),
    ],
)
def test_bad_arguments_name_the_argument(name, kwargs, match):
    with pytest.raises(InvalidInputError, match=match) as info:
        spectra.models.create(name, **kwargs)
    assert str(info.value).startswith(f"model {name!r}")


def test_huge_model_is_refused_before_allocating():
    with pytest.raises(MemoryBudgetError, match="GiB"):
        spectra.models.create("mlp", sizes=[10**7, 10**7])
    assert issubclass(MemoryBudgetError, SpectraError)
