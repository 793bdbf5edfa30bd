"""The paper's experiments at the "tiny" scale: structure, robust claims, resume, and fig-8's two paths.

Tolerances: the vectorised and looped fig-8 paths do the same float64
arithmetic in a different order (closed-form batched derivatives vs autograd),
so the top eigenvalues agree to 1e-12 relative and all eigenvalues to 1e-12
absolute (measured <= 2e-15 on these runs), gradient norms to 1e-11 relative
(measured 4e-14); resumed runs must be bit-identical.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch

import spectra
from spectra.errors import InvalidInputError, UnknownNameError
from spectra.experiments import EXPERIMENTS, config, run
from spectra.experiments import _batched as bt
from spectra.experiments._report import load_results



def _check_folder(path, figure):
    res = load_results(path)
    assert res["figure"] == figure and res["scale"] == "tiny" and res["claims"]
    names = {p.name for p in path.iterdir() if p.is_file()}
    assert {"results.json", "report.md"} <= names
    assert any(n.endswith(".png") for n in names) and any(n.endswith(".npz") for n in names)
    for n in names:
        if n.endswith(".npz"):
            with np.load(path / n, allow_pickle=False) as f:
                assert f.files
        if n.endswith(".png"):
            assert (path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (path / "report.md").read_text()
    assert "| topic | paper | measured here | effect size | seeds | test |" in report
    # a verdict names its test and its seeds; every trained run records its convergence
    for c in res["claims"]:
        if c["agrees"] is not None:
            assert c["test"] and c["seeds"] != "", c
    training = res.get("training")
    if training and training.get("fraction") is not None:
        assert training["runs"] == len(training["per_run"]) > 0 and "## Training" in report
        for r in training["per_run"]:
            assert {"converged", "final_grad_norm", "grad_tol"} <= set(r) and isinstance(r["converged"], bool)
    assert not list(path.glob(".*.tmp"))  # no leftovers of atomic writes
    return res


@pytest.mark.parametrize("hidden,expected", [(2, 18), (6, 74), (10, 162), (14, 282), (18, 434)])
def test_blob_nets_have_the_papers_parameter_counts(hidden, expected):
    model = spectra.models.create("blobnet", hidden=hidden)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_fig4_tiny_structure_and_singularity(tmp_path):
    res = run("fig4", tmp_path, scale="tiny", quiet=True)
    _check_folder(tmp_path / "fig4", "fig4")
    m = res["measured"]
    assert [m[f"h{h}"]["num_params"] for h in config("fig4", "tiny")["widths"]] == [18, 74]
    assert res["training"]["fraction"] == 1.0  # separable blobs: every init converges
    # after training most eigenvalues are near zero
    assert np.mean([r["zero_fraction"] for r in m["h6"]["runs"]]) > 0.5
    # the counts are the rounding-aware ones, with the outlier sweep beside the rule
    run0 = m["h6"]["runs"][0]
    assert run0["num_negative"] <= run0["num_negative_raw"] and set(run0["outlier_sweep"]) == {
        "0.03", "0.05", "0.1", "0.2", "0.3"}
    # the saved spectrum is what autograd's Hessian gives at the saved weights
    with np.load(tmp_path / "fig4" / "arrays.npz", allow_pickle=False) as f:
        eigs, params = f["eigs_h6"][0], f["params_h6"][0]
    model = spectra.models.create("blobnet", hidden=6, dtype="float64")
    data = spectra.datasets.load("blobs", n=100, std=config("fig4", "tiny")["std"], seed=0, dtype="float64")
    H = torch.autograd.functional.hessian(
        lambda v: torch.nn.functional.cross_entropy(_call(model, v, data.X), data.y), torch.from_numpy(params))
    np.testing.assert_allclose(np.linalg.eigvalsh(H.numpy()), eigs, atol=1e-10)


def _call(model, flat, X):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    pieces = torch.split(flat, [p.numel() for p in model.parameters()])
    return torch.func.functional_call(model, {n: t.reshape(s) for n, t, s in zip(names, pieces, shapes)}, (X,))


@pytest.mark.parametrize("figure", ["fig3", "fig5", "fig6", "fig9"])
def test_blob_figures_tiny(tmp_path, figure):
    res = run(figure, tmp_path, scale="tiny", quiet=True)
    _check_folder(tmp_path / figure, figure)
    if figure == "fig5":
        assert np.mean([r["zero_fraction"] for r in res["measured"]["h6"]["runs"]]) > 0.5
    if figure == "fig6":
        for m in res["measured"].values():
            assert m["eigs_match_fig4_spectrum"] < 1e-10  # heatmap Hessian = analyze's spectrum
    if figure == "fig9":
        arms = res["measured"]["arms"]
        assert set(arms) == {"relu", "smooth"} and set(arms["smooth"]) == {"0.4", "1.2"}
        for per in arms["smooth"].values():  # the tanh arm: every run at a strict local minimum
            assert all(per["converged"]) and min(per["min_eigenvalue_regularised"]) > 0
        for per in arms["relu"].values():  # the ReLU arm: certified on the one-sided gradients, below tolerance
            assert all(per["converged"]) and max(per["grad_norm"]) < 1e-4
        overlap = arms["relu"]["1.2"]  # where the blobs overlap, the minimum lies on kinks: autograd's |g| is large
        assert max(overlap["piece_grad_norm"]) > 1e-3 and min(overlap["kink_distance"]) < 1e-6
        assert res["training"]["fraction"] == 1.0
        topics = {c["topic"] for c in res["claims"]}
        assert {"λ1 grows with std (ReLU (the paper's units))", "λ1 grows with std (tanh)",
                "GD still converges to a low cost (ReLU (the paper's units))"} <= topics


@pytest.mark.parametrize("figure", ["fig1", "fig2", "fig10"])
def test_mnist_figures_tiny(tmp_path, figure):
    res = run(figure, tmp_path, scale="tiny", quiet=True)
    _check_folder(tmp_path / figure, figure)
    if figure == "fig1":
        assert res["measured"]["k1"]["num_params"] == 805
        assert "heatmap_net" in res["measured"] and "not rotated" in "".join(res["notes"])
        assert res["measured"]["heatmap_net"]["weight_decay"] == 1e-3 and "weight decay" in "".join(res["notes"])
    if figure == "fig10":
        same = res["measured"]["same_init"]
        assert len(same["distance"]) == len(res["measured"]["steps"]) and same["distance"][0] == 0.0


@pytest.mark.parametrize("name", ["fig4-outliers", "classes", "bulk-vs-outliers"])
def test_experiments_beyond_the_figures_tiny(tmp_path, name):
    res = run(name, tmp_path, scale="tiny", quiet=True)
    _check_folder(tmp_path / name, name)
    if name == "fig4-outliers":
        cell = next(iter(res["measured"].values()))
        run0 = next(iter(cell["stops"].values()))[0]
        # G is the sum of its class-mean part and a within-class rest, so M never exceeds G
        assert 0 < run0["M_over_G_top"][0] <= 1 + 1e-9 and run0["num_negative_G"] == 0
    if name == "bulk-vs-outliers":
        assert set(res["measured"]["anova"]) == {"zero_fraction", "log_bulk_ratio", "outliers", "log_lambda_max"}


# ----------------------------------------------------------------- fig 8: two paths, resume


def _blob_problem(hidden=2, n=60, std=0.8):
    data = spectra.datasets.load("blobs", n=n, std=std, seed=3, dtype="float64")
    stack = bt.StackedNet(spectra.models.create("blobnet", hidden=hidden, dtype="float64"))
    return stack, data.X, data.y


@pytest.mark.parametrize("hidden,loss,lr,tol,radius", [(2, "cross_entropy", 0.5, 2e-3, 2.0),
                                                      (3, "mse", 0.2, 8e-3, 1.0)])
def test_vectorised_and_looped_paths_agree(hidden, loss, lr, tol, radius):
    stack, X, y = _blob_problem(hidden)
    stack = bt.StackedNet(stack.template, loss=loss)
    assert stack.chain is not None  # the fast batched-MLP path is the one under test
    thetas = bt.init_thetas(stack.num_params, [bt.init_seed(5, i) for i in range(4)], radius=radius)
    kw = dict(lr=lr, grad_tol=tol, max_steps=400)
    out = bt.batched_gd(stack, thetas, X, y, **kw)
    eigs = bt.batched_hessian_eigvals(stack, out["theta"], X, y).numpy()
    ref = bt.looped_reference(stack, thetas, X, y, **kw)
    # a mix of stopped and capped inits exercises the masking
    assert out["converged"].any() and not out["converged"].all()
    np.testing.assert_array_equal(out["steps"].numpy(), ref["steps"])
    np.testing.assert_allclose(eigs[:, -1], ref["eigvals"][:, -1], rtol=1e-12, atol=0)
    np.testing.assert_allclose(eigs, ref["eigvals"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["grad_norm"].numpy(), ref["grad_norm"], rtol=1e-11)


def test_general_vmap_path_matches_fast_path():
    stack, X, y = _blob_problem(2)
    thetas = bt.init_thetas(stack.num_params, [bt.init_seed(1, i) for i in range(3)], radius=1.5)
    fast_gd = bt.batched_gd(stack, thetas, X, y, lr=0.3, grad_tol=0.0, max_steps=20)
    fast_eigs = bt.batched_hessian_eigvals(stack, fast_gd["theta"], X, y)
    stack.chain = None  # force the generic torch.func.vmap path
    slow_gd = bt.batched_gd(stack, thetas, X, y, lr=0.3, grad_tol=0.0, max_steps=20)
    slow_eigs = bt.batched_hessian_eigvals(stack, slow_gd["theta"], X, y)
    torch.testing.assert_close(fast_gd["theta"], slow_gd["theta"], rtol=0, atol=1e-12)
    torch.testing.assert_close(fast_eigs, slow_eigs, rtol=0, atol=1e-10)


def test_batched_gd_resumes_from_a_saved_state_bit_identically():
    stack, X, y = _blob_problem(2)
    thetas = bt.init_thetas(stack.num_params, [bt.init_seed(2, i) for i in range(5)], radius=2.0)
    kw = dict(lr=0.5, grad_tol=2e-3, max_steps=150)
    whole = bt.batched_gd(stack, thetas, X, y, **kw)
    states = []
    bt.batched_gd(stack, thetas, X, y, checkpoint=lambda st: states.append(
        {k: v.clone() for k, v in st.items()}), checkpoint_seconds=0.0, **kw)
    mid = states[len(states) // 2]
    assert 0 < int(mid["step"]) < 150
    resumed = bt.batched_gd(stack, thetas, X, y, state=mid, **kw)
    for key in ("theta", "steps", "grad_norm", "loss", "converged"):
        assert torch.equal(whole[key], resumed[key]), key


def test_init_seeds_do_not_depend_on_chunking():
    a = bt.init_thetas(18, [bt.init_seed(0, i) for i in range(6)], 1.0)
    b = torch.cat([bt.init_thetas(18, [bt.init_seed(0, i) for i in range(j, j + 2)], 1.0) for j in (0, 2, 4)])
    assert torch.equal(a, b)


@contextlib.contextmanager
def interrupted_at_call(monkeypatch, module, name: str, call: int):
    """Inside the block, the ``call``-th call of ``module.name`` raises KeyboardInterrupt (as a kill would)."""
    real, calls = getattr(module, name), {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(module, name, dying)
    try:
        yield
    finally:
        monkeypatch.setattr(module, name, real)


def test_fig8_tiny_loop_check_and_interrupted_resume(tmp_path, monkeypatch):
    whole = run("fig8", tmp_path / "whole", scale="tiny", quiet=True)
    check = whole["measured"]["loop_check"]
    assert check["max_rel_diff_top"] < 1e-11 and check["same_steps"]
    _check_folder(tmp_path / "whole" / "fig8", "fig8")

    # interrupt after the first chunk, as a kill would
    import spectra.experiments._batched as batched

    with interrupted_at_call(monkeypatch, batched, "batched_gd", 2), pytest.raises(KeyboardInterrupt):
        run("fig8", tmp_path / "cut", scale="tiny", quiet=True)
    assert not (tmp_path / "cut" / "fig8" / "results.json").exists()
    with pytest.raises(InvalidInputError, match="resume"):
        run("fig8", tmp_path / "cut", scale="tiny", quiet=True)
    resumed = run("fig8", tmp_path / "cut", scale="tiny", quiet=True, resume=True)
    with np.load(tmp_path / "whole" / "fig8" / "arrays.npz") as a, \
            np.load(tmp_path / "cut" / "fig8" / "arrays.npz") as b:
        for key in ("eigs", "steps", "theta", "loss"):
            np.testing.assert_array_equal(a[key], b[key])
    assert resumed["measured"]["top_eigenvalue"] == whole["measured"]["top_eigenvalue"]
    # the resumed run's time counts the interrupted process up to its saved chunk
    assert whole["processes"] == 1 and whole["wall_time_s"] == pytest.approx(whole["wall_time_this_process_s"], abs=0.05)
    assert resumed["processes"] == 2
    assert resumed["wall_time_s"] > resumed["wall_time_this_process_s"] and resumed["cpu_time_s"] > 0


def test_fig7_resume_from_checkpoint_is_identical(tmp_path, monkeypatch):
    whole = run("fig7", tmp_path / "whole", scale="tiny", quiet=True)
    import spectra.experiments.training_evolution as te

    with interrupted_at_call(monkeypatch, te, "exact_eigenvalues", 4), pytest.raises(KeyboardInterrupt):
        run("fig7", tmp_path / "cut", scale="tiny", quiet=True)
    run("fig7", tmp_path / "cut", scale="tiny", quiet=True, resume=True)
    with np.load(tmp_path / "whole" / "fig7" / "arrays.npz") as a, \
            np.load(tmp_path / "cut" / "fig7" / "arrays.npz") as b:
        for key in ("steps", "eigs", "loss", "grad_norm"):
            np.testing.assert_array_equal(a[key], b[key])
    ckpts = whole["measured"]["checkpoints"]
    seeds = config("fig7", "tiny")["seeds"]
    assert {f"seed{i}_step0" for i in range(seeds)} <= set(ckpts)
    assert all(c["num_params"] == 18 for c in ckpts.values())
    # the verdict follows the bulk relative to the top outlier, per seed
    assert len(whole["measured"]["per_seed"]) == seeds and "bulk" in whole["claims"][0]["ours"]


# ----------------------------------------------------------------- folders, names, CLI


def test_output_folder_rules(tmp_path):
    run("fig3", tmp_path, scale="tiny", quiet=True)
    with pytest.raises(InvalidInputError, match="earlier run"):
        run("fig3", tmp_path, scale="tiny", quiet=True)
    with pytest.raises(InvalidInputError, match="different configuration or seed"):
        run("fig3", tmp_path, scale="tiny", quiet=True, resume=True, seed=1)
    run("fig3", tmp_path, scale="tiny", quiet=True, force=True, seed=1)
    assert json.loads((tmp_path / "fig3" / "results.json").read_text())["seed"] == 1
    foreign = tmp_path / "elsewhere" / "fig3"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="does not look like"):
        run("fig3", tmp_path / "elsewhere", scale="tiny", quiet=True, force=True)
    assert (foreign / "notes.txt").exists()


@pytest.mark.parametrize("kwargs,error", [
    ({"name": "fig11"}, UnknownNameError), ({"name": "fig3", "scale": "huge"}, InvalidInputError),
    ({"name": "fig3", "seed": -1}, InvalidInputError), ({"name": "fig3", "threads": 0}, InvalidInputError),
    ({"name": "fig3", "overrides": {"nope": 1}}, InvalidInputError),
])
def test_bad_run_arguments(tmp_path, kwargs, error):
    with pytest.raises(error):
        run(out=tmp_path, quiet=True, **{"scale": "tiny", **kwargs})


def test_registry_and_configs_cover_every_figure():
    figures = [n for n in EXPERIMENTS if n.startswith("fig") and n[3:].isdigit()]
    assert sorted(figures, key=lambda s: int(s[3:])) == [f"fig{i}" for i in range(1, 11)]
    # beyond the paper's figures: run by name, not by "all"
    assert set(EXPERIMENTS) - set(figures) == {"decomposition", "classes", "bulk-vs-outliers", "fig4-outliers"}
    for name in EXPERIMENTS:
        for scale in ("tiny", "quick", "paper"):
            assert isinstance(config(name, scale), dict)
    assert config("fig8", "paper")["num_inits"] == 5000
    assert config("fig4", "paper")["widths"] == [2, 6, 10, 14, 18]
    assert max(config("fig1", "paper")["widths"]) == 20


def test_cli_reproduce(tmp_path, capsys):
    from spectra.cli import main

    assert main(["reproduce", "fig3", "--out", str(tmp_path), "--scale", "tiny", "--quiet"]) == 0
    assert (tmp_path / "fig3" / "report.md").exists()
    assert main(["reproduce", "fig3", "--out", str(tmp_path), "--scale", "tiny", "--quiet"]) == 2
    assert "earlier run" in capsys.readouterr().err
    assert main(["reproduce", "fig99", "--out", str(tmp_path)]) == 2
    assert main(["reproduce", "fig3", "--out", str(tmp_path), "--seed", "-3"]) == 2


@pytest.mark.parametrize("content", ["[1, 2]", "3", '"text"', '{"format": "other"}', "{not json"])
def test_load_results_refuses_what_is_not_an_experiment_result(tmp_path, content):
    from spectra.errors import ResultFormatError

    (tmp_path / "results.json").write_text(content, encoding="utf-8")
    with pytest.raises(ResultFormatError, match="results.json"):
        load_results(tmp_path)
