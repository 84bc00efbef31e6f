"""Tests of KernelNoiseTunnel: drop-in equality with NoiseTunnel, kernel oracles, errors."""

from __future__ import annotations

import math
from typing import Any, Tuple

import numpy as np
import pytest
import torch
from captum.attr import (
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from captum.metrics import infidelity, sensitivity_max
from torch import Tensor, nn

from captum_smoothhess.kernels import Gaussian, Hyperbolic, Poisson, Rect, Sigmoid
from captum_smoothhess.noise_tunnel import _CALLS, KernelNoiseTunnel
from captum_smoothhess.noisegrad import FusionGrad, NoiseGrad

KERNELS = [Gaussian(), Poisson(), Hyperbolic(0.5), Sigmoid(), Rect()]


def _mlp(d: int = 5, out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, out))


class _TwoInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Linear(3, 6)
        self.b = nn.Linear(4, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: Tensor, y: Tensor, scale: Any = 1.0) -> Tensor:
        y = y.reshape(y.shape[0], -1)
        return self.head(torch.relu(self.a(x) + self.b(y))) * scale


def _half_square(x: Tensor) -> Tensor:
    # grad = x: Saliency(abs=False) of one sample returns the noisy input itself.
    return 0.5 * (x.reshape(x.shape[0], -1) ** 2).sum(1)


def _half_square2(x: Tensor, y: Tensor) -> Tensor:
    return _half_square(x) + _half_square(y)


def _same(a: Any, b: Any) -> None:
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for p, q in zip(a, b):
            _same(p, q)
    else:
        assert torch.equal(a, b), (a - b).abs().max()


# -- drop-in equality with NoiseTunnel -----------------------------------------


@pytest.mark.parametrize("method", [Saliency, InputXGradient, IntegratedGradients])
@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("batch_size", [None, 3])
def test_gaussian_equals_noise_tunnel(method: Any, nt_type: str, batch_size: Any) -> None:
    net = _mlp()
    x = torch.randn(4, 5)
    kw = dict(nt_type=nt_type, nt_samples=7, nt_samples_batch_size=batch_size, stdevs=0.3, target=1)
    torch.manual_seed(11)
    expected = NoiseTunnel(method(net)).attribute(x, **kw)
    torch.manual_seed(11)
    got = KernelNoiseTunnel(method(net)).attribute(x, **kw)
    _same(got, expected)


@pytest.mark.parametrize("method", [Saliency, InputXGradient, IntegratedGradients])
def test_gaussian_equals_noise_tunnel_tuple_inputs(method: Any) -> None:
    model = _TwoInput()
    inputs = (torch.randn(3, 3), torch.randn(3, 2, 2))
    scale = torch.rand(3, 1) + 0.5
    kw: dict = dict(
        nt_type="vargrad",
        nt_samples=5,
        nt_samples_batch_size=2,
        stdevs=(0.2, 0.4),
        target=torch.tensor([0, 1, 0]),
        additional_forward_args=(scale,),
    )
    torch.manual_seed(3)
    expected = NoiseTunnel(method(model)).attribute(inputs, **kw)
    torch.manual_seed(3)
    got = KernelNoiseTunnel(method(model)).attribute(inputs, **kw)
    assert isinstance(got, tuple) and len(got) == 2
    _same(got, expected)


def test_convergence_delta_and_baseline_distribution_equal_noise_tunnel() -> None:
    net = _mlp()
    x = torch.randn(3, 5)
    baselines = torch.randn(6, 5)
    kw: dict = dict(
        nt_samples=5,
        nt_samples_batch_size=2,
        stdevs=0.1,
        target=2,
        baselines=baselines,
        draw_baseline_from_distrib=True,
        return_convergence_delta=True,
    )
    torch.manual_seed(5)
    np.random.seed(5)  # noqa: NPY002
    expected = NoiseTunnel(IntegratedGradients(net)).attribute(x, **kw)
    torch.manual_seed(5)
    np.random.seed(5)  # noqa: NPY002
    got = KernelNoiseTunnel(IntegratedGradients(net)).attribute(x, **kw)
    _same(got, expected)
    assert got[1].shape == (15,)  # Captum returns one delta per noisy sample


