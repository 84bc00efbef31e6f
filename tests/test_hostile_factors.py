"""A hostile user of ``output="factors"``: half precision, extreme magnitudes, zero Hessians, odd flags.

Every test compares with the dense matrix (``to_dense()`` or the factors' own
product in float64) or with a closed form.
"""

from __future__ import annotations

from typing import Any, List

import pytest
import torch
from helpers import gen
from torch import Tensor, nn

from captum_smoothhess import SmoothHess, SmoothHessFactors, _pairs


def _kink(weight: List[float], scale: float, dtype: torch.dtype) -> nn.Module:
    """``f(x) = scale * relu(w^T x)``: a Hessian ``scale * p(w^T x) w w^T`` concentrated at the kink."""
    net = nn.Sequential(nn.Linear(len(weight), 1), nn.ReLU(), nn.Linear(1, 1)).to(dtype)
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([weight]))
        net[0].bias.zero_()
        net[2].weight.fill_(scale)
        net[2].bias.zero_()
    return net


def _dense64(fac: SmoothHessFactors) -> Tensor:
    """``sym(S^T D) / n`` from the kept factors, in float64: the oracle for extreme magnitudes."""
    s, d = fac.scores.double(), fac.diffs.double()
    h = s.transpose(1, 2) @ d
    return (h + h.transpose(1, 2)) / (2 * fac.count)


def _upper_top(hess: Tensor, k: int) -> Tensor:
    """The ``k`` largest ``|H_ij|``, ``i < j``, per example, by decreasing magnitude."""
    dim = hess.shape[-1]
    iu = torch.triu_indices(dim, dim, 1)
    return hess[:, iu[0], iu[1]].abs().topk(k, dim=1).values


# --------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_top_pairs_of_half_factors_match_the_dense_matrix(dtype: torch.dtype) -> None:
    """The raw sums over samples left float16's range: top_pairs gave +-inf (and arbitrary pairs) for
    entries of about 1e4, which to_dense(), summing in float32, gives finitely."""
    net = _kink([1.0, 1.0, 0.0, 0.5], 2000.0, dtype)
    x = torch.zeros(2, 4, dtype=dtype)
    x[1, 3] = 0.02
    fac = SmoothHess(net).attribute(x, stdevs=0.05, n_samples=64, generator=gen(0), output="factors")
    dense = fac.to_dense()
    assert isinstance(dense, Tensor) and bool(torch.isfinite(dense).all())
    pairs = fac.top_pairs(3)
    assert pairs.values.dtype == dtype and bool(torch.isfinite(pairs.values).all())
    at = dense[torch.arange(2)[:, None], pairs.index_i, pairs.index_j]
    tol = 2 * float(torch.finfo(dtype).eps) * float(dense.abs().max())
    torch.testing.assert_close(pairs.values.float(), at.float(), atol=tol, rtol=0)
    torch.testing.assert_close(pairs.values.float().abs(), _upper_top(dense.float(), 3), atol=tol, rtol=0)
    # Closed form: H_01 = 2000 p(0) with w^T u ~ N(0, 2 eps^2) at x = 0, about 1.1e4.
    assert float(dense[0, 0, 1]) > 5000


def test_half_results_that_overflow_raise_like_the_dense_path() -> None:
    """H_00 of 8000 relu(x_0) at x = 0 with stdevs 0.01 is about 3e5, beyond float16: the dense path
    raises, and the factors' to_dense, diagonal, group and matvec returned inf."""
    net = _kink([1.0, 0.0, 0.0], 8000.0, torch.float16)
    x = torch.zeros(1, 3, dtype=torch.float16)
    kw: Any = {"stdevs": 0.01, "n_samples": 64}
    with pytest.raises(ValueError, match=r"^inputs: the estimate is NaN or Inf in torch.float16"):
        SmoothHess(net).attribute(x, generator=gen(0), **kw)
    fac = SmoothHess(net).attribute(x, generator=gen(0), output="factors", **kw)
    with pytest.raises(ValueError, match=r"^inputs: the estimate is NaN or Inf in torch.float16"):
        fac.to_dense()
    with pytest.raises(ValueError, match=r"^inputs: the estimate is NaN or Inf"):
        fac.diagonal()
    with pytest.raises(ValueError, match=r"^inputs: the grouped estimate is NaN or Inf"):
        fac.group(torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match=r"^v: H v is beyond the range of torch.float16"):
        fac.matvec(torch.tensor([[1.0, 0.0, 0.0]]))
    # What fits is still given: the off-diagonal entries (about 3.2e4 and 3.5e4) and H v away from x_0.
    h = _dense64(fac)
    pairs = fac.top_pairs(1)
    assert (int(pairs.index_i), int(pairs.index_j)) == (0, 1)
    torch.testing.assert_close(pairs.values.double(), h[:, 0, 1:2], rtol=1e-3, atol=0)
    hv = fac.matvec(torch.tensor([[0.0, 1.0, 0.0]]))
    assert isinstance(hv, Tensor)
    torch.testing.assert_close(hv.double(), h[:, :, 1], rtol=1e-3, atol=0)


