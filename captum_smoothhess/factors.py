"""The SmoothHess estimate as a sum of rank-one terms, and its reductions.

SmoothHess is ``H = sym(S^T D) / n`` with ``S`` the bandwidth-scaled kernel
scores and ``D`` the (antithetic) gradient differences, both ``(n, d)`` per
example. :class:`SmoothHessFactors` keeps ``S`` and ``D`` (memory
``O(n d)``, never ``d x d``) and offers what users need from ``H`` without
forming it: products with vectors, the diagonal, group interactions and the
strongest pairs. :class:`_HessianSums` is the one routine that reduces
``(S, D)`` chunks to a dense or grouped matrix; the dense path of
:class:`~captum_smoothhess.SmoothHess` streams its chunks through it, and
:meth:`SmoothHessFactors.to_dense` replays the same chunks through it, so the
two agree exactly.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from ._layout import HessianType, TensorOrTuple, _format_flat, _split_hessian
from ._validation import _format_feature_mask

__all__ = ["SmoothHessFactors", "TopPairs"]


# Elements of a (B, rows, d) slab of H computed at once by top_pairs.
_SLAB_ELEMENTS = 1 << 24


class TopPairs(NamedTuple):
    """The ``k`` strongest interactions ``|H_ij|``, ``i < j``, per example.

    ``index_i``/``index_j`` are flat feature indices (over the concatenated
    inputs of one example), all tensors ``(B, k)``, sorted by decreasing
    ``|value|``.
    """

    values: Tensor
    index_i: Tensor
    index_j: Tensor


class _HessianSums:
    """Streaming ``sum_c S_c^T D_c`` over chunks, optionally grouped by a mask.

    ``S`` holds raw kernel scores; the per-feature factor ``1/eps`` scales the
    rows of the sum once at the end (a ``d x d`` operation instead of one per
    sample), or the scores before grouping when a mask mixes features.
    """

    def __init__(
        self, batch: int, dim: int, row_scale: Tensor, mask: Optional[Tensor], n_groups: int
    ) -> None:
        self.row_scale = row_scale
        self.mask = mask
        self.n_groups = n_groups
        size = n_groups if mask is not None else dim
        self.total = row_scale.new_zeros(batch, size, size)

    def _group(self, t: Tensor) -> Tensor:
        assert self.mask is not None
        out = t.new_zeros(*t.shape[:-1], self.n_groups)
        if self.mask.shape[0] == 1:
            return out.index_add_(-1, self.mask[0], t)
        return out.scatter_add_(-1, self.mask[:, None, :].expand_as(t), t)

    def add(self, scores: Tensor, diffs: Tensor) -> None:
        """Add one chunk, ``scores`` and ``diffs`` both ``(B, c, d)``."""
        if self.mask is not None:
            scores, diffs = self._group(scores * self.row_scale), self._group(diffs)
        self.total.baddbmm_(scores.transpose(1, 2), diffs)

    def all_reduce(self, group: Any) -> None:
        torch.distributed.all_reduce(self.total, group=group)

    def result(self, count: int) -> Tensor:
        """The symmetrised mean ``sym(diag(1/eps) sum) / count``."""
        h = self.total * (self.row_scale[:, None] / count) if self.mask is None else self.total / count
        return (h + h.transpose(1, 2)).mul_(0.5)


class _KeptFactors:
    """Keeps every chunk's ``(scores, terms)``: the reduction behind ``output="factors"``."""

    def __init__(self) -> None:
        self.scores: List[Tensor] = []
        self.diffs: List[Tensor] = []

    def add(self, scores: Tensor, diffs: Tensor) -> None:
        self.scores.append(scores)
        self.diffs.append(diffs)

    def all_reduce(self, group: Any) -> None:
        raise ValueError("output: 'factors' is computed in one process; use output='dense' across ranks")


def _matvec(scores: List[Tensor], diffs: List[Tensor], row_scale: Tensor, count: int, v: Tensor) -> Tensor:
    """``H v`` for flat ``v`` ``(B, d)``, from the raw factor chunks; ``O(n d)`` work."""
    # Row-vector products (1 x m)(m x d) stream the factors in memory order,
    # several times faster than (m x d)(d x 1) batched products on CPUs.
    x = v[:, None, :]
    rx = x * row_scale
    left, right = torch.zeros_like(x), torch.zeros_like(x)
    for s, d in zip(scores, diffs):
        left += (x @ d.transpose(1, 2)) @ s
        right += (rx @ s.transpose(1, 2)) @ d
    return (left * row_scale + right)[:, 0] / (2 * count)


