"""Orthogonal sampling: exact marginals, unbiasedness, variance reduction, split invariance."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import OneHiddenReLU, gen, ks2

from captum_smoothhess import Gaussian, Poisson, SmoothHess, _sampling
from captum_smoothhess._sampling import (
    AntitheticSampler,
    OrthogonalStream,
    _haar_columns,
    _lower_gaussian,
    chi_mean,
    orthogonal_block_length,
)
from captum_smoothhess.kernels import Kernel

EPS = 0.7
CPU = torch.device("cpu")


def _stream(
    kernel: Kernel, batch: int, dim: int, total: int, seed: int = 3, tilted: bool = False
) -> OrthogonalStream:
    return OrthogonalStream(kernel, batch, dim, seed, CPU, torch.float64, total, tilted=tilted)


def _ks(samples: torch.Tensor, cdf: torch.Tensor) -> float:
    """Kolmogorov-Smirnov statistic of sorted ``samples`` against their CDF values ``cdf``."""
    n = samples.numel()
    order = samples.argsort()
    f = cdf[order]
    i = torch.arange(1, n + 1, dtype=f.dtype)
    return float(torch.maximum(i / n - f, f - (i - 1) / n).max())


# --------------------------------------------------------------------------- the noise


def test_blocks_are_orthogonal_per_example_and_independent_of_the_split() -> None:
    d, total = 6, 20  # blocks of 6, 6, 6 and a last one of 2 draws
    whole = _stream(Gaussian(), 2, d, total).take(0, total)
    for b in range(2):
        block = whole[b, :d]
        gram = block @ block.T
        assert torch.allclose(gram, torch.diag(gram.diagonal()), atol=1e-10)
    # Each example has its own rotation.
    assert not torch.allclose(whole[0, :d].abs(), whole[1, :d].abs())
    for sizes in ([1] * total, [7, 5, 8], [6, 6, 6, 2], [3, 17]):
        stream, parts, start = _stream(Gaussian(), 2, d, total), [], 0
        for size in sizes:
            parts.append(stream.take(start, start + size))
            start += size
        assert torch.equal(torch.cat(parts, dim=1), whole), sizes


def _qr_haar(gauss: torch.Tensor) -> torch.Tensor:
    """The reference: Q of the QR of a Gaussian matrix, columns signed so that R has a positive diagonal."""
    q, r = torch.linalg.qr(gauss)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]


@pytest.mark.parametrize(("d", "m"), [(1, 1), (5, 5), (7, 3), (40, 40)])
def test_haar_columns_are_orthonormal(d: int, m: int) -> None:
    q = _haar_columns(torch.randn(3, d, m, generator=gen(0), dtype=torch.float64))
    assert q.shape == (3, d, m)
    torch.testing.assert_close(q.transpose(1, 2) @ q, torch.eye(m, dtype=torch.float64).expand(3, m, m))


@pytest.mark.parametrize(("d", "lower"), [(4, False), (4, True), (5, True)])
def test_haar_columns_have_the_law_of_a_gaussian_qr(d: int, lower: bool) -> None:
    """Stewart's reflectors give the law of the QR factor: moments and two-sample KS against it; also
    from the lower triangle alone (``_lower_gaussian``, even and odd d), as rows written in place."""
    n = 20000
    if lower:
        gauss = _lower_gaussian(n, d, gen(1), torch.device("cpu"), torch.float64)
        q = _haar_columns(gauss, overwrite=True, rows=True).mT
    else:
        q = _haar_columns(torch.randn(n, d, d, generator=gen(1), dtype=torch.float64))
    ref = _qr_haar(torch.randn(n, d, d, generator=gen(2), dtype=torch.float64))
    # Haar moments of O(d) (Weingarten): E q00^2 q11^2 = (d+1)/((d-1)d(d+2)), E q00 q01 q10 q11 = -1/(...).
    c = (d - 1) * d * (d + 2)
    for stat, exact in (
        (q[:, 0, 0] ** 2 * q[:, 1, 1] ** 2, (d + 1) / c),
        (q[:, 0, 0] * q[:, 0, 1] * q[:, 1, 0] * q[:, 1, 1], -1 / c),
        (torch.diagonal(q, dim1=1, dim2=2).sum(1) ** 2, 1.0),
    ):
        assert abs(float(stat.mean()) - exact) < 5 * float(stat.std()) / math.sqrt(n)
    bound = 1.95 * math.sqrt(2 / n)  # the 0.1% critical value
    for f in (lambda a: torch.diagonal(a, dim1=1, dim2=2).sum(1), lambda a: a[:, 2, 1], lambda a: a[:, 0, 3]):
        assert ks2(f(q), f(ref)) < bound
    # A law that is not Haar is caught: the same factor without its sign fix (R with signs of LAPACK's).
    raw, _ = torch.linalg.qr(torch.randn(n, d, d, generator=gen(3), dtype=torch.float64))
    assert ks2(raw[:, 0, 0], ref[:, 0, 0]) > bound


def test_block_length_bounds_memory_at_image_size() -> None:
    assert orthogonal_block_length(784) == 784
    assert orthogonal_block_length(150528) * 150528 <= 1 << 25


@pytest.mark.parametrize("kernel", [Gaussian(), Poisson()], ids=repr)
@pytest.mark.parametrize("draw", [0, 3])
def test_each_draw_has_the_kernel_marginal(kernel: Kernel, draw: int) -> None:
    """KS on a coordinate and on the norm of draw ``draw`` of each of 2000 independent blocks."""
    d, blocks = 4, 2000
    u = _stream(kernel, 1, d, d * blocks).take(0, d * blocks)[0].reshape(blocks, d, d)[:, draw]
    bound = 1.95 / math.sqrt(blocks)  # the 0.1% critical value
    coord = u[:, 1]
    assert _ks(coord, kernel.marginal_cdf(coord)) < bound
    r2 = (u * u).sum(1)
    if isinstance(kernel, Gaussian):
        norm_cdf = torch.special.gammainc(torch.tensor(d / 2, dtype=r2.dtype), r2 / 2)  # chi^2_d
    else:
        # |u|^2 = chi^2_d / z^2: its CDF is P(chi^2_d <= t z^2), averaged over z by quadrature.
        z = torch.linspace(-8, 8, 4001, dtype=r2.dtype)
        w = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * (z[1] - z[0])
        a = torch.tensor(d / 2, dtype=r2.dtype)
        norm_cdf = (torch.special.gammainc(a, r2[:, None] * z[None] ** 2 / 2) * w).sum(1)
    assert _ks(r2, norm_cdf) < bound
    # A wrong radius law is caught: the norms of unit-radius directions times sqrt(d).
    assert _ks(torch.full_like(r2, float(d)) + 1e-9 * coord, norm_cdf) > bound


def test_tilted_radii_are_chi_d_plus_1_and_their_weights_restore_the_gaussian() -> None:
    d, blocks = 6, 2000
    u = _stream(Gaussian(), 1, d, d * blocks, tilted=True).take(0, d * blocks)[0]
    r2 = (u * u).sum(1)
    bound = 1.95 / math.sqrt(r2.numel())
    a = torch.tensor((d + 1) / 2, dtype=r2.dtype)
    assert _ks(r2, torch.special.gammainc(a, r2 / 2)) < bound
    # The untilted law (chi_d) is rejected: the test can tell the two apart.
    assert _ks(r2, torch.special.gammainc(a - 0.5, r2 / 2)) > bound
    # Weighted by c_d / |u|, the draws have the moments of N(0, I_d), within 4.5 standard errors.
    w = chi_mean(d) / r2.sqrt()
    for value, exact in ((w, 1.0), (w * r2, d), (w * u[:, 2] ** 2, 1.0), (w * r2 * r2, d * (d + 2))):
        assert abs(float(value.mean()) - exact) < 4.5 * float(value.std()) / math.sqrt(value.numel())
    # Unweighted they do not (E |u|^2 = d + 1).
    assert float(r2.mean()) - d > 4.5 * float(r2.std()) / math.sqrt(r2.numel())


def test_gradient_weights_sum_to_each_block_and_do_not_depend_on_the_split() -> None:
    d, total = 6, 20  # blocks of 6, 6, 6 and 2 draws
    stream = _stream(Gaussian(), 2, d, total, tilted=True)
    u = stream.take(0, total)
    v = stream.gradient_weights(0, total)
    w = chi_mean(d) / u.norm(dim=-1)
    for start, stop in ((0, 6), (6, 12), (12, 18), (18, 20)):
        m = stop - start
        torch.testing.assert_close(v[:, start:stop].sum(1), torch.full((2,), float(m), dtype=v.dtype))
        excess = w[:, start:stop] - 1
        expected = w[:, start:stop] - (excess.sum(1, keepdim=True) - excess) / (m - 1)
        torch.testing.assert_close(v[:, start:stop], expected)
    assert not torch.allclose(v, torch.ones_like(v))
    for sizes in ([1] * total, [7, 5, 8], [3, 17]):
        split, parts, start = _stream(Gaussian(), 2, d, total, tilted=True), [], 0
        for size in sizes:
            split.take(start, start + size)
            parts.append(split.gradient_weights(start, start + size))
            start += size
        assert torch.equal(torch.cat(parts, dim=1), v), sizes


def test_tilted_radii_only_for_the_gaussian_from_tilt_min_dim_to_tilt_max_dim_features() -> None:
    def tilted(kernel: Kernel, dim: int, sampling: str = "orthogonal") -> bool:
        sampler = AntitheticSampler(kernel, 1, dim, 0, CPU, torch.float64, 4 * dim, sampling)
        return isinstance(sampler.stream, OrthogonalStream) and sampler.stream.tilted

    assert (_sampling._TILT_MIN_DIM, _sampling._TILT_MAX_DIM) == (5, 256)
    assert tilted(Gaussian(), 5) and tilted(Gaussian(), 255)
    assert not tilted(Gaussian(), 4) and not tilted(Gaussian(), 256) and not tilted(Gaussian(), 784)
    assert not tilted(Poisson(), 10) and not tilted(Gaussian(), 10, "iid")
    with pytest.raises(ValueError, match="Gaussian"):
        OrthogonalStream(Poisson(), 1, 6, 0, CPU, torch.float64, 6, tilted=True)


def test_product_kernels_refuse_orthogonal() -> None:
    net = torch.nn.Linear(4, 1)
    for kernel in ("hyperbolic", "sigmoid"):
        sh = SmoothHess(net, kernel=kernel)
        with pytest.raises(ValueError, match=r"^sampling"):
            sh.attribute(torch.randn(2, 4), stdevs=0.3, n_samples=20, sampling="orthogonal")
        # Their default is iid.
        a = sh.attribute(torch.randn(2, 4, generator=gen(0)), stdevs=0.3, n_samples=20, generator=gen(1))
        b = sh.attribute(
            torch.randn(2, 4, generator=gen(0)), stdevs=0.3, n_samples=20, generator=gen(1), sampling="iid"
        )
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"^sampling"):
        SmoothHess(net).attribute(torch.randn(2, 4), n_samples=20, sampling="sobol")


@pytest.mark.parametrize(
    ("dim", "n", "expected"),
    [(8, 16, "orthogonal"), (8, 40, "orthogonal"), (8, 14, "iid"), (8, 2, "iid")],
)
def test_default_is_orthogonal_once_a_full_rotation_is_drawn(dim: int, n: int, expected: str) -> None:
    """``d`` antithetic pairs (2 d calls) hold a full rotation: the default is orthogonal from there."""
    torch.manual_seed(0)  # a fixed net: with few calls, a net whose units all keep their sign gives H = 0
    net = torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    x = torch.randn(2, dim, generator=gen(0))
    default = SmoothHess(net).attribute(x, stdevs=1.0, n_samples=n, generator=gen(1))
    chosen = SmoothHess(net).attribute(x, stdevs=1.0, n_samples=n, generator=gen(1), sampling=expected)
    other = "iid" if expected == "orthogonal" else "orthogonal"
    different = SmoothHess(net).attribute(x, stdevs=1.0, n_samples=n, generator=gen(1), sampling=other)
    assert bool((default != 0).any())
    assert torch.equal(default, chosen) and not torch.equal(default, different)


def test_default_is_iid_where_a_block_cannot_hold_a_full_rotation() -> None:
    from captum_smoothhess._sampling import resolve_sampling

    full = max(d for d in range(5000, 7000) if orthogonal_block_length(d) == d)
    assert resolve_sampling(None, Gaussian(), full, 10 * full) == "orthogonal"
    assert resolve_sampling(None, Poisson(), full + 1, 10 * full) == "iid"
    assert resolve_sampling(None, Gaussian(), 150528, 10**6) == "iid"
    assert resolve_sampling("orthogonal", Gaussian(), 150528, 10) == "orthogonal"  # asked for: kept


# --------------------------------------------------------------------------- the estimate


def _errors(
    relu: OneHiddenReLU, x: torch.Tensor, kernel: str, sampling: str, n: int, seeds: int
) -> torch.Tensor:
    ref = relu.gaussian_hessian(x, EPS) if kernel == "gaussian" else relu.poisson_hessian(x, EPS)
    sh = SmoothHess(relu.net, kernel=kernel)
    out = [
        sh.attribute(x, stdevs=EPS, n_samples=n, sampling=sampling, generator=gen(s)) - ref
        for s in range(seeds)
    ]
    return torch.stack(out)


@pytest.mark.parametrize("kernel", ["gaussian", "poisson"])
def test_orthogonal_is_unbiased(relu10: OneHiddenReLU, x10: torch.Tensor, kernel: str) -> None:
    err = _errors(relu10, x10, kernel, "orthogonal", 40, 200)
    mean, spread = err.mean(0), err.std(0) / math.sqrt(err.shape[0])
    # The mean of 200 estimates is within 4.5 of its standard errors of the closed form, every entry.
    assert float((mean.abs() / spread).max()) < 4.5


@pytest.mark.parametrize(("kernel", "bound"), [("gaussian", 2.5), ("poisson", 1.5)])
def test_orthogonal_reduces_the_error_variance(
    relu10: OneHiddenReLU, x10: torch.Tensor, kernel: str, bound: float
) -> None:
    """n = 40 d gradient calls (20 blocks of d pairs): loose bounds on the measured 2.9x (Gaussian,
    2.4x without the tilted radii, which fails this bound) and 2.0x (Poisson)."""
    mse = {s: float((_errors(relu10, x10, kernel, s, 400, 30) ** 2).sum()) for s in ("iid", "orthogonal")}
    assert mse["iid"] / mse["orthogonal"] > bound


@pytest.mark.parametrize("shared", [False, True], ids=["own rotations", "shared rotations"])
def test_tilted_gradient_is_unbiased(
    relu10: OneHiddenReLU, x10: torch.Tensor, shared: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 seeds against the closed form; shared: 80 calls, one group of 4 blocks sharing a rotation."""
    if shared:
        monkeypatch.setattr(_sampling, "_SHARE_MIN_DIM", 2)
    sh = SmoothHess(relu10.net)
    ref = relu10.gaussian_gradient(x10, EPS)
    err = torch.stack(
        [
            sh.attribute(
                x10, stdevs=EPS, n_samples=80 if shared else 40, generator=gen(s), return_gradient=True
            )[1]
            - ref
            for s in range(200)
        ]
    )
    mean, spread = err.mean(0), err.std(0) / math.sqrt(err.shape[0])
    assert float((mean.abs() / spread).max()) < 4.5


