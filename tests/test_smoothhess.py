"""SmoothHess: closed-form oracles, Captum conventions, invariances and bad inputs."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from helpers import OneHiddenReLU, gen, make_one_hidden, rel_err
from torch import nn

from captum_smoothhess import Gaussian, Hyperbolic, Poisson, Sigmoid, SmoothHess
from captum_smoothhess.factors import SmoothHessFactors

EPS = 0.7


@pytest.fixture(scope="module")
def relu10() -> OneHiddenReLU:
    return make_one_hidden(10, 20, seed=0)


@pytest.fixture(scope="module")
def x10() -> torch.Tensor:
    return torch.randn(3, 10, generator=gen(11))


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize(("kernel", "n", "tol"), [("gaussian", 20_000, 0.05), ("poisson", 20_000, 0.05)])
def test_closed_form_d10(relu10: OneHiddenReLU, x10: torch.Tensor, kernel: str, n: int, tol: float) -> None:
    hess = SmoothHess(relu10.net, kernel=kernel).attribute(
        x10, target=0, stdevs=EPS, n_samples=n, generator=gen(1)
    )
    exact = relu10.gaussian_hessian(x10, EPS) if kernel == "gaussian" else relu10.poisson_hessian(x10, EPS)
    assert rel_err(hess, exact) < tol


@pytest.mark.parametrize("kernel", ["gaussian", "poisson"])
def test_closed_form_d10_large_n(relu10: OneHiddenReLU, x10: torch.Tensor, kernel: str) -> None:
    hess = SmoothHess(relu10.net, kernel=kernel).attribute(
        x10[:1], target=0, stdevs=EPS, n_samples=400_000, generator=gen(2)
    )
    exact = (
        relu10.gaussian_hessian(x10[:1], EPS)
        if kernel == "gaussian"
        else relu10.poisson_hessian(x10[:1], EPS)
    )
    assert rel_err(hess, exact) < 0.02


def test_error_shrinks_like_inverse_sqrt_n(relu10: OneHiddenReLU, x10: torch.Tensor) -> None:
    sh = SmoothHess(relu10.net)
    exact = relu10.gaussian_hessian(x10[:1], EPS)

    def rms(n: int) -> float:
        errs = [
            rel_err(sh.attribute(x10[:1], stdevs=EPS, n_samples=n, generator=gen(100 + s)), exact)
            for s in range(8)
        ]
        return math.sqrt(sum(e * e for e in errs) / len(errs))

    ratio = rms(1_000) / rms(16_000)  # n^-1/2 predicts 4
    assert 2.8 < ratio < 5.7


@pytest.mark.parametrize("kernel", [Hyperbolic(0.7), Sigmoid(), Gaussian()], ids=repr)
def test_axis_aligned_oracle_for_product_kernels(kernel: object) -> None:
    # With axis-aligned hidden units, w^T u is one coordinate of u, whose
    # density is the kernel's 1-D marginal: hess g = sum_k a_k p(m_k / eps) / eps e_k e_k^T.
    d = 4
    net = make_one_hidden(d, d, seed=3)
    with torch.no_grad():
        net.net[0].weight.copy_(torch.eye(d))
    net.w = torch.eye(d)
    x = torch.randn(2, d, generator=gen(4)) * 0.3
    eps = 0.5
    hess = SmoothHess(net.net, kernel=kernel).attribute(  # type: ignore[arg-type]
        x, stdevs=eps, n_samples=600_000, generator=gen(5)
    )
    dens = kernel.log_prob((net.pre(x) / eps).reshape(-1, 1)).exp().reshape(2, d) / eps  # type: ignore[attr-defined]
    exact = torch.diag_embed(net.a * dens)
    assert rel_err(hess, exact) < 0.03


def test_per_feature_bandwidths(relu10: OneHiddenReLU, x10: torch.Tensor) -> None:
    eps = torch.linspace(0.3, 1.2, 10)
    hess = SmoothHess(relu10.net).attribute(x10, stdevs=eps, n_samples=40_000, generator=gen(6))
    assert rel_err(hess, relu10.gaussian_hessian(x10, eps)) < 0.05


def test_smoothed_gradient_closed_form(relu10: OneHiddenReLU, x10: torch.Tensor) -> None:
    _, grad = SmoothHess(relu10.net).attribute(
        x10, stdevs=EPS, n_samples=20_000, generator=gen(7), return_gradient=True
    )
    assert rel_err(grad, relu10.gaussian_gradient(x10, EPS)) < 0.02


@pytest.mark.parametrize("kernel", ["gaussian", "poisson", "sigmoid"])
def test_converges_to_exact_hessian_of_smooth_net(kernel: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 8), nn.Softplus(), nn.Linear(8, 1)
    ).double()
    x = torch.randn(1, 5, dtype=torch.float64)
    exact = torch.func.hessian(lambda z: net(z[None])[0, 0])(x[0])[None]
    errs = []
    for eps in (0.2, 0.02):
        hess = SmoothHess(net, kernel=kernel).attribute(x, stdevs=eps, n_samples=20_000, generator=gen(8))
        errs.append(rel_err(hess, exact))
    assert errs[1] < 0.03
    assert errs[1] < errs[0]


# --------------------------------------------------------------------------- shapes


def test_tuple_inputs_give_blocks_of_the_flat_hessian(relu10: OneHiddenReLU, x10: torch.Tensor) -> None:
    net = relu10.net

    def fwd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return net(torch.cat([a, b.reshape(len(b), -1)], dim=1))

    a, b = x10[:, :4], x10[:, 4:].reshape(3, 2, 3)
    sh = SmoothHess(fwd)
    blocks, grads = sh.attribute((a, b), stdevs=EPS, n_samples=200, generator=gen(9), return_gradient=True)
    flat, gflat = SmoothHess(net).attribute(
        x10, stdevs=EPS, n_samples=200, generator=gen(9), return_gradient=True
    )
    assert isinstance(blocks, tuple) and len(blocks) == 2 and all(len(r) == 2 for r in blocks)
    assert blocks[0][0].shape == (3, 4, 4) and blocks[0][1].shape == (3, 4, 2, 3)
    assert blocks[1][0].shape == (3, 2, 3, 4) and blocks[1][1].shape == (3, 2, 3, 2, 3)
    torch.testing.assert_close(blocks[0][1].reshape(3, 4, 6), flat[:, :4, 4:])
    torch.testing.assert_close(blocks[1][1].reshape(3, 6, 6), flat[:, 4:, 4:])
    torch.testing.assert_close(blocks[1][0].reshape(3, 6, 4), blocks[0][1].reshape(3, 4, 6).transpose(1, 2))
    assert isinstance(grads, tuple) and grads[1].shape == (3, 2, 3)
    torch.testing.assert_close(torch.cat([grads[0], grads[1].reshape(3, 6)], 1), gflat)


def test_image_shaped_input_and_symmetry() -> None:
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    x = torch.randn(2, 2, 4, 4, generator=gen(10))
    hess = SmoothHess(net).attribute(x, target=[1, 3], stdevs=0.3, n_samples=64, generator=gen(1))
    assert hess.shape == (2, 2, 4, 4, 2, 4, 4)
    flat = hess.reshape(2, 32, 32)
    assert torch.equal(flat, flat.transpose(1, 2))


def test_feature_mask_equals_grouped_dense(relu10: OneHiddenReLU, x10: torch.Tensor) -> None:
    sh = SmoothHess(relu10.net)
    mask = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 3, 3])
    m = torch.nn.functional.one_hot(mask).to(x10.dtype)
    dense = sh.attribute(x10, stdevs=EPS, n_samples=500, generator=gen(12))
    grouped = sh.attribute(x10, stdevs=EPS, n_samples=500, generator=gen(12), feature_mask=mask)
    assert grouped.shape == (3, 4, 4)
    torch.testing.assert_close(grouped, m.T @ dense @ m, rtol=1e-4, atol=1e-5)
    # Per-example masks (first dimension B) and ids shared across tuple inputs.
    per_ex = torch.stack([mask, mask.flip(0), torch.zeros_like(mask)])
    g2 = sh.attribute(x10, stdevs=EPS, n_samples=500, generator=gen(12), feature_mask=per_ex)
    for i in range(3):
        mi = torch.nn.functional.one_hot(per_ex[i], 4).to(x10.dtype)
        torch.testing.assert_close(g2[i], mi.T @ dense[i] @ mi, rtol=1e-4, atol=1e-5)

    def fwd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return relu10.net(torch.cat([a, b], dim=1))

    g3 = SmoothHess(fwd).attribute(
        (x10[:, :5], x10[:, 5:]),
        stdevs=EPS,
        n_samples=500,
        generator=gen(12),
        feature_mask=(mask[:5], mask[5:]),
    )
    torch.testing.assert_close(g3, grouped, rtol=1e-4, atol=1e-5)


def test_factors_match_dense(relu10: OneHiddenReLU, x10: torch.Tensor) -> None:
    sh = SmoothHess(relu10.net)
    kw = dict(stdevs=EPS, n_samples=600, n_samples_batch_size=100)
    dense, grad = sh.attribute(x10, generator=gen(13), return_gradient=True, **kw)  # type: ignore[arg-type]
    fac = sh.attribute(x10, generator=gen(13), output="factors", **kw)  # type: ignore[arg-type]
    assert isinstance(fac, SmoothHessFactors)
    assert torch.equal(fac.to_dense(), dense)  # type: ignore[arg-type]
    assert torch.equal(fac.gradient, grad)  # type: ignore[arg-type]
    v = torch.randn(3, 10, generator=gen(1))
    torch.testing.assert_close(fac.matvec(v), (dense @ v[..., None])[..., 0])
    torch.testing.assert_close(fac.diagonal(), torch.diagonal(dense, dim1=1, dim2=2))
    mask = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 3, 3])
    assert torch.equal(fac.group(mask), sh.attribute(x10, generator=gen(13), feature_mask=mask, **kw))  # type: ignore[arg-type]
    top = fac.top_pairs(5)
    iu = torch.triu_indices(10, 10, 1)
    ref = dense[:, iu[0], iu[1]].abs().topk(5, dim=1).values
    torch.testing.assert_close(top.values.abs(), ref)
    torch.testing.assert_close(top.values, dense[torch.arange(3)[:, None], top.index_i, top.index_j])
    assert bool((top.index_i < top.index_j).all())
    with pytest.raises(ValueError, match="k: "):
        fac.top_pairs(46)


# --------------------------------------------------------------------------- Captum conventions


def test_targets_and_additional_forward_args() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 3))
    x = torch.randn(3, 4)
    sh = SmoothHess(net)
    kw = dict(stdevs=0.5, n_samples=100)
    per_target = [sh.attribute(x, target=t, generator=gen(0), **kw) for t in range(3)]  # type: ignore[arg-type]
    mixed = sh.attribute(x, target=[2, 0, 1], generator=gen(0), **kw)  # type: ignore[arg-type]
    as_tensor = sh.attribute(x, target=torch.tensor([2, 0, 1]), generator=gen(0), **kw)  # type: ignore[arg-type]
    for i, t in enumerate([2, 0, 1]):
        torch.testing.assert_close(mixed[i], per_target[t][i])  # type: ignore[index]
    torch.testing.assert_close(mixed, as_tensor)
    assert not torch.allclose(per_target[0], per_target[1])  # type: ignore[arg-type]

    # A per-example tensor argument is expanded per sample, a scalar passed through.
    def fwd(inp: torch.Tensor, scale: torch.Tensor, offset: float) -> torch.Tensor:
        return net(inp)[:, 0] * scale + offset

    scale = torch.tensor([1.0, -2.0, 0.5])
    h = SmoothHess(fwd).attribute(x, additional_forward_args=(scale, 3.0), generator=gen(0), **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(h, per_target[0] * scale[:, None, None])


def test_log_usage_wrapper_and_no_grad(relu10: OneHiddenReLU, x10: torch.Tensor) -> None:
    sh = SmoothHess(relu10.net)
    assert hasattr(SmoothHess.attribute, "__wrapped__")
    with torch.no_grad():
        h = sh.attribute(x10, stdevs=EPS, n_samples=50, generator=gen(0))
    assert not h.requires_grad and torch.count_nonzero(h) > 0
    h64 = SmoothHess(relu10.net.double()).attribute(x10.double(), stdevs=EPS, n_samples=50, generator=gen(0))
    assert h64.dtype == torch.float64
    relu10.net.float()


def test_progress_bar(relu10: OneHiddenReLU, x10: torch.Tensor, capsys: pytest.CaptureFixture[str]) -> None:
    SmoothHess(relu10.net).attribute(
        x10, stdevs=EPS, n_samples=40, n_samples_batch_size=10, show_progress=True, generator=gen(0)
    )
    assert "SmoothHess" in capsys.readouterr().err


# --------------------------------------------------------------------------- determinism


def test_seed_and_batch_size_invariance(relu10: OneHiddenReLU, x10: torch.Tensor) -> None:
    sh = SmoothHess(relu10.net, kernel=Poisson())
    base = sh.attribute(x10, stdevs=EPS, n_samples=1000, generator=gen(21))
    again = sh.attribute(x10, stdevs=EPS, n_samples=1000, generator=gen(21))
    assert torch.equal(base, again)
    for bs in (2, 34, 333, 1000):
        other = sh.attribute(x10, stdevs=EPS, n_samples=1000, n_samples_batch_size=bs, generator=gen(21))
        torch.testing.assert_close(other, base, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(base, sh.attribute(x10, stdevs=EPS, n_samples=1000, generator=gen(22)))
    torch.manual_seed(5)
    g1 = sh.attribute(x10, stdevs=EPS, n_samples=100)
    torch.manual_seed(5)
    assert torch.equal(g1, sh.attribute(x10, stdevs=EPS, n_samples=100))  # type: ignore[arg-type]


def test_plain_sampling_is_unbiased_too(relu10: OneHiddenReLU, x10: torch.Tensor) -> None:
    hess = SmoothHess(relu10.net).attribute(
        x10[:1], stdevs=EPS, n_samples=40_001, antithetic=False, generator=gen(3)
    )
    assert rel_err(hess, relu10.gaussian_hessian(x10[:1], EPS)) < 0.08


# --------------------------------------------------------------------------- model untouched


class _Faulty(nn.Module):
    """A net with buffers and hooks whose forward raises on a chosen call."""

    def __init__(self, fail_on: int = -1) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 2)
        self.calls = 0
        self.fail_on = fail_on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("planted failure")
        return self.out(torch.relu(self.bn(self.lin(x))))


def _snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": [
            len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
            for m in model.modules()
        ],
    }


def _assert_same(before: dict[str, object], model: nn.Module) -> None:
    after = _snapshot(model)
    for k, v in before["state"].items():  # type: ignore[attr-defined]
        assert torch.equal(v, after["state"][k]), k  # type: ignore[index]
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    for g0, g1 in zip(before["grad"], after["grad"]):  # type: ignore[call-overload]
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)


@pytest.mark.parametrize("fail_on", [-1, 3])
def test_model_and_inputs_left_as_found(fail_on: int) -> None:
    torch.manual_seed(0)
    model = _Faulty(fail_on).eval()
    model.out.weight.grad = torch.ones_like(model.out.weight)  # an existing .grad must survive
    model.lin.register_forward_hook(lambda *a: None)
    x = torch.randn(3, 4, requires_grad=True)
    x_copy = x.detach().clone()
    before = _snapshot(model)
    sh = SmoothHess(model)
    if fail_on > 0:
        with pytest.raises(RuntimeError, match="planted"):
            sh.attribute(x, target=1, stdevs=0.5, n_samples=40, n_samples_batch_size=10, generator=gen(0))
    else:
        sh.attribute(x, target=1, stdevs=0.5, n_samples=40, n_samples_batch_size=10, generator=gen(0))
    _assert_same(before, model)
    assert x.requires_grad and x.grad is None and torch.equal(x.detach(), x_copy)
    x2 = torch.randn(3, 4)
    sh.attribute(x2, target=0, stdevs=0.5, n_samples=4, generator=gen(0)) if fail_on < 0 else None
    assert not x2.requires_grad


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(stdevs=0.0), ValueError, "stdevs"),
        (dict(stdevs=-1.0), ValueError, "stdevs"),
        (dict(stdevs=float("nan")), ValueError, "stdevs"),
        (dict(stdevs=torch.tensor([0.1, 0.0, 0.2, 0.3])), ValueError, "stdevs"),
        (dict(stdevs=torch.ones(3)), ValueError, "stdevs"),
        (dict(stdevs=(0.1, 0.2)), ValueError, "stdevs"),
        (dict(stdevs="big"), TypeError, "stdevs"),
        (dict(n_samples=0), ValueError, "n_samples"),
        (dict(n_samples=7), ValueError, "n_samples"),
        (dict(n_samples=2.5), TypeError, "n_samples"),
        (dict(n_samples_batch_size=0), ValueError, "n_samples_batch_size"),
        (dict(target=5), ValueError, "target"),
        (dict(target=None), ValueError, "target"),
        (dict(target=[0, 1]), ValueError, "target"),
        (dict(feature_mask=torch.tensor([0, 1, 2])), ValueError, "feature_mask"),
        (dict(feature_mask=torch.tensor([0.0, 1.0, 1.0, 2.0])), TypeError, "feature_mask"),
        (dict(feature_mask=torch.tensor([0, -1, 1, 2])), ValueError, "feature_mask"),
        (dict(feature_mask=torch.zeros(2, 4, dtype=torch.long)), ValueError, "feature_mask"),
        (
            dict(feature_mask=torch.tensor([0, 1, 1, 10**6])),
            ValueError,
            "^feature_mask: group ids must be below",
        ),
        (dict(feature_mask=torch.tensor([0, 4, 1, 2])), ValueError, "^feature_mask: group ids must be below"),
        (dict(output="sparse"), ValueError, "output"),
        (dict(generator=123), TypeError, "generator"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], exc: type, match: str) -> None:
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(3, 4)
    args: dict[str, object] = dict(target=0, stdevs=0.1, n_samples=10)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        SmoothHess(net).attribute(x, **args)  # type: ignore[arg-type]


def test_largest_group_id_is_one_below_the_features() -> None:
    """Ids 0 .. d-1 are Captum's range (an unused id gives zero rows); d itself is refused above."""
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    h = SmoothHess(net).attribute(
        torch.randn(3, 4), target=0, n_samples=10, feature_mask=torch.tensor([0, 3, 3, 0])
    )
    assert h.shape == (3, 4, 4) and torch.equal(h[:, 1:3], torch.zeros(3, 2, 4))


@pytest.mark.parametrize(
    "forward", [lambda z: z.detach().sum(1), lambda z: (z > 0).long().sum(1), lambda z: torch.ones(len(z))]
)
def test_an_output_without_a_gradient_is_named(forward: Any) -> None:
    """Detached, integer or constant outputs: a clear error naming forward_func, not autograd's."""
    with pytest.raises(ValueError, match=r"^forward_func: its output .* does not depend on the inputs"):
        SmoothHess(forward).attribute(torch.randn(2, 4), n_samples=4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs(bad: float) -> None:
    x = torch.randn(2, 4)
    x[1, 2] = bad
    with pytest.raises(ValueError, match="inputs"):
        SmoothHess(nn.Linear(4, 1)).attribute(x, stdevs=0.1, n_samples=10)
    with pytest.raises(ValueError, match=r"inputs\[1\]"):
        SmoothHess(lambda a, b: a.sum(1) + b.sum(1)).attribute(
            (torch.ones(2, 3), x), stdevs=0.1, n_samples=10
        )
    with pytest.raises(TypeError, match="inputs"):
        SmoothHess(nn.Linear(4, 1)).attribute(torch.ones(2, 4, dtype=torch.long), stdevs=0.1, n_samples=10)
