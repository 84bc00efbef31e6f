"""Whole rotations from the compact symplectic group ``Sp(d/4)`` (``_sampling._quaternionic_rows``).

From ``_QUATERNION_MIN_DIM`` features on (a multiple of 4) an orthogonal block's rotation is the real
form of a Haar element of ``Sp(d/4)``: orthonormal rows, each exactly uniform on the sphere, at about
half the cost of a Haar ``O(d)`` rotation. Small ``d`` is used here by lowering the threshold.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from helpers import gen, ks2, make_one_hidden

from captum_smoothhess import Gaussian, Poisson, SmoothHess, _sampling
from captum_smoothhess._sampling import (
    _Q_INDEX,
    _Q_SIGN,
    AntitheticSampler,
    OrthogonalStream,
    _quaternionic_rows,
)
from captum_smoothhess.kernels import Kernel

CPU = torch.device("cpu")
EPS = 0.7


@pytest.fixture
def quaternionic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole rotations from Sp(d/4) from 4 features on, and SmoothHess shares them from 2 on."""
    monkeypatch.setattr(_sampling, "_QUATERNION_MIN_DIM", 4)
    monkeypatch.setattr(_sampling, "_SHARE_MIN_DIM", 2)


def _rows(batch: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return _quaternionic_rows(batch, d, gen(seed), CPU, dtype)


def _times_unit(rows: torch.Tensor, t: int) -> torch.Tensor:
    """Each quaternion (4 consecutive entries) of ``rows`` times the unit ``(1, i, j, k)[t]`` on the right."""
    q = rows.reshape(*rows.shape[:-1], -1, 4)
    return torch.stack([_Q_SIGN[t][c] * q[..., _Q_INDEX[t][c]] for c in range(4)], -1).flatten(-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("d", [4, 8, 40, 256])
def test_rows_are_orthonormal_quaternion_quadruples(d: int, dtype: torch.dtype) -> None:
    rows = _rows(3, d, 0, dtype)
    assert rows.shape == (3, d, d) and rows.dtype == dtype and rows.is_contiguous()
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    eye = torch.eye(d, dtype=dtype).expand(3, d, d)
    torch.testing.assert_close(rows @ rows.mT, eye, rtol=0, atol=tol)
    # Row 4 p + t is row 4 p times the unit u_t: the columns of a quaternionic matrix, in real form.
    first = rows[:, 0::4]
    for t in (1, 2, 3):
        torch.testing.assert_close(rows[:, t::4], _times_unit(first, t), rtol=0, atol=0)
    # Each example has its own rotation, and the seed fixes it.
    assert not torch.allclose(rows[0].abs(), rows[1].abs())
    assert torch.equal(rows, _rows(3, d, 0, dtype))


def test_rows_need_a_multiple_of_four_features() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        _rows(1, 6, 0)


def test_each_row_is_uniform_on_the_sphere(monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 draws at d = 8 (Sp(2)): every entry's law and a projection's, against Haar O(8) rows (two-
    sample KS at the 0.1% level) and the sphere's moments. The same construction without the phases
    that make its QR factor's diagonal real and positive is not Haar, and the test catches it."""
    n, d = 20000, 8
    rows = _rows(n, d, 1)
    q, r = torch.linalg.qr(torch.randn(n, d, d, generator=gen(2), dtype=torch.float64))
    ref = (q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]).mT
    direction = torch.randn(d, generator=gen(3), dtype=torch.float64)
    direction /= direction.norm()
    bound = 1.95 * math.sqrt(2 / n)

    def stats(a: torch.Tensor) -> list:
        return [a[:, 0, 0], a[:, 0, 5], a[:, 3, 2], a[:, 6, 7], a[:, 5] @ direction, a[:, 2] @ direction]

    for mine, theirs in zip(stats(rows), stats(ref)):
        assert ks2(mine, theirs) < bound
    # Uniform on S^{d-1}: E x^2 = 1/d, E x^4 = 3 / (d (d + 2)) for every entry.
    for stat, exact in ((rows.square(), 1 / d), (rows.pow(4), 3 / (d * (d + 2)))):
        mean, spread = stat.mean(0), stat.std(0) / math.sqrt(n)
        assert float(((mean - exact).abs() / spread).max()) < 4.5
    # Without the phases (column p of the product taken at e_{4p}): caught.
    ormqr = torch.ormqr

    def unphased(a: torch.Tensor, tau: torch.Tensor, other: torch.Tensor, *args: Any) -> torch.Tensor:
        plain = torch.zeros_like(other)
        plain.mT.reshape(other.shape[0], d // 4, d // 4, 4).diagonal(dim1=1, dim2=2)[:, 0] = 1
        return ormqr(a, tau, plain, *args)

    monkeypatch.setattr(torch, "ormqr", unphased)
    raw = _rows(n, d, 1)
    torch.testing.assert_close(raw @ raw.mT, torch.eye(d, dtype=torch.float64).expand(n, d, d))
    assert ks2(raw[:, 0, 0], ref[:, 0, 0]) > bound


@pytest.mark.parametrize("d", [12, 64])
def test_every_row_is_uniform_and_the_law_is_that_of_sp(d: int) -> None:
    """Every column's phase matters, not only the first two (d = 8 has two): the sphere's moments of
    the entries of the first and the last rows (64 is past LAPACK's unblocked ``ormqr``), and the trace
    moments of Haar ``Sp(d/4)`` in real form, ``E (tr R)^2 = 4`` and ``E tr(R^2) = -2`` (Haar ``O(d)``:
    1 and 1), which the same rows with one phase for all columns would miss (``E (tr R)^2 = 8``)."""
    n = 20000 if d == 12 else 4000
    rows = _rows(n, d, 7)
    for r in (0, 1, d - 5, d - 1):
        for stat, exact in ((rows[:, r].square(), 1 / d), (rows[:, r].pow(4), 3 / (d * (d + 2)))):
            mean, spread = stat.mean(0), stat.std(0) / math.sqrt(n)
            assert float(((mean - exact).abs() / spread).max()) < 5, (r, exact)
    trace = torch.diagonal(rows, dim1=-2, dim2=-1).sum(-1)
    square = torch.diagonal(rows @ rows, dim1=-2, dim2=-1).sum(-1)
    for stat, exact in ((trace.square(), 4.0), (square, -2.0)):
        assert abs(float(stat.mean()) - exact) < 5 * float(stat.std()) / math.sqrt(n), exact


def test_smoothhess_draws_quaternionic_rotations_from_the_threshold() -> None:
    d = _sampling._QUATERNION_MIN_DIM
    assert d == 256 and _sampling._quaternionic(256) and _sampling._quaternionic(784)
    assert d % 4 == 0 and d >= _sampling._SHARE_MIN_DIM
    assert not _sampling._quaternionic(d - 4) and not _sampling._quaternionic(d + 2)
    sampler = AntitheticSampler(Gaussian(), 1, d, 0, CPU, torch.float64, 4 * d, "orthogonal")
    stream = sampler.stream
    assert isinstance(stream, OrthogonalStream) and stream.share > 1
    stream.take(0, 1)
    rot = stream.rotation(0)
    assert rot is not None
    torch.testing.assert_close(rot[:, 1::4], _times_unit(rot[:, 0::4], 1), rtol=0, atol=0)


def test_a_lone_whole_block_is_quaternionic_too(quaternionic: None) -> None:
    """A group of one whole block (no sharing) draws its rotation the same way; a partial one does not."""
    d = 8
    stream = OrthogonalStream(Gaussian(), 2, d, 5, CPU, torch.float64, d + 3, share=1)
    u = stream.take(0, d + 3)
    whole = u[:, :d] / u[:, :d].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(whole[:, 1::4], _times_unit(whole[:, 0::4], 1), rtol=0, atol=1e-14)
    part = u[:, d:] / u[:, d:].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(part @ part.mT, torch.eye(3, dtype=torch.float64).expand(2, 3, 3))


@pytest.mark.parametrize("kernel", [Gaussian(), Poisson()], ids=repr)
def test_each_draw_keeps_the_kernel_marginal(quaternionic: None, kernel: Kernel) -> None:
    """KS on a coordinate of one draw of a group's first block and of its second (mixed) block, 2000
    groups of 4 blocks at d = 8."""
    d, groups = 8, 2000
    stream = OrthogonalStream(kernel, 1, d, 3, CPU, torch.float64, 4 * d * groups, share=4)
    u = stream.take(0, 4 * d * groups)[0].reshape(groups, 4, d, d)
    bound = 1.95 / math.sqrt(groups)
    for coord in (u[:, 0, 5, 2], u[:, 1, 2, 0]):
        order = coord.argsort()
        cdf = kernel.marginal_cdf(coord)[order]
        i = torch.arange(1, groups + 1, dtype=cdf.dtype)
        assert float(torch.maximum(i / groups - cdf, cdf - (i - 1) / groups).max()) < bound


def test_noise_does_not_depend_on_the_split(quaternionic: None) -> None:
    d, total = 8, 8 * 11 + 3
    whole = OrthogonalStream(Poisson(), 2, d, 4, CPU, torch.float64, total, share=4).take(0, total)
    for sizes in ([7, 5, 8, 40, 31], [45, 46], [3, 88]):
        stream = OrthogonalStream(Poisson(), 2, d, 4, CPU, torch.float64, total, share=4)
        parts, start = [], 0
        for size in sizes:
            parts.append(stream.take(start, start + size))
            start += size
        assert torch.equal(torch.cat(parts, dim=1), whole), sizes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_noise_is_the_float32_noise_rounded(quaternionic: None, dtype: torch.dtype) -> None:
    """``ormqr`` has no half-precision kernels: such streams draw in float32 and round, so a seed gives
    the float32 draws (shared groups, a mixed block, a partial last block), rounded."""
    d, total = 8, 8 * 9 + 3

    def draws(kind: torch.dtype) -> torch.Tensor:
        return OrthogonalStream(Gaussian(), 2, d, 3, CPU, kind, total, share=4).take(0, total)

    half = draws(dtype)
    assert half.dtype == dtype and bool(torch.isfinite(half).all())
    assert torch.equal(half, draws(torch.float32).to(dtype))


@pytest.mark.parametrize("kernel", ["gaussian", "poisson"])
def test_smoothhess_stays_unbiased(quaternionic: None, kernel: str) -> None:
    """d = 12, one group of 4 blocks a call, 200 seeds against the closed form."""
    d = 12
    relu = make_one_hidden(d, 16, seed=2, dtype=torch.float64)
    x = torch.randn(2, d, generator=gen(1), dtype=torch.float64)
    sh = SmoothHess(relu.net, kernel=kernel)
    ref = relu.gaussian_hessian(x, EPS) if kernel == "gaussian" else relu.poisson_hessian(x, EPS)
    err = torch.stack(
        [sh.attribute(x, stdevs=EPS, n_samples=8 * d, generator=gen(s)) - ref for s in range(200)]
    )
    mean, spread = err.mean(0), err.std(0) / math.sqrt(err.shape[0])
    assert float((mean.abs() / spread).max()) < 4.5


def test_variance_stays_that_of_haar_rotations(monkeypatch: pytest.MonkeyPatch) -> None:
    """d = 64, n = 2 d (one block) and 16 d (one group of 8), 30 seeds: the error variance with
    quaternionic rotations within 15% of that with Haar O(d) ones (0.997-1.003x measured at d = 256 and
    784, ``benchmarks/efficiency.py --only quaternion``); the iid estimator's is several times larger,
    which the bound would catch."""
    d = 64
    relu = make_one_hidden(d, 2 * d, seed=0, dtype=torch.float64)
    x = torch.randn(2, d, generator=gen(1), dtype=torch.float64)
    sh = SmoothHess(relu.net)
    ref = relu.gaussian_hessian(x, EPS)
    monkeypatch.setattr(_sampling, "_SHARE_MIN_DIM", 2)

    def mse(n: int, sampling: str = "orthogonal") -> float:
        kw: Any = dict(stdevs=EPS, n_samples=n, sampling=sampling)
        return sum(float(((sh.attribute(x, generator=gen(s), **kw) - ref) ** 2).sum()) for s in range(30))

    for n in (2 * d, 16 * d):
        monkeypatch.setattr(_sampling, "_QUATERNION_MIN_DIM", 10**9)
        haar = mse(n)
        monkeypatch.setattr(_sampling, "_QUATERNION_MIN_DIM", 4)
        quaternionic = mse(n)
        assert 0.85 < quaternionic / haar < 1.15, n
        assert mse(n, "iid") / quaternionic > 2.0
