"""The batched solvers: examples that finish leave the batch, and nothing else changes."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import pytest
import torch
from torch import Tensor

from captum_smoothhess.solvers import (
    DenseQuadratic,
    Quadratic,
    Solution,
    fista,
    lanczos,
    solve_trust_region,
    sparsity_solve,
    top_eigenvalue,
)

D64 = torch.float64


class _Whole(Quadratic):
    """The same quadratic, but never split: the solver must keep the whole batch."""

    def __init__(self, inner: Quadratic, rows: List[int]) -> None:
        super().__init__(inner.g)
        self.inner, self.rows = inner, rows

    @property
    def separable(self) -> bool:
        return False

    def hvp(self, v: Tensor) -> Tensor:
        self.rows.append(v.shape[0])
        return self.inner.hvp(v)


class _Counted(DenseQuadratic):
    def __init__(self, g: Tensor, h: Tensor, rows: List[int]) -> None:
        super().__init__(g, h)
        self.rows = rows

    def hvp(self, v: Tensor) -> Tensor:
        self.rows.append(v.shape[0])
        return super().hvp(v)

    def subset(self, index: Tensor) -> Quadratic:
        return _Counted(self.g.index_select(0, index), self.hessian.index_select(0, index), self.rows)


def _problems(batch: int = 8, d: int = 12) -> DenseQuadratic:
    """Indefinite Hessians of very different scales, so examples finish at different times."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(batch, d, d, generator=gen, dtype=D64))
    scales = torch.logspace(-1, 2, batch, dtype=D64)
    lam = torch.randn(batch, d, generator=gen, dtype=D64) * scales[:, None]
    h = q @ torch.diag_embed(lam) @ q.transpose(1, 2)
    return DenseQuadratic(torch.randn(batch, d, generator=gen, dtype=D64), h)


def test_finished_examples_leave_the_batch_and_change_nothing() -> None:
    quad = _problems()
    top, _ = top_eigenvalue(quad)
    lam1 = torch.full_like(top, 0.05)
    lam2 = torch.full_like(top, 0.1)
    whole_rows: List[int] = []
    whole = fista(_Whole(quad, whole_rows), lam1, lam2, lam2 + top, 1e-8, 5000)
    split_rows: List[int] = []
    split = fista(_Counted(quad.g, quad.hessian, split_rows), lam1, lam2, lam2 + top, 1e-8, 5000)
    for a, b in zip(whole, split):
        assert torch.equal(a, b)
    assert len(set(whole.iterations.tolist())) > 2  # the examples did finish at different times
    assert set(whole_rows) == {8}
    assert min(split_rows) < 8 and sum(split_rows) < 0.8 * sum(whole_rows)


class _CostlySubset(_Counted):
    """A quadratic whose subsets take (it says) far longer than any product saved."""

    @property
    def subset_seconds(self) -> float:
        return 1e9

    def subset(self, index: Tensor) -> Quadratic:
        raise AssertionError("a costly subset was built")


def test_costly_subsets_keep_the_batch_whole_and_change_nothing() -> None:
    quad = _problems()
    top, hvps = top_eigenvalue(quad)
    lam1, lam2 = torch.full_like(top, 0.05), torch.full_like(top, 0.1)
    shrinking = fista(quad, lam1, lam2, lam2 + top, 1e-8, 5000)
    rows: List[int] = []
    costly = _CostlySubset(quad.g, quad.hessian, rows)
    whole = fista(costly, lam1, lam2, lam2 + top, 1e-8, 5000)
    for a, b in zip(whole, shrinking):
        assert torch.equal(a, b)
    assert set(rows) == {8}  # every product on the whole batch
    top_whole, hvps_whole = top_eigenvalue(_CostlySubset(quad.g, quad.hessian, []))
    assert torch.equal(top_whole, top) and torch.equal(hvps_whole, hvps)