def test_stdevs_zero_and_int_accepted() -> None:
    net = _mlp()
    x = torch.randn(2, 5, requires_grad=True)
    plain = Saliency(net).attribute(x, target=0)
    out = KernelNoiseTunnel(Saliency(net)).attribute(x, nt_samples=3, stdevs=0, target=0)
    torch.testing.assert_close(out, plain)  # mean of 3 equal values: rounding only
    for kernel in KERNELS:
        out = KernelNoiseTunnel(Saliency(net), kernel).attribute(
            x, nt_samples=3, stdevs=0.0, target=0, generator=torch.Generator().manual_seed(0)
        )
        torch.testing.assert_close(out, plain)
    torch.manual_seed(0)
    a = KernelNoiseTunnel(Saliency(net)).attribute(x, nt_samples=3, stdevs=1, target=0)
    torch.manual_seed(0)
    b = NoiseTunnel(Saliency(net)).attribute(x, nt_samples=3, stdevs=1.0, target=0)
    assert torch.equal(a, b)


# -- kernels -------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS, ids=repr)
def test_smoothed_relu_derivative_is_kernel_cdf(kernel: Any) -> None:
    # d/dx E[relu(x + eps u)] = P(u > -x / eps) = CDF(x / eps) for symmetric kernels.
    eps = 0.7
    grid = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64).unsqueeze(0)
    n = 4000
    nt = KernelNoiseTunnel(Saliency(lambda x: torch.relu(x).sum(1)), kernel)
    got = nt.attribute(
        grid,
        nt_samples=n,
        nt_samples_batch_size=1500,
        stdevs=eps,
        abs=False,
        generator=torch.Generator().manual_seed(1),
    )
    expected = kernel.marginal_cdf(grid / eps)
    tol = 5 * torch.sqrt(expected * (1 - expected) / n) + 1e-3
    assert bool(((got - expected).abs() <= tol).all()), (got, expected)


def test_poisson_spans_all_features_of_a_tuple_input() -> None:
    x = torch.randn(3, 2)
    y = torch.randn(3, 2, 2)
    gen = torch.Generator().manual_seed(4)
    nt = KernelNoiseTunnel(Saliency(_half_square2), "poisson")
    gx, gy = nt.attribute((x, y), nt_samples=1, stdevs=0.5, abs=False, generator=gen)
    joint = torch.cat([x, y.reshape(3, -1)], 1)
    nt1 = KernelNoiseTunnel(Saliency(_half_square), "poisson")
    g = nt1.attribute(joint, nt_samples=1, stdevs=0.5, abs=False, generator=gen.manual_seed(4))
    torch.testing.assert_close(torch.cat([gx, gy.reshape(3, -1)], 1), g)
    # The noise is one draw of a 6-d multivariate Cauchy per example, not
    # six independent ones: u = g / |z| shares the scalar |z|, so on a
    # large sample the per-example noise norms follow the radial law
    # P(|u| <= r) = P(chi2_6 / z^2 <= r^2), heavy-tailed jointly.
    big = torch.zeros(4000, 6)
    u = KernelNoiseTunnel(Saliency(_half_square), "poisson").attribute(
        big, nt_samples=1, stdevs=1.0, abs=False, generator=torch.Generator().manual_seed(0)
    )
    coords_large = (u.abs() > 3).sum(1)
    # Under a radial law large coordinates co-occur far more often than under
    # independent Cauchy coordinates (where P(all six > 3) ~ 0.205^6 ~ 7e-5).
    assert (coords_large == 6).float().mean() > 0.01