def test_half_top_pairs_that_overflow_raise() -> None:
    """H_01 of 8000 relu(x_0 + x_1) at x = 0 with stdevs 0.01 is about 2.3e5, beyond float16."""
    net = _kink([1.0, 1.0, 0.0], 8000.0, torch.float16)
    fac = SmoothHess(net).attribute(
        torch.zeros(1, 3, dtype=torch.float16), stdevs=0.01, n_samples=64, generator=gen(0), output="factors"
    )
    assert float(_dense64(fac)[0, 0, 1]) > 65504
    with pytest.raises(ValueError, match=r"^inputs: the estimate is NaN or Inf in torch.float16"):
        fac.top_pairs(1)


def test_half_standard_error_that_overflows_raises() -> None:
    """``error()`` rounded an overflowing float32 standard error to inf in float16."""
    net = _kink([1.0, 0.0, 0.0], 24000.0, torch.float16)
    fac = SmoothHess(net).attribute(
        torch.zeros(1, 3, dtype=torch.float16),
        stdevs=0.01,
        n_samples=64,
        generator=gen(0),
        output="factors",
        return_error=True,
    )
    with pytest.raises(ValueError, match=r"^inputs: the standard error is NaN or Inf in torch.float16"):
        fac.error()


def test_half_scaled_scores_that_overflow_raise() -> None:
    """``scores`` (``s(u) / eps``) was formed in float16: ``|u| / 2e-5`` beyond 65504 came back as inf,
    though the Hessian (zero for this linear model) is fine."""
    fac = SmoothHess(nn.Linear(8, 1).half()).attribute(
        torch.zeros(2, 8, dtype=torch.float16),
        stdevs=2e-5,
        n_samples=64,
        generator=gen(0),
        output="factors",
    )
    assert bool((fac.to_dense() == 0).all())  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"^stdevs: the scores divided by stdevs are beyond the range"):
        _ = fac.scores


# --------------------------------------------------------------------------- extreme magnitudes


