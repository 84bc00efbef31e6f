"""SmoothHessFactors.top_pairs against the top-k of the dense Hessian, with tiles shrunk to a few entries."""

from __future__ import annotations

from typing import Tuple

import pytest
import torch
from torch import Tensor, nn

from captum_smoothhess import SmoothHess, SmoothHessFactors, TopPairs, _pairs


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles of 4 x 8 entries, so that a few dozen features already span many tiles."""
    monkeypatch.setattr(_pairs, "_TILE_ROWS", 4)
    monkeypatch.setattr(_pairs, "_TILE_COLS", 8)


def _factors(batch: int, dim: int, dtype: torch.dtype, seed: int = 0) -> SmoothHessFactors:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, 1)).to(dtype)
    x = torch.randn(batch, dim, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    fac = SmoothHess(net).attribute(
        x, stdevs=0.5, n_samples=32, generator=torch.Generator().manual_seed(seed), output="factors"
    )
    assert isinstance(fac, SmoothHessFactors)
    return fac


def _dense_top(hess: Tensor, k: int) -> Tuple[Tensor, Tensor, Tensor]:
    """The oracle: values and pairs i < j of the k largest |H_ij| of a (B, d, d) matrix."""
    dim = hess.shape[-1]
    iu = torch.triu_indices(dim, dim, 1)
    upper = hess[:, iu[0], iu[1]]
    order = upper.abs().argsort(dim=1, descending=True)
    return upper.gather(1, order), iu[0][order], iu[1][order]


def _assert_top(pairs: TopPairs, hess: Tensor, k: int) -> None:
    """Same values, and the same pairs wherever the oracle's values are not tied."""
    values, ii, jj = _dense_top(hess, k)
    assert pairs.values.shape == pairs.index_i.shape == pairs.index_j.shape == (hess.shape[0], k)
    assert (pairs.index_i < pairs.index_j).all()
    scale = float(hess.abs().max())
    tol = 1e-5 * scale if hess.dtype == torch.float32 else 1e-12 * scale
    # Each reported value is H at its reported pair, and they come by decreasing magnitude.
    at = hess[torch.arange(hess.shape[0])[:, None], pairs.index_i, pairs.index_j]
    torch.testing.assert_close(pairs.values, at, atol=tol, rtol=0)
    assert (pairs.values.abs().diff(dim=1) <= tol).all()
    torch.testing.assert_close(pairs.values.abs(), values[:, :k].abs(), atol=tol, rtol=0)
    for b in range(hess.shape[0]):
        mag = values[b].abs()
        gap = torch.cat([mag[:-1] - mag[1:], mag.new_full((1,), float("inf"))])
        # Pairs whose magnitude is clear of the next one (and of the k-th) must be found.
        clear = [
            (int(ii[b, r]), int(jj[b, r]))
            for r in range(k)
            if gap[r] > tol and (r == 0 or gap[r - 1] > tol) and mag[r] - mag[min(k, len(mag) - 1)] > tol
        ]
        found = set(zip(pairs.index_i[b].tolist(), pairs.index_j[b].tolist()))
        assert set(clear) <= found
        assert len(found) == k


@pytest.mark.parametrize(
    "batch, dim, k, dtype",
    [
        (3, 37, 5, torch.float32),  # d not a multiple of the tile, thresholds per example
        (2, 30, 7, torch.float64),
        (1, 29, 150, torch.float32),  # k far above the 32 entries of one tile
        (2, 9, 36, torch.float64),  # every pair
        (1, 2, 1, torch.float32),  # one pair
        (2, 3, 2, torch.float32),
    ],
)
@pytest.mark.usefixtures("small_tiles")
def test_top_pairs_equals_dense(batch: int, dim: int, k: int, dtype: torch.dtype) -> None:
    fac = _factors(batch, dim, dtype)
    dense = fac.to_dense()
    assert isinstance(dense, Tensor)
    pairs = fac.top_pairs(k)
    assert pairs.values.dtype == dtype
    _assert_top(pairs, dense, k)


def test_top_pairs_default_tiles() -> None:
    fac = _factors(2, 50, torch.float32, seed=3)
    dense = fac.to_dense()
    assert isinstance(dense, Tensor)
    _assert_top(fac.top_pairs(10), dense, 10)


