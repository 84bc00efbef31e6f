"""CASO / CAFO: optimality against dense solves, closed forms, sparsity, API contract."""

from __future__ import annotations

import copy as copy_module
import warnings
from typing import Callable, Iterator, List, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_smoothhess.caso import CAFO, CASO, _LossModel
from captum_smoothhess.smoothhess import SmoothHess

D64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small tensors: one intra-op thread is faster and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mlp(d: int, hidden: int, classes: int, act: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, hidden), act, nn.Linear(hidden, classes)).to(D64)
    with torch.no_grad():
        net[2].weight.mul_(scale)
    return net


def _inputs(b: int, d: int, seed: int, dtype: torch.dtype = D64) -> Tensor:
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _dense(net: nn.Module, x: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
    """Exact per-example gradient and Hessian of the cross-entropy loss (torch.func)."""

    def loss(xi: Tensor, yi: Tensor) -> Tensor:
        return F.cross_entropy(net(xi[None]), yi[None])

    g = torch.func.vmap(torch.func.grad(loss))(x, labels)
    h = torch.func.vmap(torch.func.hessian(loss))(x, labels)
    return g.detach(), h.detach()


def _objective(g: Tensor, h: Tensor, d: Tensor, lam1: Tensor, lam2: Tensor) -> Tensor:
    quad = (g * d).sum(1) + 0.5 * torch.einsum("bi,bij,bj->b", d, h, d)
    return quad - lam1 * d.abs().sum(1) - 0.5 * lam2 * (d * d).sum(1)


def _reference(g: Tensor, h: Tensor, lam1: Tensor, lam2: Tensor, iters: int = 50000) -> Tensor:
    """Dense proximal gradient (ISTA, step 1/L) in float64 to machine precision."""
    eye = torch.eye(g.shape[1], dtype=D64)
    a = lam2[:, None, None] * eye - h  # the smooth part's Hessian, positive definite
    evals = torch.linalg.eigvalsh(a)
    assert bool((evals[:, 0] > 0).all()), "reference problem is not strictly concave"
    step = 1.0 / evals[:, -1:]
    x = torch.zeros_like(g)
    for _ in range(iters):
        v = x - step * (torch.einsum("bij,bj->bi", a, x) - g)
        x_new = torch.sign(v) * (v.abs() - step * lam1[:, None]).clamp_min(0)
        moved, x = float((x_new - x).norm(dim=1).div(step[:, 0]).max()), x_new
        if moved < 1e-12 * float(g.norm()):
            return x
    raise AssertionError(f"reference solver did not converge in {iters} iterations")


def _cos(a: Tensor, b: Tensor) -> Tensor:
    """Cosine per example, without cosine_similarity's eps (gradients can be tiny)."""
    a, b = a.flatten(1), b.flatten(1)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


# --------------------------------------------------------------------------- curvature


def test_hvp_of_relu_net_is_jacobian_form() -> None:
    """Autograd HVP of CE on a ReLU net = J^T (diag(p) - p p^T) J v, and = torch.func Hessian."""
    net = _mlp(12, 20, 5, nn.ReLU(), seed=1, scale=2.0)
    x = _inputs(4, 12, seed=2)
    labels = torch.tensor([0, 1, 2, 3])
    quad = _LossModel(net, None, (x,), labels, None).autograd()
    v = _inputs(4, 12, seed=3)
    jac = torch.func.vmap(torch.func.jacrev(lambda xi: net(xi[None])[0]))(x).detach()  # (B, C, d)
    p = torch.softmax(net(x), dim=1).detach()
    middle = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    expected = torch.einsum("bci,bck,bkj,bj->bi", jac, middle, jac, v)
    torch.testing.assert_close(quad.hvp(v), expected, rtol=1e-10, atol=1e-12)
    g, h = _dense(net, x, labels)
    torch.testing.assert_close(quad.g, g, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(quad.hvp(v), torch.einsum("bij,bj->bi", h, v), rtol=1e-10, atol=1e-12)
    assert float(expected.norm()) > 1e-3  # the check is not vacuous


@pytest.mark.parametrize(("act", "lam1"), [(nn.ReLU(), 0.02), (nn.ReLU(), 0.0), (nn.Tanh(), 0.02)])
def test_optimal_against_dense_solve_100_features(act: nn.Module, lam1: float) -> None:
    """Done-when: within 0.2% of the exact optimum; lambda2_eff = lambda2 + top eigenvalue."""
    net = _mlp(100, 40, 10, act, seed=4, scale=3.0)
    x = _inputs(3, 100, seed=5)
    lam2 = 0.05
    delta, info = CASO(net).attribute(x, lambda1=lam1, lambda2=lam2, tol=1e-6, return_info=True)
    labels = net(x).argmax(1)
    g, h = _dense(net, x, labels)
    top = torch.linalg.eigvalsh(h)[:, -1].clamp_min(0)
    lam2_eff = info["lambda2_effective"]
    assert float(top.min()) > lam2  # the curvature matters at this scale
    torch.testing.assert_close(lam2_eff, lam2 + top, rtol=1e-3, atol=0)
    lam1_t = torch.full((3,), lam1, dtype=D64)
    ref = _reference(g, h, lam1_t, lam2_eff)
    best = _objective(g, h, ref, lam1_t, lam2_eff)
    got = _objective(g, h, delta, lam1_t, lam2_eff)
    assert bool((best > 0).all())
    assert float(((best - got) / best).max()) < 2e-3
    assert float(((best - got) / best).max()) < 1e-6  # and in fact to solver precision
    torch.testing.assert_close(info["objective"], got, rtol=1e-8, atol=1e-12)
    assert bool((info["residual"] <= 1e-6).all())
    if lam1 == 0:  # unconstrained: the maximiser solves (lambda2_eff I - H) d = g
        a = lam2_eff[:, None, None] * torch.eye(100, dtype=D64) - h
        exact = torch.linalg.solve(a, g)
        assert float(((delta - exact).norm(dim=1) / exact.norm(dim=1)).max()) < 1e-4
    else:
        assert bool((delta == 0).any())
        assert bool(((delta == 0) == (ref.abs() < 1e-9)).float().mean() > 0.97)


def test_indefinite_hessian_and_poor_eigen_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tanh net has negative curvature; with one Lanczos step the solver keeps concavity."""
    import captum_smoothhess.solvers as solvers

    net = _mlp(30, 30, 4, nn.Tanh(), seed=6, scale=4.0)
    x = _inputs(3, 30, seed=7)
    labels = net(x).argmax(1)
    g, h = _dense(net, x, labels)
    evals = torch.linalg.eigvalsh(h)
    assert float(evals[:, 0].max()) < 0 < float(evals[:, -1].min())
    monkeypatch.setattr(solvers, "_EIG_MAX_ITER", 1)
    lam2 = 0.01
    delta, info = CASO(net).attribute(x, lambda1=0.01, lambda2=lam2, tol=1e-8, return_info=True)
    lam2_eff = info["lambda2_effective"]
    solved = lam2_eff[:, None] - evals
    assert bool((solved[:, 0] > 0).all())  # the solved problem is concave
    lam1 = torch.full((3,), 0.01, dtype=D64)
    ref = _reference(g, h, lam1, lam2_eff, iters=60000)
    best, got = _objective(g, h, ref, lam1, lam2_eff), _objective(g, h, delta, lam1, lam2_eff)
    assert float(((best - got) / best).max()) < 1e-5


def test_high_confidence_many_classes_matches_cafo() -> None:
    """p_max ~ 1 with many classes: H is nearly rank one along g, so CASO ~ CAFO (seed 001)."""
    net = _mlp(50, 64, 300, nn.ReLU(), seed=8, scale=200.0)
    pool = _inputs(64, 50, seed=9)
    with torch.no_grad():
        p = torch.softmax(net(pool), 1).amax(1)
    x = pool[(p > 0.999) & (p < 0.99999)][:4]  # confident, gradient not yet underflowing
    assert x.shape[0] == 4
    labels = net(x).argmax(1)
    _, h = _dense(net, x, labels)
    evals = torch.linalg.eigvalsh(h)
    assert float((evals[:, -2] / evals[:, -1]).max()) < 0.05  # nearly rank one
    caso = CASO(net).attribute(x, lambda2=0.01)
    cafo = CAFO(net).attribute(x, lambda2=0.01)
    assert float(_cos(caso, cafo).min()) > 0.99
    sparse_caso = CASO(net).attribute(x, lambda2=0.01, sparsity=0.8)
    sparse_cafo = CAFO(net).attribute(x, lambda2=0.01, sparsity=0.8)
    assert float(_cos(sparse_caso, sparse_cafo).min()) > 0.99
    # Control: the same inputs at low confidence, where the Hessian changes the direction.
    low = _mlp(50, 64, 300, nn.ReLU(), seed=8, scale=3.0)
    low_caso, low_cafo = CASO(low).attribute(x, lambda2=0.01), CAFO(low).attribute(x, lambda2=0.01)
    assert float(_cos(low_caso, low_cafo).min()) < 0.95


def test_linear_loss_equals_cafo() -> None:
    """A loss linear in the inputs has H = 0, so CASO is CAFO's closed form."""
    torch.manual_seed(10)
    net = nn.Linear(16, 3).to(D64)

    def logit_loss(out: Tensor, target: Tensor) -> Tensor:
        return out.gather(1, target[:, None])[:, 0]

    x = _inputs(5, 16, seed=11)
    a, info = CASO(net, logit_loss).attribute(
        x, target=1, lambda1=0.2, lambda2=0.5, tol=1e-10, return_info=True
    )
    b = CAFO(net, logit_loss).attribute(x, target=1, lambda1=0.2, lambda2=0.5)
    torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(info["lambda2_effective"], torch.full((5,), 0.5, dtype=D64))


# --------------------------------------------------------------------------- CAFO


def test_cafo_closed_form() -> None:
    net = _mlp(20, 16, 6, nn.ReLU(), seed=12)
    x = _inputs(3, 20, seed=13)
    target = [5, 0, 2]
    delta, info = CAFO(net).attribute(x, target=target, lambda1=0.01, lambda2=0.3, return_info=True)
    g, _ = _dense(net, x, torch.tensor(target))
    expected = torch.sign(g) * (g.abs() - 0.01).clamp_min(0) / 0.3
    torch.testing.assert_close(delta, expected, rtol=1e-10, atol=1e-12)
    assert bool((delta == 0).any()) and bool((delta != 0).any())
    # It maximises the first-order objective: no perturbation of it does better.
    lam1, lam2 = torch.full((3,), 0.01, dtype=D64), torch.full((3,), 0.3, dtype=D64)
    zero_h = torch.zeros(3, 20, 20, dtype=D64)
    best = _objective(g, zero_h, delta, lam1, lam2)
    torch.testing.assert_close(info["objective"], best)
    for seed in range(5):
        other = delta + 1e-3 * _inputs(3, 20, seed=100 + seed)
        assert bool((_objective(g, zero_h, other, lam1, lam2) < best).all())


def test_cafo_sparsity_exact() -> None:
    net = _mlp(50, 16, 6, nn.ReLU(), seed=14)
    x = _inputs(4, 50, seed=15)
    delta, info = CAFO(net).attribute(x, sparsity=0.8, return_info=True)
    assert (delta == 0).sum(1).tolist() == [40] * 4
    again = CAFO(net).attribute(x[:1], lambda1=float(info["lambda1"][0]))
    torch.testing.assert_close(again, delta[:1])


# --------------------------------------------------------------------------- sparsity


def test_sparsity_targets_fraction_of_zeros() -> None:
    """Done-when: sparsity=0.8 gives 0.8 +- 0.03 zeros, per example; lambda1 reproduces it."""
    net = _mlp(100, 40, 10, nn.ReLU(), seed=4, scale=3.0)
    x = _inputs(3, 100, seed=16)
    delta, info = CASO(net).attribute(x, sparsity=0.8, lambda2=0.05, return_info=True)
    frac = (delta == 0).double().mean(1)
    assert bool(((frac - 0.8).abs() <= 0.03).all()), frac
    again = CASO(net).attribute(x[1:2], lambda1=float(info["lambda1"][1]), lambda2=0.05)
    torch.testing.assert_close(again, delta[1:2], rtol=1e-3, atol=1e-6)
    # More sparsity -> larger lambda1.
    _, info9 = CASO(net).attribute(x, sparsity=0.95, lambda2=0.05, return_info=True)
    assert bool((info9["lambda1"] > info["lambda1"]).all())


def test_sparsity_zero_means_no_l1() -> None:
    net = _mlp(10, 8, 3, nn.ReLU(), seed=17)
    x = _inputs(2, 10, seed=18)
    a = CASO(net).attribute(x, sparsity=0.0)
    b = CASO(net).attribute(x, lambda1=0.0)
    torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- smoothhess curvature


def test_smoothhess_curvature_solves_the_estimated_problem() -> None:
    """The "smoothhess" source solves the problem of SmoothHess's dense estimate (same seed)."""
    net = _mlp(10, 24, 4, nn.ReLU(), seed=19, scale=2.0)
    x = _inputs(3, 10, seed=20)
    kw = {"stdevs": 0.3, "n_samples": 400}
    delta, info = CASO(net).attribute(
        x,
        curvature="smoothhess",
        lambda1=0.01,
        lambda2=0.05,
        tol=1e-8,
        return_info=True,
        generator=torch.Generator().manual_seed(3),
        **kw,
    )
    labels = net(x).argmax(1)

    def loss_forward(inp: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(net(inp), target, reduction="none")

    h, g = SmoothHess(loss_forward).attribute(
        x,
        additional_forward_args=(labels,),
        return_gradient=True,
        generator=torch.Generator().manual_seed(3),
        **kw,
    )
    top = torch.linalg.eigvalsh(h)[:, -1].clamp_min(0)
    torch.testing.assert_close(info["lambda2_effective"], 0.05 + top, rtol=1e-4, atol=0)
    lam1 = torch.full((3,), 0.01, dtype=D64)
    ref = _reference(g, h, lam1, info["lambda2_effective"])
    best = _objective(g, h, ref, lam1, info["lambda2_effective"])
    got = _objective(g, h, delta, lam1, info["lambda2_effective"])
    assert float(((best - got) / best).max()) < 1e-6
    # It is a different curvature from the autograd one of the ReLU net.
    auto = CASO(net).attribute(x, lambda1=0.01, lambda2=0.05)
    assert float((auto - delta).norm()) > 1e-3 * float(auto.norm())
    # Same seed, same result.
    again = CASO(net).attribute(
        x,
        curvature="smoothhess",
        lambda1=0.01,
        lambda2=0.05,
        tol=1e-8,
        generator=torch.Generator().manual_seed(3),
        **kw,
    )
    torch.testing.assert_close(again, delta, rtol=0, atol=0)


def test_smoothhess_curvature_poisson_tuple_and_afa() -> None:
    net = _mlp(6, 12, 3, nn.ReLU(), seed=21)

    def forward(a: Tensor, b: Tensor, shift: Tensor) -> Tensor:
        return net(torch.cat([a, b], 1) + shift)

    x = _inputs(2, 6, seed=22)
    shift = _inputs(2, 6, seed=23)
    out = CASO(forward).attribute(
        (x[:, :2], x[:, 2:]),
        additional_forward_args=(shift,),
        curvature="smoothhess",
        kernel="poisson",
        stdevs=0.2,
        n_samples=100,
        generator=torch.Generator().manual_seed(0),
    )
    assert isinstance(out, tuple) and out[0].shape == (2, 2) and out[1].shape == (2, 4)
    assert all(bool(torch.isfinite(o).all()) for o in out)


# --------------------------------------------------------------------------- API contract


def test_tuple_inputs_match_concatenated() -> None:
    net = _mlp(12, 16, 5, nn.Tanh(), seed=24, scale=2.0)
    x = _inputs(3, 12, seed=25)
    whole = CASO(net).attribute(x, lambda1=0.01, tol=1e-9)
    parts = CASO(lambda a, b: net(torch.cat([a.flatten(1), b], 1))).attribute(
        (x[:, :8].reshape(3, 2, 4), x[:, 8:]), lambda1=0.01, tol=1e-9
    )
    assert isinstance(parts, tuple) and parts[0].shape == (3, 2, 4) and parts[1].shape == (3, 4)
    torch.testing.assert_close(torch.cat([parts[0].flatten(1), parts[1]], 1), whole)
    split = (x[:, :8].reshape(3, 2, 4), x[:, 8:])
    cafo = CAFO(lambda a, b: net(torch.cat([a.flatten(1), b], 1))).attribute(split)
    assert isinstance(cafo, tuple) and cafo[0].shape == (3, 2, 4)


def test_targets() -> None:
    net = _mlp(10, 16, 4, nn.ReLU(), seed=26, scale=2.0)
    x = _inputs(3, 10, seed=27)
    pred = net(x).argmax(1)
    caso = CASO(net)
    torch.testing.assert_close(caso.attribute(x), caso.attribute(x, target=pred))
    torch.testing.assert_close(caso.attribute(x), caso.attribute(x, target=pred.tolist()))
    each = torch.cat(
        [caso.attribute(x[i : i + 1], target=int(t), tol=1e-10) for i, t in enumerate([0, 3, 1])]
    )
    torch.testing.assert_close(caso.attribute(x, target=[0, 3, 1], tol=1e-10), each, rtol=1e-6, atol=1e-9)
    other = caso.attribute(x, target=(pred + 1) % 4)
    assert float((other - caso.attribute(x)).norm()) > 1e-3
    same = caso.attribute(x, target=2)
    torch.testing.assert_close(same, caso.attribute(x, target=torch.tensor([2, 2, 2])))
    for bad in (4, -1, [0, 1], (0,), torch.tensor([0.5, 1.0, 2.0])):
        with pytest.raises(ValueError, match="target"):
            caso.attribute(x, target=bad)
        with pytest.raises(ValueError, match="target"):
            CAFO(net).attribute(x, target=bad)


def test_batch_solved_jointly_equals_alone() -> None:
    net = _mlp(20, 16, 5, nn.Tanh(), seed=28, scale=3.0)
    x = _inputs(4, 20, seed=29)
    together = CASO(net).attribute(x, lambda1=0.02, tol=1e-10)
    alone = torch.cat([CASO(net).attribute(x[i : i + 1], lambda1=0.02, tol=1e-10) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-6, atol=1e-9)


def test_float32_and_no_grad() -> None:
    net = _mlp(20, 16, 5, nn.ReLU(), seed=30, scale=2.0)
    x = _inputs(2, 20, seed=31)
    ref = CASO(net).attribute(x, lambda1=0.01)
    net32 = net.float()
    with torch.no_grad():
        out = CASO(net32).attribute(x.float(), lambda1=0.01)
        cafo = CAFO(net32).attribute(x.float(), lambda1=0.01)
    assert out.dtype == torch.float32 and cafo.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=2e-3, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("curvature", ["autograd", "smoothhess"])
def test_cuda_matches_cpu(curvature: str) -> None:
    net = _mlp(20, 16, 5, nn.ReLU(), seed=30, scale=2.0)
    x = _inputs(3, 20, seed=31)
    kw = {"n_samples": 100} if curvature == "smoothhess" else {}
    cpu = CASO(net).attribute(
        x, lambda1=0.01, curvature=curvature, tol=1e-8, generator=torch.Generator().manual_seed(0), **kw
    )
    gpu = CASO(net.cuda()).attribute(
        x.cuda(),
        lambda1=0.01,
        curvature=curvature,
        tol=1e-8,
        generator=torch.Generator("cuda").manual_seed(0),
        **kw,
    )
    assert gpu.device.type == "cuda"
    if curvature == "autograd":  # the noise streams of the two devices differ
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-9)


def _snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("curvature", ["autograd", "smoothhess"])
def test_model_and_inputs_untouched(curvature: str) -> None:
    net = nn.Sequential(nn.Linear(8, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3)).to(D64)
    net.eval()
    before = _snapshot(net)
    x = _inputs(3, 8, seed=32).requires_grad_(True)
    kw = {"n_samples": 50, "generator": torch.Generator().manual_seed(0)} if curvature == "smoothhess" else {}
    CASO(net).attribute(x, sparsity=0.5, curvature=curvature, **kw)
    CAFO(net).attribute(x, lambda1=0.1)
    assert not net.training
    assert all(p.grad is None for p in net.parameters())
    assert x.requires_grad and x.grad is None
    for k, v in _snapshot(net).items():
        assert torch.equal(v, before[k]), k
    assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in net.modules())

    calls = {"n": 0}

    def flaky(inp: Tensor) -> Tensor:  # fails midway through the solve
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("boom")
        return net(inp)

    def failing_loss(out: Tensor, target: Tensor) -> Tensor:  # after the forward pass
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        CASO(flaky).attribute(x, curvature="smoothhess", n_samples=50, n_samples_batch_size=10)
    with pytest.raises(RuntimeError, match="boom"):
        CASO(net, failing_loss).attribute(x, curvature=curvature, n_samples=50)
    assert x.requires_grad and x.grad is None
    assert all(p.grad is None for p in net.parameters())
    for k, v in _snapshot(net).items():
        assert torch.equal(v, before[k]), k
    plain = _mlp(8, 12, 3, nn.ReLU(), seed=1).train()
    CASO(plain).attribute(x, curvature=curvature, **kw)
    assert plain.training


def test_return_info_contents() -> None:
    net = _mlp(10, 8, 3, nn.ReLU(), seed=33)
    x = _inputs(4, 10, seed=34)
    delta, info = CASO(net).attribute(x, lambda1=0.01, return_info=True)
    assert set(info) >= {"lambda1", "lambda2_effective", "objective", "residual", "iterations"}
    assert all(v.shape == (4,) for v in info.values())
    assert bool((info["iterations"] >= 1).all()) and bool((info["hvps"] >= info["iterations"]).all())
    assert bool((info["objective"] >= 0).all())  # d = 0 is feasible with objective 0
    assert delta.shape == x.shape


def test_max_iter_warns_and_reports_residual() -> None:
    net = _mlp(30, 16, 5, nn.Tanh(), seed=35, scale=3.0)
    x = _inputs(2, 30, seed=36)
    with pytest.warns(RuntimeWarning, match="max_iter"):
        _, info = CASO(net).attribute(x, lambda2=1e-3, max_iter=2, tol=1e-12, return_info=True)
    assert bool((info["iterations"] == 2).all()) and bool((info["residual"] > 1e-12).all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CASO(net).attribute(x, lambda2=1e-3)


def test_zero_gradient_gives_zero() -> None:
    """A saturated example (gradient exactly 0) gets delta = 0, not NaN."""
    net = nn.Sequential(nn.Linear(5, 3), nn.ReLU()).to(D64)
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([-1.0, -1.0, -1.0]))
    x = _inputs(2, 5, seed=37)
    delta, info = CASO(net).attribute(x, sparsity=0.6, return_info=True)
    assert torch.equal(delta, torch.zeros_like(x)) and bool(torch.isfinite(info["residual"]).all())


BAD: list[Tuple[dict, type, str]] = [
    ({"lambda1": -0.1}, ValueError, "lambda1"),
    ({"lambda2": -1.0}, ValueError, "lambda2"),
    ({"lambda2": 0.0}, ValueError, "lambda2"),
    ({"lambda1": float("nan")}, ValueError, "lambda1"),
    ({"sparsity": -0.1}, ValueError, "sparsity"),
    ({"sparsity": 1.0}, ValueError, "sparsity"),
    ({"sparsity": 1.5}, ValueError, "sparsity"),
    ({"sparsity": "0.5"}, TypeError, "sparsity"),
    ({"sparsity": 0.5, "lambda1": 0.1}, ValueError, "lambda1"),
]


@pytest.mark.parametrize(("kwargs", "exc", "name"), BAD)
@pytest.mark.parametrize("method", [CASO, CAFO])
def test_bad_arguments(method: Callable, kwargs: dict, exc: type, name: str) -> None:
    net = _mlp(6, 8, 3, nn.ReLU(), seed=38)
    with pytest.raises(exc, match=name):
        method(net).attribute(_inputs(2, 6, seed=39), **kwargs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_caso_refuses_half_precision_naming_inputs(dtype: torch.dtype) -> None:
    net = _mlp(6, 8, 3, nn.ReLU(), seed=38).to(dtype)
    with pytest.raises(TypeError, match=r"^inputs: CASO needs float32 or float64"):
        CASO(net).attribute(_inputs(2, 6, seed=39).to(dtype))
    assert CAFO(net).attribute(_inputs(2, 6, seed=39).to(dtype)).dtype == dtype  # CAFO takes it


@pytest.mark.parametrize("method", [CASO, CAFO])
def test_lambda2_that_rounds_to_zero_is_named(method: Callable) -> None:
    """1e-50 is 0 in float32: refused as lambda2 = 0 is, not solved as an unbounded problem."""
    net = _mlp(6, 8, 3, nn.ReLU(), seed=38).float()
    with pytest.raises(ValueError, match=r"^lambda2: 1e-50 rounds to 0 in torch.float32"):
        method(net).attribute(_inputs(2, 6, seed=39).float(), lambda2=1e-50)


def test_cafo_overflow_from_a_tiny_lambda2_is_named() -> None:
    """soft(g, lambda1) / 1e-320 overflows in float64: an error naming lambda2, never Inf."""
    net = _mlp(6, 8, 3, nn.ReLU(), seed=38)
    with pytest.raises(ValueError, match=r"^lambda2: .* overflows"):
        CAFO(net).attribute(_inputs(2, 6, seed=39), lambda1=0.0, lambda2=1e-320)


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"curvature": "exact"}, ValueError, "curvature"),
        ({"tol": 0.0}, ValueError, "tol"),
        ({"max_iter": 0}, ValueError, "max_iter"),
        ({"curvature": "smoothhess", "stdevs": 0.0}, ValueError, "stdevs"),
        ({"curvature": "smoothhess", "n_samples": 3}, ValueError, "n_samples"),
        ({"curvature": "smoothhess", "kernel": "rect"}, ValueError, "kernel"),
        ({"curvature": "smoothhess", "generator": 3}, TypeError, "generator"),
    ],
)
def test_bad_caso_arguments(kwargs: dict, exc: type, name: str) -> None:
    net = _mlp(6, 8, 3, nn.ReLU(), seed=38)
    with pytest.raises(exc, match=name):
        CASO(net).attribute(_inputs(2, 6, seed=39), **kwargs)