def test_per_feature_stdevs_and_tuple_stdevs() -> None:
    x = torch.zeros(2, 4)
    std = torch.tensor([0.0, 1.0, 0.0, 2.0])
    u = KernelNoiseTunnel(Saliency(_half_square), "sigmoid").attribute(
        x, nt_samples=1, stdevs=std, abs=False, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(u[:, [0, 2]], torch.zeros(2, 2))
    assert bool((u[:, [1, 3]] != 0).all())
    gx, gy = KernelNoiseTunnel(Saliency(_half_square2), "rect").attribute(
        (torch.zeros(2, 3), torch.zeros(2, 3)),
        nt_samples=1,
        stdevs=(0.0, 1.0),
        abs=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(gx, torch.zeros(2, 3))
    assert bool((gy.abs() <= math.sqrt(3)).all()) and bool((gy != 0).all())


@pytest.mark.parametrize("kernel", [Gaussian(), Poisson()], ids=repr)
def test_generator_reproducible_and_batch_size_invariant(kernel: Any) -> None:
    net = _mlp()
    x = torch.randn(3, 5)

    def run(bs: Any, seed: int = 0) -> Tensor:
        return KernelNoiseTunnel(Saliency(net), kernel).attribute(
            x,
            nt_samples=9,
            nt_samples_batch_size=bs,
            stdevs=0.3,
            target=0,
            nt_type="vargrad",
            generator=torch.Generator().manual_seed(seed),
        )

    a = run(None)
    assert torch.equal(a, run(None))
    torch.testing.assert_close(run(2), a)
    torch.testing.assert_close(run(4), a)
    assert not torch.equal(run(None, seed=1), a)
    # The global RNG is not consumed when a generator is given.
    torch.manual_seed(0)
    run(None)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after)


def test_kernel_path_reproducible_from_global_seed() -> None:
    net = _mlp()
    x = torch.randn(3, 5)
    nt = KernelNoiseTunnel(Saliency(net), Hyperbolic())
    torch.manual_seed(2)
    a = nt.attribute(x, nt_samples=4, stdevs=0.3, target=0)
    torch.manual_seed(2)
    assert torch.equal(nt.attribute(x, nt_samples=4, stdevs=0.3, target=0), a)


def test_baseline_draws_reproducible_from_generator() -> None:
    net = _mlp()
    x = torch.randn(3, 5)
    baselines = torch.randn(10, 5)
    nt = KernelNoiseTunnel(IntegratedGradients(net), Sigmoid())

    def run() -> Tensor:
        return nt.attribute(
            x,
            nt_samples=4,
            stdevs=0.1,
            target=0,
            baselines=baselines,
            draw_baseline_from_distrib=True,
            n_steps=5,
            generator=torch.Generator().manual_seed(7),
        )

    np.random.seed(0)  # noqa: NPY002
    a = run()
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    np.random.seed(1)  # noqa: NPY002
    assert torch.equal(run(), a)
    np.random.seed(0)  # noqa: NPY002
    run()
    assert np.array_equal(np.random.get_state()[1], state)  # numpy RNG restored  # noqa: NPY002


_DISTRIB_TUNNELS = {
    "kernel_poisson": lambda m: KernelNoiseTunnel(IntegratedGradients(m), kernel="poisson"),
    "noisegrad": lambda m: NoiseGrad(IntegratedGradients(m)),
    "fusiongrad": lambda m: FusionGrad(IntegratedGradients(m)),
}


@pytest.mark.parametrize("seeded", [True, False], ids=["generator", "global_rng"])
@pytest.mark.parametrize("name", sorted(_DISTRIB_TUNNELS))
def test_baseline_draws_batch_size_invariant(name: str, seeded: bool) -> None:
    # The baseline of sample j depends on the seed and j only, not on the partitioning
    # (nt_samples=5: batch sizes 2 and 4 leave a remainder partition). Without a generator the seed
    # is one draw from PyTorch's global RNG per call.
    net = _mlp()
    x = torch.randn(3, 5)
    baselines = torch.randn(6, 5)
    tunnel = _DISTRIB_TUNNELS[name](net)

    def run(bs: Any, seed: int = 0) -> Tensor:
        if not seeded:
            torch.manual_seed(seed)
        return tunnel.attribute(
            x,
            nt_samples=5,
            nt_samples_batch_size=bs,
            stdevs=0.1,
            target=0,
            n_steps=4,
            baselines=baselines,
            draw_baseline_from_distrib=True,
            generator=torch.Generator().manual_seed(seed) if seeded else None,
        )

    np.random.seed(3)  # noqa: NPY002
    before = np.random.get_state()  # noqa: NPY002
    a = run(None)
    for bs in (1, 2, 4):
        torch.testing.assert_close(run(bs), a)
    after = np.random.get_state()  # noqa: NPY002
    assert np.array_equal(after[1], before[1]) and after[2:] == before[2:]  # numpy RNG untouched
    assert torch.equal(run(None), a)
    assert not torch.equal(run(None, seed=1), a)


def test_baseline_draws_batch_size_invariant_tuple_inputs() -> None:
    model = _TwoInput()
    x, y = torch.randn(3, 3), torch.randn(3, 2, 2)
    baselines = (torch.randn(4, 3), 0.5)  # a distribution for x, a scalar for y
    nt = KernelNoiseTunnel(IntegratedGradients(model), Rect())

    def run(bs: Any) -> Tuple[Tensor, ...]:
        out = nt.attribute(
            (x, y),
            nt_samples=5,
            nt_samples_batch_size=bs,
            stdevs=0.1,
            target=1,
            n_steps=4,
            baselines=baselines,
            draw_baseline_from_distrib=True,
            generator=torch.Generator().manual_seed(4),
        )
        assert isinstance(out, tuple)
        return out

    a = run(None)
    for bs in (1, 2, 3):
        torch.testing.assert_close(run(bs), a)


# -- target ---------------------------------------------------------------------


_TARGET_TUNNELS = {
    "gaussian_drop_in": lambda m: KernelNoiseTunnel(Saliency(m)),
    "kernel_poisson": lambda m: KernelNoiseTunnel(Saliency(m), kernel="poisson"),
    "noisegrad": lambda m: NoiseGrad(Saliency(m)),
    "fusiongrad": lambda m: FusionGrad(Saliency(m)),
}


@pytest.mark.parametrize("name", sorted(_TARGET_TUNNELS))
def test_multi_output_without_target_names_target(name: str) -> None:
    tunnel = _TARGET_TUNNELS[name](_mlp())
    with pytest.raises(ValueError, match=r"^target"):
        tunnel.attribute(torch.randn(2, 5), nt_samples=2)


def test_users_own_assertion_error_is_not_renamed() -> None:
    class Asserting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(5, 3)

        def forward(self, x: Tensor) -> Tensor:
            out = self.lin(x)
            assert out.shape[1] == 1, "Target not provided when necessary (the user's own check)"
            return out

    for tunnel in (KernelNoiseTunnel(Saliency(Asserting())), NoiseGrad(Saliency(Asserting()))):
        with pytest.raises(AssertionError, match="user's own"):
            tunnel.attribute(torch.randn(2, 5), nt_samples=2, target=0)


# -- the model and inputs are left alone; dtypes; no_grad; metrics -----------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_model_inputs_untouched_no_grad_dtype(dtype: torch.dtype) -> None:
    net = _mlp().to(dtype).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 5, dtype=dtype, requires_grad=True)
    with torch.no_grad():
        out = KernelNoiseTunnel(Saliency(net), "poisson").attribute(
            x, nt_samples=4, stdevs=0.2, target=0, generator=torch.Generator().manual_seed(0)
        )
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    assert x.requires_grad and x.grad is None
    assert net.training
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert _CALLS.get({}) == {}