def test_each_example_solved_as_if_alone() -> None:
    quad = _problems()
    top, hvps = top_eigenvalue(quad)
    lam1, lam2 = torch.full_like(top, 0.05), torch.full_like(top, 0.1)
    batch = fista(quad, lam1, lam2, lam2 + top, 1e-8, 5000)
    for i in range(quad.g.shape[0]):
        one = quad.subset(torch.tensor([i]))
        top_i, hvps_i = top_eigenvalue(one)
        assert torch.equal(top_i, top[i : i + 1]) and torch.equal(hvps_i, hvps[i : i + 1])
        alone = fista(one, lam1[i : i + 1], lam2[i : i + 1], lam2[i : i + 1] + top_i, 1e-8, 5000)
        for a, b in zip(alone, batch):
            assert torch.equal(a[0], b[i])


def test_lanczos_matches_eigvalsh() -> None:
    quad = _problems()
    top, hvps = top_eigenvalue(quad)
    exact = torch.linalg.eigvalsh(quad.hessian)[:, -1].clamp_min(0)
    torch.testing.assert_close(top, exact, rtol=1e-7, atol=1e-12)
    assert int(hvps.max()) <= 12  # never more than d products


def test_lanczos_stops_once_the_krylov_space_is_exhausted() -> None:
    """A rank-3 Hessian (like J^T A J of a 4-class cross-entropy) needs at most 4 products."""
    gen = torch.Generator().manual_seed(1)
    j = torch.randn(6, 3, 50, generator=gen, dtype=D64)
    h = j.transpose(1, 2) @ torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=D64)) @ j
    top, hvps = top_eigenvalue(DenseQuadratic(torch.randn(6, 50, generator=gen, dtype=D64), h))
    torch.testing.assert_close(top, torch.linalg.eigvalsh(h)[:, -1], rtol=1e-10, atol=0)
    assert int(hvps.max()) <= 4


def test_negative_definite_hessian_gives_zero() -> None:
    h = -torch.eye(4, dtype=D64).expand(2, 4, 4) * torch.tensor([1.0, 5.0], dtype=D64)[:, None, None]
    top, _ = top_eigenvalue(DenseQuadratic(torch.ones(2, 4, dtype=D64), h))
    assert torch.equal(top, torch.zeros(2, dtype=D64))


class _Coupled(Quadratic):
    """Products that mix the examples: one symmetric operator on the whole batch."""

    def __init__(self, g: Tensor, joint: Tensor) -> None:
        super().__init__(g)
        self.joint = joint

    @property
    def separable(self) -> bool:
        return False

    def hvp(self, v: Tensor) -> Tensor:
        return (self.joint @ v.reshape(-1)).reshape(v.shape)


def test_coupled_examples_get_the_top_eigenvalue_of_the_joint_operator() -> None:
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(12, 12, generator=gen, dtype=D64)
    quad = _Coupled(torch.randn(3, 4, generator=gen, dtype=D64), a + a.T)
    top, hvps = top_eigenvalue(quad)
    torch.testing.assert_close(top, torch.linalg.eigvalsh(a + a.T)[-1].expand(3), rtol=1e-7, atol=0)
    assert int(hvps[0]) <= 12 and bool((hvps == hvps[0]).all())


def test_max_iter_caps_examples_that_restart() -> None:
    """An example whose lambda_max was underestimated restarts; max_iter still ends it."""
    quad = _problems()
    top, _ = top_eigenvalue(quad)
    lam2 = torch.full_like(top, 1e-3)
    sol = fista(quad, torch.full_like(top, 1e-3), lam2, lam2 + 0.01 * top, 1e-12, 30)
    assert int(sol.iterations.max()) <= 30
    assert bool((sol.lambda2 > lam2 + 0.01 * top).any())  # some examples did restart


@pytest.mark.parametrize("eta", [0.25, 0.5])
def test_sparsity_solve_counts_zeros(eta: float) -> None:
    quad = _problems(d=16)
    top, _ = top_eigenvalue(quad)
    lam2 = torch.full_like(top, 0.5)
    sol, lam1 = sparsity_solve(quad, lam2, lam2 + top, eta, 1e-8, 5000)
    assert bool(((sol.delta == 0).sum(1) == round(eta * 16)).all())
    assert bool((lam1 > 0).all())