class SmoothHessFactors:
    """SmoothHess held as its sample factors: ``H = sym(S^T D) / count``.

    Returned by ``SmoothHess.attribute(..., output="factors")``. Memory is
    ``O(n d)`` per example; nothing of size ``d x d`` is formed unless
    :meth:`to_dense` is called.

    Attributes:
        gradient: The smoothed gradient, shaped like the inputs.
        count: The normaliser ``n`` (number of gradient calls per example).

    Examples:
        >>> import torch
        >>> from captum_smoothhess import SmoothHess
        >>> net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(),
        ...                           torch.nn.Linear(8, 1))
        >>> x = torch.randn(2, 5)
        >>> gen = torch.Generator().manual_seed(0)
        >>> fac = SmoothHess(net).attribute(x, stdevs=0.5, n_samples=100,
        ...                                 generator=gen, output="factors")
        >>> v = torch.randn(2, 5)
        >>> dense = fac.to_dense()
        >>> torch.allclose(fac.matvec(v), (dense @ v[:, :, None])[..., 0], atol=1e-5)
        True
        >>> fac.top_pairs(3).values.shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        scores: List[Tensor],
        diffs: List[Tensor],
        row_scale: Tensor,
        count: int,
        gradient: TensorOrTuple,
        inputs: Tuple[Tensor, ...],
        is_tuple: bool,
    ) -> None:
        self._scores = scores
        self._diffs = diffs
        self._row_scale = row_scale
        self.count = count
        self.gradient = gradient
        # Shape-only stand-ins for the inputs (stride-0 views of one element).
        self._inputs = tuple(inp.new_empty(()).expand(inp.shape) for inp in inputs)
        self._is_tuple = is_tuple
        self._batch = scores[0].shape[0]
        self._dim = scores[0].shape[2]

    @property
    def scores(self) -> Tensor:
        """Stacked bandwidth-scaled scores ``s(u) / eps``, ``(B, m, d)``."""
        return torch.cat(self._scores, dim=1) * self._row_scale

    @property
    def diffs(self) -> Tensor:
        """Stacked gradient differences ``D``, ``(B, m, d)``."""
        return torch.cat(self._diffs, dim=1)

    def _format(self, flat: Tensor) -> TensorOrTuple:
        return _format_flat(flat, self._inputs, self._is_tuple)

    def _flat(self, v: TensorOrTuple, argument: str) -> Tensor:
        parts = (v,) if isinstance(v, Tensor) else tuple(v)
        if len(parts) != len(self._inputs) or any(
            p.shape[1:] != i.shape[1:] or p.shape[0] != self._batch for p, i in zip(parts, self._inputs)
        ):
            raise ValueError(f"{argument}: expected tensors shaped like the inputs (batch {self._batch})")
        like = self._scores[0]
        return torch.cat([p.reshape(self._batch, -1) for p in parts], dim=1).to(like)

    def to_dense(self) -> HessianType:
        """The dense Hessian, exactly what ``output="dense"`` returns for the same seed."""
        sums = _HessianSums(self._batch, self._dim, self._row_scale, None, 0)
        for s, d in zip(self._scores, self._diffs):
            sums.add(s, d)
        return _split_hessian(sums.result(self.count), self._inputs, self._is_tuple)

    def group(self, feature_mask: Union[Tensor, Tuple[Tensor, ...]]) -> Tensor:
        """Group interactions ``M^T H M``, ``(B, G, G)``, from a Captum-style feature mask."""
        mask, n_groups = _format_feature_mask(feature_mask, self._inputs)
        sums = _HessianSums(self._batch, self._dim, self._row_scale, mask, n_groups)
        for s, d in zip(self._scores, self._diffs):
            sums.add(s, d)
        return sums.result(self.count)

    def matvec(self, v: TensorOrTuple) -> TensorOrTuple:
        """``H v`` per example, ``v`` shaped like the inputs; ``O(n d)`` work."""
        return self._format(
            _matvec(self._scores, self._diffs, self._row_scale, self.count, self._flat(v, "v"))
        )

    def diagonal(self) -> TensorOrTuple:
        """The diagonal of ``H``, shaped like the inputs."""
        diag = sum((s * d).sum(1) for s, d in zip(self._scores, self._diffs))
        assert isinstance(diag, Tensor)
        return self._format(diag * self._row_scale / self.count)

    def top_pairs(self, k: int) -> TopPairs:
        """The ``k`` largest ``|H_ij|``, ``i < j``, exact, computed in row slabs.

        Memory is one slab of rows of ``H`` at a time, so ``d`` can be tens of
        thousands.
        """
        d = self._dim
        n_pairs = d * (d - 1) // 2
        if k < 1 or k > n_pairs:
            raise ValueError(f"k: must be between 1 and {n_pairs} (pairs i < j), got {k}")
        s_all, d_all = self.scores, self.diffs
        rows = max(1, _SLAB_ELEMENTS // max(1, self._batch * d))
        best_v = s_all.new_empty(self._batch, 0)
        best_i = torch.empty(self._batch, 0, dtype=torch.long, device=s_all.device)
        cols = torch.arange(d, device=s_all.device)
        for start in range(0, d - 1, rows):
            stop = min(d, start + rows)
            s_rows = s_all[:, :, start:stop].transpose(1, 2)
            d_rows = d_all[:, :, start:stop].transpose(1, 2)
            slab = (s_rows @ d_all + d_rows @ s_all) / (2 * self.count)
            upper = cols[None, :] > torch.arange(start, stop, device=s_all.device)[:, None]
            flat = torch.where(upper, slab, torch.zeros_like(slab)).reshape(self._batch, -1)
            mag = torch.where(upper, slab.abs(), torch.full_like(slab, -1.0)).reshape(self._batch, -1)
            valid = sum(d - 1 - r for r in range(start, stop))
            take = min(k, valid)
            _, idx = mag.topk(take, dim=1)
            best_v = torch.cat([best_v, flat.gather(1, idx)], dim=1)
            best_i = torch.cat([best_i, idx + start * d], dim=1)
            keep = best_v.abs().topk(min(k, best_v.shape[1]), dim=1).indices
            best_v, best_i = best_v.gather(1, keep), best_i.gather(1, keep)
        return TopPairs(best_v, best_i // d, best_i % d)
