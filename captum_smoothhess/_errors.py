"""Reported accuracy: batch means over independent blocks of samples.

A Stein estimate is the mean of per-draw terms. The draws fall into
independent *groups* (an orthogonal block, or a range of iid draws; the
orthogonal blocks that share a rotation are nearly independent, close
enough for the error to stay calibrated, see ``Sampler.block_length``), and
the variance of the mean follows from the spread of the group sums: with
``G_k`` the sum of the ``n_k`` draws of group ``k``, ``N = sum n_k`` and
``K`` groups,

    sigma^2 = (sum_k G_k^2 / n_k - (sum_k G_k)^2 / N) / (K - 1),
    Var(mean) = sigma^2 / N.

Only running sums of ``G_k`` and ``G_k^2 / n_k`` are kept (per-group, never
per-sample, ``d x d`` terms), so the error costs no gradient call and memory
does not grow with ``n``. :class:`SmoothHessError` is what users get.

The noise tunnels (KernelNoiseTunnel, NoiseGrad, FusionGrad) report the
same batch-means error of their smoothed attributions
(:class:`SmoothingError`, from :class:`AttributionMoments`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ._dtypes import working_dtype
from ._layout import HessianType, TensorOrTuple

__all__ = ["SmoothHessError", "SmoothingError"]

# Fewest groups the draws are split into for the error (groups are shorter than a block below that).
MIN_GROUPS = 4
# Elements of one float64 slice of samples that AttributionMoments merges at a time (16 MiB).
_SLICE_ELEMENTS = 1 << 21


class SmoothHessError(NamedTuple):
    """The estimated accuracy of a SmoothHess result, from blocks of its samples (batch means).

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