class _Hinted(DenseQuadratic):
    """A dense quadratic that says its Hessians are often of rank ``r``."""

    def __init__(self, g: Tensor, h: Tensor, r: int) -> None:
        super().__init__(g, h)
        self.r = r

    @property
    def rank_hint(self) -> Optional[int]:
        return self.r

    def subset(self, index: Tensor) -> Quadratic:
        return _Hinted(self.g.index_select(0, index), self.hessian.index_select(0, index), self.r)


def _low_rank(batch: int, rank: int, d: int = 60, seed: int = 3) -> DenseQuadratic:
    """PSD Hessians ``J^T diag(lam) J`` of rank ``rank``, eigenvalues spread over three decades."""
    gen = torch.Generator().manual_seed(seed)
    j = torch.randn(batch, rank, d, generator=gen, dtype=D64)
    h = j.transpose(1, 2) @ torch.diag(torch.logspace(0, -3, rank, dtype=D64)) @ j
    return DenseQuadratic(torch.randn(batch, d, generator=gen, dtype=D64), h)


def _solve_both(certified: Quadratic, dense: DenseQuadratic, top: Tensor) -> Tuple[Solution, Solution]:
    """FISTA on the certified form and on the dense Hessians: the same solutions to 1e-9."""
    lam1, lam2 = torch.full_like(top, 0.05), torch.full_like(top, 0.1)
    free = fista(certified, lam1, lam2, lam2 + top, 1e-10, 5000)
    exact = fista(dense, lam1, lam2, lam2 + top, 1e-10, 5000)
    torch.testing.assert_close(free.delta, exact.delta, rtol=0, atol=1e-9)
    return free, exact


def test_certify_finds_a_low_rank_hessian_and_its_products_need_no_model() -> None:
    quad = _low_rank(4, 3)
    eig = lanczos(quad, certify=True)
    # Three directions of the range, the start's part outside it, and the check.
    assert eig.hvps.tolist() == [5, 5, 5, 5]
    torch.testing.assert_close(eig.top, torch.linalg.eigvalsh(quad.hessian)[:, -1], rtol=1e-12, atol=0)
    v = torch.randn(4, 60, generator=torch.Generator().manual_seed(9), dtype=D64)
    torch.testing.assert_close(eig.quadratic.hvp(v), quad.hvp(v), rtol=0, atol=1e-12)
    free, dense = _solve_both(eig.quadratic, quad, eig.top)
    assert torch.equal(free.iterations, dense.iterations)
    assert free.hvps.tolist() == [0, 0, 0, 0] and bool((dense.hvps > 0).all())


def test_certify_leaves_a_full_rank_hessian_alone() -> None:
    quad = _problems(d=80)  # full rank, indefinite: the top converges long before d products
    eig = lanczos(quad, certify=True)
    assert eig.quadratic is quad
    top, hvps = top_eigenvalue(quad)
    assert torch.equal(eig.top, top) and torch.equal(eig.hvps, hvps)
    assert int(hvps.max()) < 80


def test_a_false_invariant_subspace_fails_the_check() -> None:
    """A repeated top eigenvalue: the Krylov space of one start holds one of its two
    eigenvectors only, so the check direction is not mapped to zero."""
    gen = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=D64))
    lam = torch.zeros(30, dtype=D64)
    lam[:3] = torch.tensor([2.0, 2.0, 1.0], dtype=D64)
    h = (q @ torch.diag(lam) @ q.T)[None]
    g = torch.randn(1, 30, generator=gen, dtype=D64)
    eig = lanczos(DenseQuadratic(g, h), certify=True)
    # Invariant after 3 (the two distinct eigenvalues and the null space), the check fails.
    assert eig.hvps.tolist() == [4] and isinstance(eig.quadratic, DenseQuadratic)
    torch.testing.assert_close(eig.top, torch.tensor([2.0], dtype=D64), rtol=1e-12, atol=0)
    # The range finder (rank hint 3: three random directions) sees both eigenvectors.
    hinted = lanczos(_Hinted(g, h, 3), certify=True)
    assert not isinstance(hinted.quadratic, DenseQuadratic) and hinted.hvps.tolist() == [6]
    v = torch.randn(1, 30, generator=gen, dtype=D64)
    torch.testing.assert_close(hinted.quadratic.hvp(v)[0], h[0] @ v[0], rtol=0, atol=1e-12)


