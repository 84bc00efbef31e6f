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
two agree exactly (to rounding where the orthogonal blocks share rotations, from
256 features on: the dense path then sums in the rotations' coordinates,
:class:`_RotatedSums`; and with ``return_error``, where it sums group by group).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from ._dtypes import refuse_half_overflow
from ._errors import GroupStats, SmoothHessError, accumulation_dtype, relative_error
from ._layout import HessianType, TensorOrTuple, _format_flat, _split_hessian
from ._pairs import top_pairs as _top_pairs
from ._sampling import OrthogonalStream, Sampler, _Mixer, chi_mean
from ._validation import _check_flags, _format_feature_mask

__all__ = ["SmoothHessFactors", "TopPairs"]


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

    With ``copies`` given (``return_error`` / ``tolerance``), the sums are
    kept per group of draws instead (:meth:`close_group`), in batch-means
    form, and chunks may go to a subset of the rows (:meth:`select`).
    """

    def __init__(
        self,
        batch: int,
        dim: int,
        row_scale: Tensor,
        mask: Optional[Tensor],
        n_groups: int,
        copies: Optional[int] = None,
    ) -> None:
        # Half-precision inputs accumulate in float32: the raw sum over calls leaves float16's range (and
        # bfloat16's 8 bits of precision) long before the mean does. Results come back in the inputs' dtype.
        self.dtype = row_scale.dtype
        self.row_scale = row_scale.to(accumulation_dtype(row_scale.dtype))
        self.mask = mask
        self.n_groups = n_groups
        size = n_groups if mask is not None else dim
        self.total = self.row_scale.new_zeros(batch, size, size)
        self.copies = copies
        self.stats = None if copies is None else GroupStats(self.total)
        self.index: Optional[Tensor] = None
        self._scaled = False  # result() scales the sum in place, once

    def _group(self, t: Tensor) -> Tensor:
        assert self.mask is not None
        out = t.new_zeros(*t.shape[:-1], self.n_groups)
        mask = self.mask if self.index is None or self.mask.shape[0] == 1 else self.mask[self.index]
        if mask.shape[0] == 1:
            return out.index_add_(-1, mask[0], t)
        return out.scatter_add_(-1, mask[:, None, :].expand_as(t), t)

    def add(self, scores: Tensor, diffs: Tensor) -> None:
        """Add one chunk, ``scores`` and ``diffs`` both ``(B, c, d)`` (the selected rows)."""
        if scores.dtype != self.total.dtype:
            scores, diffs = scores.to(self.total.dtype), diffs.to(self.total.dtype)
        if self.mask is not None:
            scores, diffs = self._group(scores * self.row_scale), self._group(diffs)
        if self.stats is None:
            self.total.baddbmm_(scores.transpose(1, 2), diffs)
        else:
            self.stats.add(torch.bmm(scores.transpose(1, 2), diffs), self.index)

    def select(self, index: Optional[Tensor]) -> None:
        self.index = index

    def _finish(self, t: Tensor) -> Tensor:
        """``sym(diag(1/eps) t) / copies``: a group's raw sum as a sum of per-draw estimates."""
        assert self.copies is not None
        h = t * (self.row_scale[:, None] / self.copies) if self.mask is None else t / self.copies
        return (h + h.transpose(1, 2)).mul_(0.5)

    def close_group(self, draws: int) -> None:
        assert self.stats is not None
        self.stats.close(draws, self.index, self._finish)

    def relative(self) -> Tensor:
        assert self.stats is not None
        return relative_error(self.stats.mean(), self.stats.variance()).to(self.dtype)

    def all_reduce(self, group: Any) -> None:
        if self.stats is not None:
            self.stats.all_reduce(group)
        else:
            torch.distributed.all_reduce(self.total, group=group)

    def result(self, count: int) -> Tensor:
        """The symmetrised mean ``sym(diag(1/eps) sum) / count`` (the groups' mean when kept per group).

        Called once, at the end: the sum is scaled in place (a ``(B, d, d)`` buffer and a pass fewer).
        """
        if self.stats is not None:
            return self.stats.mean().to(self.dtype)
        if self._scaled:
            raise RuntimeError("_HessianSums.result: already taken (the sum was scaled in place)")
        self._scaled = True
        # Halving is exact in binary floating point: the same numbers as halving the symmetrised sum.
        if self.mask is None:
            h = self.total.mul_(self.row_scale[:, None] / count * 0.5)
        else:
            h = self.total.div_(2 * count)
        return torch.add(h, h.transpose(1, 2)).to(self.dtype)

    def stderr(self) -> Tensor:
        """Per-entry standard errors of :meth:`result`, from the groups."""
        assert self.stats is not None
        return self.stats.variance().sqrt().to(self.dtype)