def test_bad_inputs_and_losses() -> None:
    net = _mlp(6, 8, 3, nn.ReLU(), seed=40)
    x = _inputs(2, 6, seed=41)
    with pytest.raises(ValueError, match="inputs"):
        CASO(net).attribute(x.masked_fill(x > 1, float("nan")) if bool((x > 1).any()) else x / 0)
    with pytest.raises(ValueError, match="loss_func"):
        CASO(net, lambda out, t: F.cross_entropy(out, t)).attribute(x)
    with pytest.raises(ValueError, match="loss_func"):
        CASO(net, lambda out, t: out.sum(1) * float("inf")).attribute(x)
    with pytest.raises(TypeError, match="loss_func"):
        CASO(net, loss_func=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="forward_func"):
        CASO(lambda t: net(t)[:, 0]).attribute(x)


def test_batch_norm_in_training_mode_solves_each_example_with_its_own_hessian_block() -> None:
    """Training-mode batch norm couples the examples; each keeps the block of its own inputs."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).to(D64).train()
    x = _inputs(5, 4, seed=4)
    labels = torch.tensor([0, 1, 2, 0, 1])
    copy = copy_module.deepcopy(net)  # the batch statistics of these inputs, as CASO sees them

    def total(flat: Tensor) -> Tensor:
        return F.cross_entropy(copy(flat.reshape(5, 4)), labels, reduction="sum")

    joint = torch.autograd.functional.hessian(total, x.reshape(-1)).reshape(5, 4, 5, 4)
    h = torch.stack([joint[k, :, k, :] for k in range(5)])
    with pytest.warns(RuntimeWarning, match="training mode"):
        delta, info = CASO(net).attribute(
            x, target=labels, lambda1=0.01, lambda2=0.5, tol=1e-10, return_info=True
        )
    lam2_eff = info["lambda2_effective"]
    torch.testing.assert_close(
        lam2_eff, 0.5 + torch.linalg.eigvalsh(h)[:, -1].clamp_min(0), rtol=1e-8, atol=1e-12
    )
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(total(xg.reshape(-1)), xg)
    ref = _reference(g, h, torch.full((5,), 0.01, dtype=D64), lam2_eff)
    torch.testing.assert_close(delta, ref, rtol=1e-6, atol=1e-9)


def test_relu_loss_hessian_is_certified_low_rank_and_solved_without_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ReLU net's cross-entropy Hessian has rank <= C - 1: one batched product of C + 3
    directions (one held out) certifies it, FISTA then calls the model no more; the
    solution is that of Lanczos and the model's products."""
    import captum_smoothhess.caso as caso_module

    net = _mlp(40, 32, 5, nn.ReLU(), seed=3)
    x = _inputs(6, 40, seed=4)
    kw = {"target": 1, "lambda1": 0.01, "lambda2": 0.1, "tol": 1e-9, "return_info": True}
    delta, info = CASO(net).attribute(x, **kw)
    assert info["hvps"].tolist() == [5 + 3] * 6  # the range finder only
    _, h = _dense(net, x, torch.ones(6, dtype=torch.long))
    assert int(torch.linalg.matrix_rank(h).max()) <= 4
    original = caso_module.lanczos
    monkeypatch.setattr(caso_module, "lanczos", lambda quad, certify=False: original(quad))
    plain, plain_info = CASO(net).attribute(x, **kw)
    torch.testing.assert_close(delta, plain, rtol=0, atol=1e-10)
    torch.testing.assert_close(info["lambda2_effective"], plain_info["lambda2_effective"], rtol=1e-12, atol=0)
    assert bool((plain_info["hvps"] > plain_info["iterations"]).all())