def test_rank_hint_finds_the_range_in_one_batched_product() -> None:
    quad = _low_rank(4, 4)
    plain = lanczos(quad, certify=True)
    assert isinstance(plain.quadratic, DenseQuadratic)  # Lanczos stopped once the top converged
    calls: List[int] = []

    class _Batched(_Hinted):
        def hvp_many(self, vs: Tensor) -> Tensor:
            calls.append(vs.shape[0])
            return super().hvp_many(vs)

        def hvp(self, v: Tensor) -> Tensor:
            raise AssertionError("the range finder makes batched products only")

    hinted = lanczos(_Batched(quad.g, quad.hessian, 4), certify=True)
    assert calls == [7] and hinted.hvps.tolist() == [7] * 4  # 4 for Q, 2 more to fit T, 1 held out
    torch.testing.assert_close(hinted.top, torch.linalg.eigvalsh(quad.hessian)[:, -1], rtol=1e-10, atol=0)
    free, _ = _solve_both(hinted.quadratic, quad, hinted.top)
    assert free.hvps.tolist() == [0] * 4


def test_a_rank_hint_too_small_falls_back_to_lanczos() -> None:
    quad = _problems(batch=4, d=80)  # full rank
    plain = lanczos(quad, certify=True)
    hinted = lanczos(_Hinted(quad.g, quad.hessian, 4), certify=True)
    assert isinstance(hinted.quadratic, DenseQuadratic)  # the check failed for every example
    assert torch.equal(hinted.hvps, plain.hvps + 7)
    torch.testing.assert_close(hinted.top, plain.top, rtol=1e-12, atol=0)


def test_mixed_batches_certify_row_by_row_and_count_model_rows_only() -> None:
    low, full = _low_rank(3, 3, d=80), _problems(batch=3, d=80)
    order = torch.tensor([0, 3, 1, 4, 2, 5])
    g = torch.cat((low.g, full.g)).index_select(0, order)
    h = torch.cat((low.hessian, full.hessian)).index_select(0, order)
    quad = DenseQuadratic(g, h)
    eig = lanczos(quad, certify=True)
    assert eig.quadratic.counted is not None
    assert eig.quadratic.counted.tolist() == [False, True, False, True, False, True]
    v = torch.randn(6, 80, generator=torch.Generator().manual_seed(2), dtype=D64)
    torch.testing.assert_close(eig.quadratic.hvp(v), quad.hvp(v), rtol=0, atol=1e-11)
    sol, dense = _solve_both(eig.quadratic, quad, eig.top)
    assert sol.hvps[0::2].tolist() == [0, 0, 0] and torch.equal(sol.hvps[1::2], dense.hvps[1::2])