class _RotatedSums:
    """The dense sum of :class:`_HessianSums` for blocks that share rotations, formed in their coordinates.

    Block ``k`` of group ``g`` has the scores ``s_j = a_j (M_k R_g)_j``
    (:meth:`~captum_smoothhess._sampling.OrthogonalStream.rotation` and
    ``mixer``; ``a_j`` from :meth:`~captum_smoothhess._sampling.Sampler.coefficients`),
    so its part of ``sum_j s_j t_j^T`` is ``R_g^T M_k^T (a * T_k)``
    (``T_k`` the block's terms, one row per draw). The
    terms of a block are written straight from the gradients into a
    ``(B, d, d)`` buffer (:meth:`~captum_smoothhess._sampling.Sampler.write_terms`),
    mixed back by ``M_k^T`` once the block is complete (``4 d^2 sqrt(d)``
    flops; the coefficients ``a``, taken from the drawn radii, scale the
    mixer's first product, and a partial block mixes only the slabs that
    hold its rows), summed over the group, and the group's sum rotated by
    ``R_g^T`` once: one
    ``d x d x d`` product per group of blocks instead of one per block. The
    same sum as :meth:`_HessianSums.add` of the explicit scores, up to
    rounding. Untracked, unmasked and unweighted sums only; :meth:`finish`
    adds what is still open (the last blocks, or the blocks of which this
    rank saw a part). Memory: besides the result, the open group's sum and
    the open block's rows, ``(B, d, d)`` each (and the stream's rotation
    and workspace).
    """

    @dataclass
    class _Block:
        """An open block: its collected rows (``None`` for a group's first block, whose rows go straight
        into the group's sum), its mixer, the rows written so far and where (its buffer is not zeroed:
        each draw's row is written once, the rows never written are zeroed before it is mixed back)."""

        rows: Optional[Tensor]
        mixer: Optional[_Mixer]
        count: int
        scale: Optional[Tensor] = None  # (B, span) coefficients of the rows, applied as they are mixed back
        filled: int = 0
        written: List[Tuple[int, int]] = field(default_factory=list)

        def zero_unwritten(self) -> None:
            """Zero the rows that the mixer reads (``span``: a partial block's rows past its slabs are not)
            and that no draw wrote."""
            assert self.rows is not None and self.mixer is not None
            at = 0
            rows = self.mixer.span(self.count)
            for start, end in [*sorted(self.written), (rows, rows)]:  # the gaps between the rows written
                if start > at:
                    self.rows[:, at:start].zero_()
                at = max(at, end)

    @dataclass
    class _Group:
        """An open group: its rotation, the sum of its blocks in the rotation's coordinates, blocks added."""

        rotation: Tensor
        total: Tensor
        folded: int = 0

    def __init__(self, inner: _HessianSums, sampler: Sampler) -> None:
        assert inner.stats is None and inner.mask is None and sampler.shares_rotations
        stream = sampler.stream
        assert isinstance(stream, OrthogonalStream) and stream.total is not None
        self.inner = inner
        self.sampler = sampler
        self.stream = stream
        self._blocks: Dict[int, _RotatedSums._Block] = {}
        self._groups: Dict[int, _RotatedSums._Group] = {}
        # (B, d, d) buffers of folded blocks and closed groups, reused (fresh ones cost page faults on CPU).
        self._spare: List[Tensor] = []

    def _buffer(self, like: Tensor) -> Tensor:
        return self._spare.pop() if self._spare else torch.empty_like(like)

    def _mix_back(self, block: _RotatedSums._Block, into: Tensor) -> None:
        """``into += M_k^T rows`` of a block (its buffer is then spare)."""
        assert block.rows is not None and block.mixer is not None
        block.zero_unwritten()
        workspace = self.stream.workspace(block.rows)
        block.mixer.add_transpose(block.rows, into, workspace, block.count, block.scale)
        self._spare.append(block.rows)

    def add_draws(self, start: int, stop: int, u: Tensor, grads: Tensor) -> None:
        """Add the draws ``start .. stop-1``: their noise ``u`` ``(B, c, d)`` and the gradients at their
        points (``Sampler.points``), whose terms go straight into the blocks' buffers."""
        length, share = self.stream.block, self.stream.share
        # Tilted radii: every coefficient is c_d, applied to each group's sum instead.
        coefficients = None if self.stream.tilted else self.sampler.coefficients(u, start)
        terms: Optional[Tensor] = None  # formed only for draws that go into a sum directly
        at = start
        while at < stop:
            k = at // length
            end = min(stop, (k + 1) * length)
            piece, offset = slice(at - start, end - start), at - k * length
            group = k // share
            rotation = self.stream.rotation(group)
            if rotation is None:  # a group of one block: no shared rotation, explicit scores
                terms = self.sampler.terms(grads) if terms is None else terms
                self.inner.add(self.sampler.score(u[:, piece]), terms[:, piece])
                at = end
                continue
            if group not in self._groups:
                self._groups[group] = self._Group(rotation, self._buffer(rotation).zero_())
            if k not in self._blocks:
                mixer = self.stream.mixer(k)  # None for the group's first block (M = I)
                self._blocks[k] = self._open(k, mixer, rotation, coefficients)
            block = self._blocks[k]
            span = slice(offset, offset + end - at)  # each draw has its own row, written once
            if block.rows is None:  # into the group's sum, zero there still: written, with no buffer
                total = self._groups[group].total[:, span]
                self.sampler.write_terms(grads, piece, total)
                if coefficients is not None:
                    total.mul_(coefficients[:, piece, None])
            else:
                self.sampler.write_terms(grads, piece, block.rows[:, span])
                if block.scale is not None and coefficients is not None:
                    block.scale[:, span] = coefficients[:, piece]
                block.written.append((span.start, span.stop))
            block.filled += end - at
            if block.filled == self.stream.block_draws(k):
                self._fold(k)
            at = end

    def _open(
        self, k: int, mixer: Optional[_Mixer], rotation: Tensor, coefficients: Optional[Tensor]
    ) -> _RotatedSums._Block:
        """Block ``k``'s record: rows to collect unless it is its group's first block (``mixer`` None), and
        room for their coefficients (zeros past the rows written)."""
        count = self.stream.block_draws(k)
        if mixer is None:
            return self._Block(None, None, count)
        scale = None
        if coefficients is not None:
            scale = coefficients.new_zeros(coefficients.shape[0], mixer.span(count))
        return self._Block(self._buffer(rotation), mixer, count, scale)

    def _fold(self, k: int) -> None:
        """Block ``k`` into its group's sum (closing the group once it holds all its blocks)."""
        block = self._blocks.pop(k)
        group = k // self.stream.share
        entry = self._groups[group]
        if block.mixer is not None:
            self._mix_back(block, entry.total)
        entry.folded += 1
        if entry.folded == self.stream.group_blocks(group):
            self._close(group)

    def _close(self, group: int) -> None:
        entry = self._groups.pop(group)
        scale = chi_mean(self.stream.dim) if self.stream.tilted else 1.0
        self.inner.total.baddbmm_(entry.rotation.transpose(1, 2), entry.total, alpha=scale)
        self._spare.append(entry.total)

    def finish(self) -> None:
        """Add the blocks and groups still open (the last ones, or those of which this rank saw a part)."""
        for k in sorted(self._blocks):
            block = self._blocks.pop(k)
            if block.mixer is not None:
                self._mix_back(block, self._groups[k // self.stream.share].total)
        for group in sorted(self._groups):
            self._close(group)

    def add(self, scores: Tensor, terms: Tensor) -> None:
        self.inner.add(scores, terms)

    def all_reduce(self, group: Any) -> None:
        self.inner.all_reduce(group)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _Weighted:
    """Any reduction with every feature weighted per example: it receives ``(scores * w, terms * w)``.

    With ``w = a - b`` (input minus baseline, ``(B, d)``) a dense sum gives
    ``diag(w) H diag(w)``, a grouped one ``sum_{k in g, l in h} w_k H_kl w_l``
    (the weights are applied before grouping, so no ``d x d`` matrix is
    formed), and kept factors the factors of the weighted Hessian.
    """

    def __init__(self, inner: Any, weight: Tensor) -> None:
        self.inner = inner
        self.full = weight[:, None, :]
        self.weight = self.full

    def add(self, scores: Tensor, terms: Tensor) -> None:
        self.inner.add(scores * self.weight, terms * self.weight)

    def all_reduce(self, group: Any) -> None:
        self.inner.all_reduce(group)

    def select(self, index: Optional[Tensor]) -> None:
        """Only the examples ``index`` are sampled from now on (``tolerance``)."""
        self.weight = self.full if index is None else self.full.index_select(0, index)
        self.inner.select(index)

    def __getattr__(self, name: str) -> Any:
        # Everything else (group statistics, results) is the inner reduction's.
        return getattr(self.inner, name)


class _KeptFactors:
    """Keeps every chunk's ``(scores, terms)``: the reduction behind ``output="factors"``."""

    def __init__(self) -> None:
        self.scores: List[Tensor] = []
        self.diffs: List[Tensor] = []

    def select(self, index: Optional[Tensor]) -> None:
        raise ValueError("tolerance: examples cannot leave the batch with output='factors'")

    def close_group(self, draws: int) -> None:
        """The groups are replayed from the kept factors by :meth:`SmoothHessFactors.error`."""

    def relative(self) -> Tensor:
        """Unknown while sampling (computed afterwards by :meth:`SmoothHessFactors.error`)."""
        like = self.scores[0]
        return torch.full((like.shape[0],), float("nan"), dtype=like.dtype, device=like.device)

    def add(self, scores: Tensor, diffs: Tensor) -> None:
        self.scores.append(scores)
        self.diffs.append(diffs)

    def all_reduce(self, group: Any) -> None:
        raise ValueError("output: 'factors' is computed in one process; use output='dense' across ranks")


def _matvec(scores: List[Tensor], diffs: List[Tensor], row_scale: Tensor, count: int, v: Tensor) -> Tensor:
    """``H v`` for flat ``v`` ``(B, d)``, from the raw factor chunks; ``O(n d)`` work."""
    # Row-vector products (1 x m)(m x d) stream the factors in memory order,
    # several times faster than (m x d)(d x 1) batched products on CPUs.
    dtype = v.dtype
    wide = accumulation_dtype(dtype)  # half precision: the sums in float32 (see _HessianSums)
    x = v[:, None, :].to(wide)
    row_scale = row_scale.to(wide)
    rx = x * row_scale
    left, right = torch.zeros_like(x), torch.zeros_like(x)
    for s, d in zip(scores, diffs):
        s, d = s.to(wide), d.to(wide)
        left += (x @ d.transpose(1, 2)) @ s
        right += (rx @ s.transpose(1, 2)) @ d
    return ((left * row_scale + right)[:, 0] / (2 * count)).to(dtype)


def _pow2(t: Tensor, exponent: Tensor) -> Tensor:
    """``t * 2**exponent`` per example (``exponent`` ``(B,)``), exact unless the result leaves the normal
    range: two factors, each a power of two that ``t``'s dtype holds (``2**e`` alone may not)."""
    half = torch.div(exponent, 2, rounding_mode="floor")
    first = torch.exp2(half.to(t.dtype))[:, None]
    second = torch.exp2((exponent - half).to(t.dtype))[:, None]
    return t * first * second


class SmoothHessFactors:
    """SmoothHess held as its sample factors: ``H = sym(S^T D) / count``.

    Returned by ``SmoothHess.attribute(..., output="factors")``. Memory is
    ``O(n d)`` per example; nothing of size ``d x d`` is formed unless
    :meth:`to_dense` (or :meth:`error` without a ``feature_mask``) is called.

    Results come in the inputs' dtype; half-precision factors are summed in
    float32, as the dense path sums them, and a result that does not fit the
    half-precision dtype raises a ``ValueError`` (the dense path refuses the
    same estimate) instead of coming back as ``inf``.

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
        error_group: Optional[int] = None,
        copies: int = 2,
        gradient_stderr: Optional[TensorOrTuple] = None,
    ) -> None:
        self._error_group = error_group
        self._copies = copies
        self._gradient_stderr = gradient_stderr
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
        dtype = self._row_scale.dtype
        wide = accumulation_dtype(dtype)
        scaled = (torch.cat(self._scores, dim=1).to(wide) * self._row_scale.to(wide)).to(dtype)
        if dtype != wide and not bool(torch.isfinite(scaled).all()):
            raise ValueError(
                f"stdevs: the scores divided by stdevs are beyond the range of {dtype}; use a larger "
                "stdevs or float32/float64 inputs (the other methods sum them in float32)"
            )
        return scaled

    @property
    def diffs(self) -> Tensor:
        """Stacked gradient differences ``D``, ``(B, m, d)``."""
        return torch.cat(self._diffs, dim=1)

    def _format(self, flat: Tensor) -> TensorOrTuple:
        return _format_flat(flat, self._inputs, self._is_tuple)

    def _flat(self, v: TensorOrTuple, argument: str) -> Tensor:
        """``v`` (shaped like the inputs) flat, ``(B, d)``, in the factors' dtype and on their device."""
        if not isinstance(v, (Tensor, tuple, list)):
            raise TypeError(
                f"{argument}: expected a tensor (or a tuple of them) shaped like the inputs, got "
                f"{type(v).__name__}"
            )
        parts = (v,) if isinstance(v, Tensor) else tuple(v)
        expected = [tuple(i.shape) for i in self._inputs]
        for p in parts:
            if not isinstance(p, Tensor):
                raise TypeError(
                    f"{argument}: expected tensors shaped like the inputs, got {type(p).__name__}"
                )
            if p.is_complex():
                raise TypeError(f"{argument}: expected a real tensor, got dtype {p.dtype}")
            if p.device.type == "meta":
                raise ValueError(f"{argument}: a meta tensor holds no values; give it on a real device")
        got = [tuple(p.shape) for p in parts]
        if got != expected:
            raise ValueError(f"{argument}: expected tensors shaped like the inputs, {expected}, got {got}")
        like = self._scores[0]
        flat = torch.cat([p.reshape(self._batch, -1) for p in parts], dim=1).to(like)
        if not bool(torch.isfinite(flat).all()):
            raise ValueError(f"{argument}: contains NaN or Inf values (in {like.dtype})")
        return flat

    def to_dense(self) -> HessianType:
        """The dense Hessian: what ``output="dense"`` returns for the same seed.

        Bit for bit, except where the dense path sums differently and the two
        agree to rounding: with ``return_error`` (it sums group by group) and
        for orthogonal sampling from 256 features on (it sums in the shared
        rotations' coordinates).

        Raises:
            ValueError: Half-precision factors whose Hessian overflows that
                dtype (``output="dense"`` refuses the same estimate).
        """
        sums = _HessianSums(self._batch, self._dim, self._row_scale, None, 0)
        for s, d in zip(self._scores, self._diffs):
            sums.add(s, d)
        hess = refuse_half_overflow(sums.result(self.count), "estimate")
        return _split_hessian(hess, self._inputs, self._is_tuple)

    def error(self, feature_mask: Union[Tensor, Tuple[Tensor, ...], None] = None) -> SmoothHessError:
        """The estimated accuracy, as ``return_error=True`` gives it for the dense (or grouped) result.

        The error groups of draws are replayed from the kept factors
        (one ``d x d``, or ``G x G`` with ``feature_mask``, sum per group).
        Available when the factors were computed with ``return_error=True``.
        """
        if self._error_group is None:
            raise ValueError("return_error: pass return_error=True to attribute() to get the error")
        mask, n_groups = (
            (None, 0) if feature_mask is None else _format_feature_mask(feature_mask, self._inputs)
        )
        sums = _HessianSums(self._batch, self._dim, self._row_scale, mask, n_groups, copies=self._copies)
        s_all, d_all = torch.cat(self._scores, dim=1), torch.cat(self._diffs, dim=1)
        draws = s_all.shape[1]
        for start in range(0, draws, self._error_group):
            stop = min(draws, start + self._error_group)
            sums.add(s_all[:, start:stop], d_all[:, start:stop])
            sums.close_group(stop - start)
        stderr = refuse_half_overflow(sums.stderr(), "standard error")
        out: HessianType = (
            stderr if mask is not None else _split_hessian(stderr, self._inputs, self._is_tuple)
        )
        calls = torch.full((self._batch,), self.count, dtype=torch.long, device=self._row_scale.device)
        return SmoothHessError(out, sums.relative(), calls, self._gradient_stderr)

    def group(self, feature_mask: Union[Tensor, Tuple[Tensor, ...]]) -> Tensor:
        """Group interactions ``M^T H M``, ``(B, G, G)``, from a Captum-style feature mask.

        Raises:
            TypeError: ``feature_mask`` is ``None`` or not integer group ids.
            ValueError: A ``feature_mask`` that does not fit the inputs;
                half-precision factors whose group sums overflow that dtype.
        """
        if feature_mask is None:
            raise TypeError("feature_mask: expected an integer tensor (or one per input tensor), got None")
        mask, n_groups = _format_feature_mask(feature_mask, self._inputs)
        sums = _HessianSums(self._batch, self._dim, self._row_scale, mask, n_groups)
        for s, d in zip(self._scores, self._diffs):
            sums.add(s, d)
        return refuse_half_overflow(sums.result(self.count), "grouped estimate")

    def matvec(self, v: TensorOrTuple) -> TensorOrTuple:
        """``H v`` per example, ``v`` shaped like the inputs; ``O(n d)`` work.

        ``v`` is taken in the factors' dtype and on their device (the result
        is too); a complex, meta or non-finite ``v``, or one of another shape,
        is refused naming ``v``. Each example's ``v`` is scaled by a power of
        two (exactly) to a largest entry near 1 before the products and the
        result scaled back, so a large (or tiny) finite ``v`` cannot overflow
        (or underflow) the intermediate products.

        Raises:
            ValueError: ``v`` as above, or ``H v`` beyond the dtype's range.
        """
        flat = self._flat(v, "v")
        wide = flat.to(accumulation_dtype(flat.dtype))
        peak = wide.detach().abs().amax(1) if wide.shape[1] else wide.new_zeros(wide.shape[0])
        _, exponent = torch.frexp(peak)  # 0 for a zero v
        # A wide v comes back wide from _matvec: scaled back there, then rounded to the factors' dtype.
        out = _matvec(self._scores, self._diffs, self._row_scale, self.count, _pow2(wide, -exponent))
        out = _pow2(out, exponent).to(flat.dtype)
        if not bool(torch.isfinite(out).all()):
            raise ValueError(
                f"v: H v is beyond the range of {flat.dtype} (largest |v| {float(flat.abs().max()):.3g}); "
                "scale v down, or compute the factors in a wider dtype"
            )
        return self._format(out)

    def diagonal(self) -> TensorOrTuple:
        """The diagonal of ``H``, shaped like the inputs.

        Raises:
            ValueError: Half-precision factors whose diagonal overflows that
                dtype.
        """
        wide = accumulation_dtype(self._row_scale.dtype)
        diag = sum((s.to(wide) * d.to(wide)).sum(1) for s, d in zip(self._scores, self._diffs))
        assert isinstance(diag, Tensor)
        diag = (diag * self._row_scale.to(wide) / self.count).to(self._row_scale.dtype)
        return self._format(refuse_half_overflow(diag, "estimate"))

    def top_pairs(self, k: int, show_progress: bool = False) -> TopPairs:
        """The ``k`` largest ``|H_ij|``, ``i < j``, per example, exact.

        Tiles of the upper triangle of ``H`` are computed one at a time (one
        GEMM of inner size ``2m`` each) against a running threshold, the
        ``k``-th best so far; tiles that a Cauchy-Schwarz bound from the
        per-feature norms of the factors rules out are never computed. Memory
        is the factors and one tile. On ResNet-18 factors of one 3x224x224
        image (``d = 150,528``, ``n = 64``) the bound rules out all but about
        1% of the pairs and the search takes a few seconds on 2 CPU cores;
        features of nearly equal norms leave more tiles to compute.

        Args:
            k: Number of pairs per example, between 1 and ``d (d - 1) / 2``.
            show_progress: Show a progress bar over rows of tiles.

        Returns:
            The pairs as a :class:`TopPairs`.

        Raises:
            ValueError: ``k`` is not an integer between 1 and the number of
                pairs; half-precision factors whose strongest entries overflow
                that dtype.
            TypeError: ``show_progress`` is not a bool.

        Examples:
            >>> import torch
            >>> from captum_smoothhess import SmoothHess
            >>> net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
            ...                           torch.nn.Linear(8, 1))
            >>> fac = SmoothHess(net).attribute(torch.randn(1, 6), stdevs=0.5, n_samples=64,
            ...                                 generator=torch.Generator().manual_seed(0),
            ...                                 output="factors")
            >>> pairs = fac.top_pairs(2)
            >>> h = fac.to_dense()[0]
            >>> torch.allclose(pairs.values[0], h[pairs.index_i[0], pairs.index_j[0]], atol=1e-6)
            True
        """
        _check_flags(show_progress=show_progress)
        values, index_i, index_j = _top_pairs(
            self._scores, self._diffs, self._row_scale, self.count, k, bool(show_progress)
        )
        return TopPairs(refuse_half_overflow(values, "estimate"), index_i, index_j)
