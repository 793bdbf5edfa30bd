"""Small versions of the paper's data for the factorial experiments (``classes``, ``bulk-vs-outliers``).

* :func:`mnist_small`: real MNIST digits ``0 .. C-1``, ``per_class`` images
  each (seeded draw from the bundled pool), average-pooled 4x4 to 7x7 = 49
  inputs, so one-hidden-layer nets stay small enough for exact spectra of
  every run (49-32-10 has 1,930 parameters where 784-32-10 has 25,450);
* :func:`random_small`: the same shape, uniform pixels and uniformly random labels;
* blobs come from the ``blobs`` dataset itself.

>>> d = mnist_small([0, 1], per_class=5, seed=0)
>>> tuple(d.X.shape), sorted(set(d.y.tolist()))
((10, 49), [0, 1])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

POOL = 4  # 28x28 -> 7x7


def mnist_small(classes: Sequence[int], per_class: int, seed: int):
    """``per_class`` images of each digit in ``classes``, 7x7 average-pooled, float64, labels 0..len-1."""
    from ..data import Dataset
    from ..datasets import load

    pool = load("mnist", n=5000, seed=seed, dtype="float64")
    rng = np.random.default_rng([seed, len(classes), per_class])
    Xs, ys = [], []
    for new_label, digit in enumerate(classes):
        idx = np.flatnonzero(pool.y.numpy() == digit)
        pick = rng.choice(idx, size=per_class, replace=False)
        Xs.append(pool.X[pick])
        ys.append(torch.full((per_class,), new_label, dtype=torch.long))
    X = torch.nn.functional.avg_pool2d(torch.cat(Xs), POOL).reshape(-1, (28 // POOL) ** 2)
    order = torch.as_tensor(rng.permutation(X.shape[0]))
    return Dataset(X[order].contiguous(), torch.cat(ys)[order],
                   name=f"mnist{len(classes)}", info={"classes": list(classes), "per_class": per_class,
                                                      "inputs": "MNIST averaged over 4x4 blocks: 7x7 = 49"})


def random_small(num_classes: int, n: int, seed: int):
    """``n`` uniform 49-pixel inputs with uniformly random labels in ``0 .. num_classes-1``."""
    from ..data import Dataset

    gen = torch.Generator().manual_seed(int(seed))
    X = torch.rand(n, (28 // POOL) ** 2, generator=gen, dtype=torch.float64)
    y = torch.randint(0, num_classes, (n,), generator=gen)
    return Dataset(X, y, name="random49", info={"inputs": "uniform [0, 1]^49, random labels"})


__all__ = ["mnist_small", "random_small"]
