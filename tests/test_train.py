"""spectra.train and init_on_sphere: against closed forms and hand-written references (float64)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

import spectra.training as train_mod
from spectra.data import Dataset
from spectra.errors import InvalidInputError, NonFiniteError
from spectra.training import default_radius, init_on_sphere, sphere_vector, train



def _linear_problem(n=30, d=3, c=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    Y = torch.randn(n, c, generator=g, dtype=torch.float64)
    model = torch.nn.Linear(d, c).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(c, d, generator=g, dtype=torch.float64))
        model.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))
    return model, X, Y


def _closed_form_gd(W, b, X, Y, lr, steps):
    """GD on mean_i 0.5||W x_i + b - y_i||^2 written out by hand (numpy)."""
    W, b, X, Y = (t.detach().numpy().astype(np.float64) for t in (W, b, X, Y))
    n = X.shape[0]
    for _ in range(steps):
        R = X @ W.T + b - Y
        W = W - lr * (R.T @ X) / n
        b = b - lr * R.mean(0)
    return W, b


def _tiny_classifier(seed=0, hidden=4):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2)).double()


def _blobs(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    X = torch.randn(n, 2, generator=g, dtype=torch.float64) * 0.7 + (1 - 2 * y[:, None]).double()
    return X, y


@pytest.mark.parametrize("steps", [1, 7])
def test_gd_matches_closed_form_mse(steps):
    model, X, Y = _linear_problem()
    W0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    hist = train(model, (X, Y), loss="mse", lr=0.05, grad_tol=0.0, max_steps=steps, step_rule="constant")
    W, b = _closed_form_gd(W0, b0, X, Y, 0.05, steps)
    assert hist.steps_taken == steps and hist.stop_reason == "max_steps" and not hist.converged
    np.testing.assert_allclose(model.weight.detach().numpy(), W, rtol=0, atol=1e-13)
    np.testing.assert_allclose(model.bias.detach().numpy(), b, rtol=0, atol=1e-13)


def test_gd_converges_to_least_squares():
    model, X, Y = _linear_problem(n=50)
    hist = train(model, (X, Y), loss="mse", lr=0.3, grad_tol=1e-10, max_steps=20000)
    A = np.hstack([X.numpy(), np.ones((50, 1))])
    sol = np.linalg.lstsq(A, Y.numpy(), rcond=None)[0]
    assert hist.converged and hist.stop_reason == "grad_tol" and hist.final_grad_norm < 1e-10
    np.testing.assert_allclose(model.weight.detach().numpy(), sol[:3].T, atol=1e-8)
    np.testing.assert_allclose(model.bias.detach().numpy(), sol[3], atol=1e-8)


@pytest.mark.parametrize("optimizer,batch_size", [("gd", None), ("sgd", 50)])
def test_weight_decay_converges_to_ridge_regression(optimizer, batch_size):
    """GD (and SGD on the full batch) with weight_decay reach the closed-form ridge solution, which
    decays the bias too: (A^T A / n + wd I) theta = A^T Y / n; the loss recorded includes wd/2 |theta|^2."""
    wd, n = 0.3, 50
    model, X, Y = _linear_problem(n=n)
    hist = train(model, (X, Y), loss="mse", lr=0.3, grad_tol=1e-10, max_steps=20000, weight_decay=wd,
                 optimizer=optimizer, batch_size=batch_size, step_rule="constant")
    A = np.hstack([X.numpy(), np.ones((n, 1))])
    sol = np.linalg.solve(A.T @ A / n + wd * np.eye(4), A.T @ Y.numpy() / n)
    assert hist.converged and hist.final_grad_norm < 1e-10
    np.testing.assert_allclose(model.weight.detach().numpy(), sol[:3].T, atol=1e-9)
    np.testing.assert_allclose(model.bias.detach().numpy(), sol[3], atol=1e-9)
    R = A @ sol - Y.numpy()
    expected = 0.5 * (R**2).sum(1).mean() + 0.5 * wd * (sol**2).sum()
    assert hist.final_loss == pytest.approx(expected, rel=1e-10)


def test_uneven_batches_weighted_by_size():
    """Batches of 7, 7 and 2 samples give exactly the full-batch GD trajectory (mean over all samples)."""
    X, y = _blobs(16)
    m_full, m_batched = _tiny_classifier(), _tiny_classifier()
    train(m_full, (X, y), lr=0.3, grad_tol=0.0, max_steps=5)
    batches = [(X[:7], y[:7]), (X[7:14], y[7:14]), (X[14:], y[14:])]
    train(m_batched, batches, lr=0.3, grad_tol=0.0, max_steps=5)
    chunked = _tiny_classifier()
    train(chunked, (X, y), lr=0.3, grad_tol=0.0, max_steps=5, batch_size=5)  # GD: batch_size only chunks
    for a, b, c in zip(m_full.parameters(), m_batched.parameters(), chunked.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
        torch.testing.assert_close(a, c, rtol=0, atol=1e-13)


def test_grad_tol_stops_at_first_step_below():
    X, y = _blobs()
    model = _tiny_classifier()
    hist = train(model, (X, y), lr=0.5, grad_tol=1e-2, max_steps=50000)
    g = np.array(hist.grad_norm)
    assert hist.converged and hist.stop_reason == "grad_tol"
    assert g[-1] < 1e-2 and np.all(g[:-1] >= 1e-2)
    assert hist.step == list(range(hist.steps_taken + 1))
    # the recorded final gradient norm is the true one at the final weights
    out = model(X)
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(out, y), list(model.parameters()))
    assert math.isclose(math.sqrt(sum(float(t.pow(2).sum()) for t in grads)), hist.final_grad_norm, rel_tol=1e-10)


def test_history_accuracy_and_loss_are_right():
    X, y = _blobs()
    model = _tiny_classifier()
    hist = train(model, Dataset(X, y), lr=0.1, grad_tol=0.0, max_steps=3, log_every=2)
    assert hist.step == [0, 2, 3]
    with torch.no_grad():
        out = model(X)
    assert math.isclose(hist.final_loss, float(torch.nn.functional.cross_entropy(out, y)), rel_tol=1e-12)
    assert hist.final_accuracy == float((out.argmax(1) == y).double().mean())
    d = hist.to_dict()
    assert d["final_loss"] == hist.final_loss and d["stop_reason"] == "max_steps"


def test_sgd_full_batch_equals_gd_and_is_seeded():
    X, y = _blobs(12)
    gd, sgd = _tiny_classifier(), _tiny_classifier()
    train(gd, (X, y), lr=0.2, grad_tol=0.0, max_steps=4)
    train(sgd, (X, y), optimizer="sgd", batch_size=12, lr=0.2, grad_tol=0.0, max_steps=4)
    for a, b in zip(gd.parameters(), sgd.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    runs = []
    for seed in (1, 1, 2):
        m = _tiny_classifier()
        train(m, (X, y), optimizer="sgd", batch_size=4, lr=0.2, grad_tol=0.0, max_steps=7, seed=seed)
        runs.append(torch.cat([p.detach().reshape(-1) for p in m.parameters()]))
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])


def test_sgd_epoch_order_is_a_permutation_per_epoch():
    orders = [train_mod._epoch_order(10, 3, e) for e in range(3)]
    for o in orders:
        assert sorted(o.tolist()) == list(range(10))
    assert not torch.equal(orders[0], orders[1])
    assert torch.equal(orders[2], train_mod._epoch_order(10, 3, 2))


@pytest.mark.parametrize("optimizer,batch_size", [("gd", None), ("sgd", 5)])
def test_resume_with_start_step_is_bit_identical(optimizer, batch_size):
    X, y = _blobs(16)
    whole, split = _tiny_classifier(), _tiny_classifier()
    kw = dict(optimizer=optimizer, batch_size=batch_size, lr=0.2, grad_tol=0.0, seed=4)
    train(whole, (X, y), max_steps=11, **kw)
    train(split, (X, y), max_steps=4, **kw)
    train(split, (X, y), max_steps=7, start_step=4, **kw)
    for a, b in zip(whole.parameters(), split.parameters()):
        assert torch.equal(a, b)


def test_callbacks_at_chosen_steps_and_final():
    X, y = _blobs()
    seen = []
    hist = train(_tiny_classifier(), (X, y), lr=0.1, grad_tol=0.0, max_steps=6,
                 callbacks=lambda m, info: seen.append((info["step"], info["final"], info["loss"])),
                 callback_steps=[0, 2, 5, 100])
    assert [(s, f) for s, f, _ in seen] == [(0, False), (2, False), (5, False), (6, True)]
    assert seen[-1][2] == hist.final_loss


def test_model_mode_is_restored():
    X, y = _blobs()
    model = _tiny_classifier()
    model.eval()
    train(model, (X, y), max_steps=1)
    assert not model.training


@pytest.mark.parametrize("kwargs,match", [
    ({"lr": 0}, "lr"), ({"lr": -1.0}, "lr"), ({"lr": float("nan")}, "lr"), ({"lr": "0.1"}, "lr"),
    ({"lr": float("inf")}, "lr"), ({"grad_tol": -1e-3}, "grad_tol"), ({"grad_tol": float("nan")}, "grad_tol"),
    ({"max_steps": -1}, "max_steps"), ({"max_steps": 2.5}, "max_steps"), ({"optimizer": "adam"}, "optimizer"),
    ({"optimizer": "sgd"}, "batch_size"), ({"batch_size": 0}, "batch_size"), ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"), ({"callbacks": [3]}, "callbacks"), ({"log_every": 0}, "log_every"),
    ({"callback_steps": [-1]}, "callback step"), ({"start_step": -2}, "start_step"), ({"loss": 3}, "loss"),
    ({"step_rule": "wolfe"}, "step_rule"), ({"optimizer": "sgd", "batch_size": 4, "step_rule": "armijo"}, "armijo"),
    ({"progress": "yes"}, "progress"), ({"weight_decay": -1e-3}, "weight_decay"),
    ({"weight_decay": float("inf")}, "weight_decay"), ({"weight_decay": True}, "weight_decay"),
])
def test_invalid_arguments_raise_invalid_input(kwargs, match):
    X, y = _blobs()
    with pytest.raises(InvalidInputError, match=match):
        train(_tiny_classifier(), (X, y), **kwargs)


def test_no_trainable_parameters_refused():
    model = _tiny_classifier()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(InvalidInputError, match="no trainable parameters"):
        train(model, _blobs())


def test_frozen_parameters_stay_put():
    X, y = _blobs()
    model = _tiny_classifier()
    model[0].weight.requires_grad_(False)
    before = model[0].weight.detach().clone()
    train(model, (X, y), max_steps=3)
    assert torch.equal(model[0].weight, before)


def test_nan_weights_and_divergence_name_the_step():
    X, y = _blobs()
    model = _tiny_classifier()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="step 0"):
        train(model, (X, y))
    model, X, Y = _linear_problem()
    with pytest.raises(NonFiniteError, match=r"diverged at step \d+"):
        train(model, (X * 1e3, Y), loss="mse", lr=10.0, grad_tol=0.0, max_steps=10000, step_rule="constant")


def _mse_lambda_max(X):
    """Largest Hessian eigenvalue of mean_i 0.5||W x_i + b - y_i||^2 (the same for every output)."""
    A = np.hstack([X.numpy(), np.ones((X.shape[0], 1))])
    return float(np.linalg.eigvalsh(A.T @ A / X.shape[0])[-1])


def test_armijo_keeps_gd_a_descent_method_where_the_constant_step_diverges():
    model, X, Y = _linear_problem()
    lam = _mse_lambda_max(X * 10)
    lr = 10.0 / lam  # five times the stable limit 2 / lambda_max
    hist = train(model, (X * 10, Y), loss="mse", lr=lr, grad_tol=1e-4, max_steps=5000)
    assert hist.step_rule == "armijo" and hist.converged
    halved = math.log2(lr / hist.final_lr)  # steps are lr / 2^k: tries double after a success, halve after a refusal
    assert hist.step_halvings >= 3 and halved >= 3 and halved == round(halved)
    assert hist.final_lr * lam < 2.0  # it ends below the edge of stability
    from spectra.training import ARMIJO_ROUNDING_SLACK

    loss = np.array(hist.loss)  # every accepted step decreased the loss (up to its rounding)
    assert np.all(np.diff(loss) <= ARMIJO_ROUNDING_SLACK * loss[:-1]) and loss[-1] < 0.01 * loss[0]
    assert hist.gradient_evaluations == hist.steps_taken + 1 + hist.step_halvings


def test_armijo_takes_every_step_of_a_stable_run_unchanged():
    model, X, Y = _linear_problem()
    ref = _linear_problem()[0]
    a = train(model, (X, Y), loss="mse", lr=0.05, grad_tol=0.0, max_steps=20)
    b = train(ref, (X, Y), loss="mse", lr=0.05, grad_tol=0.0, max_steps=20, step_rule="constant")
    assert a.step_halvings == 0 and b.step_rule == "constant" and b.gradient_evaluations == 21
    assert a.gradient_evaluations == 21  # the accepted point's gradient is the next step's: no extra work
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs,warns", [
    ({"grad_tol": 1e-12, "max_steps": 3}, True),
    ({"grad_tol": 0.0, "max_steps": 3}, False),
    ({"grad_tol": 1e-1, "max_steps": 5000}, False),
    ({"grad_tol": 1e-3, "max_steps": 0}, False),
])
def test_stopping_before_the_tolerance_warns(kwargs, warns):
    import warnings

    from spectra.training import NotConvergedWarning

    X, y = _blobs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist = train(_tiny_classifier(), (X, y), lr=0.5, **kwargs)
    ours = [w for w in caught if issubclass(w.category, NotConvergedWarning)]
    assert bool(ours) == warns
    if warns:
        assert "has not converged" in str(ours[0].message) and not hist.converged


@pytest.mark.parametrize("progress,shown", [(True, True), (False, False), (None, False)])
def test_progress_bar_on_request(progress, shown, capsys):
    X, y = _blobs()
    train(_tiny_classifier(), (X, y), lr=0.5, grad_tol=0.0, max_steps=30, progress=progress)
    err = capsys.readouterr().err
    assert ("training" in err) == shown  # None: only on a terminal, and pytest's stderr is not one


def test_float32_data_on_float64_model():
    X, y = _blobs()
    hist = train(_tiny_classifier(), (X.float(), y), max_steps=2)
    assert hist.steps_taken == 2


# ------------------------------------------------------------------ init_on_sphere


@pytest.mark.parametrize("radius", [0.5, 3.0])
def test_init_on_sphere_radius_and_seed(radius):
    model = _tiny_classifier()
    r = init_on_sphere(model, radius=radius, seed=7)
    v = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    assert r == radius and math.isclose(float(v.norm()), radius, rel_tol=1e-12)
    other = _tiny_classifier(seed=3)
    init_on_sphere(other, radius=radius, seed=7)
    assert torch.equal(v, torch.nn.utils.parameters_to_vector(other.parameters()).detach())
    init_on_sphere(other, radius=radius, seed=8)
    assert not torch.allclose(v, torch.nn.utils.parameters_to_vector(other.parameters()).detach())


def test_default_radius_formula_and_std_option():
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    expected = math.sqrt((15 + 3) / (3 * 5) + (6 + 2) / (3 * 3))
    assert math.isclose(default_radius(model), expected, rel_tol=1e-12)
    P = sum(p.numel() for p in model.parameters())
    assert math.isclose(init_on_sphere(model, std=0.1), 0.1 * math.sqrt(P), rel_tol=1e-12)
    # the default radius is the expected norm of PyTorch's default init: check by sampling
    norms = [float(torch.nn.utils.parameters_to_vector(
        torch.nn.Sequential(torch.nn.Linear(50, 40), torch.nn.ReLU(), torch.nn.Linear(40, 10)).parameters()).detach()
        .norm()) for _ in range(20)]
    ref = default_radius(torch.nn.Sequential(torch.nn.Linear(50, 40), torch.nn.ReLU(), torch.nn.Linear(40, 10)))
    assert abs(np.mean(norms) - ref) / ref < 0.02


def test_sphere_vector_is_dtype_independent_and_validated():
    a = sphere_vector(20, 2.0, seed=5)
    b = sphere_vector(20, 2.0, seed=5, dtype=torch.float32)
    torch.testing.assert_close(a.float(), b)
    with pytest.raises(InvalidInputError):
        sphere_vector(20, 0.0, seed=1)
    with pytest.raises(InvalidInputError):
        init_on_sphere(_tiny_classifier(), radius=1.0, std=1.0)


def test_doctests():
    assert doctest.testmod(train_mod, optionflags=doctest.ELLIPSIS).failed == 0


def test_spectra_train_is_the_function_whatever_was_imported_first():
    import importlib

    import spectra

    importlib.import_module("spectra.training")  # the module has its own name: nothing shadows the function
    assert spectra.train is train and not isinstance(spectra.train, type(spectra))
    model = torch.nn.Linear(2, 2).double()
    X, y = torch.randn(10, 2, dtype=torch.float64), torch.randint(0, 2, (10,))
    history = spectra.train(model, (X, y), lr=0.1, max_steps=3)
    assert history.steps_taken == 3
