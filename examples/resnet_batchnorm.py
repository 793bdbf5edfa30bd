"""A small ResNet with BatchNorm on the digits: the Hessian in eval mode and with batch statistics.

Trains :class:`spectra.workloads.resnet.SmallResNet` (a stem and two residual
blocks, BatchNorm after every convolution, SiLU activations) on the 8x8
digits that ship with scikit-learn, then computes the exact Hessian spectrum

* in eval mode (BatchNorm uses its running statistics: a per-sample loss), and
* with batch statistics (``train_mode=True``: each image's output depends on
  the whole batch),

checks products of the latter against central finite differences of the
gradient (the error shrinks as eps^2), and shows ``torch.func.hessian`` missing
the same matrix.

    python examples/resnet_batchnorm.py                # a few minutes on 2 CPU cores
    python examples/resnet_batchnorm.py --scale tiny   # seconds: a smoke test
"""

from __future__ import annotations

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    from spectra.workloads.runs import example_arguments, print_json, resnet_run

    args = example_arguments(__doc__.splitlines()[0], argv)

    r = resnet_run(args.scale, seed=args.seed)
    train = r["train"]
    print(f"SmallResNet, P = {r['num_params']}, analysed on {r['samples']} digit images")
    print(f"trained: Adam, {train['steps']} steps, loss {train['initial_loss']:.3f} -> {train['final_loss']:.3f}; "
          f"gradient norm {train['final_grad_norm']:.3g} (converged: {train['converged']})")
    for name in ("eval", "batch_statistics"):
        m = r[name]
        print(f"{name:16s} top-5 {np.round(m['top_eigenvalues'], 4).tolist()}  min {m['min_eigenvalue']:+.3g}  "
              f"({m['products']} products, {m['seconds']:.1f} s; a product costs "
              f"{m['product_gradient_ratio']:.2f} gradients)")
    fd = r["finite_difference"]
    for eps, column in zip(fd["eps"], np.array(fd["relative_errors"]).T):
        print(f"  finite differences, eps {eps:.0e}: relative error of H v {column.max():.2e} (worst of 3)")
    f = r["torch_func_hessian_error"]
    print(f"torch.func.hessian with batch statistics ({f['samples']} images): relative error "
          f"{f['relative_error']:.2e}")
    if args.json:
        print_json(r)
    return r


if __name__ == "__main__":
    main()