def test_state_cleaned_after_exception() -> None:
    calls = {"n": 0}

    def bad(x: Tensor) -> Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("planted")
        return x.sum(1)

    nt = KernelNoiseTunnel(Saliency(bad), Rect())
    with pytest.raises(RuntimeError, match="planted"):
        nt.attribute(torch.randn(2, 3), nt_samples=4, nt_samples_batch_size=1, stdevs=0.1)
    assert _CALLS.get({}) == {}
    with pytest.raises(RuntimeError, match="inside attribute"):
        nt._add_noise_to_inputs(1, (torch.zeros(1, 1),), 0.1)


@pytest.mark.parametrize("kernel", KERNELS, ids=repr)
def test_captum_metrics_run(kernel: Any) -> None:
    net = _mlp()
    x = torch.randn(3, 5)
    nt = KernelNoiseTunnel(Saliency(net), kernel)
    kw = dict(nt_samples=4, stdevs=0.1, target=0, generator=torch.Generator().manual_seed(0))
    attr = nt.attribute(x, **kw)

    def perturb(inputs: Tensor) -> Tuple[Tensor, Tensor]:
        noise = 0.05 * torch.randn_like(inputs)
        return noise, inputs - noise

    inf = infidelity(net, perturb, x, attr, target=0, n_perturb_samples=4)
    sens = sensitivity_max(nt.attribute, x, n_perturb_samples=2, **kw)
    assert inf.shape == (3,) and bool(torch.isfinite(inf).all())
    assert sens.shape == (3,) and bool(torch.isfinite(sens).all())


