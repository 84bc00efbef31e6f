"""Kernels: exact samplers against their CDFs and moments, scores against autograd."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import gen, ks2

from captum_smoothhess import SmoothHess
from captum_smoothhess.kernels import (
    Gaussian,
    Hyperbolic,
    Kernel,
    Poisson,
    Rect,
    Sigmoid,
    get_kernel,
)

UNIT_VARIANCE = [Gaussian(), Hyperbolic(0.3), Hyperbolic(1.0), Hyperbolic(8.0), Sigmoid(), Rect()]
ALL = [*UNIT_VARIANCE, Poisson()]
WITH_SCORE = [Gaussian(), Poisson(), Hyperbolic(0.5), Hyperbolic(3.0), Sigmoid()]


def _ks(samples: torch.Tensor, cdf: torch.Tensor) -> float:
    """Kolmogorov-Smirnov distance of sorted samples to the model CDF at them."""
    n = samples.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    cdf = cdf.to(torch.float64)
    return float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())


@pytest.mark.parametrize("kernel", ALL, ids=repr)
def test_marginal_matches_cdf(kernel: Kernel) -> None:
    n = 40_000
    u = kernel.sample(n // 4, 4, generator=gen(1), dtype=torch.float64).reshape(-1)
    s, _ = torch.sort(u)
    # 1.95 / sqrt(n) is the 0.1% critical value of the KS statistic.
    assert _ks(s, kernel.marginal_cdf(s)) < 1.95 / math.sqrt(n)


@pytest.mark.parametrize("kernel", UNIT_VARIANCE, ids=repr)
def test_unit_variance_zero_mean(kernel: Kernel) -> None:
    u = kernel.sample(100_000, 3, generator=gen(2), dtype=torch.float64)
    # Tolerances: 5 standard errors of the mean and of the variance.
    kurt_bound = 6.0  # all kernels here have excess kurtosis below 6
    se_var = math.sqrt((2 + kurt_bound) / u.numel())
    assert abs(float(u.mean())) < 5 / math.sqrt(u.numel())
    assert abs(float(u.var()) - 1) < 5 * se_var


def test_rect_support_and_hyperbolic_limits() -> None:
    assert float(Rect().sample(10_000, 2, generator=gen(0)).abs().max()) <= math.sqrt(3)
    t = torch.linspace(-4, 4, 81, dtype=torch.float64)
    # alpha -> inf tends to the Gaussian; small alpha has heavier (Laplace-like) tails.
    gauss = Gaussian().marginal_cdf(t)
    assert float((Hyperbolic(400.0).marginal_cdf(t) - gauss).abs().max()) < 2e-3
    assert float(Hyperbolic(0.05).marginal_cdf(torch.tensor([-3.0], dtype=torch.float64))) > float(
        Gaussian().marginal_cdf(torch.tensor([-3.0], dtype=torch.float64))
    )


def test_poisson_is_radial_multivariate_cauchy() -> None:
    stats = pytest.importorskip("scipy.stats")
    d, n = 6, 20_000
    u = Poisson().sample(n, d, generator=gen(3), dtype=torch.float64)
    # |u|^2 / d follows an F(d, 1) distribution for the multivariate Cauchy.
    r, _ = torch.sort((u * u).sum(1) / d)
    cdf = torch.from_numpy(stats.f.cdf(r.numpy(), d, 1))
    assert _ks(r, cdf) < 1.95 / math.sqrt(n)
    # Directions are uniform: the mean direction vanishes.
    dirs = u / u.norm(dim=1, keepdim=True)
    assert float(dirs.mean(0).norm()) < 5 / math.sqrt(n)


@pytest.mark.parametrize("kernel", WITH_SCORE, ids=repr)
@pytest.mark.parametrize("dim", [1, 5])
def test_score_is_minus_grad_log_density(kernel: Kernel, dim: int) -> None:
    u = (3 * torch.randn(64, dim, generator=gen(4), dtype=torch.float64)).requires_grad_()
    (grad,) = torch.autograd.grad(kernel.log_prob(u).sum(), u)
    torch.testing.assert_close(kernel.score(u.detach()), -grad)


@pytest.mark.parametrize("kernel", ALL, ids=repr)
def test_log_prob_normalised(kernel: Kernel) -> None:
    t = torch.linspace(-200, 200, 400_001, dtype=torch.float64)
    dens = kernel.log_prob(t[:, None]).exp()
    mass = float(torch.trapezoid(dens, t))
    tail = 0.0 if kernel.variance < math.inf else 2 / (math.pi * 200)  # Cauchy mass beyond +-200
    assert abs(mass + tail - 1) < 2e-3


@pytest.mark.parametrize("kernel", ALL, ids=repr)
def test_generator_reproducible_and_dtype(kernel: Kernel) -> None:
    a = kernel.sample(50, 7, generator=gen(5), dtype=torch.float64)
    b = kernel.sample(50, 7, generator=gen(5), dtype=torch.float64)
    c = kernel.sample(50, 7, generator=gen(6), dtype=torch.float64)
    assert a.shape == (50, 7) and a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(0)
    d = kernel.sample(4, 2)
    torch.manual_seed(0)
    assert torch.equal(d, kernel.sample(4, 2)) and d.dtype == torch.float32


def test_rect_has_no_score() -> None:
    assert not Rect().has_score and Gaussian().has_score
    with pytest.raises(NotImplementedError, match="no score"):
        Rect().score(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="kernel"):
        SmoothHess(torch.nn.Linear(2, 1), kernel=Rect())
    with pytest.raises(ValueError, match="kernel"):
        SmoothHess(torch.nn.Linear(2, 1), kernel="rect")


def test_names_and_errors() -> None:
    assert get_kernel("Gaussian") == Gaussian()
    assert isinstance(get_kernel(" POISSON "), Poisson)
    assert get_kernel("logistic") == Sigmoid()
    assert Hyperbolic(2.0) == Hyperbolic(2.0) and Hyperbolic(2.0) != Hyperbolic(3.0)
    with pytest.raises(ValueError, match="kernel: unknown kernel 'laplace'"):
        get_kernel("laplace")
    with pytest.raises(TypeError, match="kernel"):
        get_kernel(3)  # type: ignore[arg-type]
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            Hyperbolic(bad)


def test_user_subclass_is_usable_by_smoothhess() -> None:
    class Logistic2(Kernel):
        """A user kernel: the logistic density with unit scale."""

        name = "logistic2"
        variance = math.pi**2 / 3

        def sample(self, n, dim, *, generator=None, device=None, dtype=None):  # type: ignore[no-untyped-def]
            p = torch.rand(n, dim, generator=generator, device=device, dtype=dtype).clamp(1e-7, 1 - 1e-7)
            return torch.log(p) - torch.log1p(-p)

        def score(self, u: torch.Tensor) -> torch.Tensor:
            return torch.tanh(u / 2)

    net = torch.nn.Linear(3, 1)
    hess = SmoothHess(net, kernel=Logistic2()).attribute(
        torch.zeros(1, 3), stdevs=0.5, n_samples=64, generator=gen(0)
    )
    # A linear function has zero Hessian; antithetic pairs make the estimate exactly 0.
    assert torch.count_nonzero(hess) == 0


@pytest.mark.parametrize("alpha", [0.3, 3.0])
def test_hyperbolic_float32_sampler_matches_cdf(alpha: float) -> None:
    # The rejection step runs in float32 for float32 noise: check that precision too.
    kernel, n = Hyperbolic(alpha), 40_000
    u = kernel.sample(n // 4, 4, generator=gen(5), dtype=torch.float32)
    assert u.dtype == torch.float32
    s, _ = torch.sort(u.reshape(-1).to(torch.float64))
    assert _ks(s, kernel.marginal_cdf(s)) < 1.95 / math.sqrt(n)


# Half precision: samplers draw in float32 and round; scores do not overflow.

HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("alpha", [0.01, 1.0])
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_hyperbolic_score_half_precision(alpha: float, dtype: torch.dtype) -> None:
    kernel = Hyperbolic(alpha)
    # The kernel's own draws: at alpha = 0.01 about one float16 draw in 12 used to score 0.
    u = kernel.sample(10_000, 1, generator=gen(0), dtype=dtype)
    u = torch.cat([u, torch.tensor([[300.0], [-300.0], [torch.finfo(dtype).max]], dtype=dtype)])
    got, ref = kernel.score(u), kernel.score(u.to(torch.float64))
    assert got.dtype == dtype and bool(torch.isfinite(got).all())
    assert not bool(((got == 0) & (ref.abs() > 1e-3)).any())
    # Rounding of the result only: half of the dtype's eps, relative.
    tol = torch.finfo(dtype).eps
    assert float(((got.to(torch.float64) - ref).abs() / ref.abs().clamp(min=1e-3)).max()) < tol


@pytest.mark.parametrize("alpha", [0.01, 1.0, 8.0])
def test_hyperbolic_score_huge_and_float32_unchanged(alpha: float) -> None:
    kernel = Hyperbolic(alpha)
    big = torch.tensor([1e20, -1e20, 3e38, -math.inf, math.inf], dtype=torch.float32)
    ref = kernel.score(big.to(torch.float64).clamp(-1e300, 1e300)).to(torch.float32)
    torch.testing.assert_close(kernel.score(big), ref, rtol=1e-6, atol=0)
    # Where nothing overflows the float32 and float64 scores are the closed form, bit for bit.
    s2 = kernel._sd**2
    for dt in (torch.float32, torch.float64):
        u = 3 * torch.randn(1000, 4, generator=gen(1), dtype=dt)
        assert torch.equal(kernel.score(u), kernel.alpha * s2 * u / torch.sqrt(1 + s2 * u * u))


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_poisson_half_draws_finite_and_capped(dtype: torch.dtype) -> None:
    kernel, n, d = Poisson(), 20_000, 50
    u = kernel.sample(n, d, generator=gen(0), dtype=dtype)
    wide = kernel.sample(n, d, generator=gen(0), dtype=torch.float32)
    assert u.dtype == dtype and bool(torch.isfinite(u).all())
    assert bool(torch.isfinite(kernel.score(u)).all())
    # Draws below the cap are the float32 draws rounded; those above keep their direction, norm = cap.
    cap = torch.finfo(dtype).max / 16
    norm = wide.norm(dim=1)
    low = norm < cap
    assert torch.equal(u[low], wide[low].to(dtype))
    assert float(u.float().norm(dim=1).max()) <= cap * (1 + 2 * torch.finfo(dtype).eps)
    if dtype == torch.float16:
        # About 1.4e-3 of the draws at d = 50 (F(d, 1) tail): some, not many.
        assert 0 < int((~low).sum()) < 0.003 * n
        capped = u[~low].float()
        torch.testing.assert_close(capped.norm(dim=1), torch.full_like(capped[:, 0], cap), rtol=2e-3, atol=0)
        cos = (capped * wide[~low]).sum(1) / (capped.norm(dim=1) * norm[~low])
        assert float(cos.min()) > 1 - 1e-3


@pytest.mark.parametrize("kernel", [Sigmoid(), Rect()], ids=repr)
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_samples_symmetric_and_exact_up_to_rounding(kernel: Kernel, dtype: torch.dtype) -> None:
    n = 1_000_000  # bfloat16 draws on its own rand grid were off by 10 standard errors of the mean here
    u = kernel.sample(n, 1, generator=gen(0), dtype=dtype)
    assert u.dtype == dtype
    u = u.to(torch.float64)
    assert abs(float(u.mean())) < 4 / math.sqrt(n)
    ref = kernel.sample(n, 1, generator=gen(1), dtype=torch.float64).to(dtype)
    # 1.95 sqrt(2 / n): the 0.1% critical value of the two-sample KS statistic.
    assert ks2(u, ref) < 1.95 * math.sqrt(2 / n)
    if isinstance(kernel, Sigmoid):
        # Both tails beyond 3 hold their exact mass (about 0.0043 each), within 5 standard errors.
        p = float(1 - kernel.marginal_cdf(torch.tensor(3.0, dtype=torch.float64)))
        se = math.sqrt(p / n)
        assert abs(float((u > 3).double().mean()) - p) < 5 * se
        assert abs(float((u < -3).double().mean()) - p) < 5 * se


@pytest.mark.parametrize("kernel", ALL, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_empty_samples(kernel: Kernel, dtype: torch.dtype) -> None:
    for n, dim in ((0, 3), (3, 0), (0, 0)):
        u = kernel.sample(n, dim, generator=gen(0), dtype=dtype)
        assert u.shape == (n, dim) and u.dtype == dtype


@pytest.mark.parametrize("kernel", ALL, ids=repr)
def test_integer_dtype_refused(kernel: Kernel) -> None:
    # torch's samplers refuse integer dtypes (NotImplementedError, a RuntimeError); every kernel does.
    with pytest.raises(RuntimeError, match="not implemented for 'Long'"):
        kernel.sample(2, 2, generator=gen(0), dtype=torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_full_precision_draws_are_the_closed_forms(dtype: torch.dtype) -> None:
    # The half-precision paths leave float32 and float64 draws as they were, bit for bit.
    g = torch.randn(50, 8, generator=gen(7), dtype=dtype)
    assert torch.equal(Poisson().sample(50, 7, generator=gen(7), dtype=dtype), g[:, :7] / g[:, 7:].abs())
    p = torch.rand(50, 7, generator=gen(7), dtype=dtype)
    assert torch.equal(Rect().sample(50, 7, generator=gen(7), dtype=dtype), math.sqrt(3) * (2 * p - 1))
    p = torch.where(p > 0, p, torch.full_like(p, 0.5 * torch.finfo(dtype).eps))
    sig = Sigmoid._s * (torch.log(p) - torch.log1p(-p))
    assert torch.equal(Sigmoid().sample(50, 7, generator=gen(7), dtype=dtype), sig)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel", ALL, ids=repr)
def test_log_prob_in_half_precision_is_the_rounded_float64_value(kernel: Kernel, dtype: torch.dtype) -> None:
    """Squares of half-precision points overflow float16 from about 256: the log-density is evaluated in
    float32 and rounded (it was -inf for Gaussian, Poisson and Hyperbolic points at 300)."""
    u = torch.tensor([[0.0, 1.5], [-3.0, 300.0], [1.0, -1.0], [250.0, 100.0]], dtype=dtype)
    want = kernel.log_prob(u.double())
    got = kernel.log_prob(u)
    assert got.dtype == dtype
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite)
    torch.testing.assert_close(got[finite].double(), want[finite], rtol=1e-2, atol=0.0)


def test_log_prob_of_integer_points_is_floating() -> None:
    got = Gaussian().log_prob(torch.tensor([[3, 4]]))
    assert got.is_floating_point()
    assert float(got) == pytest.approx(-12.5 - math.log(2 * math.pi))


def test_poisson_score_at_infinity_is_its_limit_zero() -> None:
    u = torch.tensor([[math.inf, 1.0, -2.0], [-math.inf, math.inf, 0.0], [math.nan, 1.0, 1.0]])
    s = Poisson().score(u)
    assert torch.equal(s[:2], torch.zeros(2, 3))
    assert bool(s[2].isnan().all())  # NaN stays NaN
    finite = torch.tensor([[1.0, 2.0, -3.0]])
    assert torch.equal(Poisson().score(finite), 4 * finite / 15)
