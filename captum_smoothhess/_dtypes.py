"""Half precision: the dtypes the package computes in instead (one rule for every module)."""

from __future__ import annotations

import torch
from torch import Tensor

#: Full-precision floating dtypes, kept as they are.
FULL = (torch.float32, torch.float64)
#: Half-precision floating dtypes, whose range (float16 overflows at 65504) or precision (bfloat16's 8
#: bits) the package's sums, norms and densities leave.
HALF = (torch.float16, torch.bfloat16)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` if it is float32 or float64, else float32 (half precision, and the float8 formats)."""
    return dtype if dtype in FULL else torch.float32


def widened(t: Tensor) -> Tensor:
    """``t`` in :func:`working_dtype` (itself, no copy, when it is float32 or float64)."""
    return t if t.dtype in FULL else t.float()


def refuse_half_overflow(t: Tensor, what: str) -> Tensor:
    """``t``, unless it is a half-precision result that overflowed as it was rounded back from float32
    sums: then a ``ValueError`` naming ``inputs`` (float32 and float64 results are left to the callers'
    own checks: no extra pass or sync for them)."""
    if t.dtype in HALF and not bool(torch.isfinite(t).all()):
        raise ValueError(
            f"inputs: the {what} is NaN or Inf in {t.dtype} (its sums overflow that dtype); compute in "
            "float32 or float64, or scale the model's output down"
        )
    return t