@pytest.mark.parametrize("hint", [None, 3])
def test_nan_products_raise_naming_the_model(hint: Optional[int]) -> None:
    quad = _low_rank(2, 3)
    h = quad.hessian.clone()
    h[1, 4, 7] = float("nan")
    bad = DenseQuadratic(quad.g, h) if hint is None else _Hinted(quad.g, h, hint)
    with pytest.raises(ValueError, match="forward_func: the Hessian-vector product"):
        lanczos(bad, certify=True)
    lam = torch.full((2,), 0.1, dtype=D64)
    with pytest.raises(ValueError, match="forward_func: the Hessian-vector product"):
        fista(DenseQuadratic(quad.g, h), lam, lam, lam + 1.0, 1e-8, 100)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_lanczos_at_one_feature_for_either_gradient_sign(sign: float) -> None:
    """At d = 1 the gradient's direction and the fixed start direction are +-1: they must not cancel
    into a zero start (which gave a top eigenvalue of 0 and a certified H = 0)."""
    h = torch.tensor([[[3.0]], [[-3.0]]], dtype=torch.float64)
    g = torch.tensor([[sign], [-sign]], dtype=torch.float64)
    assert top_eigenvalue(DenseQuadratic(g, h))[0].tolist() == [3.0, 0.0]  # max(0, lambda_max)
    assert top_eigenvalue(DenseQuadratic(-g, h))[0].tolist() == [3.0, 0.0]
    eig = lanczos(DenseQuadratic(g, h), certify=True)
    assert eig.quadratic.hvp(torch.ones(2, 1, dtype=torch.float64)).tolist() == [[3.0], [-3.0]]


@pytest.mark.parametrize("x0", [0.3, -0.3])
def test_caso_at_one_feature_matches_the_closed_form(x0: float) -> None:
    """d = 1, lambda1 = 0, a loss with negative curvature h: delta = g / (lambda2 - h) (section 5);
    with the zero start, CASO solved it with h = 0 for one sign of the gradient."""
    from captum_smoothhess import CASO

    class Logits(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:  # cross-entropy of class 1: softplus(-x^2)
            return torch.cat([-(x**2), torch.zeros_like(x)], 1)

    x = torch.tensor([[x0]], dtype=D64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(Logits()(x), torch.tensor([1]), reduction="sum")
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    assert float(h) < 0
    delta = CASO(Logits()).attribute(x.detach(), target=1, lambda1=0.0, lambda2=1.0, tol=1e-12)
    torch.testing.assert_close(delta, (g / (1.0 - h)).detach())


def _tr_objective(g: Tensor, h: Tensor, d: Tensor) -> float:
    return float(g @ d + 0.5 * d @ h @ d)


def _tr_on_circle(g: Tensor, h: Tensor, r: float) -> Tensor:
    """Brute force for a 2-d problem whose minimiser is on the boundary: a grid of angles, then refined."""
    lo, hi = -torch.pi, torch.pi
    for _ in range(6):
        t = torch.linspace(lo, hi, 4001, dtype=D64)
        pts = r * torch.stack((t.cos(), t.sin()), 1)
        vals = pts @ g + 0.5 * ((pts @ h) * pts).sum(1)
        best = float(t[int(vals.argmin())])
        step = (hi - lo) / 4000
        lo, hi = best - 2 * step, best + 2 * step
    return r * torch.tensor([math.cos(best), math.sin(best)], dtype=D64)


@pytest.mark.parametrize("c", [1.0, 1e-6, 1e-14, 1e-20, 1e12])
def test_trust_region_is_scale_invariant(c: float) -> None:
    # (c g, c H) has the minimiser of (g, H): negative curvature puts it on the boundary at any scale.
    g = torch.tensor([0.0, 1.0], dtype=D64)
    h = torch.diag(torch.tensor([-1.0, 2.0], dtype=D64))
    ref = solve_trust_region(g, h, 10.0)
    assert abs(float(ref.norm()) - 10.0) < 1e-8
    d = solve_trust_region(c * g, c * h, 10.0)
    torch.testing.assert_close(d, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("c", [1e-3, 1e-12, 1e-15, 1e9])
def test_trust_region_scaled_random_problems_scale_their_answers(c: float) -> None:
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(6, 5, 5, generator=gen, dtype=D64)
    h = a + a.transpose(1, 2)
    g = torch.randn(6, 5, generator=gen, dtype=D64)
    r = torch.tensor([0.01, 0.5, 3.0, 100.0, 1.0, 7.0], dtype=D64)
    ref = solve_trust_region(g, h, r)
    got = solve_trust_region(c * g, c * h, r)
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-7 * float(r.max()))


@pytest.mark.parametrize("comp", [1e-7, 9.9e-6, -1e-7, -9.9e-6])
def test_trust_region_near_hard_case_moves_against_the_gradient(comp: float) -> None:
    # g's component on q_min is below sqrt(rtol) |g|: the hard-case step tau q_min must take the sign
    # that lowers g^T d, or it loses 2 tau |comp| of objective.
    g = torch.tensor([comp, 1.0], dtype=D64)
    h = torch.diag(torch.tensor([-1.0, 2.0], dtype=D64))
    d = solve_trust_region(g, h, 10.0)
    assert float(d.norm()) <= 10.0 * (1 + 1e-9)
    assert float(d[0]) * comp <= 0
    ref = _tr_on_circle(g, h, 10.0)
    assert _tr_objective(g, h, d) <= _tr_objective(g, h, ref) + 1e-9


def test_trust_region_near_hard_case_matches_an_eigendecomposition_reference() -> None:
    # Random rotations of diag(lam) with g nearly orthogonal to q_min (either sign), checked against the
    # easy-case secular equation solved by bisection on the eigendecomposition.
    gen = torch.Generator().manual_seed(5)
    for trial in range(20):
        d = 2 + trial % 4
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=D64))
        lam = torch.sort(torch.randn(d, generator=gen, dtype=D64)).values
        lam[0] = -1.0 - lam.abs().max()
        gt = torch.randn(d, generator=gen, dtype=D64) * 0.1
        gt[0] = (1 if trial % 2 else -1) * 1e-6 * float(gt.norm())
        g, h = q @ gt, q @ torch.diag(lam) @ q.T
        r = 10.0
        lo, hi = float(-lam[0]), float(-lam[0]) + float(gt.norm()) / r + 1.0
        for _ in range(200):  # |d(mu)| decreases in mu: bisect |d(mu)| = r
            mu = 0.5 * (lo + hi)
            if float((gt / (lam + mu)).norm()) > r:
                lo = mu
            else:
                hi = mu
        ref = q @ (-gt / (lam + hi))
        got = solve_trust_region(g, h, r)
        assert float(got.norm()) <= r * (1 + 1e-9)
        best = _tr_objective(g, h, ref)
        assert _tr_objective(g, h, got) <= best + 1e-9 * max(1.0, abs(best))


