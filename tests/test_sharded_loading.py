"""Sharded loading: ``spectra.datasets.load(name, shard=(rank, world))`` and its use by the command.

A rank's shard must be exactly ``spectra.distributed.shard(whole, rank, world)``
(float64, compared with ``torch.equal``: same rows, same order, same ``info``
with its ``"shard"`` record), for datasets whose loader builds the shard itself
and for those that fall back to load-whole-then-cut.  What a shard holds is
measured by tensor storage size (it must own only its rows), and for ``random``
by the peak of numpy's allocations (tracemalloc), not by timing.
"""

from __future__ import annotations

import contextlib
import sys
import tracemalloc

import pytest
import torch

import spectra
from spectra import api, cli, plugins
from spectra import distributed as sd
from spectra.default_plugins import datasets as builtin_datasets
from spectra.errors import InvalidInputError, PluginError
from spectra.ranks import Ranks, check_tiling

# (dataset, kwargs, world): uneven and even cuts, one sample per rank, a rank count equal to n
CASES = [
    ("blobs", {"n": 11, "std": 0.5, "seed": 2}, 3),
    ("blobs", {"n": 2}, 2),
    ("blobs", {"n": 40, "seed": 1}, 1),
    ("random", {"n": 7, "num_classes": 3, "seed": 4}, 4),
    ("random", {"n": 5}, 5),
    ("random", {"n": 9, "seed": 2**40}, 2),
    ("mnist", {"n": 9, "seed": 3}, 2),
    ("mnist", {"n": 13}, 4),
    ("digits", {"n": None}, 3),
    ("digits", {"n": 10, "seed": 1}, 7),
]
PER_SAMPLE = {"blobs": 2, "random": 784, "mnist": 784, "digits": 64}


def _load(name, kwargs, **extra):
    return spectra.datasets.load(name, dtype="float64", **kwargs, **extra)


def _owns_only_its_rows(t: torch.Tensor) -> bool:
    """True when ``t`` is not a view into a larger buffer (the whole dataset)."""
    return t.untyped_storage().nbytes() == t.numel() * t.element_size()


@pytest.mark.parametrize("name,kwargs,world", CASES, ids=lambda v: str(v))
def test_builtin_shards_equal_the_cut_of_the_whole(name, kwargs, world):
    assert spectra.datasets.loads_shards(name)
    whole = _load(name, kwargs)
    parts = [_load(name, kwargs, shard=(r, world)) for r in range(world)]
    # together: the whole dataset, exactly, in order
    assert torch.equal(torch.cat([p.X for p in parts]), whole.X)
    assert torch.equal(torch.cat([p.y for p in parts]), whole.y)
    for r, part in enumerate(parts):
        want = sd.shard(whole, r, world)
        assert torch.equal(part.X, want.X) and part.X.dtype == torch.float64
        assert torch.equal(part.y, want.y) and part.y.dtype == want.y.dtype
        assert part.info == want.info and part.name == want.name
        assert part.info["shard"] == sd.shard_record(len(whole), r, world)
        # it holds its own rows only: X has (stop - start) samples' numbers and no larger buffer behind it
        rows = part.info["shard"]["stop"] - part.info["shard"]["start"]
        assert part.X.numel() == rows * PER_SAMPLE[name]
        assert _owns_only_its_rows(part.X) and _owns_only_its_rows(part.y)


def test_random_skips_the_other_rows_pixels_on_this_numpy():
    assert builtin_datasets._can_skip_pixels()  # else the shards are cut from the whole draw (still exact)


def test_random_shards_cut_from_the_whole_draw_when_the_generator_cannot_skip(monkeypatch):
    whole = _load("random", {"n": 7, "seed": 5})
    monkeypatch.setattr(builtin_datasets, "_can_skip_pixels", lambda: False)
    for r in range(3):
        part, want = _load("random", {"n": 7, "seed": 5}, shard=(r, 3)), sd.shard(whole, r, 3)
        assert torch.equal(part.X, want.X) and torch.equal(part.y, want.y) and part.info == want.info