def _random_factors(batch: int, m: int, dim: int, seed: int) -> Tuple[Tensor, Tensor]:
    """Factors with heavy-tailed per-feature scales (as gradients of images); example b scaled by 1e3^b."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, m, dim, generator=gen)
    col = torch.rand(batch, 1, dim, generator=gen).pow(6)
    diffs = torch.randn(batch, m, dim, generator=gen) * col
    diffs *= (10.0 ** (3 * torch.arange(batch)))[:, None, None]
    return scores, diffs


def _dense(scores: Tensor, diffs: Tensor, scale: Tensor, count: int) -> Tensor:
    h = (scores * scale).transpose(1, 2) @ diffs
    return (h + h.transpose(1, 2)) / (2 * count)


@pytest.mark.parametrize("tiles", [(4, 8), (5, 3), (16, 64)])
def test_per_example_thresholds_and_chunks(tiles: Tuple[int, int]) -> None:
    # Examples whose entries differ by 1000x: a threshold shared across the batch would lose the small one.
    scores, diffs = _random_factors(3, 6, 61, seed=1)
    scale = torch.rand(61, generator=torch.Generator().manual_seed(2)) + 0.5
    split = [2, 4]  # two sample chunks, as SmoothHess keeps them
    values, ii, jj = _pairs.top_pairs(
        list(scores.split(split, 1)),
        list(diffs.split(split, 1)),
        scale,
        12,
        8,
        tile_rows=tiles[0],
        tile_cols=tiles[1],
    )
    _assert_top(TopPairs(values, ii, jj), _dense(scores, diffs, scale, 12), 8)


def test_bound_skips_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    # A few features with large differences hold the top pairs: the bound must rule out most tiles.
    scores, diffs = _random_factors(1, 4, 200, seed=4)
    diffs[:, :, :5] *= 1e3
    computed = []
    tile = _pairs._Search._tile

    def counting(self: _pairs._Search, *args: object) -> None:
        computed.append(args)
        tile(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(_pairs._Search, "_tile", counting)
    values, ii, jj = _pairs.top_pairs([scores], [diffs], torch.ones(200), 4, 3, tile_rows=8, tile_cols=8)
    _assert_top(TopPairs(values, ii, jj), _dense(scores, diffs, torch.ones(200), 4), 3)
    n_tiles = sum(len(range(p + 1, 200, 8)) for p in range(0, 199, 8))
    assert 0 < len(computed) < n_tiles / 10


def test_zero_hessian_gives_k_distinct_pairs() -> None:
    # A linear model: every difference is 0, so all pairs tie at 0 and any k distinct ones are right.
    fac = SmoothHess(nn.Linear(6, 1)).attribute(
        torch.randn(2, 6),
        stdevs=0.3,
        n_samples=8,
        generator=torch.Generator().manual_seed(0),
        output="factors",
    )
    assert isinstance(fac, SmoothHessFactors)
    pairs = fac.top_pairs(15)
    assert (pairs.values == 0).all() and (pairs.index_i < pairs.index_j).all()
    for b in range(2):
        assert len(set(zip(pairs.index_i[b].tolist(), pairs.index_j[b].tolist()))) == 15


@pytest.mark.parametrize("k", [0, -1, 11, 2.5, True, "3"])
def test_bad_k_raises(k: object) -> None:
    """A count out of range is a ValueError, a non-integer a TypeError (as every count of the package)."""
    fac = _factors(1, 5, torch.float32)
    wrong_type = isinstance(k, (bool, float, str))
    with pytest.raises(TypeError if wrong_type else ValueError, match=r"^k: "):
        fac.top_pairs(k)  # type: ignore[arg-type]


def test_numpy_integer_k_is_taken() -> None:
    np = pytest.importorskip("numpy")
    fac = _factors(1, 5, torch.float32)
    got, ref = fac.top_pairs(np.int64(3)), fac.top_pairs(3)  # type: ignore[arg-type]
    assert torch.equal(got.index_i, ref.index_i) and torch.equal(got.values, ref.values)


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    fac = _factors(2, 20, torch.float32)
    quiet = fac.top_pairs(4)
    shown = fac.top_pairs(4, show_progress=True)
    assert "top_pairs" in capsys.readouterr().err
    torch.testing.assert_close(shown.values, quiet.values)
