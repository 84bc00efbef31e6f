"""Hostile use of SmoothHess, CASO and CAFO (issue 14): each test failed before its fix."""

from __future__ import annotations

import time
import warnings
from typing import List

import pytest
import torch
from torch import Tensor, nn

from captum_smoothhess import CAFO, CASO, SmoothHess

D64 = torch.float64


def _bn_net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).to(D64).train()


def _x(b: int = 5) -> Tensor:
    return torch.randn(b, 4, generator=torch.Generator().manual_seed(0), dtype=D64)


# --------------------------------------------------------------------------- silent NaN


def test_smoothhess_refuses_nan_gradients() -> None:
    with pytest.raises(ValueError, match=r"^forward_func: .*NaN"):
        SmoothHess(lambda x: torch.sqrt(x).sum(1)).attribute(torch.randn(2, 3), stdevs=0.1, n_samples=8)


def test_caso_smoothhess_refuses_nan_gradients() -> None:
    def net(x: Tensor) -> Tensor:
        return torch.stack([torch.sqrt(x).sum(1), -torch.sqrt(x).sum(1)], 1)

    with pytest.raises(ValueError, match=r"^(forward_func|loss_func)"):
        CASO(net).attribute(
            torch.rand(2, 3) + 0.01, target=0, curvature="smoothhess", stdevs=0.5, n_samples=8
        )


def test_poisson_score_does_not_overflow_in_float16() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 1)).half()
    h = SmoothHess(net, kernel="poisson").attribute(torch.randn(4, 10).half(), stdevs=0.3, n_samples=2000)
    assert h.dtype == torch.float16 and bool(torch.isfinite(h).all())


# --------------------------------------------------------------------------- training mode


@pytest.mark.parametrize(
    "call",
    [
        lambda net: SmoothHess(net).attribute(_x(), target=0, stdevs=0.3, n_samples=20),
        lambda net: CASO(net).attribute(_x(), target=0, lambda1=0.01),
        lambda net: CASO(net).attribute(
            _x(), target=0, lambda1=0.01, curvature="smoothhess", stdevs=0.3, n_samples=20
        ),
        lambda net: CAFO(net).attribute(_x(), target=0, lambda1=0.01),
    ],
    ids=["SmoothHess", "CASO", "CASO-smoothhess", "CAFO"],
)
def test_training_mode_warns_and_leaves_buffers(call: object) -> None:
    net = _bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.warns(RuntimeWarning, match=r"training mode"):
        call(net)  # type: ignore[operator]
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    assert net.training


def test_eval_mode_does_not_warn() -> None:
    net = _bn_net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SmoothHess(net).attribute(_x(), target=0, stdevs=0.3, n_samples=20)
        CAFO(net).attribute(_x(), target=0)


def test_caso_max_iter_ends_examples_that_restart() -> None:
    """The reproducer of issue 14: FISTA restarts did not advance the iteration count."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    start = time.perf_counter()
    with pytest.warns(RuntimeWarning):
        _, info = CASO(net).attribute(
            torch.randn(5, 4), target=0, lambda1=0.01, max_iter=50, return_info=True
        )
    assert int(info["iterations"].max()) <= 50
    assert time.perf_counter() - start < 60  # a hang would never return; this bound is generous


# --------------------------------------------------------------------------- memory


class _Stop(Exception):
    pass


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_memory_does_not_grow_with_n_samples() -> None:
    """A huge sample count streams: the resident memory stays flat while chunks go by."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))
    rss: List[float] = []
    deadline = time.perf_counter() + 3.0

    def forward(x: Tensor) -> Tensor:
        rss.append(_rss_mb())
        if time.perf_counter() > deadline:
            raise _Stop
        return net(x)

    with pytest.raises(_Stop):
        SmoothHess(forward).attribute(torch.randn(4, 64), target=0, n_samples=10**12, n_samples_batch_size=2)
    assert len(rss) > 200  # many chunks went through
    settled = rss[len(rss) // 10]
    assert max(rss) - settled < 64, f"memory grew from {settled:.0f} MB to {max(rss):.0f} MB"


# --------------------------------------------------------------------------- modes and devices


def test_inference_mode_works_like_normal_mode() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).to(D64).eval()
    x = _x(3)
    ref_h = SmoothHess(net).attribute(x, target=0, n_samples=20, generator=torch.Generator().manual_seed(1))
    ref_c = CASO(net).attribute(x, target=0, lambda1=0.01)
    ref_f = CAFO(net).attribute(x, target=0)
    with torch.inference_mode():
        xi = x.clone()
        h = SmoothHess(net).attribute(xi, target=0, n_samples=20, generator=torch.Generator().manual_seed(1))
        c = CASO(net).attribute(xi, target=0, lambda1=0.01)
        f = CAFO(net).attribute(xi, target=0)
    assert torch.equal(h, ref_h) and torch.equal(c, ref_c) and torch.equal(f, ref_f)


@pytest.mark.parametrize("make", [SmoothHess, CASO, CAFO])
def test_meta_inputs_named(make: type) -> None:
    net = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"^inputs: meta"):
        make(net).attribute(torch.empty(2, 4, device="meta"), target=0)
