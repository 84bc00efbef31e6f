"""Reported accuracy (``return_error``) and sampling to a ``tolerance``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import OneHiddenReLU, gen
from torch import Tensor, nn

from captum_smoothhess import SmoothHess, SmoothHessError
from captum_smoothhess._errors import GroupStats
from captum_smoothhess._evaluators import GradientEvaluator

EPS = 0.7


def _rel(h: Tensor, ref: Tensor) -> Tensor:
    return (h - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)


@pytest.mark.parametrize(
    ("kernel", "sampling"), [("gaussian", "orthogonal"), ("gaussian", "iid"), ("poisson", None)]
)
def test_stderr_is_calibrated(relu10: OneHiddenReLU, x10: Tensor, kernel: str, sampling: str) -> None:
    """+-2 stderr covers the closed form ~95% of the time; reported relative error ~ actual RMS."""
    ref = relu10.gaussian_hessian(x10, EPS) if kernel == "gaussian" else relu10.poisson_hessian(x10, EPS)
    sh = SmoothHess(relu10.net, kernel=kernel)
    cover, reported, actual = [], [], []
    for s in range(30):
        h, err = sh.attribute(
            x10, stdevs=EPS, n_samples=400, sampling=sampling, return_error=True, generator=gen(s)
        )
        assert isinstance(err, SmoothHessError) and err.stderr.shape == h.shape
        assert torch.equal(err.n_samples, torch.full((4,), 400))
        cover.append(((h - ref).abs() <= 2 * err.stderr).double().mean())
        reported.append(err.relative**2)
        actual.append(_rel(h, ref) ** 2)
    coverage = float(torch.stack(cover).mean())
    assert 0.9 <= coverage <= 0.98
    ratio = (torch.stack(reported).mean(0) / torch.stack(actual).mean(0)).sqrt()
    assert bool(((ratio > 0.7) & (ratio < 1.4)).all()), ratio


def test_gradient_stderr_is_calibrated(relu10: OneHiddenReLU, x10: Tensor) -> None:
    ref = relu10.gaussian_gradient(x10, EPS)
    sh = SmoothHess(relu10.net)
    cover = []
    for s in range(30):
        _, g, err = sh.attribute(
            x10, stdevs=EPS, n_samples=400, return_gradient=True, return_error=True, generator=gen(s)
        )
        assert err.gradient_stderr.shape == g.shape
        cover.append(((g - ref).abs() <= 2 * err.gradient_stderr).double().mean())
    assert 0.9 <= float(torch.stack(cover).mean()) <= 0.98


def test_group_sums_keep_their_digits_in_float32() -> None:
    """A statistic far larger than its spread, in float32 (the smoothed gradient's case): the variance
    from the group sums matches the one computed in float64 from the same values (it came out 0 or
    off by orders of magnitude when the sums were kept in float32)."""
    g = torch.Generator().manual_seed(0)
    values = (1e4 + 1e-2 * torch.randn(40, 2, 6, generator=g, dtype=torch.float64)).float()  # 40 groups
    wide, narrow = GroupStats(values[0], wide=True), GroupStats(values[0])
    for v in values:
        for stats in (wide, narrow):
            stats.add(v, None)
            stats.close(1, None)
    exact = values.double().var(0) / 40
    assert wide.variance().dtype == torch.float32
    torch.testing.assert_close(wide.variance().double(), exact, rtol=1e-3, atol=0.0)
    assert not torch.allclose(narrow.variance().double(), exact, rtol=0.5, atol=0.0)  # the float32 sums


def test_float32_gradient_stderr_is_not_lost(relu10: OneHiddenReLU, x10: Tensor) -> None:
    """End to end: a float32 gradient far larger than its spread gets no zero standard error, and the
    same order as in float64 (their draws differ with the dtype: a loose bound)."""

    def net(z: Tensor) -> Tensor:
        return (relu10.net(z.double()) + 1e4 * z.double().sum(1, keepdim=True)).to(z.dtype)

    errors = []
    for dtype in (torch.float64, torch.float32):
        kwargs = {"return_gradient": True, "return_error": True, "generator": gen(5)}
        *_, err = SmoothHess(net).attribute(x10.to(dtype), stdevs=EPS, n_samples=400, **kwargs)
        assert err.gradient_stderr.dtype == dtype
        errors.append(err.gradient_stderr.double())
    ratio = errors[1] / errors[0]
    assert bool(((ratio > 0.5) & (ratio < 2)).all()), ratio


def test_error_costs_no_gradient_call_and_keeps_the_estimate(relu10: OneHiddenReLU, x10: Tensor) -> None:
    rows = [0]

    def counted(z: Tensor) -> Tensor:
        rows[0] += z.shape[0]
        return relu10.net(z)

    sh = SmoothHess(counted)
    plain = sh.attribute(x10, stdevs=EPS, n_samples=200, generator=gen(3))
    calls = rows[0]
    rows[0] = 0
    h, _ = sh.attribute(x10, stdevs=EPS, n_samples=200, generator=gen(3), return_error=True)
    assert rows[0] == calls
    torch.testing.assert_close(h, plain, rtol=1e-10, atol=1e-12)


def test_grouped_tuple_and_factors_errors(relu10: OneHiddenReLU, x10: Tensor) -> None:
    sh = SmoothHess(relu10.net)
    mask = torch.arange(10) // 3
    g, err = sh.attribute(
        x10, stdevs=EPS, n_samples=200, feature_mask=mask, return_error=True, generator=gen(2)
    )
    assert g.shape == err.stderr.shape == (4, 4, 4)
    assert bool((err.stderr > 0).all())
    _, derr = sh.attribute(x10, stdevs=EPS, n_samples=200, return_error=True, generator=gen(2))
    fac = sh.attribute(x10, stdevs=EPS, n_samples=200, return_error=True, generator=gen(2), output="factors")
    ferr = fac.error()
    torch.testing.assert_close(ferr.stderr, derr.stderr, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(ferr.relative, derr.relative, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(fac.error(mask).stderr, err.stderr, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(ferr.gradient_stderr, derr.gradient_stderr)
    with pytest.raises(ValueError, match=r"^return_error"):
        sh.attribute(x10, stdevs=EPS, n_samples=20, output="factors").error()
    # Tuple inputs: blocks of standard errors like the blocks of the Hessian.
    two = SmoothHess(lambda a, b: relu10.net(torch.cat([a, b], 1)))
    h, e = two.attribute((x10[:, :4], x10[:, 4:]), stdevs=EPS, n_samples=200, return_error=True)
    assert e.stderr[0][1].shape == h[0][1].shape == (4, 4, 6)
    assert e.gradient_stderr[1].shape == (4, 6)


def test_same_seed_same_error_for_any_chunk_size(relu10: OneHiddenReLU, x10: Tensor) -> None:
    sh = SmoothHess(relu10.net, kernel="poisson")
    ref = sh.attribute(x10, stdevs=EPS, n_samples=120, return_error=True, generator=gen(4))
    for chunk in (2, 8, 30):
        got = sh.attribute(
            x10, stdevs=EPS, n_samples=120, return_error=True, generator=gen(4), n_samples_batch_size=chunk
        )
        torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-12)
        for a, b in zip(got[1], ref[1]):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


# --------------------------------------------------------------------------- tolerance


def test_tolerance_is_reached_with_fewer_calls(relu10: OneHiddenReLU, x10: Tensor) -> None:
    ref = relu10.gaussian_hessian(x10, EPS)
    rows = [0]

    def counted(z: Tensor) -> Tensor:
        rows[0] += z.shape[0]
        return relu10.net(z)

    sh = SmoothHess(counted)
    h, err = sh.attribute(x10, stdevs=EPS, n_samples=40000, tolerance=0.05, generator=gen(0))
    assert bool((err.relative <= 0.05).all())
    assert bool((_rel(h, ref) <= 0.075).all())  # up to the estimate's own noise
    assert bool((err.n_samples < 40000).all())
    assert len(set(err.n_samples.tolist())) > 1  # examples finish at their own counts
    # Finished examples cost nothing more: the gradient rows are the calls used, plus at most the
    # rest of the chunk in which each one finished (120 calls by default here), plus B for the check.
    assert int(err.n_samples.sum()) + 4 <= rows[0] <= int(err.n_samples.sum()) + 4 * 120 + 4
    again = sh.attribute(x10, stdevs=EPS, n_samples=40000, tolerance=0.05, generator=gen(0))
    assert torch.equal(again[0], h) and torch.equal(again[1].n_samples, err.n_samples)
    # The stopping points do not depend on the chunk size.
    other = sh.attribute(
        x10, stdevs=EPS, n_samples=40000, tolerance=0.05, generator=gen(0), n_samples_batch_size=1000
    )
    assert torch.equal(other[1].n_samples, err.n_samples)
    torch.testing.assert_close(other[0], h, rtol=1e-8, atol=1e-12)


def test_blocks_sharing_a_rotation_are_error_groups_and_stay_calibrated() -> None:
    """From _SHARE_MIN_DIM features 8 blocks share a rotation; the error still takes each block as a
    group (nearly independent: calibrated), so a tolerance can stop after 8 blocks, not 8 groups."""
    from helpers import make_one_hidden

    from captum_smoothhess import _sampling

    d = _sampling._SHARE_MIN_DIM
    relu = make_one_hidden(d, 32, seed=0, dtype=torch.float64)
    x = torch.randn(2, d, generator=gen(1), dtype=torch.float64) / 16
    ref = relu.gaussian_hessian(x, EPS)
    sh = SmoothHess(relu.net)
    cover, reported, actual = [], [], []
    for s in range(20):
        h, err = sh.attribute(x, stdevs=EPS, n_samples=16 * d, return_error=True, generator=gen(s))
        cover.append(((h - ref).abs() <= 2 * err.stderr).double().mean())
        reported.append(err.relative**2)
        actual.append(_rel(h, ref) ** 2)
    assert 0.85 <= float(torch.stack(cover).mean()) <= 0.98
    ratio = (torch.stack(reported).mean(0) / torch.stack(actual).mean(0)).sqrt()
    assert bool(((ratio > 0.7) & (ratio < 1.4)).all()), ratio
    # A tolerance every estimate meets: the first stop allowed, 8 blocks of d antithetic pairs.
    _, err = sh.attribute(x, stdevs=EPS, n_samples=100 * d, tolerance=100.0, generator=gen(0))
    assert err.n_samples.tolist() == [2 * 8 * d] * 2


def test_tolerance_with_per_example_targets_and_arguments() -> None:
    """Examples that leave the batch take their rows of target and additional_forward_args along."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).double()

    def f(x: Tensor, scale: Tensor) -> Tensor:
        return net(x) * scale[:, None]

    x = torch.randn(3, 6, generator=gen(1), dtype=torch.float64)
    scale = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    sh = SmoothHess(f)
    kw = dict(stdevs=0.5, n_samples=6000, tolerance=0.15)
    mixed, err = sh.attribute(x, target=[2, 0, 1], additional_forward_args=(scale,), generator=gen(2), **kw)
    assert len(set(err.n_samples.tolist())) > 1
    for i, t in enumerate([2, 0, 1]):
        single, e1 = sh.attribute(x, target=t, additional_forward_args=(scale,), generator=gen(2), **kw)
        torch.testing.assert_close(mixed[i], single[i], rtol=1e-10, atol=1e-12)
        assert int(e1.n_samples[i]) == int(err.n_samples[i])


def test_evaluator_subset_selects_rows() -> None:
    net = nn.Linear(4, 3)
    x = torch.randn(3, 4)
    extra = torch.randn(3, 1)
    ev = GradientEvaluator(lambda a, e: net(a) + e, (x,), [0, 2, 1], (extra,))
    sub = ev.subset(torch.tensor([2, 0]))
    assert sub.target == [1, 0] and torch.equal(sub.afa[0], extra[[2, 0]])
    assert torch.equal(sub.inputs[0], x[[2, 0]]) and ev.target == [0, 2, 1]
    pts = x[[2, 0], None, :].expand(2, 2, 4)
    grads = sub(pts)
    assert torch.allclose(grads[0, 0], net.weight[1]) and torch.allclose(grads[1, 0], net.weight[0])


def test_tolerance_progress_bar_counts_groups_without_the_cap(
    relu10: OneHiddenReLU, x10: Tensor, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cap (here 2**40 calls) is not the bar's total: no percentage or ETA against it."""
    SmoothHess(relu10.net).attribute(
        x10, stdevs=EPS, n_samples=2**40, tolerance=0.3, show_progress=True, generator=gen(0)
    )
    bar = capsys.readouterr().err
    assert "error" in bar and "it [" in bar and "%" not in bar  # tqdm without a total: "12it [..."


def test_bad_tolerance_named(relu10: OneHiddenReLU, x10: Tensor) -> None:
    sh = SmoothHess(relu10.net)
    with pytest.raises(ValueError, match=r"^tolerance"):
        sh.attribute(x10, n_samples=20, tolerance=0.0)
    with pytest.raises(ValueError, match=r"^tolerance"):
        sh.attribute(x10, n_samples=20, tolerance=0.1, output="factors")


def test_too_few_draws_for_an_error_named(relu10: OneHiddenReLU, x10: Tensor) -> None:
    """One draw is one group, whose spread is unknown: refused, not NaN standard errors."""
    sh = SmoothHess(relu10.net)
    for kwargs in ({"return_error": True}, {"tolerance": 0.1}):
        with pytest.raises(ValueError, match=r"^n_samples: .*n_samples >= 4; got 2"):
            sh.attribute(x10, n_samples=2, **kwargs)
        with pytest.raises(ValueError, match=r"^n_samples: .*n_samples >= 2; got 1"):
            sh.attribute(x10, n_samples=1, antithetic=False, **kwargs)
    _, err = sh.attribute(x10, n_samples=4, return_error=True, generator=gen(0))  # two draws: defined
    assert bool(torch.isfinite(err.stderr).all() & torch.isfinite(err.relative).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exactly_zero_hessian_is_exact_and_meets_a_tolerance(dtype: torch.dtype) -> None:
    """A linear function: every group gives H = 0, so the relative error is 0 (not 0/0 = NaN), and a
    tolerance is met after the fewest groups instead of the whole cap."""
    x = torch.randn(3, 6, generator=gen(2), dtype=dtype)
    sh = SmoothHess(lambda z: 3 * z.sum(1))
    h, err = sh.attribute(x, n_samples=80, return_error=True, generator=gen(0))
    assert torch.equal(h, torch.zeros_like(h)) and torch.equal(err.relative, torch.zeros(3, dtype=dtype))
    _, err = sh.attribute(x, n_samples=8000, tolerance=0.1, generator=gen(0))
    assert bool((err.n_samples < 8000).all()), err.n_samples


# --------------------------------------------------------------------------- image size

_SCALE = """
import torch
from torch import nn
from captum_smoothhess import SmoothHess
torch.manual_seed(0)
net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 224 * 224, 8), nn.ReLU(), nn.Linear(8, 2))
x = torch.rand(1, 3, 224, 224)
mask = (torch.arange(224)[:, None] // 16 * 14 + torch.arange(224)[None] // 16).expand(3, 224, 224)
g, err = SmoothHess(net).attribute(x, target=0, stdevs=0.1, n_samples=32, feature_mask=mask[None],
                                   return_error=True, sampling="orthogonal",
                                   generator=torch.Generator().manual_seed(0))
assert g.shape == err.stderr.shape == (1, 196, 196)
# VmHWM, not ru_maxrss: a vfork-ed child's ru_maxrss carries the parent's (pytest's) peak over exec
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1])
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from Linux /proc")
def test_image_size_grouped_orthogonal_stays_under_3gb() -> None:
    """d = 150,528, grouped, orthogonal sampling with errors: peak RSS < 3 GB."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SCALE)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_kb = int(proc.stdout.split()[-1])
    assert peak_kb < 3 * 1024 * 1024, peak_kb
