"""``return_error=True`` on the noise tunnels (KernelNoiseTunnel, NoiseGrad, FusionGrad).

Calibration is checked against closed forms with fixed seeds and loose bounds that a wrong
standard error (off by the square root of the sample count, or by a factor of 2) fails.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Tuple

import pytest
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
from helpers import gen
from torch import Tensor, nn

from captum_smoothhess import FusionGrad, KernelNoiseTunnel, NoiseGrad, SmoothingError, _errors
from captum_smoothhess._errors import AttributionMoments
from captum_smoothhess._sampling import noise_stream
from captum_smoothhess.kernels import Gaussian
from captum_smoothhess.noise_tunnel import _independent_samples

D = 6


class _Quadratic(nn.Module):
    """``f(x) = x^T A x / 2 + b^T x``: SmoothGrad of its gradient is ``A x + b`` for any symmetric kernel,
    and each Gaussian sample ``A (x + eps u) + b`` has per-feature variance ``eps^2 (A A^T)_ii``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = gen(seed)
        a = torch.randn(D, D, generator=g, dtype=torch.float64)
        self.register_buffer("a", a + a.T)
        self.register_buffer("b", torch.randn(D, generator=g, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return (0.5 * (x @ self.a * x).sum(1) + x @ self.b)[:, None]


def _points(batch: int = 3) -> Tensor:
    return torch.randn(batch, D, generator=gen(7), dtype=torch.float64)


def _truth(model: _Quadratic, x: Tensor, eps: float, nt_type: str) -> Tensor:
    mean = x @ model.a + model.b
    var = (eps**2 * model.a.square().sum(1)).expand_as(mean)
    return {"smoothgrad": mean, "smoothgrad_sq": mean.square() + var, "vargrad": var}[nt_type]


def _calibration(results: List[Tuple[Tensor, SmoothingError]], truth: Tensor) -> Tuple[float, float]:
    """(coverage of ``truth`` by +-2 stderr over seeds and entries, RMS reported stderr over the spread of
    the estimates across seeds, median over entries)."""
    est = torch.stack([r[0] for r in results])
    err = torch.stack([r[1].stderr for r in results])  # type: ignore[misc]
    coverage = float(((est - truth).abs() <= 2 * err).double().mean())
    ratio = float((err.square().mean(0).sqrt() / est.std(0)).median())
    return coverage, ratio


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_kernel_noise_tunnel_stderr_is_calibrated(nt_type: str) -> None:
    model, x, eps = _Quadratic(), _points(), 0.3
    tunnel = KernelNoiseTunnel(Saliency(model))
    n = 64 if nt_type == "smoothgrad" else 200  # (vargrad's estimator is biased by its 1/n: kept small)
    results = [
        tunnel.attribute(
            x,
            nt_type=nt_type,
            nt_samples=n,
            stdevs=eps,
            target=0,
            abs=False,
            generator=gen(s),
            return_error=True,
        )
        for s in range(40)
    ]
    coverage, ratio = _calibration(results, _truth(model, x, eps, nt_type))
    assert 0.88 <= coverage <= 0.995, coverage
    assert 0.75 <= ratio <= 1.3, ratio


def test_orthogonal_samples_stderr_is_calibrated() -> None:
    model, x, eps = _Quadratic(), _points(), 0.3
    tunnel = KernelNoiseTunnel(Saliency(model), sampling="orthogonal")
    results = [
        tunnel.attribute(
            x, nt_samples=96, stdevs=eps, target=0, abs=False, generator=gen(s), return_error=True
        )
        for s in range(40)
    ]
    coverage, ratio = _calibration(results, _truth(model, x, eps, "smoothgrad"))
    assert 0.85 <= coverage <= 0.995, coverage  # (16 groups: a t distribution's wider tails)
    assert 0.75 <= ratio <= 1.3, ratio


@pytest.mark.parametrize("sampling", ["antithetic", "orthogonal_antithetic"])
@pytest.mark.parametrize("n", [4, 6, 64])
def test_antithetic_pairs_are_never_split(sampling: str, n: int) -> None:
    # For a quadratic each pair's mean is the exact smoothed gradient: every group agrees, stderr is 0.
    # A group that split a pair would see the noise A u of its half.
    model, x = _Quadratic(), _points()
    tunnel = KernelNoiseTunnel(Saliency(model), sampling=sampling)
    attr, err = tunnel.attribute(
        x, nt_samples=n, stdevs=0.3, target=0, abs=False, generator=gen(0), return_error=True
    )
    torch.testing.assert_close(attr, _truth(model, x, 0.3, "smoothgrad"))
    assert float(err.stderr.max()) < 1e-12 * float(attr.abs().max())  # type: ignore[union-attr]
    assert float(err.relative.max()) < 1e-12


def test_independent_groups_follow_the_noise() -> None:
    def stream(sampling: str) -> Any:
        return noise_stream(Gaussian(), 2, 10, 0, torch.device("cpu"), torch.float64, sampling)

    assert _independent_samples(None) == (1, 1)
    assert _independent_samples(stream("iid")) == (1, 1)
    assert _independent_samples(stream("antithetic")) == (2, 2)
    assert _independent_samples(stream("orthogonal")) == (10, 1)
    assert _independent_samples(stream("orthogonal_antithetic")) == (20, 2)


def test_moments_match_batch_means_in_any_partitions() -> None:
    samples = torch.randn(2, 23, 3, generator=gen(1), dtype=torch.float64) * 5 + 100
    group = 4  # the last group has 3 samples
    groups = [samples[:, i : i + group] for i in range(0, 23, group)]
    sizes = torch.tensor([g.shape[1] for g in groups], dtype=torch.float64)[None, :, None]

    def expected(values: Tensor) -> Tensor:
        means = torch.stack([(values[:, i : i + group]).mean(1) for i in range(0, 23, group)], 1)
        grand = (means * sizes).sum(1) / 23
        return (sizes * (means - grand[:, None]).square()).sum(1) / ((len(groups) - 1) * 23)

    for parts in ([23], [1] * 23, [5, 5, 5, 8], [3, 9, 11], [4, 4, 4, 4, 4, 3]):
        moments = AttributionMoments(group, 23)
        at = 0
        for size in parts:
            moments.add(samples[:, at : at + size])
            at += size
        torch.testing.assert_close(moments.variance("smoothgrad"), expected(samples), rtol=1e-10, atol=0)
        torch.testing.assert_close(
            moments.variance("smoothgrad_sq"), expected(samples.square()), rtol=1e-10, atol=0
        )
    one = AttributionMoments(23, 23)
    one.add(samples)
    assert bool(one.variance("smoothgrad").isnan().all())  # one group: the spread is unknown


def test_stderr_does_not_depend_on_partitions() -> None:
    model, x = _Quadratic(), _points()
    for sampling in ("iid", "orthogonal_antithetic"):
        tunnel = KernelNoiseTunnel(Saliency(model), sampling=sampling)
        errs = [
            tunnel.attribute(
                x,
                nt_samples=50,
                nt_samples_batch_size=size,
                stdevs=0.3,
                target=0,
                generator=gen(1),
                return_error=True,
            )[1].stderr
            for size in (None, 3, 7, 50)
        ]
        for e in errs[1:]:
            torch.testing.assert_close(e, errs[0], rtol=1e-10, atol=1e-14)


def test_drop_in_numbers_are_unchanged() -> None:
    model, x = _Quadratic(), _points()
    torch.manual_seed(5)
    expected = NoiseTunnel(Saliency(model)).attribute(x, nt_samples=10, stdevs=0.3, target=0)
    torch.manual_seed(5)
    attr, err = KernelNoiseTunnel(Saliency(model)).attribute(
        x, nt_samples=10, stdevs=0.3, target=0, return_error=True
    )
    assert torch.equal(attr, expected)
    assert isinstance(err, SmoothingError)
    assert err.stderr.shape == x.shape and err.relative.shape == (3,)  # type: ignore[union-attr]
    assert err.n_samples.tolist() == [10, 10, 10]
    plain = KernelNoiseTunnel(Saliency(model), kernel="poisson").attribute(
        x, nt_samples=10, stdevs=0.3, target=0, generator=gen(2)
    )
    with_error, _ = KernelNoiseTunnel(Saliency(model), kernel="poisson").attribute(
        x, nt_samples=10, stdevs=0.3, target=0, generator=gen(2), return_error=True
    )
    assert torch.equal(plain, with_error)


def test_tuples_deltas_dtypes_and_no_noise() -> None:
    model = _Quadratic()

    class Split(nn.Module):
        def forward(self, p: Tensor, q: Tensor) -> Tensor:
            return model(torch.cat([p, q], 1))

    x = _points()
    parts = (x[:, :2].clone(), x[:, 2:].clone())
    _, err = KernelNoiseTunnel(Saliency(Split())).attribute(
        parts, nt_samples=8, stdevs=0.3, target=0, generator=gen(0), return_error=True
    )
    assert isinstance(err.stderr, tuple) and [t.shape for t in err.stderr] == [(3, 2), (3, 4)]
    out = FusionGrad(IntegratedGradients(nn.Linear(D, 1).double())).attribute(
        x, nt_samples=8, target=0, generator=gen(0), return_error=True, return_convergence_delta=True
    )
    assert len(out) == 3 and out[1].shape == (24,) and isinstance(out[2], SmoothingError)
    lin = nn.Linear(D, 2)
    _, err32 = KernelNoiseTunnel(Saliency(lin)).attribute(
        x.float(), nt_samples=4, stdevs=0.1, target=0, generator=gen(0), return_error=True
    )
    assert err32.stderr.dtype == torch.float32  # type: ignore[union-attr]
    _, still = KernelNoiseTunnel(Saliency(model)).attribute(
        x, nt_samples=4, stdevs=0.0, target=0, generator=gen(0), return_error=True
    )
    assert float(still.stderr.abs().max()) == 0.0 and float(still.relative.max()) == 0.0  # type: ignore[union-attr]


@pytest.mark.parametrize("cls", [NoiseGrad, FusionGrad])
def test_noisegrad_stderr_is_calibrated(cls: Any) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    x = _points()
    method = cls(Saliency(net))
    reference = method.attribute(x, nt_samples=20000, stdevs=0.2, target=0, abs=False, generator=gen(999))
    results = [
        method.attribute(
            x, nt_samples=30, stdevs=0.2, target=0, abs=False, generator=gen(s), return_error=True
        )
        for s in range(80)
    ]
    coverage, ratio = _calibration(results, reference)
    assert 0.85 <= coverage <= 0.995, coverage
    assert 0.75 <= ratio <= 1.3, ratio


@pytest.mark.parametrize("make", [lambda m: KernelNoiseTunnel(Saliency(m)), lambda m: NoiseGrad(Saliency(m))])
def test_bad_return_error_arguments_are_named(make: Any) -> None:
    method = make(nn.Linear(D, 2))
    x = torch.randn(2, D)
    with pytest.raises(TypeError, match="return_error"):
        method.attribute(x, nt_samples=4, target=0, return_error="yes")
    with pytest.raises(ValueError, match="nt_samples"):
        method.attribute(x, nt_samples=1, target=0, return_error=True)
    with pytest.raises(ValueError, match=r"nt_samples.*pairs"):
        KernelNoiseTunnel(Saliency(nn.Linear(D, 2)), sampling="antithetic").attribute(
            x, nt_samples=3, target=0, return_error=True
        )


def test_threads_and_a_training_mode_model() -> None:
    model, x = _Quadratic(), _points()
    tunnel = KernelNoiseTunnel(Saliency(model), sampling="orthogonal")
    serial = tunnel.attribute(x, nt_samples=24, stdevs=0.3, target=0, generator=gen(3), return_error=True)
    out: List[Any] = [None] * 4

    def run(i: int) -> None:
        out[i] = tunnel.attribute(x, nt_samples=24, stdevs=0.3, target=0, generator=gen(3), return_error=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for attr, err in out:
        assert torch.equal(attr, serial[0]) and torch.equal(err.stderr, serial[1].stderr)
    norm = nn.Sequential(nn.Linear(D, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double().train()
    before = norm[1].running_mean.clone()
    with pytest.warns(RuntimeWarning):
        attr, err = KernelNoiseTunnel(Saliency(norm)).attribute(
            x, nt_samples=6, stdevs=0.1, target=0, generator=gen(0), return_error=True
        )
    assert torch.equal(norm[1].running_mean, before) and err.stderr.shape == x.shape


def test_vargrad_needs_six_groups() -> None:
    # With two iid samples the delta method gives exactly 0, with three a relative error of exactly 0.5.
    model, x = _Quadratic(), _points()
    tunnel = KernelNoiseTunnel(Saliency(model))
    for n in (2, 3, 5):
        with pytest.raises(ValueError, match="nt_samples >= 6"):
            tunnel.attribute(x, nt_type="vargrad", nt_samples=n, stdevs=0.3, target=0, return_error=True)
    with pytest.raises(ValueError, match="nt_samples >= 12"):
        KernelNoiseTunnel(Saliency(model), sampling="antithetic").attribute(
            x, nt_type="vargrad", nt_samples=10, stdevs=0.3, target=0, generator=gen(0), return_error=True
        )
    _, err = tunnel.attribute(x, nt_type="vargrad", nt_samples=6, stdevs=0.3, target=0, return_error=True)
    assert bool((err.stderr > 0).all())  # type: ignore[operator]
    with pytest.raises(ValueError, match="nt_samples >= 6"):
        NoiseGrad(Saliency(nn.Linear(D, 1).double())).attribute(
            x, nt_type="vargrad", nt_samples=4, target=0, return_error=True
        )


def test_shared_drawn_baselines_are_refused() -> None:
    # On NoiseTunnel's own path every full partition reuses the baselines drawn once: not independent.
    net = nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    x, reference = _points(1), torch.randn(20, D, generator=gen(3), dtype=torch.float64)
    tunnel = KernelNoiseTunnel(IntegratedGradients(net))
    kw: Dict[str, Any] = dict(
        nt_samples=8, stdevs=0.01, target=0, baselines=reference, draw_baseline_from_distrib=True, n_steps=8
    )
    with pytest.raises(ValueError, match="draw_baseline_from_distrib"):
        tunnel.attribute(x, nt_samples_batch_size=3, return_error=True, **kw)
    tunnel.attribute(x, return_error=True, **kw)  # one partition: independent draws
    tunnel.attribute(
        x, nt_samples_batch_size=3, generator=gen(0), return_error=True, **kw
    )  # per-sample draws


def test_moments_merge_in_bounded_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = torch.randn(2, 40, 5, generator=gen(4), dtype=torch.float64)
    whole = AttributionMoments(4, 40)
    whole.add(samples)
    monkeypatch.setattr(_errors, "_SLICE_ELEMENTS", 7)  # one group a slice
    sliced = AttributionMoments(4, 40)
    sliced.add(samples)
    for nt_type in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        torch.testing.assert_close(sliced.variance(nt_type), whole.variance(nt_type), rtol=1e-12, atol=0)


def _relu_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, 3)).double()


@pytest.mark.parametrize("sampling", ["iid", "antithetic"])
def test_tolerance_is_met_with_fewer_samples(sampling: str) -> None:
    net, x = _relu_net(), _points(4)
    reference = KernelNoiseTunnel(Saliency(net), sampling="antithetic").attribute(
        x, nt_samples=100_000, stdevs=0.5, target=0, abs=False, generator=gen(99)
    )
    tunnel = KernelNoiseTunnel(Saliency(net), sampling=sampling)
    actual, used = [], []
    for s in range(10):
        attr, err = tunnel.attribute(
            x, nt_samples=50_000, stdevs=0.5, target=0, abs=False, tolerance=0.05, generator=gen(s)
        )
        assert float(err.relative.max()) <= 0.05
        actual.append((attr - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1))
        used.append(int(err.n_samples[0]))
    rms = float(torch.cat(actual).square().mean().sqrt())
    assert 0.01 <= rms <= 0.065, rms  # the worst example meets the tolerance, the others are below it
    assert max(used) < 5000, used


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_tolerance_result_is_the_mean_of_the_samples_taken(nt_type: str) -> None:
    # The noise of sample j depends only on (seed, j): the same samples without a tolerance give the
    # same statistic (Captum's sums against the batch means).
    net, x = _relu_net(), _points(2)
    tunnel = KernelNoiseTunnel(Saliency(net), kernel="poisson")
    kw: Dict[str, Any] = dict(nt_type=nt_type, stdevs=0.3, target=0, abs=False, generator=gen(5))
    attr, err = tunnel.attribute(x, nt_samples=10_000, tolerance=0.2, **kw)
    used = int(err.n_samples[0])
    assert used < 10_000
    plain = tunnel.attribute(x, nt_samples=used, **{**kw, "generator": gen(5)})
    torch.testing.assert_close(attr, plain, rtol=1e-9, atol=1e-12)
    again, err_again = tunnel.attribute(x, nt_samples=10_000, tolerance=0.2, **{**kw, "generator": gen(5)})
    assert torch.equal(again, attr) and torch.equal(err_again.stderr, err.stderr)  # type: ignore[arg-type]


def test_tolerance_caps_and_refusals() -> None:
    net, x = _relu_net(), _points(2)
    tunnel = KernelNoiseTunnel(Saliency(net))
    attr, err = tunnel.attribute((x,), nt_samples=40, stdevs=0.5, target=0, tolerance=1e-9, generator=gen(0))
    assert isinstance(attr, tuple) and err.n_samples.tolist() == [40, 40]
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="tolerance"):
            tunnel.attribute(x, nt_samples=40, target=0, tolerance=bad)
    with pytest.raises(ValueError, match="tolerance"):
        KernelNoiseTunnel(IntegratedGradients(net)).attribute(
            x, nt_samples=40, target=0, tolerance=0.1, return_convergence_delta=True
        )
    with pytest.raises(ValueError, match="draw_baseline_from_distrib"):
        KernelNoiseTunnel(IntegratedGradients(net)).attribute(
            x,
            nt_samples=40,
            target=0,
            tolerance=0.1,
            baselines=torch.zeros(5, D, dtype=torch.float64),
            draw_baseline_from_distrib=True,
        )
    attr, err = NoiseGrad(Saliency(net)).attribute(
        x, nt_samples=5000, target=0, abs=False, tolerance=0.05, generator=gen(0)
    )
    assert int(err.n_samples[0]) < 5000 and float(err.relative.max()) <= 0.05


class _EdgeRelu(nn.Module):
    """``relu(x_0)``: at ``x_0 = -2`` with ``stdevs = 1`` the smoothed gradient is ``P(u > 2) = 0.0228``,
    so the first samples usually all give 0."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x[:, :1])


def test_tolerance_does_not_stop_on_samples_that_agree_by_chance() -> None:
    x = torch.tensor([[-2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    tunnel = KernelNoiseTunnel(Saliency(_EdgeRelu()))
    for s in range(4):
        attr, err = tunnel.attribute(
            x, nt_samples=20_000, stdevs=1.0, target=0, abs=False, tolerance=0.2, generator=gen(s)
        )
        assert int(err.n_samples[0]) > 200  # (it stopped at 16 with an exact 0 before)
        assert abs(float(attr[0, 0]) / 0.02275 - 1) < 0.6
    # No noise: every sample is the attribution itself, exact at the first look.
    _, err = tunnel.attribute(x, nt_samples=20_000, stdevs=0.0, target=0, tolerance=0.2, generator=gen(0))
    assert int(err.n_samples[0]) == 16


def test_tolerance_stops_on_whole_antithetic_pairs() -> None:
    # Each antithetic pair of a quadratic is exact: a stop inside a pair would leave half of it in the result.
    model, x = _Quadratic(), _points(2)
    tunnel = KernelNoiseTunnel(Saliency(model), sampling="antithetic")
    attr, err = tunnel.attribute(
        x,
        nt_samples=1000,
        nt_samples_batch_size=7,
        stdevs=1.0,
        target=0,
        abs=False,
        tolerance=0.01,
        generator=gen(0),
    )
    assert int(err.n_samples[0]) % 2 == 0
    torch.testing.assert_close(attr, _truth(model, x, 1.0, "smoothgrad"))