def group_length(block: int, draws: int) -> int:
    """Draws per error group: one block, shorter if that leaves fewer than MIN_GROUPS."""
    return max(1, min(block, draws // MIN_GROUPS))


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


class SmoothingError(NamedTuple):
    """The estimated accuracy of a noise tunnel's smoothed attributions, from independent groups of its
    samples (:class:`~captum_smoothhess.KernelNoiseTunnel`, :class:`~captum_smoothhess.NoiseGrad`,
    :class:`~captum_smoothhess.FusionGrad` with ``return_error=True``).

    Attributes:
        stderr: Standard errors shaped like the attributions (a tensor, or a
            tuple of them for tuple attributions): of their mean for
            ``"smoothgrad"``, of the mean of their squares for
            ``"smoothgrad_sq"``, and of their variance for ``"vargrad"`` (by
            the delta method).
        relative: ``(B,)`` estimated relative error of each example's
            attributions, ``sqrt(sum stderr^2) / |attributions|`` over all
            their tensors.
        n_samples: ``(B,)`` noisy samples per example.
    """

    stderr: TensorOrTuple
    relative: Tensor
    n_samples: Tensor


class AttributionMoments:
    """Batch means of per-sample attributions ``a`` and their squares ``q = a^2``, per example and entry.

    Samples ``j`` of group ``j // group`` form one independent group (the
    caller chooses ``group``: an antithetic pair must not be split); the last
    group may be shorter. Samples are added in order, in any partition sizes; only
    the open group's sums and, over the groups ended, the weighted means of
    the group means and their centred second moments are kept (in float64
    where the device has it, merged as in Chan et al.'s parallel variance:
    an attribution that every group gets exactly right has a standard error
    of exactly 0, not the rounding of a difference of large sums). Memory
    does not grow with the number of samples.

    Args:
        group: Samples per group.
        total: Samples per example in all.
    """

    def __init__(self, group: int, total: int) -> None:
        self.group, self.total = group, total
        # Over the groups ended: weighted means of the group means of a and q, and the weighted centred
        # sums n_k (a_k - a)^2, n_k (q_k - q)^2 and n_k (a_k - a)(q_k - q).
        self.moments: Optional[Tuple[Tensor, ...]] = None
        self.open: Optional[Tuple[Tensor, Tensor]] = None  # the open group's sums of a and q
        self.filled = 0  # samples of the open group
        self.groups = 0
        self.samples = 0

    def add(self, samples: Tensor) -> None:
        """Add the next samples ``(B, m, *shape)`` (sample ``j`` of example ``b`` at ``[b, j]``).

        Whole groups are merged a slice at a time, in float64 temporaries of at most about
        ``_SLICE_ELEMENTS`` elements each, so the extra memory does not grow with the partition.
        """
        wide = _wide_dtype(samples)
        samples = samples.detach()
        per_sample = max(1, samples[:, :1].numel())
        at, m = 0, samples.shape[1]
        while at < m:
            first = self.samples + self.filled  # index of the next sample
            stop = min(self.total, (first // self.group + 1) * self.group)  # its group's end
            if self.filled == 0 and m - at >= self.group and stop - first == self.group:
                # Whole groups: each group's means, then merged over the groups.
                count = min((m - at) // self.group, (self.total - first) // self.group)
                count = max(1, min(count, _SLICE_ELEMENTS // (per_sample * self.group)))
                chunk = samples[:, at : at + count * self.group].to(wide)
                chunk = chunk.reshape(chunk.shape[0], count, self.group, *chunk.shape[2:])
                self._end(chunk.mean(2), chunk.square().mean(2), self.group)
                at += count * self.group
                continue
            take = min(m - at, stop - first)
            part = samples[:, at : at + take].to(wide)
            a, q = part.sum(1), part.square().sum(1)
            self.open = (a, q) if self.open is None else (self.open[0] + a, self.open[1] + q)
            self.filled += take
            at += take
            if first + take == stop:
                (a, q), size = self.open, self.filled
                self.open, self.filled = None, 0
                self._end((a / size)[:, None], (q / size)[:, None], size)

    def _end(self, a: Tensor, q: Tensor, size: int) -> None:
        """Groups ended: their means ``(B, k, *shape)``, ``size`` samples each."""
        k = a.shape[1]
        mean_a, mean_q = a.mean(1), q.mean(1)
        da, dq = a - mean_a[:, None], q - mean_q[:, None]
        spread = (da.square().sum(1), dq.square().sum(1), (da * dq).sum(1))
        batch = (mean_a, mean_q, *(size * t for t in spread))
        n_old, n_new = self.samples, k * size
        self.groups += k
        self.samples += n_new
        if self.moments is None:
            self.moments = batch
            return
        old_a, old_q, m_a, m_q, c = self.moments
        w = n_new / self.samples
        step_a, step_q = batch[0] - old_a, batch[1] - old_q
        cross = n_old * w  # n_old n_new / (n_old + n_new)
        self.moments = (
            old_a + step_a * w,
            old_q + step_q * w,
            m_a + batch[2] + step_a.square() * cross,
            m_q + batch[3] + step_q.square() * cross,
            c + batch[4] + step_a * step_q * cross,
        )

    @property
    def count(self) -> int:
        """Samples added, those of the open group included."""
        return self.samples + self.filled

    def statistic(self, nt_type: str) -> Tensor:
        """``nt_type``'s statistic over the samples of the groups ended (float64): the mean of ``a``
        (``"smoothgrad"``), of ``q`` (``"smoothgrad_sq"``), or ``mean q - (mean a)^2``."""
        assert self.moments is not None
        mean_a, mean_q = self.moments[0], self.moments[1]
        if nt_type == "smoothgrad":
            return mean_a
        return mean_q if nt_type == "smoothgrad_sq" else mean_q - mean_a.square()

    def variance(self, nt_type: str) -> Tensor:
        """Variance of ``nt_type``'s statistic per entry (float64); NaN with fewer than two groups."""
        assert self.moments is not None
        mean_a, _, m_a, m_q, c = self.moments
        scale = 1.0 / (max(self.groups - 1, 1) * self.samples)
        if nt_type == "smoothgrad":
            var = m_a * scale
        elif nt_type == "smoothgrad_sq":
            var = m_q * scale
        else:  # vargrad, mean(q) - mean(a)^2: linearised around the means (the delta method)
            var = ((m_q - 4 * mean_a * c + 4 * mean_a.square() * m_a) * scale).clamp(min=0)
        return var if self.groups >= 2 else torch.full_like(var, float("nan"))
