"""The ``spectra`` command: end to end in subprocesses (few, a few seconds each) and in-process.

Subprocess tests check what a user sees: exit codes, one-line errors on
stderr, no tracebacks, files written.  In-process tests (``cli.main``) cover
the many small cases cheaply.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import spectra
from spectra import cli, pipeline
from spectra._io import OWNER
from spectra.errors import InvalidInputError


SMALL = ["--model", "blobnet", "--model-arg", "hidden=2", "--dataset", "blobs", "--dataset-arg", "n=50"]


def _cli_command(*args: str) -> tuple[list[str], dict[str, str]]:
    # one torch thread: these nets are tiny, and spare threads crawl when the machine is busy
    return [sys.executable, "-m", "spectra", *args], {**os.environ, "OMP_NUM_THREADS": "1"}


# Every subprocess of this module, started together once (they mostly wait on
# imports, so running them side by side halves the wall time); each test
# then reads its own.
ERROR_CASES = {
    "unknown-model": (["analyze", "--model", "resnet", "--dataset", "blobs"],
                      ["unknown model 'resnet'", "known models: blobnet, cnn, mlp"]),
    "bad-model-arg": (["analyze", "--model", "mlp", "--model-arg", "sizes=[784,10", "--dataset", "mnist"],
                      ["--model-arg sizes=[784,10", "not valid JSON"]),
    "shape-mismatch": (["analyze", "--model", "blobnet", "--dataset", "mnist", "--dataset-arg", "n=20"],
                       ["model 'blobnet' does not fit dataset 'mnist'", "[n, 1, 28, 28]",
                        "takes 2 input features"]),
}
E2E_ARGS = [*SMALL, "--train", "gd", "--lr", "0.5", "--max-steps", "30", "--method", "exact", "--seed", "3"]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    jobs = {"e2e": (["analyze", *E2E_ARGS, "--out", "run", "--quiet"], base / "e2e"),
            "demo": (["demo", "--out", "demo", "--quiet"], base / "demo")}
    for name, (args, _) in ERROR_CASES.items():
        jobs[name] = ([*args, "--out", "o"], base / name)
    procs = {}
    for name, (args, cwd) in jobs.items():
        cwd.mkdir()
        cmd, env = _cli_command(*args)
        procs[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        cwd=cwd, env=env), cwd)
    done: dict[str, tuple[subprocess.CompletedProcess, Path]] = {}

    def result(name: str) -> tuple[subprocess.CompletedProcess, Path]:
        if name not in done:
            proc, cwd = procs[name]
            out, err = proc.communicate(timeout=240)
            done[name] = (subprocess.CompletedProcess(proc.args, proc.returncode, out, err), cwd)
        return done[name]

    yield result
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spectra: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# ------------------------------------------------------------ subprocess: happy path
def test_analyze_train_save_show_end_to_end(launched, capsys):
    proc, cwd = launched("e2e")
    out = cwd / "run"
    assert proc.returncode == 0, proc.stderr
    # --quiet: no progress output; 30 steps do not converge, and that warning is not progress
    assert proc.stderr.startswith("spectra: warning: train stopped after max_steps=30") and \
        len(proc.stderr.strip().splitlines()) == 1
    assert "lambda_max" in proc.stdout and "P=18, N=50, method=exact" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(cli.KNOWN_OUTPUTS)
    for png in (cli.SPECTRUM_PNG, cli.TRAINING_PNG):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "result.json").read_text())
    assert manifest["method"] == "exact" and manifest["num_params"] == 18 and manifest["num_samples"] == 50
    assert {"lambda_max", "lambda_min", "num_negative"} <= set(manifest["summary"])
    prov = manifest["provenance"]
    assert prov["model"] == {"name": "blobnet", "arguments": {"hidden": 2, "dtype": "float64", "seed": 3},
                             "plugin": "spectra.default_plugins.models"}
    assert prov["data"]["name"] == "blobs" and prov["data"]["seed"] == 3
    assert prov["training"]["steps_taken"] == 30 and prov["training"]["optimizer"] == "gd"

    # the same computation through the Python API gives the same eigenvalues
    model = spectra.models.create("blobnet", hidden=2, dtype="float64", seed=3)
    data = spectra.datasets.load("blobs", n=50, dtype="float64", seed=3)
    spectra.train(model, data, optimizer="gd", lr=0.5, grad_tol=1e-4, max_steps=30, seed=3)
    ref = spectra.analyze(model, data, method="exact")
    np.testing.assert_allclose(spectra.load(out).eigenvalues, ref.eigenvalues, rtol=0, atol=1e-12)

    # show (in-process: the subprocess path is the same main()) prints without recomputing, and reading
    # never writes into the result folder; --plots redraws the plots elsewhere
    (out / cli.SPECTRUM_PNG).unlink()
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    code, shown, _ = main_capture(capsys, "show", str(out))
    assert code == 0 and "lambda_max" in shown and "trained 30 steps" in shown
    assert f"{ref.summary()['lambda_max']:.6g}" in shown
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    code, shown, _ = main_capture(capsys, "show", str(out), "--plots", str(out.parent / "plots"))
    assert code == 0 and f"drew {cli.SPECTRUM_PNG}, {cli.TRAINING_PNG} in {out.parent / 'plots'}/" in shown
    assert sorted(p.name for p in (out.parent / "plots").iterdir()) == [cli.SPECTRUM_PNG, cli.TRAINING_PNG]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    code, _, err = main_capture(capsys, "show", str(out), "--plots", str(out))
    assert code == 2 and "is the result folder itself; spectra show never writes there" in err

    before = (out / "result.json").read_bytes()
    code, _, err = main_capture(capsys, "analyze", *SMALL, "--method", "exact", "--out", str(out), "--quiet")
    assert code == 2 and err.startswith("spectra: error: ") and "already holds a result; pass --force" in err
    assert (out / "result.json").read_bytes() == before


def test_demo_end_to_end(launched):
    proc, tmp_path = launched("demo")
    assert proc.returncode == 0, proc.stderr
    assert "P=74" in proc.stdout and "num_outliers" in proc.stdout
    result = spectra.load(tmp_path / "demo")
    assert result.method == "exact" and result.eigenvalues.shape == (74,)
    assert result.provenance["training"]["converged"] is True


# ------------------------------------------------------------ subprocess: error paths
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_cli_error_paths_in_a_subprocess(launched, case):
    proc, cwd = launched(case)
    assert_one_line_error(proc, *ERROR_CASES[case][1])
    assert list(cwd.iterdir()) == []  # no output folder, no partial files anywhere


# ------------------------------------------------------------ in-process
def main_capture(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("kind", ["models", "datasets", "backends", "plugins"])
def test_list(capsys, kind):
    code, out, err = main_capture(capsys, "list", kind)
    assert code == 0 and err == ""
    expected = {"models": ["mlp", "blobnet", "cnn", "parameters: sizes"],
                "datasets": ["blobs", "random", "mnist", "digits", "n=1000"],
                "backends": ["exact", "arpack", "lanczos"],
                "plugins": ["spectra.default_plugins.models", "[builtin]", "ok"]}[kind]
    for word in expected:
        assert word in out
    code, out, _ = main_capture(capsys, "list", kind, "--json")
    rows = json.loads(out)
    assert code == 0 and isinstance(rows, list) and all("name" in r for r in rows)


def test_list_everything_and_help(capsys):
    code, out, _ = main_capture(capsys, "list")
    assert code == 0 and "models (" in out and "datasets (" in out and "backends (" in out
    for argv in (["--help"], ["analyze", "--help"], ["show", "--help"], ["demo", "--help"], ["list", "--help"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 0
        assert "usage: spectra" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        ([], "the following arguments are required: COMMAND"),
        (["analyze", "--dataset", "blobs"], "the following arguments are required: --model"),
        (["analyze", *SMALL, "--k", "ten"], "argument --k: invalid int value: 'ten'"),
        (["analyze", *SMALL, "--loss", "hinge"], "unknown loss 'hinge'; known losses: cross_entropy, mse"),
        (["analyze", *SMALL, "--loss", "cross-entropy"], "did you mean 'cross_entropy'?"),
        (["analyze", *SMALL, "--matrix", "hesian"], "unknown matrix 'hesian'; known matrices: empirical_fisher, "
                                                    "ggn, hessian, mc_fisher, residual; did you mean 'hessian'?"),
        (["analyze", *SMALL, "--matrix", "ggn", "--mc-samples", "3"],
         "--mc-samples applies to a matrix that draws targets (mc_fisher); --matrix 'ggn' draws none"),
        (["analyze", *SMALL, "--matrix", "fisher", "--mc-samples", "0"], "--mc-samples must be a positive integer"),
        (["list", "model"], "argument KIND: invalid choice: 'model'"),
        (["analyze", *SMALL, "--model-arg", "hidden"], "--model-arg 'hidden' must look like key=value"),
        (["analyze", *SMALL, "--model-arg", "hidden=3"], "--model-arg hidden is given twice"),
        (["analyze", *SMALL, "--model-arg", "=3"], "must look like key=value"),
        (["analyze", *SMALL, "--model-arg", "depth=3"], "model 'blobnet' has no argument 'depth'; it accepts: hidden=6"),
        (["analyze", *SMALL, "--dataset-arg", "std=-1"], "dataset 'blobs': std must be > 0"),
        (["analyze", *SMALL, "--dataset-arg", "std={\"a\":"], "not valid JSON"),
        (["analyze", *SMALL, "--method", "eigen"], "unknown backend 'eigen'; known backends: arpack, exact, lanczos"),
        (["analyze", *SMALL, "--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["analyze", *SMALL, "--train", "sgd"], "needs a batch_size"),
        (["analyze", *SMALL, "--method", "arpack", "--k", "40"], "k"),
        (["show", "/nonexistent/spectra/result"], "holds no spectra result"),
        # characters that str.splitlines breaks on come back escaped (found by the fuzz test)
        (["show", "analyze", "\x1e"], "unrecognized arguments: \\x1e"),
        (["show", "a\u2028b\rc"], "a\\u2028b\\rc"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(capsys, argv, fragment):
    code, out, err = main_capture(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spectra: error: ") and fragment in lines[0], err


@pytest.mark.parametrize("mc_samples", [1, 3])
def test_mc_samples_reaches_the_monte_carlo_fisher_and_equals_python(capsys, tmp_path, mc_samples):
    """--matrix mc_fisher --mc-samples M --seed S is analyze(matrix="mc_fisher", mc_samples=M, seed=S)."""
    out = tmp_path / "run"
    code, _, err = main_capture(capsys, "analyze", *SMALL, "--matrix", "mc_fisher", "--mc-samples", str(mc_samples),
                                "--seed", "2", "--method", "exact", "--quiet", "--out", str(out))
    assert code == 0, err
    saved = spectra.load(out)
    assert saved.provenance["matrix"] == "mc_fisher" and saved.provenance["mc_samples"] == mc_samples
    assert saved.provenance["mc_seed"] == 2
    python = spectra.analyze("blobnet", "blobs", model_args={"hidden": 2, "seed": 2}, data_args={"n": 50, "seed": 2},
                             matrix="mc_fisher", mc_samples=mc_samples, seed=2, method="exact")
    np.testing.assert_allclose(saved.eigenvalues, python.eigenvalues, rtol=0,
                               atol=1e-12 * float(np.abs(python.eigenvalues).max()))


def test_labels_that_do_not_fit_the_outputs_are_refused_with_shapes(capsys):
    # 3 outputs but blobs labels are 0/1 -> fine; 1 output -> labels out of range
    code, _, err = main_capture(capsys, "analyze", "--model", "mlp", "--model-arg", "sizes=[2,1]",
                                "--dataset", "blobs", "--dataset-arg", "n=10", "--quiet")
    assert code == 2 and "outputs [n, 1]" in err and "labels out of range" in err


@pytest.mark.parametrize(
    "text, expected",
    [
        ("sizes=[784,10,10]", ("sizes", [784, 10, 10])),
        ("hidden=6", ("hidden", 6)),
        ("std=0.5", ("std", 0.5)),
        ("bias=false", ("bias", False)),
        ("activation=tanh", ("activation", "tanh")),
        ("path=/data/mnist", ("path", "/data/mnist")),
        ("dtype=float32", ("dtype", "float32")),
        ("n=null", ("n", None)),
        ("name=\"quoted\"", ("name", "quoted")),
        (" seed = 4 ", ("seed", 4)),
    ],
)
def test_key_value_parsing(text, expected):
    assert cli.parse_key_value(text, "--model-arg") == expected


@pytest.mark.parametrize("text", ["novalue", "=3", "a-b=3", "k=", "sizes=[1,", "x={\"a\""])
def test_malformed_key_value(text):
    with pytest.raises(InvalidInputError, match="--model-arg"):
        cli.parse_key_value(text, "--model-arg")


def test_out_dir_rules(tmp_path, capsys):
    base = ["analyze", *SMALL, "--method", "exact", "--quiet"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, _, err = main_capture(capsys, *base, "--out", str(foreign))
    assert code == 2 and "exists and is not empty" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main_capture(capsys, *base, "--out", str(empty))[0] == 0
    assert (empty / "result.json").exists()

    # --force replaces a trained result by an untrained one: stale training files go, foreign files stay
    run = tmp_path / "run"
    assert main_capture(capsys, *base, "--train", "gd", "--max-steps", "3", "--out", str(run))[0] == 0
    (run / "notes.txt").write_text("mine")
    assert (run / cli.TRAINING_JSON).exists()
    assert main_capture(capsys, *base, "--method", "lanczos", "--probes", "2", "--steps", "5",
                        "--out", str(run), "--force")[0] == 0
    names = sorted(p.name for p in run.iterdir())
    assert names == sorted(["notes.txt", "result.json", "arrays.npz", cli.SPECTRUM_PNG])
    assert spectra.load(run).method == "lanczos"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_a_failure_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    def broken_plot(fig, path):
        path.write_bytes(b"half")
        raise InvalidInputError("plotting failed")

    monkeypatch.setattr(pipeline, "save_figure", broken_plot)
    code, _, err = main_capture(capsys, "analyze", *SMALL, "--method", "exact", "--quiet",
                                "--out", str(tmp_path / "out"))
    assert code == 2 and "plotting failed" in err
    assert list(tmp_path.iterdir()) == []


def test_dtype_and_seed_defaults_reach_the_factories(tmp_path, capsys):
    out = tmp_path / "r"
    code, _, _ = main_capture(capsys, "analyze", *SMALL, "--dtype", "float32", "--seed", "5",
                              "--model-arg", "seed=1", "--method", "exact", "--quiet", "--out", str(out))
    assert code == 0
    prov = spectra.load(out).provenance
    assert prov["dtype"] == "float32"
    assert prov["model"]["arguments"] == {"hidden": 2, "seed": 1, "dtype": "float32"}  # explicit seed wins
    assert prov["dataset_arguments"] == {"n": 50, "dtype": "float32", "seed": 5}


def test_plugin_errors_are_reported_by_name(capsys):
    from spectra import plugins

    def hook(registry):
        registry.register("crashy", lambda: 1 / 0)

    mod = type(sys)("crashy_plugin")
    mod.spectra_register_models = spectra.hookimpl(hook)
    plugins.reset()
    plugins.register_plugin(mod, "crashy-plugin")
    try:
        code, _, err = main_capture(capsys, "analyze", "--model", "crashy", "--dataset", "blobs", "--quiet")
    finally:
        plugins.reset()
    assert code == 2
    assert err.strip() == ("spectra: error: model 'crashy' from plugin 'crashy-plugin' failed: "
                           "ZeroDivisionError: division by zero")


def test_plugin_warnings_are_one_line(capsys, install_distribution):
    install_distribution("ghost-dist", {"ghost": "no_such_spectra_plugin_module"})
    code, out, err = main_capture(capsys, "list", "plugins")
    assert code == 0 and "ghost" in out and "FAILED" in out
    assert err.strip().splitlines() == [
        "spectra: warning: plugin 'ghost': failed to import 'no_such_spectra_plugin_module' (entry point): "
        "ModuleNotFoundError: No module named 'no_such_spectra_plugin_module'"]


def test_progress_bars_go_to_stderr_on_a_terminal_unless_quiet(capsys, monkeypatch):
    argv = ["analyze", *SMALL, "--train", "gd", "--max-steps", "5", "--method", "exact"]
    code, out, err = main_capture(capsys, *argv)  # captured stderr is no terminal: status lines only
    assert code == 0 and "training (gd)" not in err and "trained 5 steps" in err
    monkeypatch.setattr(cli.analyze, "progress_enabled", lambda args: not args.quiet)
    code, out, err = main_capture(capsys, *argv)
    assert code == 0 and "training (gd)" in err and "computing the Hessian spectrum" in err
    assert "training (gd)" not in out and "lambda_max" in out
    code, out, err = main_capture(capsys, *argv, "--quiet")
    assert code == 0 and err == "" and "lambda_max" in out


def test_stages_of_dead_runs_are_swept(tmp_path, capsys):
    """A SIGKILLed run leaves its staging folder; the next run into the same --out removes it."""
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)  # that process has exited
    host = socket.gethostname()
    # (stage name, owner line or None, swept?)
    stages = [
        (".out.k1ll3d.partial", f"{dead_pid} {host}", True),
        (".out.l1ve.partial", f"{os.getpid()} {host}", False),       # a run still going
        (".out.0ther.partial", f"{dead_pid} elsewhere", False),      # another host's run: not ours to judge
        (".out.n0own.partial", None, False),                         # no owner file: left alone
        (".other.k1ll3d.partial", f"{dead_pid} {host}", False),      # a stage of another --out
    ]
    for name, owner, _ in stages:
        (tmp_path / name).mkdir()
        (tmp_path / name / "arrays.npz").write_bytes(b"half-written")
        if owner is not None:
            (tmp_path / name / OWNER).write_text(owner + "\n")
    code, _, _ = main_capture(capsys, "analyze", *SMALL, "--method", "exact", "--quiet", "--out", str(tmp_path / "out"))
    assert code == 0
    for name, _, swept in stages:
        assert (tmp_path / name).exists() is not swept, name
    assert (tmp_path / "out" / "result.json").exists() and not (tmp_path / "out" / OWNER).exists()
