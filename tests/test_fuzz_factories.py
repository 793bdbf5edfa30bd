"""Fuzzing (hypothesis): the command-line parser and the model/dataset factories
either work or raise a spectra error -- never anything else (issue 6)."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spectra
from spectra import cli
from spectra.errors import SpectraError

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values a user could type after key= (already JSON-decoded), biased to the edges:
# zero, negatives, huge numbers, NaN/inf, wrong types, nested lists.
small_ints = st.integers(-3, 40)
huge_ints = st.integers(10**9, 10**20)
values = st.one_of(
    st.none(), st.booleans(), small_ints, huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.sampled_from(["float64", "float32", "relu", "tanh", "train", "test", "."]),
    st.lists(small_ints, max_size=5), st.lists(st.one_of(small_ints, st.text(max_size=2), st.none()), max_size=4),
    st.dictionaries(st.text(max_size=3), small_ints, max_size=2),
)


def kwargs_for(name: str, kind: str):
    from spectra import plugins

    params = [p.split("=")[0] for p in plugins.get_entry(kind, name).parameters]
    keys = st.sampled_from(params + ["bogus"])
    return st.dictionaries(keys, values, max_size=4)


def _is_model(model) -> None:
    assert isinstance(model, torch.nn.Module)


def _is_dataset(data) -> None:
    assert isinstance(data, spectra.Dataset) and len(data) > 0
    assert bool(torch.isfinite(data.X).all())


# kind: (factory, how its error messages start, check of what it returns)
FACTORIES = {
    "models": (spectra.models.create, "model ", _is_model),
    "datasets": (spectra.datasets.load, "dataset ", _is_dataset),
}


@pytest.mark.parametrize("kind,name", [("models", n) for n in ("mlp", "blobnet", "cnn")]
                         + [("datasets", n) for n in ("blobs", "random", "mnist", "digits")])
def test_factories_work_or_raise_spectra_errors(kind, name):
    factory, prefix, check_result = FACTORIES[kind]

    @FUZZ
    @given(kwargs=kwargs_for(name, kind))
    def check(kwargs):
        try:
            made = factory(name, **kwargs)
        except SpectraError as exc:
            assert str(exc).startswith(prefix)
            return
        check_result(made)

    check()


@FUZZ
@given(text=st.text(max_size=30))
def test_key_value_parser_works_or_raises_spectra_error(text):
    try:
        key, _ = cli.parse_key_value(text, "--model-arg")
    except SpectraError as exc:
        assert "--model-arg" in str(exc)
        return
    assert key.isidentifier()


TOKENS = ["analyze", "list", "show", "demo", "models", "plugins", "--model", "--dataset", "--model-arg",
          "--dataset-arg", "--k", "--which", "--method", "--loss", "--seed", "--dtype", "--train", "--lr",
          "--out", "--force", "--quiet", "--json", "--probes", "mlp", "blobs", "exact", "both", "mse", "sgd",
          "hidden=3", "n=5", "sizes=[2,2]", "x=[", "=", "-1", "0", "1e-3", "nan", "float16", ""]


@FUZZ
@given(argv=st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=6)), max_size=9))
def test_command_line_exits_0_or_2_with_one_line(argv):
    # The heavy handlers are replaced by stubs that do the argument work only
    # (key=value parsing); `list` runs for real.  Everything else is main()'s.
    def stub(args: argparse.Namespace) -> int:
        cli.collect_pairs(getattr(args, "model_arg", None), "--model-arg")
        cli.collect_pairs(getattr(args, "dataset_arg", None), "--dataset-arg")
        return 0

    commands = (cli.analyze, cli.show, cli.demo)  # each command module's run() is its handler
    saved = [command.run for command in commands]
    err, out = io.StringIO(), io.StringIO()
    try:
        for command in commands:
            command.run = stub
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # argparse's --help / --version (abbreviations count)
                code = exc.code
                assert code == 0 and out.getvalue().startswith(("usage: spectra", "spectra "))
    finally:
        for command, run in zip(commands, saved):
            command.run = run
    assert code in (0, 2)
    if code == 2:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spectra: error: "), err.getvalue()


@FUZZ
@given(name=st.one_of(st.text(max_size=10), st.sampled_from(["exact", "arpack", "lanczos"])))
def test_backend_lookup_works_or_raises_spectra_error(name):
    try:
        backend = spectra.backends.get(name)
    except SpectraError:
        return
    assert callable(backend.run)