def _numpy_peak(fn) -> int:
    """Peak bytes numpy allocated while ``fn`` ran (numpy reports its buffers to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_quarter_shard_of_random_draws_about_a_quarter_of_the_memory():
    n = 2000  # whole: 1.6 MB of uint8 pixels and 12.5 MB of float64 per copy
    whole = _numpy_peak(lambda: _load("random", {"n": n}))
    quarter = _numpy_peak(lambda: _load("random", {"n": n}, shard=(3, 4)))
    assert whole > n * 784 * 8  # at least the whole float64 image array
    assert quarter < 0.3 * whole, (quarter, whole)


# ---------------------------------------------------------------- plugins that do not (or wrongly) opt in
def _register(monkeypatch_name: str, factory) -> None:
    def hook(registry):
        registry.register(monkeypatch_name, factory, "test dataset")

    mod = type(sys)(f"{monkeypatch_name}_plugin")
    mod.spectra_register_datasets = spectra.hookimpl(hook)
    plugins.register_plugin(mod, f"{monkeypatch_name}-plugin")


@pytest.fixture
def fresh_plugins():
    plugins.reset()
    yield
    plugins.reset()


CALLS: list[dict] = []


def plain_blobs(n=10, seed=0, dtype=None):
    """A loader without a ``shard`` keyword: spectra loads it whole and cuts."""
    CALLS.append({"n": n, "seed": seed, "dtype": dtype})
    return builtin_datasets.blobs(n=n, seed=seed, dtype=dtype)


def test_a_dataset_without_shard_is_loaded_whole_cut_and_copied(fresh_plugins):
    _register("plain-blobs", plain_blobs)
    assert not spectra.datasets.loads_shards("plain-blobs")
    whole = spectra.datasets.load("plain-blobs", n=10, seed=3, dtype="float64")
    CALLS.clear()
    for r in range(3):
        part = spectra.datasets.load("plain-blobs", n=10, seed=3, dtype="float64", shard=(r, 3))
        want = sd.shard(whole, r, 3)
        assert torch.equal(part.X, want.X) and torch.equal(part.y, want.y) and part.info == want.info
        assert part.info["arguments"] == {"n": 10, "seed": 3, "dtype": "float64"}  # no "shard" among them
        assert _owns_only_its_rows(part.X)  # a copy: the whole dataset can be freed
    assert CALLS == [{"n": 10, "seed": 3, "dtype": "float64"}] * 3  # the factory never saw a shard


def ignores_shard(n=6, shard=None):
    return builtin_datasets.blobs(n=n)  # the whole dataset, no record


def wrong_rows(n=6, shard=None):
    data = builtin_datasets.blobs(n=n, shard=shard)
    return spectra.Dataset(data.X[:1], data.y[:1], name="x", info=data.info)


@pytest.mark.parametrize("factory", [ignores_shard, wrong_rows])
def test_a_loader_that_takes_shard_but_returns_something_else_is_refused(fresh_plugins, factory):
    _register("liar", factory)
    assert spectra.datasets.loads_shards("liar")
    with pytest.raises(PluginError, match=r"dataset 'liar' from plugin 'liar-plugin' was asked for shard \(1, 2\)"):
        spectra.datasets.load("liar", shard=(1, 2))


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0), "0,2", (0.0, 2), (True, 2), (0, 2, 3), [1], {"a": 1}])
@pytest.mark.parametrize("name", ["blobs", "plain-blobs"])
def test_bad_shards_are_refused_naming_the_dataset(fresh_plugins, name, shard):
    _register("plain-blobs", plain_blobs)
    with pytest.raises(InvalidInputError, match=rf"^dataset '{name}': shard must be \(rank, world\)"):
        spectra.datasets.load(name, n=4, shard=shard)


@pytest.mark.parametrize("name", ["blobs", "plain-blobs"])
def test_a_rank_that_would_get_no_samples_is_refused(fresh_plugins, name):
    _register("plain-blobs", plain_blobs)
    with pytest.raises(InvalidInputError, match=rf"^dataset '{name}': rank 2 of 3 gets no samples: 2 samples"):
        spectra.datasets.load(name, n=2, shard=(2, 3))


@pytest.mark.parametrize("num,world", [(0, 1), (1, 1), (5, 5), (7, 3), (10, 4), (100, 7), (10**12 + 3, 10**6)])
def test_shard_record_matches_shard_sizes(num, world):
    sizes = sd.shard_sizes(num, world) if world <= 1000 else None
    for r in sorted({0, 1 % world, world // 2, world - 1}):
        if sizes is not None and sizes[r] == 0:
            with pytest.raises(InvalidInputError, match="gets no samples"):
                sd.shard_record(num, r, world)
            continue
        rec = sd.shard_record(num, r, world)
        if sizes is not None:
            assert (rec["start"], rec["stop"]) == (sum(sizes[:r]), sum(sizes[:r + 1]))
        base, extra = divmod(num, world)  # closed form: the first `extra` ranks hold one more
        assert rec["stop"] - rec["start"] == base + (r < extra)
        assert rec == {"rank": r, "world": world, "start": rec["start"], "stop": rec["stop"], "num_samples_total": num}


# ---------------------------------------------------------------- the command under torchrun, in-process
class FakeRanks(Ranks):
    """One rank of a pretend torchrun launch: no process group; steps and collectives are local."""

    def __init__(self, rank: int, world: int):
        self.sd, self.owns_group, self.active = sd, False, True
        self.rank, self.world, self.main, self.store = rank, world, rank == 0, None
        self.checked: list[dict] = []

    def step(self, what):
        return contextlib.nullcontext()

    def check_shards(self, record):
        self.checked.append(record)
        total = record["num_samples_total"]
        check_tiling([[total, s["start"], s["stop"]] for s in
                           (sd.shard_record(total, r, self.world) for r in range(self.world))])

    def share_weights(self, model):
        pass


@pytest.fixture
def spies(monkeypatch):
    """Record every datasets.load call and the data the analysis gets; analyse it in this process."""
    seen = {"loads": [], "analysed": []}
    real_load, real_analyze = spectra.datasets.load, api.analyze

    def load(name, **kwargs):
        seen["loads"].append(dict(kwargs))
        return real_load(name, **kwargs)

    def analyze(model, data, **kwargs):
        seen["analysed"].append(data)
        return real_analyze(model, data, **{**kwargs, "distributed": False})

    monkeypatch.setattr(spectra.datasets, "load", load)
    monkeypatch.setattr(api, "analyze", analyze)
    return seen


ANALYZE = ["analyze", "--model", "blobnet", "--model-arg", "hidden=2", "--dataset-arg", "n=11", "--method", "exact"]


def _run(argv, ranks):
    args = cli.build_parser().parse_args(argv)
    args.argv = argv
    return cli.analyze.run(args, ranks)


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_analysis_under_torchrun_loads_only_this_ranks_shard(spies, capsys, rank):
    ranks = FakeRanks(rank, 3)
    assert _run([*ANALYZE, "--dataset", "blobs"], ranks) == 0
    assert spies["loads"] == [{"n": 11, "dtype": "float64", "seed": 0, "shard": (rank, 3)}]
    whole = spectra.datasets.load("blobs", n=11, dtype="float64", seed=0)
    (data,) = spies["analysed"]
    want = sd.shard(whole, rank, 3)
    assert torch.equal(data.X, want.X) and torch.equal(data.y, want.y) and data.info == want.info
    assert ranks.checked == [want.info["shard"]]
    assert "note:" not in capsys.readouterr().err


def test_training_under_torchrun_keeps_the_whole_dataset_then_analyses_the_shard(spies):
    ranks = FakeRanks(1, 2)
    assert _run([*ANALYZE, "--dataset", "blobs", "--train", "gd", "--max-steps", "2", "--quiet"], ranks) == 0
    assert spies["loads"] == [{"n": 11, "dtype": "float64", "seed": 0}]  # no shard: training needs it all
    whole = spectra.datasets.load("blobs", n=11, dtype="float64", seed=0)
    want = sd.shard(whole, 1, 2)
    (data,) = spies["analysed"]
    assert torch.equal(data.X, want.X) and data.info == want.info


def test_a_dataset_without_shard_falls_back_with_a_note_on_rank_0(fresh_plugins, spies, capsys):
    _register("plain-blobs", plain_blobs)
    CALLS.clear()
    assert _run([*ANALYZE, "--dataset", "plain-blobs"], FakeRanks(0, 2)) == 0
    assert CALLS == [{"n": 11, "seed": 0, "dtype": "float64"}]
    err = capsys.readouterr().err.splitlines()
    assert err.count("note: dataset 'plain-blobs' cannot load a shard: every rank loads all 11 samples and keeps "
                     "its part") == 1
    (data,) = spies["analysed"]
    assert data.info["shard"] == sd.shard_record(11, 0, 2) and len(data) == 6


def test_dataset_arg_shard_is_refused(capsys):
    assert cli.main([*ANALYZE, "--dataset", "blobs", "--dataset-arg", "shard=[0,2]", "--quiet"]) == 2
    assert "--dataset-arg shard is not a dataset argument" in capsys.readouterr().err


@pytest.mark.parametrize("rows,problem", [
    ([[5, 0, 3], [5, 3, 5]], None),
    ([[5, 0, 5]], None),
    ([[5, 0, 3], [6, 3, 6]], "different sizes (rank 0: 5, rank 1: 6 samples)"),
    ([[5, 0, 2], [5, 3, 5]], "do not cut the 5 samples in order (rank 0: 0:2, rank 1: 3:5)"),
    ([[5, 0, 3], [5, 3, 4]], "do not cut the 5 samples in order"),
    ([[5, 3, 5], [5, 0, 3]], "do not cut the 5 samples in order"),
])
def test_check_tiling(rows, problem):
    if problem is None:
        check_tiling(rows)
    else:
        with pytest.raises(InvalidInputError) as info:
            check_tiling(rows)
        assert problem in str(info.value)
