"""The ``k`` strongest entries of a factored SmoothHess, exactly, without ``d x d`` memory.

With ``x_i = [s_i; d_i]`` and ``y_i = [d_i; s_i]`` (the ``2m`` samples of
feature ``i`` in the scaled scores and the differences, halves swapped in
``y``), ``H_ij = x_i . y_j / (2 count)``: one GEMM of inner size ``2m`` gives a
tile of ``H`` already symmetrised. The search runs over tiles of the upper
triangle and keeps the best ``k`` so far, whose smallest magnitude is a
running threshold:

* Cauchy-Schwarz bounds every entry, ``|x_i . y_j| <= r_i r_j`` with
  ``r_i^2 = a^2 |s_i|^2 + |d_i|^2 / a^2`` for any ``a > 0`` (``a`` balances the
  two norms; the norms are taken row by row scaled to their largest entry,
  so that no square over- or underflows). Features are visited in
  decreasing ``r``, so the bound falls
  along every row and column of a tile: a tile is trimmed to the rows and
  columns whose bound beats the threshold, a row of tiles ends at the first
  column that cannot, and the search ends at the first row that cannot.
* A computed tile is dismissed by one min/max pass when no entry beats the
  threshold; otherwise only the entries above it are gathered and merged.

An example whose scores or differences are all zero has ``H = 0``: any ``k``
pairs are exact, and the first ``k`` of the upper triangle (row by row) are
given without a search (the bound could rule out nothing there).

Half-precision factors are searched in float32, as the dense path sums them
(their raw sums over samples leave float16's range long before ``H`` does).
Memory is the factors (one ``d x 2m`` copy per example) and one tile.
"""

from __future__ import annotations

import bisect
from typing import Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from ._captum import progress
from ._errors import accumulation_dtype
from ._validation import _check_positive_int

# Tile of H computed by one GEMM: rows x columns (tests shrink these).
_TILE_ROWS = 1024
_TILE_COLS = 4096


def check_k(k: int, dim: int) -> int:
    """``k`` as an int; raise unless ``1 <= k <= d (d - 1) / 2``, the number of pairs ``i < j``."""
    n_pairs = dim * (dim - 1) // 2
    if n_pairs == 0:
        raise ValueError(f"k: {dim} feature(s) have no pair i < j to rank")
    k = _check_positive_int(k, "k")  # (a TypeError for a non-integer, as every count of the package)
    if k > n_pairs:
        raise ValueError(f"k: must be an integer between 1 and {n_pairs} (pairs i < j), got {k!r}")
    return k


class _Best:
    """The ``k`` largest ``|value|`` seen so far, with their (sorted-order) positions."""

    def __init__(self, k: int, like: Tensor) -> None:
        self.k = k
        self.values = like.new_empty(0)
        self.rows = torch.empty(0, dtype=torch.long, device=like.device)
        self.cols = torch.empty(0, dtype=torch.long, device=like.device)
        self.threshold = -1.0  # raw |value| an entry must exceed; negative until k are held

    def merge(self, values: Tensor, rows: Tensor, cols: Tensor) -> None:
        values = torch.cat([self.values, values])
        rows, cols = torch.cat([self.rows, rows]), torch.cat([self.cols, cols])
        if values.numel() > self.k:
            keep = values.abs().topk(self.k).indices
            values, rows, cols = values[keep], rows[keep], cols[keep]
        self.values, self.rows, self.cols = values, rows, cols
        if values.numel() == self.k:
            self.threshold = float(values.abs().min())


def _norms(t: Tensor) -> Tensor:
    """Euclidean norm of each row of ``t`` (CPU float64), each row scaled by its largest entry first, so
    that no square overflows or underflows (float64 factors of magnitude ``1e160`` or ``1e-170``)."""
    peak = t.abs().amax(1, keepdim=True)
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    return (peak * torch.linalg.vector_norm(t / safe, dim=1, keepdim=True))[:, 0].cpu()


def _rms(norms: Tensor) -> float:
    """Root mean square of non-negative ``norms``, scaled as in :func:`_norms`."""
    peak = float(norms.max())
    return 0.0 if peak == 0 else peak * float((norms / peak).pow(2).mean().sqrt())


