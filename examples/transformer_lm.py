"""A small decoder-only transformer language model on Python's own source: top-k, SLQ density, H = G + R.

Trains :class:`spectra.workloads.tiny_gpt.TinyGPT` (one pre-LayerNorm block,
causal scaled-dot-product attention, character tokens) on ten modules of the
standard library that ships with Python, with Adam, then analyses the Hessian
of the next-token loss (the mean over all real tokens; padding labelled
-100) on dict batches in the Hugging Face convention:

* its 10 largest eigenvalues (ARPACK),
* its spectral density (stochastic Lanczos quadrature),
* the split H = G + R: the top eigenvalues of the Gauss-Newton part G, and the
  share of each top eigenvalue of H that G carries.

    python examples/transformer_lm.py                 # about 5 minutes on 2 CPU cores
    python examples/transformer_lm.py --scale tiny    # seconds: a smoke test
"""

from __future__ import annotations

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    from spectra.workloads.runs import example_arguments, print_json, language_model_run

    args = example_arguments(__doc__.splitlines()[0], argv)

    r = language_model_run(args.scale, seed=args.seed)
    train = r["train"]
    print(f"TinyGPT, P = {r['num_params']}, analysed on {r['tokens']} next-token targets "
          f"(Python {r['corpus']['python']}: {', '.join(r['corpus']['files'])})")
    print(f"trained: Adam, {train['steps']} steps, loss {train['initial_loss']:.3f} -> {train['final_loss']:.3f} "
          f"nats/char; gradient norm {train['final_grad_norm']:.3g} (converged: {train['converged']}, "
          f"tolerance {train['grad_tol']})")
    print(f"top-{len(r['top_eigenvalues'])} of H: {np.round(r['top_eigenvalues'], 4).tolist()}  "
          f"({r['top_products']} products, {r['top_seconds']:.1f} s)")
    print(f"top of G:  {np.round(r['ggn_top_eigenvalues'], 4).tolist()}  "
          f"({r['ggn_products']} products, {r['ggn_seconds']:.1f} s)")
    print(f"share of H's top eigenvalues carried by G: {np.round(r['ggn_share_of_top'], 3).tolist()}")
    print(f"SLQ density: range [{r['slq_range'][0]:.3g}, {r['slq_range'][1]:.3g}], "
          f"negative mass {r['slq_negative_mass']:.3f} ({r['slq_products']} products, {r['slq_seconds']:.1f} s)")
    print(f"one Hessian-vector product costs {r['product_gradient_ratio']:.2f} gradients")
    if args.json:
        print_json(r)
    return r


if __name__ == "__main__":
    main()