def test_smooth_loss_hessian_is_not_certified() -> None:
    """SoftPlus: a Hessian of rank 32 (the hidden width) > C + 3; every solve calls the model."""
    net = _mlp(40, 32, 5, nn.Softplus(beta=2.0), seed=3)
    x = _inputs(6, 40, seed=4)
    _, info = CASO(net).attribute(x, target=1, lambda1=0.01, lambda2=0.1, tol=1e-9, return_info=True)
    assert bool((info["hvps"] > info["iterations"]).all())
    _, h = _dense(net, x, torch.ones(6, dtype=torch.long))
    assert int(torch.linalg.matrix_rank(h).min()) == 32


def test_batched_products_fall_back_to_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operation without a batching rule makes the vmapped backward raise: the range finder
    then takes its products one at a time, with the same result."""
    net = _mlp(40, 32, 5, nn.ReLU(), seed=3)
    x = _inputs(6, 40, seed=4)
    kw = {"target": 1, "lambda1": 0.01, "lambda2": 0.1, "tol": 1e-9, "return_info": True}
    delta, info = CASO(net).attribute(x, **kw)
    grad = torch.autograd.grad
    calls = []

    def no_batching(*args: object, **kwargs: object) -> object:
        calls.append(bool(kwargs.get("is_grads_batched")))
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("Batching rule not implemented")
        return grad(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.autograd, "grad", no_batching)
    looped, looped_info = CASO(net).attribute(x, **kw)
    assert sum(calls) == 1 and len(calls) > 8
    torch.testing.assert_close(looped, delta, rtol=0, atol=1e-12)
    assert torch.equal(looped_info["hvps"], info["hvps"])


def test_batched_products_are_split_to_a_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The range finder's C + 3 products run in as many vmapped calls as the forward's activations ask for
    (``_BATCHED_HVP_BYTES``), with the same result as one call."""
    import captum_smoothhess.caso as caso_module

    net = _mlp(40, 32, 5, nn.ReLU(), seed=3)
    x = _inputs(6, 40, seed=4)
    kw = {"target": 1, "lambda1": 0.01, "lambda2": 0.1, "tol": 1e-9, "return_info": True}
    grad = torch.autograd.grad
    sizes: List[int] = []

    def counting(*args: object, **kwargs: object) -> object:
        if kwargs.get("is_grads_batched"):
            sizes.append(int(kwargs["grad_outputs"].shape[0]))  # type: ignore[union-attr]
        return grad(*args, **kwargs)  # type: ignore[arg-type]

    quad_class = caso_module._AutogradQuadratic
    hvp_many, activation_bytes = quad_class.hvp_many, []

    def recording(self: object, vs: torch.Tensor) -> torch.Tensor:
        activation_bytes.append(self._activation_bytes)  # type: ignore[attr-defined]
        return hvp_many(self, vs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.autograd, "grad", counting)
    monkeypatch.setattr(quad_class, "hvp_many", recording)
    whole, info = CASO(net).attribute(x, **kw)
    assert sizes == [8]  # C + 3 = 8 vectors in one call
    # The forward's activations: at least the hidden layer's pre-activations and ReLU outputs (float64).
    assert activation_bytes[0] >= 2 * 6 * 32 * 8
    sizes.clear()
    monkeypatch.setattr(caso_module, "_BATCHED_HVP_BYTES", 3 * activation_bytes[0])
    split, split_info = CASO(net).attribute(x, **kw)
    assert sizes == [3, 3, 2]
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-12)
    assert torch.equal(split_info["hvps"], info["hvps"])


