"""Exact trust-region solver (against dense references and KKT) and the attacks."""

from __future__ import annotations

import math

import pytest
import torch

from captum_smoothhess.baselines import ExactHessian, softplus_surrogate
from captum_smoothhess.robust import ClassProbability, SecondOrderAttack, solve_trust_region


def _model(g: torch.Tensor, h: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return (d * g).sum(-1) + 0.5 * torch.einsum("...i,...ij,...j->...", d, h, d)


def _grid_min(g: torch.Tensor, h: torch.Tensor, r: float, n: int = 801) -> float:
    t = torch.linspace(-r, r, n, dtype=torch.float64)
    pts = torch.cartesian_prod(t, t)
    pts = pts[pts.norm(dim=1) <= r]
    ang = torch.linspace(0, 2 * math.pi, 20001, dtype=torch.float64)
    pts = torch.cat([pts, r * torch.stack([ang.cos(), ang.sin()], 1)])
    return float(_model(g, h, pts).min())


CASES_2D = [
    ([1.0, 0.5], [[2.0, 0.3], [0.3, 1.0]], 5.0),  # interior Newton step
    ([3.0, -1.0], [[2.0, 0.3], [0.3, 1.0]], 0.7),  # boundary, convex
    ([1.0, 0.4], [[-1.0, 0.0], [0.0, 2.0]], 1.0),  # indefinite, easy case
    ([0.0, 1.0], [[-2.0, 0.0], [0.0, 1.0]], 2.0),  # hard case: g orthogonal to lam_min
    ([0.0, 0.0], [[1.0, 0.0], [0.0, -0.5]], 1.0),  # g = 0, indefinite
    ([0.5, 0.0], [[0.0, 0.0], [0.0, 0.0]], 1.3),  # H = 0: first-order step
    ([0.0, 0.0], [[1.0, 0.2], [0.2, 3.0]], 1.0),  # g = 0, convex: d = 0
]


@pytest.mark.parametrize(("g", "h", "r"), CASES_2D)
def test_matches_dense_grid_in_2d(g: list, h: list, r: float) -> None:
    gt, ht = torch.tensor(g, dtype=torch.float64), torch.tensor(h, dtype=torch.float64)
    d = solve_trust_region(gt, ht, r)
    assert float(d.norm()) <= r * (1 + 1e-9)
    best = _grid_min(gt, ht, r)
    assert float(_model(gt, ht, d)) <= best + 1e-9


def test_hard_case_closed_form() -> None:
    h = torch.diag(torch.tensor([-2.0, 1.0, 3.0], dtype=torch.float64))
    g = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    d = solve_trust_region(g, h, 2.0)
    # mu = 2: d_2 = -1/3, d_1 = +-sqrt(4 - 1/9), d_3 = 0.
    torch.testing.assert_close(d.abs(), torch.tensor([math.sqrt(4 - 1 / 9), 1 / 3, 0.0], dtype=torch.float64))
    assert float(d[1]) < 0


def _kkt(g: torch.Tensor, h: torch.Tensor, d: torch.Tensor, r: float) -> None:
    dn = float(d.norm())
    res = g + h @ d
    if dn < r * (1 - 1e-8):  # interior: stationary and convex
        assert float(res.norm()) < 1e-8 * (1 + float(g.norm()))
        assert float(torch.linalg.eigvalsh(h)[0]) >= -1e-10
        return
    mu = -float(res @ d) / dn**2
    assert mu >= -1e-9
    assert float((res + mu * d).norm()) < 1e-7 * (1 + float(g.norm()))
    assert float(torch.linalg.eigvalsh(h + mu * torch.eye(len(g), dtype=h.dtype))[0]) >= -1e-7


def test_random_batches_satisfy_kkt_and_beat_random_feasible_points() -> None:
    gen = torch.Generator().manual_seed(0)
    batch, dim = 64, 6
    m = torch.randn(batch, dim, dim, generator=gen, dtype=torch.float64)
    h = 0.5 * (m + m.transpose(1, 2))
    h[:8] = h[:8] @ h[:8].transpose(1, 2)  # some convex problems
    g = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    g[8:16] *= 1e-3
    r = torch.rand(batch, generator=gen, dtype=torch.float64) * 3 + 0.05
    d = solve_trust_region(g, h, r)
    assert d.shape == (batch, dim)
    assert bool((d.norm(dim=1) <= r * (1 + 1e-9)).all())
    for i in range(batch):
        _kkt(g[i], h[i], d[i], float(r[i]))
    # dense random reference: points on the sphere and inside the ball
    v = torch.randn(batch, 4000, dim, generator=gen, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True)
    scale = torch.rand(batch, 4000, 1, generator=gen, dtype=torch.float64) ** (1 / dim)
    scale[:, :2000] = 1.0
    pts = v * scale * r[:, None, None]
    ref = (pts @ g[:, :, None]).squeeze(-1) + 0.5 * torch.einsum("bni,bij,bnj->bn", pts, h, pts)
    sol = _model(g, h, d)
    assert bool((sol <= ref.min(dim=1).values + 1e-10).all())


def test_hard_case_with_degenerate_eigenspace_batched() -> None:
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    lam = torch.tensor([-1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    h = q @ torch.diag(lam) @ q.T
    g = q @ torch.tensor([0.0, 0.0, 0.3, -0.2], dtype=torch.float64)  # orthogonal to lam_min space
    d = solve_trust_region(
        g[None].repeat(2, 1), h[None].repeat(2, 1, 1), torch.tensor([1.0, 0.1], dtype=torch.float64)
    )
    for i, r in enumerate((1.0, 0.1)):
        assert float(d[i].norm()) == pytest.approx(r, rel=1e-9)
        _kkt(g, h, d[i], r)


def test_float32_and_unbatched_shapes() -> None:
    g = torch.tensor([[1.0, -2.0]])
    h = torch.tensor([[[1.0, 0.0], [0.0, -1.0]]])
    d = solve_trust_region(g, h, 0.5)
    assert d.dtype == torch.float32 and d.shape == (1, 2)
    torch.testing.assert_close(solve_trust_region(g[0], h[0], 0.5), d[0])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.zeros(2, 3), torch.zeros(2, 3, 2), 1.0), "hessian"),
        ((torch.zeros(2, 3), torch.zeros(2, 3, 3), 0.0), "radius"),
        ((torch.zeros(2, 3), torch.zeros(2, 3, 3), torch.tensor([1.0, -1.0])), "radius"),
        ((torch.zeros(2, 3), torch.zeros(2, 3, 3), torch.ones(3)), "radius"),
        ((torch.full((2, 3), math.nan), torch.zeros(2, 3, 3), 1.0), "gradient"),
        ((torch.zeros(2, 3), torch.full((2, 3, 3), math.inf), 1.0), "hessian"),
    ],
)
def test_solver_bad_arguments(args: tuple, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        solve_trust_region(*args)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def test_attack_steps_with_exact_source() -> None:
    net = _net()
    smooth = softplus_surrogate(net, beta=2.0)
    prob = ClassProbability(smooth)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    attack = SecondOrderAttack(net, source=ExactHessian(prob))
    x = torch.randn(6, 5, requires_grad=True)
    target = net(x).argmax(1)
    hess, grad = ExactHessian(prob).attribute(x, target=target, return_gradient=True)
    with torch.no_grad():
        adv1 = attack.perturb(x, radius=0.3, order=1)
        adv2 = attack.perturb(x, radius=0.3)
        adv_k = attack.perturb(x, radius=0.3, top_k=1)
    step1, step2, step_k = adv1 - x, adv2 - x, adv_k - x
    torch.testing.assert_close(step1, -0.3 * grad / grad.norm(dim=1, keepdim=True))
    assert bool((step2.norm(dim=1) <= 0.3 + 1e-5).all())
    m1, m2, mk = (_model(grad, hess, s.detach()) for s in (step1, step2, step_k))
    # The exact trust-region step is optimal for the model; the subspace step is in between.
    assert bool((m2 <= m1 + 1e-6).all()) and bool((m2 <= mk + 1e-6).all()) and bool((mk <= m1 + 1e-6).all())
    # The second-order step lowers the true target probability more than a random step of the same norm.
    p = lambda z: prob(z.detach()).detach().gather(1, target[:, None])[:, 0]  # noqa: E731
    assert float(p(adv2).mean()) < float(p(x).mean())
    assert x.requires_grad and x.grad is None
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_attack_default_source_smoothhess_and_tuple_inputs() -> None:
    net = _net()

    def fwd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return net(torch.cat([a, b], dim=1))

    x = torch.randn(4, 5)
    attack = SecondOrderAttack(fwd)
    adv = attack.perturb(
        (x[:, :2], x[:, 2:]),
        radius=0.4,
        stdevs=0.3,
        n_samples=200,
        generator=torch.Generator().manual_seed(0),
    )
    assert isinstance(adv, tuple) and adv[0].shape == (4, 2) and adv[1].shape == (4, 3)
    step = torch.cat([adv[0], adv[1]], dim=1) - x
    assert bool((step.norm(dim=1) <= 0.4 + 1e-5).all()) and float(step.norm()) > 0


def test_attack_bad_arguments() -> None:
    attack = SecondOrderAttack(_net())
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match="radius"):
        attack.perturb(x, radius=-1.0)
    with pytest.raises(ValueError, match="order"):
        attack.perturb(x, radius=1.0, order=3)
    with pytest.raises(ValueError, match="top_k"):
        attack.perturb(x, radius=1.0, top_k=0)
    with pytest.raises(ValueError, match="target"):
        attack.perturb(x, radius=1.0, target=7)
    with pytest.raises(TypeError, match="source"):
        SecondOrderAttack(_net(), source=object())