@pytest.mark.parametrize(("dtype", "exponent"), [(torch.float32, 120), (torch.float64, 1016)])
def test_matvec_of_a_large_finite_vector(dtype: torch.dtype, exponent: int) -> None:
    """A finite ``v`` near the top of the dtype's range gave NaN (``inf - inf`` in the products)."""
    net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)).to(dtype)
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen(10 + i), dtype=dtype))
    x = torch.randn(3, 6, generator=gen(2), dtype=dtype)
    fac = SmoothHess(net).attribute(x, stdevs=0.5, n_samples=40, generator=gen(0), output="factors")
    unit = torch.randn(3, 6, generator=gen(3), dtype=dtype)
    ref = (_dense64(fac) @ unit.double()[:, :, None])[..., 0]
    small = fac.matvec(unit)
    assert isinstance(small, Tensor)
    torch.testing.assert_close(small.double(), ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    big = fac.matvec(unit * 2.0**exponent)
    assert isinstance(big, Tensor) and bool(torch.isfinite(big).all())
    # Powers of two pass through exactly: the same bits as the unit vector's product, scaled.
    assert torch.equal(big, small * 2.0**exponent)
    # H v beyond the range is refused, naming v: the largest v times a row sum of H above 1.
    with torch.no_grad():
        net[2].weight.mul_(1000)
    fac = SmoothHess(net).attribute(x, stdevs=0.5, n_samples=40, generator=gen(0), output="factors")
    assert bool((_dense64(fac).sum(2).abs() > 1).any())
    with pytest.raises(ValueError, match=r"^v: H v is beyond the range"):
        fac.matvec(torch.full((3, 6), torch.finfo(dtype).max, dtype=dtype))


@pytest.mark.parametrize(("s_scale", "d_scale"), [(1.0, 1e160), (1e160, 1.0), (1e-100, 1e200)])
def test_top_pairs_exact_at_extreme_float64_magnitudes(s_scale: float, d_scale: float) -> None:
    """The bound squared the factors: beyond 1e154 the squares overflowed, the bound came out NaN and
    the search ended before the strongest pairs (entries of 1e100 to 1e160 are finite in float64)."""
    g = gen(5)
    scores = torch.randn(2, 4, 30, generator=g, dtype=torch.float64) * s_scale
    diffs = torch.randn(2, 4, 30, generator=g, dtype=torch.float64) * d_scale
    scale = torch.ones(30, dtype=torch.float64)
    values, ii, jj = _pairs.top_pairs([scores], [diffs], scale, 4, 6, tile_rows=4, tile_cols=4)
    h = scores.transpose(1, 2) @ diffs
    dense = (h + h.transpose(1, 2)) / 8
    assert bool(torch.isfinite(dense).all())
    torch.testing.assert_close(values.abs(), _upper_top(dense, 6), rtol=1e-12, atol=0)
    torch.testing.assert_close(values, dense[torch.arange(2)[:, None], ii, jj], rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- zero Hessians


def test_zero_hessian_top_pairs_without_a_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """A linear model has H = 0: any k pairs are exact, but the search computed every tile (the bound
    rules out nothing at a zero threshold), ``d^2 / 2`` products; it now gives the first k pairs."""
    computed: List[object] = []
    tile = _pairs._Search._tile

    def counting(self: _pairs._Search, *args: Any) -> None:
        computed.append(args)
        tile(self, *args)

    monkeypatch.setattr(_pairs._Search, "_tile", counting)
    monkeypatch.setattr(_pairs, "_TILE_ROWS", 4)
    monkeypatch.setattr(_pairs, "_TILE_COLS", 8)
    fac = SmoothHess(nn.Linear(40, 1)).attribute(
        torch.randn(2, 40, generator=gen(0)), stdevs=0.5, n_samples=8, generator=gen(1), output="factors"
    )
    pairs = fac.top_pairs(45)
    assert computed == []
    assert bool((pairs.values == 0).all())
    iu = torch.triu_indices(40, 40, 1)[:, :45]
    for b in range(2):
        assert torch.equal(pairs.index_i[b], iu[0]) and torch.equal(pairs.index_j[b], iu[1])


def test_zero_and_nonzero_examples_in_one_batch() -> None:
    """Example 0 has zero differences (H = 0), example 1 has not: each gets its own exact answer."""
    g = gen(6)
    scores = torch.randn(2, 3, 12, generator=g)
    diffs = torch.randn(2, 3, 12, generator=g)
    diffs[0] = 0
    values, ii, jj = _pairs.top_pairs([scores], [diffs], torch.ones(12), 6, 66, tile_rows=4, tile_cols=4)
    h = scores.transpose(1, 2) @ diffs
    dense = (h + h.transpose(1, 2)) / 12
    assert bool((values[0] == 0).all())
    assert len(set(zip(ii[0].tolist(), jj[0].tolist()))) == 66 and bool((ii < jj).all())
    torch.testing.assert_close(values[1].abs(), _upper_top(dense, 66)[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(values[1], dense[1, ii[1], jj[1]], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize("flag", ["no", 0, None])
def test_top_pairs_show_progress_must_be_a_bool(flag: object) -> None:
    """``show_progress="no"`` showed a bar; the package's other flags refuse non-bools."""
    fac = SmoothHess(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))).attribute(
        torch.randn(1, 4, generator=gen(0)), stdevs=0.5, n_samples=8, generator=gen(1), output="factors"
    )
    with pytest.raises(TypeError, match=r"^show_progress: expected True or False"):
        fac.top_pairs(2, show_progress=flag)  # type: ignore[arg-type]