def test_the_users_saved_tensor_hooks_apply_inside_caso() -> None:
    """CASO sets no saved-tensor hooks of its own: a user's (e.g. ``save_on_cpu``) still pack the
    graph it builds, and it runs where such hooks are disabled."""
    net = _mlp(40, 32, 5, nn.ReLU(), seed=3)
    x = _inputs(6, 40, seed=4)
    kw = {"target": 1, "lambda1": 0.01, "lambda2": 0.1, "tol": 1e-9}
    plain = CASO(net).attribute(x, **kw)
    packed = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hooked = CASO(net).attribute(x, **kw)
    assert packed
    with torch.autograd.graph.disable_saved_tensors_hooks("no hooks here"):
        disabled = CASO(net).attribute(x, **kw)
    # Not bit for bit: MKL's dynamic threading (MKL_DYNAMIC, on by default) may split the same
    # float64 product over a different number of threads from one call to the next. After a float32
    # product of 300 x 300, or some of the package's doctests, two identical CASO calls differed by
    # 1e-17 to 1e-16 in some processes, not with MKL_DYNAMIC=FALSE or one thread, so this failed
    # once in the full suite. A last-bit change could also move FISTA's stop by an iteration, so
    # the bound is the solver's tolerance (1e-9), with room.
    torch.testing.assert_close(hooked, plain, rtol=0, atol=1e-8)
    torch.testing.assert_close(disabled, plain, rtol=0, atol=1e-8)