def _bounds(x: Tensor, m: int) -> Tensor:
    """Per feature ``r_i`` (``x`` is ``(d, 2m)``: scores then differences), as CPU float64."""
    x = x.double()
    s, d = _norms(x[:, :m]), _norms(x[:, m:])
    s_rms, d_rms = _rms(s), _rms(d)
    # r_i = hypot(a |s_i|, |d_i| / a), a^2 = d_rms / s_rms (no square of a norm is formed).
    a = (d_rms / s_rms) ** 0.5 if s_rms > 0 and d_rms > 0 else 1.0
    return torch.hypot(a * s, d / a)


def _first_pairs(k: int, dim: int, like: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The first ``k`` pairs ``i < j`` of the upper triangle, row by row, with zero values (``O(d + k)``)."""
    lengths = torch.arange(dim - 1, 0, -1, device=like.device)  # pairs in rows 0 .. d-2
    ends = lengths.cumsum(0)
    t = torch.arange(k, device=like.device)
    rows = torch.searchsorted(ends, t, right=True)
    cols = rows + 1 + t - (ends[rows] - lengths[rows])
    return like.new_zeros(k), rows, cols


class _Search:
    """The tile search for one example (see the module docstring)."""

    def __init__(self, x: Tensor, k: int, tile_rows: int, tile_cols: int) -> None:
        self.m = x.shape[1] // 2
        self.dim = x.shape[0]
        r = _bounds(x, self.m)
        order = torch.argsort(r, descending=True, stable=True)
        self.order = order.to(x.device)
        self.r = r[order].tolist()
        self.neg_r = [-v for v in self.r]
        self.x = x[self.order].contiguous()
        self.best = _Best(k, x)
        self.tile_rows, self.tile_cols = tile_rows, tile_cols
        # Computed entries exceed the exact ones by at most about 2m units of rounding of r_i r_j.
        self.slack = 1.0 + (2 * self.m + 8) * torch.finfo(x.dtype).eps
        self.buffer = x.new_empty(tile_rows * tile_cols)

    def _count_above(self, level: float, factor: float) -> int:
        """How many sorted features ``q`` have ``factor * r_q * slack > level``."""
        if self.best.threshold < 0:
            return self.dim
        if factor <= 0:
            return 0
        return bisect.bisect_left(self.neg_r, -level / (factor * self.slack))

    def block_rows(self) -> Iterator[int]:
        """Start of each row of tiles, ending early when no remaining pair can beat the threshold."""
        for p0 in range(0, self.dim - 1, self.tile_rows):
            if self._count_above(self.best.threshold, self.r[p0]) <= p0 + 1:
                return
            yield p0

    def run_row(self, p0: int) -> None:
        p1 = min(p0 + self.tile_rows, self.dim - 1)
        swapped = self.x[p0:p1].roll(self.m, dims=1)  # rows [d_i; s_i]
        q0 = p0 + 1
        while True:
            q_stop = min(self.dim, self._count_above(self.best.threshold, self.r[p0]))
            q1 = min(q0 + self.tile_cols, q_stop)
            if q1 <= q0:
                return
            pe = min(p1, q1 - 1, self._count_above(self.best.threshold, self.r[q0]))
            if pe <= p0:
                return
            self._tile(swapped[: pe - p0], p0, q0, q1)
            q0 = q1

    def _tile(self, swapped: Tensor, p0: int, q0: int, q1: int) -> None:
        rows, cols = swapped.shape[0], q1 - q0
        p1 = p0 + rows
        tile = self.buffer[: rows * cols].view(rows, cols)
        torch.matmul(swapped, self.x[q0:q1].T, out=tile)
        thr = self.best.threshold
        if thr >= 0:
            lo, hi = torch.aminmax(tile)
            if max(-float(lo), float(hi)) <= thr:
                return
        mag = tile.abs()
        if q0 <= p1 - 1:  # the tile crosses the diagonal: only q > p counts
            below = (
                torch.arange(q0, q1, device=tile.device)[None, :]
                <= torch.arange(p0, p1, device=tile.device)[:, None]
            )
            mag.masked_fill_(below, -1.0)
        flat = mag.view(-1)
        idx = (flat > thr).nonzero()[:, 0]
        if idx.numel() == 0:
            return
        if idx.numel() > self.best.k:
            idx = idx[flat[idx].topk(self.best.k).indices]
        self.best.merge(tile.view(-1)[idx], p0 + idx // cols, q0 + idx % cols)

    def result(self) -> Tuple[Tensor, Tensor, Tensor]:
        """Values (raw, unnormalised) and original indices ``i < j``, by decreasing ``|value|``."""
        best = self.best
        order = best.values.abs().argsort(descending=True, stable=True)
        a, b = self.order[best.rows[order]], self.order[best.cols[order]]
        return best.values[order], torch.minimum(a, b), torch.maximum(a, b)


def top_pairs(
    scores: List[Tensor],
    diffs: List[Tensor],
    row_scale: Tensor,
    count: int,
    k: int,
    show_progress: bool = False,
    tile_rows: Optional[int] = None,
    tile_cols: Optional[int] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """The ``k`` largest ``|H_ij|``, ``i < j``, of ``H = sym(S^T D) / count``, per example.

    Args:
        scores: Chunks of raw kernel scores, each ``(B, c, d)``.
        diffs: The matching chunks of gradient differences.
        row_scale: The per-feature factor of the scores (``1 / eps``), broadcastable to ``(B, d)``.
        count: The normaliser of ``H``.
        k: Number of pairs per example.
        show_progress: Show a progress bar over rows of tiles.
        tile_rows: Rows of one tile (default ``_TILE_ROWS``).
        tile_cols: Columns of one tile (default ``_TILE_COLS``).

    Returns:
        ``(values, index_i, index_j)``, each ``(B, k)``, by decreasing ``|value|``.

    Examples:
        >>> import torch
        >>> gen = torch.Generator().manual_seed(0)
        >>> s, d = torch.randn(1, 4, 6, generator=gen), torch.randn(1, 4, 6, generator=gen)
        >>> v, i, j = top_pairs([s], [d], torch.ones(6), 4, k=3)
        >>> h = (s[0].T @ d[0] + d[0].T @ s[0]) / 8
        >>> torch.allclose(v[0], h[i[0], j[0]])
        True
    """
    dim = scores[0].shape[2]
    k = check_k(k, dim)
    dtype = scores[0].dtype
    wide = accumulation_dtype(dtype)
    batch = scores[0].shape[0]
    scale = row_scale.reshape(-1, dim).to(wide)
    rows = _TILE_ROWS if tile_rows is None else tile_rows
    cols = _TILE_COLS if tile_cols is None else tile_cols
    n_blocks = -(-(dim - 1) // rows)
    bar = progress(total=batch * n_blocks, desc="top_pairs") if show_progress else None
    out: List[Tuple[Tensor, Tensor, Tensor]] = []
    try:
        for b in range(batch):
            # One example's factors, (d, 2m) in the summing dtype: scaled scores, then differences.
            s_b = torch.cat([s[b] for s in scores]).to(wide) * scale[b if scale.shape[0] > 1 else 0]
            x = torch.cat([s_b, torch.cat([d[b] for d in diffs]).to(wide)]).T
            del s_b
            m = x.shape[1] // 2
            if not (bool(x[:, :m].any()) and bool(x[:, m:].any())):  # H = 0: every pair ties at 0
                out.append(_first_pairs(k, dim, x))
                if bar is not None:
                    bar.update(n_blocks)
                continue
            search = _Search(x, k, rows, min(cols, dim))
            del x
            done = 0
            for p0 in search.block_rows():
                search.run_row(p0)
                done += 1
                if bar is not None:
                    bar.update()
            if bar is not None:
                bar.update(n_blocks - done)
            out.append(search.result())
            del search
    finally:
        if bar is not None:
            bar.close()
    values, index_i, index_j = (torch.stack(t) for t in zip(*out))
    return (values / (2 * count)).to(dtype), index_i, index_j