def test_fista_refuses_a_nan_gradient() -> None:
    g = torch.tensor([[float("nan"), 1.0]], dtype=D64)
    quad = DenseQuadratic(g, torch.eye(2, dtype=D64)[None])
    one = torch.ones(1, dtype=D64)
    with pytest.raises(ValueError, match="gradient"):
        fista(quad, 0.1 * one, one, 2 * one, 1e-8, 100)
    with pytest.raises(ValueError, match="gradient"):
        sparsity_solve(quad, one, 2 * one, 0.5, 1e-8, 100)


@pytest.mark.parametrize("eta", [1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_sparsity_solve_refuses_eta_outside_its_range(eta: float) -> None:
    quad = DenseQuadratic(torch.randn(1, 4, dtype=D64), torch.zeros(1, 4, 4, dtype=D64))
    one = torch.ones(1, dtype=D64)
    with pytest.raises(ValueError, match=r"eta: .*\[0, 1\)"):
        sparsity_solve(quad, one, one, eta, 1e-10, 100)


@pytest.mark.parametrize("eta", ["0.5", True, None])
def test_sparsity_solve_refuses_eta_that_is_not_a_number(eta: object) -> None:
    quad = DenseQuadratic(torch.randn(1, 4, dtype=D64), torch.zeros(1, 4, 4, dtype=D64))
    one = torch.ones(1, dtype=D64)
    with pytest.raises(TypeError, match="eta"):
        sparsity_solve(quad, one, one, eta, 1e-10, 100)  # type: ignore[arg-type]