def _bn_net() -> torch.nn.Module:
    torch.manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Softplus(), torch.nn.Linear(8, 3)
    )
    return net.double().train()


_TRAINING_WARNING = r"in training mode normalise\(s\) with the statistics of each batch"


@pytest.mark.parametrize("target", [None, 0])
def test_attack_default_source_on_training_mode_batch_norm_warns_and_leaves_buffers(target: object) -> None:
    """The default source goes through ClassProbability: the batch norm is still seen and protected."""
    net = _bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=_TRAINING_WARNING):
        adv = SecondOrderAttack(net).perturb(
            x, radius=0.1, target=target, stdevs=0.2, n_samples=8, generator=torch.Generator().manual_seed(0)
        )
    assert adv.shape == x.shape and bool(((adv - x).norm(dim=1) <= 0.1 + 1e-9).all())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    assert net.training and net[1].training
    assert all(p.grad is None for p in net.parameters())


def test_attack_with_other_source_on_training_mode_batch_norm_warns_and_leaves_buffers() -> None:
    net = _bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="SecondOrderAttack: model.1 " + _TRAINING_WARNING):
        SecondOrderAttack(net, source=ExactHessian(ClassProbability(net))).perturb(x, radius=0.1)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    assert net.training


def test_class_probability_is_seen_through_but_does_not_own_the_model() -> None:
    from captum_smoothhess import SmoothHess

    net = _bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    prob = ClassProbability(net)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="SmoothHess: model.1 " + _TRAINING_WARNING):
        SmoothHess(prob).attribute(x, target=0, stdevs=0.2, n_samples=8)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"
    # Public behaviour unchanged: the wrapper does not register (own) the model.
    prob.eval()
    assert net.training and net[1].training
    assert list(prob.parameters()) == [] and prob.state_dict() == {}
    assert prob.model is net
