"""Reported accuracy: batch means over independent blocks of samples.

A Stein estimate is the mean of per-draw terms. The draws fall into
independent *groups* (an orthogonal block, or a range of iid draws), and
the variance of the mean follows from the spread of the group sums: with
``G_k`` the sum of the ``n_k`` draws of group ``k``, ``N = sum n_k`` and
``K`` groups,

    sigma^2 = (sum_k G_k^2 / n_k - (sum_k G_k)^2 / N) / (K - 1),
    Var(mean) = sigma^2 / N.

Only running sums of ``G_k`` and ``G_k^2 / n_k`` are kept (per-group, never
per-sample, ``d x d`` terms), so the error costs no gradient call and memory
does not grow with ``n``. :class:`SmoothHessError` is what users get.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

from ._dtypes import working_dtype
from ._layout import HessianType, TensorOrTuple

__all__ = ["SmoothHessError"]

# Fewest groups the draws are split into for the error (groups are shorter than a block below that).
MIN_GROUPS = 4


class SmoothHessError(NamedTuple):
    """The estimated accuracy of a SmoothHess result, from independent blocks of its samples.

    Attributes:
        stderr: Per-entry standard errors, shaped like the Hessian result (a
            tensor, the nested tuple of blocks, or ``(B, G, G)`` with a
            ``feature_mask``).
        relative: ``(B,)`` estimated relative Frobenius error of each
            example's Hessian, ``sqrt(sum stderr^2) / |H|_F``.
        n_samples: ``(B,)`` gradient calls used per example.
        gradient_stderr: Standard errors of the smoothed gradient, shaped like
            the inputs (``None`` when not computed).
    """

    stderr: HessianType
    relative: Tensor
    n_samples: Tensor
    gradient_stderr: Optional[TensorOrTuple]


def group_length(independent: int, draws: int) -> int:
    """Draws per error group: one independent block, shorter if that leaves fewer than MIN_GROUPS."""
    return max(1, min(independent, draws // MIN_GROUPS))


def _rows(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums over samples are kept in: float32 for the half-precision dtypes, else ``dtype``
    (a raw sum over calls leaves float16's range, and bfloat16's 8 bits of precision, long before the
    mean does)."""
    return working_dtype(dtype) if dtype.is_floating_point else dtype


def _wide_dtype(like: Tensor) -> torch.dtype:
    """float64 where the device has it (MPS has not), else ``like``'s dtype."""
    return like.dtype if like.device.type == "mps" else torch.float64


class GroupStats:
    """Running batch-means sums of one per-draw statistic, ``(B, *shape)``, per example.

    ``wide=True`` keeps the sums over groups in float64: the variance is a
    difference of two such sums, which cancel to the last digits when the
    statistic's mean is far larger than its spread (the smoothed gradient:
    in float32 some standard errors came out exactly 0). The group sums
    (``current``) and :meth:`mean` keep ``like``'s dtype.
    """

    def __init__(self, like: Tensor, wide: bool = False) -> None:
        self.current = torch.zeros_like(like)
        sums = _wide_dtype(like) if wide else like.dtype
        self.total = torch.zeros_like(like, dtype=sums)
        self.squares = torch.zeros_like(like, dtype=sums)
        self.groups = like.new_zeros(like.shape[0])
        self.draws = like.new_zeros(like.shape[0])

    def add(self, value: Tensor, index: Optional[Tensor]) -> None:
        """Add the sum over some draws of the current group, rows ``index`` (all if ``None``)."""
        if index is None:
            self.current += value
        else:
            self.current.index_add_(0, index, value)

    def close(self, draws: int, index: Optional[Tensor], transform: Any = None) -> None:
        """End the current group of ``draws`` draws for rows ``index``; ``transform`` maps its sum."""
        rows = slice(None) if index is None else index
        g = self.current[rows]
        if transform is not None:
            g = transform(g)
        g = g.to(self.total.dtype)
        self.total[rows] += g
        self.squares[rows] += g * g / draws
        self.groups[rows] += 1
        self.draws[rows] += draws
        self.current.zero_()

    def all_reduce(self, group: Any) -> None:
        for t in (self.total, self.squares, self.groups, self.draws):
            torch.distributed.all_reduce(t, group=group)

    def mean(self) -> Tensor:
        return (self.total / _rows(self.draws.clamp(min=1), self.total)).to(self.current.dtype)

    def variance(self) -> Tensor:
        """Variance of the mean per entry (``current``'s dtype); NaN for an example with fewer than two
        groups."""
        n = _rows(self.draws.clamp(min=1), self.total).to(self.total.dtype)
        k = _rows(self.groups, self.total).to(self.total.dtype)
        spread = (self.squares - self.total * self.total / n).clamp(min=0)
        var = spread / ((k - 1).clamp(min=1) * n)
        return torch.where(k >= 2, var, torch.full_like(var, float("nan"))).to(self.current.dtype)


def relative_error(mean: Tensor, variance: Tensor) -> Tensor:
    """``(B,)`` estimated relative Frobenius error ``sqrt(sum var) / |mean|_F``: 0 where every group
    gave the same estimate (no spread, e.g. an exactly zero Hessian), infinite where the estimate is 0
    and the groups disagree."""
    spread = variance.flatten(1).sum(1).sqrt()
    size = mean.flatten(1).norm(dim=1)
    return torch.where(spread == 0, torch.zeros_like(spread), spread / size)