def test_tilted_weights_keep_a_constant_gradient_exact() -> None:
    """Each block's gradient weights sum to its draws: a linear model's smoothed gradient is exact.
    (The importance weights alone, c_d / |u|, would give it times their random mean.)"""
    net = torch.nn.Linear(8, 1).double()
    x = torch.randn(3, 8, generator=gen(0), dtype=torch.float64)
    for n in (16, 48, 52):  # whole blocks of 8 pairs, and a last block of 2 pairs
        h, g = SmoothHess(net).attribute(x, stdevs=0.5, n_samples=n, generator=gen(1), return_gradient=True)
        torch.testing.assert_close(g, net.weight.expand(3, 8), rtol=1e-12, atol=1e-12)
        assert float(h.abs().max()) == 0.0


def test_tilted_radii_reduce_the_hessian_error_and_keep_the_gradients(
    relu10: OneHiddenReLU, x10: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measured on this oracle (n = 400, 200 seeds): Hessian error variance 1.26x smaller than with
    chi_d radii, the smoothed gradient's 1.03x larger. Loose bounds, 60 seeds."""
    sh = SmoothHess(relu10.net)
    ref, gref = relu10.gaussian_hessian(x10, EPS), relu10.gaussian_gradient(x10, EPS)

    def mse() -> tuple[float, float]:
        out = [
            sh.attribute(x10, stdevs=EPS, n_samples=400, generator=gen(s), return_gradient=True)
            for s in range(60)
        ]
        return (
            float(sum(((h - ref) ** 2).sum() for h, _ in out)),
            float(sum(((g - gref) ** 2).sum() for _, g in out)),
        )

    tilted = mse()
    monkeypatch.setattr(_sampling, "_TILT_MIN_DIM", 10**9)
    plain = mse()
    assert plain[0] / tilted[0] > 1.1
    assert tilted[1] / plain[1] < 1.25


@pytest.mark.parametrize("shared", [False, True], ids=["own rotations", "shared rotations"])
@pytest.mark.parametrize("kernel", ["gaussian", "poisson"])
def test_same_seed_same_result_for_any_chunk_size(
    relu10: OneHiddenReLU, x10: torch.Tensor, kernel: str, shared: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shared (threshold lowered): 70 draws of d = 10, one group of 7 blocks sharing a rotation."""
    if shared:
        monkeypatch.setattr(_sampling, "_SHARE_MIN_DIM", 2)
    n = 140 if shared else 64
    sh = SmoothHess(relu10.net, kernel=kernel)
    ref, gref = sh.attribute(x10, stdevs=EPS, n_samples=n, generator=gen(5), return_gradient=True)
    for chunk in (2, 6, 20, 30, 60):
        h, g = sh.attribute(
            x10, stdevs=EPS, n_samples=n, generator=gen(5), return_gradient=True, n_samples_batch_size=chunk
        )
        torch.testing.assert_close(h, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g, gref, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- noise tunnels


def test_tunnel_sampling_opt_in() -> None:
    from captum.attr import Saliency

    from captum_smoothhess import KernelNoiseTunnel
    from captum_smoothhess._sampling import noise_stream

    anti = noise_stream(Poisson(), 2, 5, 1, CPU, torch.float64, "orthogonal_antithetic").take(0, 12)
    assert torch.equal(anti[:, 1::2], -anti[:, 0::2])
    block = anti[0, 0:10:2]
    gram = block @ block.T
    assert torch.allclose(gram, torch.diag(gram.diagonal()), atol=1e-10)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).double()
    x = torch.randn(3, 5, generator=gen(0), dtype=torch.float64)
    for sampling in ("antithetic", "orthogonal", "orthogonal_antithetic"):
        nt = KernelNoiseTunnel(Saliency(net), sampling=sampling)
        ref = nt.attribute(x, nt_samples=14, stdevs=0.3, target=0, abs=False, generator=gen(2))
        got = nt.attribute(
            x, nt_samples=14, nt_samples_batch_size=3, stdevs=0.3, target=0, abs=False, generator=gen(2)
        )
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
        plain = KernelNoiseTunnel(Saliency(net)).attribute(
            x, nt_samples=14, stdevs=0.3, target=0, abs=False, generator=gen(2)
        )
        assert not torch.allclose(plain, ref)
    with pytest.raises(ValueError, match=r"^sampling"):
        KernelNoiseTunnel(Saliency(net), kernel="sigmoid", sampling="orthogonal")
    with pytest.raises(ValueError, match=r"^sampling"):
        KernelNoiseTunnel(Saliency(net), sampling="sobol")


@pytest.mark.parametrize("d", [1, 2, 5, 6, 9])
def test_lower_gaussian_reads_each_normal_once(d: int) -> None:
    """The entries on and below the diagonal are d (d + 1) / 2 distinct standard normal draws (none
    used twice, as the diagonal of the trailing block would be without its fresh draw); above it, no
    garbage (zeros or normals)."""
    n = 4000
    gauss = _lower_gaussian(n, d, gen(4), torch.device("cpu"), torch.float64)
    rows, cols = torch.tril_indices(d, d)
    lower = gauss[:, rows, cols]
    assert lower.shape == (n, d * (d + 1) // 2)
    assert torch.unique(lower[0]).numel() == lower.shape[1]
    assert bool(torch.isfinite(gauss).all())
    pooled = lower.flatten()
    normal = torch.distributions.Normal(0.0, 1.0)
    ecdf = torch.arange(1, pooled.numel() + 1, dtype=torch.float64) / pooled.numel()
    assert float((normal.cdf(pooled.sort().values) - ecdf).abs().max()) < 1.95 / math.sqrt(pooled.numel())
    # Entries are uncorrelated with each other across draws (a reuse would give correlation 1).
    if lower.shape[1] > 1:
        corr = torch.corrcoef(lower.T)
        off = corr - torch.diag(torch.diagonal(corr))
        assert float(off.abs().max()) < 5 / math.sqrt(n)
