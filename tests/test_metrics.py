"""Perturbation MSE against closed forms for quadratic functions."""

from __future__ import annotations

import math

import pytest
import torch

from captum_smoothhess.metrics import perturbation_mse

D = 5


def _problem(seed: int = 0, batch: int = 3):
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(D, D, generator=gen, dtype=torch.float64)
    a = 0.5 * (m + m.T)
    b = torch.randn(D, generator=gen, dtype=torch.float64)
    x = torch.randn(batch, D, generator=gen, dtype=torch.float64)

    def f(z: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((z @ a) * z).sum(1) + z @ b

    return f, a, b, x


def _first_order_oracle(a: torch.Tensor, radius: float, distribution: str) -> float:
    d = a.shape[0]
    rho4 = radius**4 / 5 if distribution == "uniform" else radius**4 * d / (d + 4)
    quad = (torch.trace(a) ** 2 + 2 * torch.trace(a @ a)) / (d * (d + 2))
    return float(rho4 / 4 * quad)


def test_exact_second_order_model_has_zero_error() -> None:
    f, a, b, x = _problem()
    grad = x @ a + b
    hess = a.expand(x.shape[0], D, D)
    out = perturbation_mse(
        f, x, grad, hess, radius=2.0, n_perturbations=500, generator=torch.Generator().manual_seed(1)
    )
    assert out.shape == (3,)
    assert float(out.max()) < 1e-20


@pytest.mark.parametrize("distribution", ["uniform", "ball"])
def test_first_order_error_matches_closed_form(distribution: str) -> None:
    f, a, b, x = _problem(batch=2)
    grad = x @ a + b
    n = 40_000
    out = perturbation_mse(
        f,
        x,
        grad,
        radius=1.5,
        n_perturbations=n,
        radius_distribution=distribution,
        generator=torch.Generator().manual_seed(2),
    )
    expected = _first_order_oracle(a, 1.5, distribution)
    # The per-sample error (rho^2 v^T A v / 2)^2 has a bounded relative spread; 4% is > 5 MC sd.
    assert torch.allclose(out, torch.full_like(out, expected), rtol=0.04)


def test_radius_distributions_differ_as_predicted() -> None:
    f, a, b, x = _problem(batch=1)
    grad = x @ a + b
    kw = dict(radius=1.0, n_perturbations=20_000, generator=None)
    uni = perturbation_mse(
        f, x, grad, radius_distribution="uniform", **{**kw, "generator": torch.Generator().manual_seed(3)}
    )
    ball = perturbation_mse(
        f, x, grad, radius_distribution="ball", **{**kw, "generator": torch.Generator().manual_seed(3)}
    )
    ratio = float(ball / uni)
    assert ratio == pytest.approx((D / (D + 4)) / (1 / 5), rel=0.06)


def test_tuple_inputs_and_nested_hessian_blocks_match_flat() -> None:
    f, a, b, x = _problem()
    grad = x @ a + b
    hess = (a + 0.3 * torch.eye(D, dtype=torch.float64)).expand(3, D, D)  # imperfect model
    split = (2, 3)

    def f_tuple(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return f(torch.cat([u, v.reshape(v.shape[0], -1)], dim=1))

    xs = (x[:, :2], x[:, 2:].reshape(3, 3, 1))
    gs = (grad[:, :2], grad[:, 2:].reshape(3, 3, 1))
    blocks = tuple(
        tuple(
            hess[:, i0 : i0 + si, j0 : j0 + sj].reshape(3, *xs[i].shape[1:], *xs[j].shape[1:])
            for j, (j0, sj) in enumerate(zip((0, 2), split))
        )
        for i, (i0, si) in enumerate(zip((0, 2), split))
    )
    flat = perturbation_mse(
        f, x, grad, hess, radius=1.0, n_perturbations=300, generator=torch.Generator().manual_seed(4)
    )
    tup = perturbation_mse(
        f_tuple, xs, gs, blocks, radius=1.0, n_perturbations=300, generator=torch.Generator().manual_seed(4)
    )
    assert float(flat.min()) > 0
    torch.testing.assert_close(flat, tup)


def test_chunking_and_seed() -> None:
    f, a, b, x = _problem()
    grad = x @ a + b
    run = lambda seed, bs: perturbation_mse(  # noqa: E731
        f,
        x,
        grad,
        radius=1.0,
        n_perturbations=301,
        n_perturbations_batch_size=bs,
        generator=torch.Generator().manual_seed(seed),
    )
    torch.testing.assert_close(run(5, None), run(5, 7))
    assert not torch.allclose(run(5, None), run(6, None))


def test_target_additional_args_model_untouched_no_grad() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 4, requires_grad=True)
    scale = torch.tensor([[1.0], [2.0]])

    def fwd(z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return net(z) * s

    with torch.no_grad():
        out = perturbation_mse(
            fwd,
            x,
            torch.zeros(2, 4),
            radius=0.1,
            n_perturbations=64,
            target=[0, 2],
            additional_forward_args=(scale,),
            generator=torch.Generator().manual_seed(0),
        )
    # Reference by hand for the second example: zero gradient -> mean (f(x+d) - f(x))^2 > 0.
    assert out.shape == (2,) and bool((out > 0).all())
    assert x.requires_grad and x.grad is None
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    # additional_forward_args are expanded per perturbation: scaling the output by 2 scales PMSE by 4
    single = perturbation_mse(
        lambda z: fwd(z, torch.ones(1, 1).expand(z.shape[0], 1)),
        x[1:],
        torch.zeros(1, 4),
        radius=0.1,
        n_perturbations=64,
        target=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert float(single) > 0


def test_additional_args_scale_error() -> None:
    f, a, b, x = _problem(batch=2)
    grad = x @ a + b
    g = lambda z, s: f(z) * s  # noqa: E731
    s = torch.tensor([1.0, 3.0], dtype=torch.float64)
    out = perturbation_mse(
        g,
        x,
        grad * s[:, None],
        radius=1.0,
        n_perturbations=200,
        additional_forward_args=s,
        generator=torch.Generator().manual_seed(0),
    )
    base = perturbation_mse(
        f, x, grad, radius=1.0, n_perturbations=200, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(out, base * s**2)


def test_float32() -> None:
    f, a, b, x = _problem()
    out = perturbation_mse(
        lambda z: f(z.double()).float(), x.float(), (x @ a + b).float(), radius=0.5, n_perturbations=50
    )
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"radius": 0.0}, "radius"),
        ({"radius": -1.0}, "radius"),
        ({"radius": math.nan}, "radius"),
        ({"n_perturbations": 0}, "n_perturbations"),
        ({"radius_distribution": "sphere"}, "radius_distribution"),
        ({"gradient": torch.zeros(3, 4, dtype=torch.float64)}, "gradient"),
        ({"hessian": torch.zeros(3, 5, 4, dtype=torch.float64)}, "hessian"),
        ({"hessian": torch.full((3, 5, 5), math.nan, dtype=torch.float64)}, "hessian"),
        ({"target": 3}, "target"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    f, a, b, x = _problem()
    args = {"gradient": x @ a + b, "radius": 1.0, "n_perturbations": 4, **kwargs}
    grad = args.pop("gradient")
    with pytest.raises((ValueError, TypeError), match=match):
        perturbation_mse(f, x, grad, **args)


def test_nan_inputs_rejected() -> None:
    f, _a, _b, x = _problem()
    x[0, 0] = math.nan
    with pytest.raises(ValueError, match="inputs"):
        perturbation_mse(f, x, torch.zeros_like(x))


def test_training_mode_batch_norm_warns_and_leaves_buffers() -> None:
    """As SmoothHess: a warning, and the running statistics are left as found (private copy)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(D, 8), torch.nn.BatchNorm1d(8), torch.nn.Softplus(), torch.nn.Linear(8, 3)
    )
    net = net.double().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with pytest.warns(
        RuntimeWarning, match=r"perturbation_mse: 1 in training mode normalise\(s\) with the statistics"
    ):
        out = perturbation_mse(net, x, torch.zeros_like(x), target=0, n_perturbations=10)
    assert out.shape == (4,) and bool(torch.isfinite(out).all())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    assert net.training and net[1].training
    assert all(p.grad is None for p in net.parameters())


def test_standard_error_is_calibrated() -> None:
    # The first-order model of a quadratic leaves the closed-form error 1/2 delta^T A delta.
    f, a, b, x = _problem()
    truth = _first_order_oracle(a, 0.7, "uniform")
    runs = [
        perturbation_mse(
            f,
            x,
            x @ a + b,
            radius=0.7,
            n_perturbations=200,
            generator=torch.Generator().manual_seed(s),
            return_error=True,
        )
        for s in range(40)
    ]
    mse = torch.stack([r[0] for r in runs])
    err = torch.stack([r[1] for r in runs])
    coverage = float(((mse - truth).abs() <= 2 * err).double().mean())
    ratio = float(err.square().mean().sqrt() / mse.std(0).mean())
    assert 0.85 <= coverage <= 0.995, coverage
    assert 0.75 <= ratio <= 1.3, ratio
    same = perturbation_mse(
        f, x, x @ a + b, radius=0.7, n_perturbations=200, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(same, runs[0][0])  # the estimate itself does not change
    _, zero = perturbation_mse(
        f, x, x @ a + b, a.expand(3, D, D), radius=0.7, n_perturbations=8, return_error=True
    )
    assert float(zero.max()) < 1e-12
    with pytest.raises(ValueError, match="n_perturbations"):
        perturbation_mse(f, x, x @ a + b, n_perturbations=1, return_error=True)
    with pytest.raises(TypeError, match="return_error"):
        perturbation_mse(f, x, x @ a + b, return_error=1)  # type: ignore[call-overload]
