"""The dtypes spectra computes in: float64 by default, float32 on request, half precision refused.

* **Registry models and datasets** are built in :data:`DEFAULT_DTYPE` (float64,
  as in the paper) unless a ``dtype`` is given, in Python and in the CLI
  alike, so the same names and seed give the same numbers everywhere
  (:func:`with_default_dtype`).
* **Half precision** (bfloat16, float16) is refused for Hessian products
  (:func:`check_product_dtype`): with 8 or 11 bits of mantissa a product
  carries a relative error of about 4e-3 (bfloat16) or 5e-4 (float16), where
  float32 gives 2e-7 (against float64 at the same weights, a 10-20-5 tanh MLP
  on 100 samples; ``tests/test_precision.py`` measures it), so small
  eigenvalues and their signs would be noise.  Pass ``product_dtype="float32"`` to
  :func:`spectra.analyze`: it runs the products on a float32 copy and leaves
  the model as it is.

>>> with_default_dtype({"n": 10}, accepts_dtype=True)
{'n': 10, 'dtype': 'float64'}
>>> check_product_dtype(torch.float32)
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import InvalidInputError

__all__ = ["DEFAULT_DTYPE", "LOW_PRECISION_DTYPES", "check_product_dtype", "with_default_dtype"]

#: The dtype registry models and datasets are built in when none is given.
DEFAULT_DTYPE = "float64"
#: Dtypes too coarse for Hessian products.
LOW_PRECISION_DTYPES = (torch.bfloat16, torch.float16)


def with_default_dtype(kwargs: dict[str, Any], accepts_dtype: bool) -> dict[str, Any]:
    """``kwargs`` plus ``dtype=DEFAULT_DTYPE`` when the factory takes a dtype and none was given."""
    if accepts_dtype and kwargs.get("dtype") is None:
        return {**kwargs, "dtype": DEFAULT_DTYPE}
    return kwargs


def check_product_dtype(dtype: torch.dtype) -> None:
    """Refuse half-precision parameters for Hessian products, pointing to ``product_dtype``."""
    if dtype in LOW_PRECISION_DTYPES:
        name = str(dtype).replace("torch.", "")
        raise InvalidInputError(
            f"the model's parameters are {name}: Hessian products in {name} carry relative errors of about "
            "5e-4 to 4e-3, too coarse for eigenvalues; pass product_dtype='float32' to spectra.analyze "
            "(products on a float32 copy, the model untouched), or analyse a float32/float64 copy of the model"
        )