# -- bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        (dict(stdevs=-0.1), ValueError, "stdevs"),
        (dict(stdevs=float("nan")), ValueError, "stdevs"),
        (dict(stdevs=(0.1, 0.2)), ValueError, "stdevs"),
        (dict(stdevs=torch.tensor([0.1, -1.0, 0.1, 0.1, 0.1])), ValueError, "stdevs"),
        (dict(nt_type="meangrad"), ValueError, "nt_type"),
        (dict(nt_samples=0), ValueError, "nt_samples"),
        (dict(nt_samples=2.5), TypeError, "nt_samples"),
        (dict(nt_samples_batch_size=0), ValueError, "nt_samples_batch_size"),
        (dict(generator=123), TypeError, "generator"),
    ],
)
def test_bad_arguments(kwargs: dict, exc: type, name: str) -> None:
    nt = KernelNoiseTunnel(Saliency(_mlp()))
    with pytest.raises(exc, match=name):
        nt.attribute(torch.randn(2, 5), **{"target": 0, **kwargs})


def test_bad_inputs_and_constructor() -> None:
    nt = KernelNoiseTunnel(Saliency(_mlp()))
    with pytest.raises(ValueError, match="inputs"):
        nt.attribute(torch.tensor([[0.0, float("inf"), 0, 0, 0]]), target=0)
    with pytest.raises(TypeError, match="attribution_method"):
        KernelNoiseTunnel(_mlp())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kernel"):
        KernelNoiseTunnel(Saliency(_mlp()), "laplace")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gaussian_drop_in_runs_half_precision_models(dtype: torch.dtype) -> None:
    """NoiseTunnel's float32 noise turned half-precision inputs into float32 ones, which the model refused
    (NoiseTunnel itself fails so); the noisy inputs are rounded back, and the result is NoiseTunnel's at
    float64 up to that rounding."""
    net, wide, x = _mlp(), _mlp().double(), torch.rand(3, 5, generator=torch.Generator().manual_seed(2))
    kw: Any = dict(nt_type="smoothgrad", nt_samples=6, target=1, stdevs=0.1)
    torch.manual_seed(3)
    want = NoiseTunnel(Saliency(wide)).attribute(x.double(), **kw)
    inputs = x.to(dtype).requires_grad_()
    torch.manual_seed(3)
    got = KernelNoiseTunnel(Saliency(net.to(dtype))).attribute(inputs, **kw)
    assert got.dtype == dtype and inputs.requires_grad and inputs.grad is None
    torch.testing.assert_close(got.double(), want, rtol=0.0, atol=2e-2 if dtype == torch.bfloat16 else 2e-3)
