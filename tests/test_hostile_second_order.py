"""Hostile-user probes of the second-order tools: solver arguments, extreme scales, CASO/CAFO lambdas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from captum_smoothhess.caso import CAFO, CASO
from captum_smoothhess.metrics import perturbation_mse
from captum_smoothhess.solvers import DenseQuadratic, fista, solve_trust_region

D64 = torch.float64


def _tr_objective(g: torch.Tensor, h: torch.Tensor, d: torch.Tensor) -> float:
    return float(g @ d + 0.5 * d @ h @ d)


@pytest.mark.parametrize("c", [1e-200, 1e-300, 1e200, 1e300])
def test_trust_region_at_extreme_scales_gives_the_unit_scale_answer(c: float) -> None:
    # (c g, c H) has the minimiser of (g, H) for any c > 0; squares of g overflow or underflow here.
    g = torch.tensor([1.0, 1.0], dtype=D64)
    h = torch.tensor([[-1.0, 0.3], [0.3, 2.0]], dtype=D64)
    ref = solve_trust_region(g, h, 1.0)
    assert _tr_objective(g, h, ref) < _tr_objective(g, h, -g / g.norm())
    torch.testing.assert_close(solve_trust_region(c * g, c * h, 1.0), ref, rtol=1e-9, atol=1e-9)


def test_trust_region_scaled_identity_hessian_at_extreme_scales() -> None:
    g = torch.tensor([1.0, 1.0], dtype=D64)
    for c in (1e-300, 1e200):
        # H = -c I: every direction has the same curvature, the step goes against g.
        torch.testing.assert_close(
            solve_trust_region(c * g, -c * torch.eye(2, dtype=D64), 1.0), -g / math.sqrt(2.0)
        )
        # H = c I, Newton step -g (norm sqrt 2) outside the unit ball: the boundary against g.
        torch.testing.assert_close(
            solve_trust_region(c * g, c * torch.eye(2, dtype=D64), 1.0), -g / math.sqrt(2.0)
        )


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((torch.tensor([3, 4]), torch.eye(2, dtype=torch.long), 2.0), {}, TypeError, "gradient"),
        ((torch.tensor([3.0, 4.0]), torch.eye(2, dtype=torch.long), 2.0), {}, TypeError, "hessian"),
        ((torch.zeros(2, 0), torch.zeros(2, 0, 0), 1.0), {}, ValueError, "gradient"),
        ((torch.tensor([3.0, 4.0]), torch.eye(2), 2.0), {"rtol": "a"}, TypeError, "rtol"),
        ((torch.tensor([3.0, 4.0]), torch.eye(2), 2.0), {"rtol": True}, TypeError, "rtol"),
    ],
)
def test_trust_region_bad_arguments_are_named(args: tuple, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        solve_trust_region(*args, **kwargs)


def _quad() -> DenseQuadratic:
    return DenseQuadratic(torch.tensor([[1.0, -0.2]], dtype=D64), torch.zeros(1, 2, 2, dtype=D64))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tol": 0.0}, ValueError, "tol"),
        ({"tol": -1.0}, ValueError, "tol"),
        ({"tol": math.nan}, ValueError, "tol"),
        ({"max_iter": 0}, ValueError, "max_iter"),
        ({"max_iter": -1}, ValueError, "max_iter"),
        ({"max_iter": 2.5}, TypeError, "max_iter"),
        ({"lam1": -1.0}, ValueError, "lam1"),
        ({"lam1": math.nan}, ValueError, "lam1"),
        ({"lam2": 0.0, "lam2_eff": 0.0}, ValueError, "lam2"),
        ({"lam2": -1.0}, ValueError, "lam2"),
        ({"lam2_eff": 0.5}, ValueError, "lam2_eff"),
        ({"lam1": torch.ones(3, dtype=D64)}, ValueError, "lam1"),
        ({"lam1": "a"}, TypeError, "lam1"),
    ],
)
def test_fista_refuses_bad_arguments_naming_them(kwargs: dict, error: type, match: str) -> None:
    """No silent NaN (lambda2 = 0), no wrong answer (negative lambda1), no ignored tolerance."""
    one = torch.ones(1, dtype=D64)
    args = {"lam1": 0.5 * one, "lam2": one, "lam2_eff": one, "tol": 1e-8, "max_iter": 100}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fista(_quad(), **args)


def test_fista_takes_plain_numbers_per_batch() -> None:
    sol = fista(_quad(), 0.5, 1.0, 1.0, 1e-10, 100)  # type: ignore[arg-type]
    torch.testing.assert_close(sol.delta, torch.tensor([[0.5, 0.0]], dtype=D64))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("method", [CASO, CAFO])
def test_lambdas_beyond_the_dtype_are_named(method: type) -> None:
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="lambda2"):
        method(_net()).attribute(x, target=0, lambda2=1e39)  # overflows float32
    with pytest.raises(ValueError, match="lambda1"):
        method(_net()).attribute(x, target=0, lambda1=1e39)


@pytest.mark.parametrize("method", [CASO, CAFO])
def test_negative_lambda2_message_says_positive(method: type) -> None:
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"lambda2: .*> 0"):
        method(_net()).attribute(x, target=0, lambda2=-1.0)


@pytest.mark.parametrize("bad", [[torch.zeros(2, 3)], "grad", None])
def test_perturbation_mse_names_a_gradient_of_the_wrong_type(bad: object) -> None:
    with pytest.raises(TypeError, match="gradient"):
        perturbation_mse(lambda z: z.sum(1), torch.zeros(2, 3), bad)  # type: ignore[arg-type]


def test_trust_region_takes_a_numpy_radius() -> None:
    import numpy as np

    from captum_smoothhess.solvers import solve_trust_region

    g, h = torch.ones(1, 2), torch.eye(2)[None]
    want = solve_trust_region(g, h, 0.5)
    assert torch.equal(solve_trust_region(g, h, np.float32(0.5)), want)
    with pytest.raises(TypeError, match=r"^radius: "):
        solve_trust_region(g, h, np.bool_(True))


def test_per_example_numbers_take_their_shapes_not_any_shape_of_b_elements() -> None:
    """A radius (or lambda) is one value or one per example, ``(B,)``, ``(B, 1)`` or ``(1, B)``; a
    ``(2, 3)`` tensor for six examples is a mistake, named, not reshaped."""
    from captum_smoothhess.solvers import solve_trust_region

    g = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    h = torch.eye(3, dtype=torch.float64).expand(6, 3, 3)
    want = solve_trust_region(g, h, torch.full((6,), 0.5, dtype=torch.float64))
    for radius in (torch.full((6, 1), 0.5), torch.full((1, 6), 0.5), torch.tensor(0.5), 0.5):
        torch.testing.assert_close(solve_trust_region(g, h, radius), want)
    with pytest.raises(ValueError, match=r"^radius"):
        solve_trust_region(g, h, torch.full((2, 3), 0.5))
