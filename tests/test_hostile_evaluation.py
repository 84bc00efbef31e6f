"""A hostile user of the evaluation tools: closed forms, odd arguments, the datasets and the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from captum_smoothhess import SmoothHess
from captum_smoothhess.__main__ import main
from captum_smoothhess.baselines import ExactHessian
from captum_smoothhess.datasets import four_quadrant, load_digits_tensors
from captum_smoothhess.metrics import perturbation_mse
from captum_smoothhess.robust import ClassProbability, SecondOrderAttack

# --------------------------------------------------------------------------- perturbation MSE


def test_pmse_exact_quadratic_model_is_zero_for_tuple_inputs_and_both_radius_laws() -> None:
    """A quadratic is its own second-order Taylor model: PMSE is rounding, also split over a tuple."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    a = a + a.T
    b = torch.randn(5, generator=gen, dtype=torch.float64)
    x = torch.randn(3, 5, generator=gen, dtype=torch.float64)

    def f(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        z = torch.cat([u, v], dim=1)
        return 0.5 * ((z @ a) * z).sum(1) + z @ b - 2.0

    g = x @ a + b
    h = a.expand(3, 5, 5)
    blocks = ((h[:, :2, :2], h[:, :2, 2:]), (h[:, 2:, :2], h[:, 2:, 2:]))
    for law in ("uniform", "ball"):
        out = perturbation_mse(
            f,
            (x[:, :2], x[:, 2:]),
            (g[:, :2], g[:, 2:]),
            blocks,
            radius=4.0,
            n_perturbations=64,
            radius_distribution=law,
            generator=torch.Generator().manual_seed(1),
        )
        assert out.shape == (3,) and float(out.max()) < 1e-20
    # First order on the same function: the error is the dropped curvature term, clearly nonzero.
    first = perturbation_mse(
        f, (x[:, :2], x[:, 2:]), (g[:, :2], g[:, 2:]), radius=4.0, n_perturbations=64, generator=gen
    )
    assert float(first.min()) > 1e-3


def test_pmse_half_precision_does_not_overflow_its_sum() -> None:
    """float16 inputs: 1000 squared errors of ~1e4 summed in float16 overflowed (65504) to a false
    'forward_func produced NaN or Inf' error; the sum is now float32 and the result matches float32 inputs."""
    w = torch.tensor([300.0, -200.0, 100.0])

    def f(z: torch.Tensor) -> torch.Tensor:
        return (z.float() @ w).to(z.dtype)

    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    kwargs = {"radius": 1.0, "n_perturbations": 1000}
    half = perturbation_mse(
        f, x.half(), torch.zeros(2, 3).half(), generator=torch.Generator().manual_seed(2), **kwargs
    )
    full = perturbation_mse(f, x, torch.zeros(2, 3), generator=torch.Generator().manual_seed(2), **kwargs)
    assert half.dtype == torch.float16 and bool(torch.isfinite(half).all())
    # E[(w^T delta)^2] = |w|^2 E[rho^2] / d = |w|^2 r^2 / 9 for rho ~ U[0, r], d = 3.
    expected = float(w.norm() ** 2) / 9
    torch.testing.assert_close(half.float(), full, rtol=0.02, atol=0.0)
    assert abs(float(full.mean()) / expected - 1) < 0.15
    # The exact (linear) first-order model stays exact up to float16 rounding of f.
    exact = perturbation_mse(
        f, x.half(), w.expand(2, 3).half(), generator=torch.Generator().manual_seed(2), **kwargs
    )
    assert float(exact.float().max()) < 1e-2 * expected


def test_pmse_nonfinite_model_output_is_named() -> None:
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"^forward_func: produced NaN or Inf at inputs"):
        perturbation_mse(lambda z: z.sum(1) / 0.0, x, torch.zeros_like(x), n_perturbations=4)
    with pytest.raises(ValueError, match=r"^forward_func: produced NaN or Inf at perturbed points"):
        origin = torch.zeros(2, 3)
        perturbation_mse(
            lambda z: torch.where(z.abs().sum(1) == 0, 0.0, math.inf), origin, origin, n_perturbations=4
        )


# --------------------------------------------------------------------------- the attack


def _linear_logits(w: torch.Tensor):  # type: ignore[no-untyped-def]
    def forward(z: torch.Tensor) -> torch.Tensor:
        s = z @ w.to(z.dtype)
        return torch.stack([s, -s], dim=1)

    return forward


def test_first_order_step_keeps_its_radius_when_the_gradient_underflows() -> None:
    """A confident classifier's probability gradient (~1e-25 in float32) has |g|^2 below float32's range:
    the step -r g / |g| used to be of norm ~1e13 instead of r."""
    net = _linear_logits(torch.tensor([30.0, -20.0, 10.0]))
    x = torch.tensor([[0.5, -0.5, 0.5]])  # logit gap 60: p = 1 - 1e-26
    attack = SecondOrderAttack(net, source=ExactHessian(ClassProbability(net)))
    _, grad = ExactHessian(ClassProbability(net)).attribute(x, target=0, return_gradient=True)
    assert 0 < float(grad.abs().max()) < 1e-20  # the regime of the defect
    for order in (1, 2):
        step = attack.perturb(x, radius=0.5, order=order) - x
        torch.testing.assert_close(step.norm(dim=1), torch.tensor([0.5]))
        # It lowers the class-0 logit: along -w.
        assert float(step @ torch.tensor([30.0, -20.0, 10.0])) < 0
    # An exactly zero gradient (and Hessian) leaves the example in place.
    far = torch.tensor([[10.0, -10.0, 10.0]])
    assert torch.equal(attack.perturb(far, radius=0.5, order=1), far)


def test_attack_on_a_quadratic_probability_matches_the_closed_form() -> None:
    """p(x) = x0 + x0^2 - x1^2 / 2 around 0: the trust-region minimiser, in closed form for each radius."""

    def prob(z: torch.Tensor) -> torch.Tensor:
        p = z[:, 0] + z[:, 0] ** 2 - 0.5 * z[:, 1] ** 2
        return torch.stack([p, -p], dim=1)

    attack = SecondOrderAttack(prob, source=ExactHessian(prob), apply_softmax=False)
    x = torch.zeros(1, 2, dtype=torch.float64)
    # Small radius: H + mu I >= 0 needs mu >= 1; the boundary solution is (-r, 0) while r <= 1/3
    # (mu = 1/r - 2).
    small = attack.perturb(x, radius=0.1, target=0)
    torch.testing.assert_close(small, torch.tensor([[-0.1, 0.0]], dtype=torch.float64))
    # Large radius: hard case, mu = 1, d = (-1/3, +-sqrt(r^2 - 1/9)).
    big = attack.perturb(x, radius=2.0, target=0)
    torch.testing.assert_close(big.abs(), torch.tensor([[1 / 3, math.sqrt(4 - 1 / 9)]], dtype=torch.float64))
    for adv in (small, big):
        assert float(prob(adv)[0, 0]) < float(prob(x)[0, 0])


def test_attack_model_decrease_radius_and_seed_with_smoothhess_source() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    source = SmoothHess(ClassProbability(net))
    kw = {"stdevs": 0.3, "n_samples": 100}
    with torch.no_grad():
        target = net(x).argmax(1)
    hess, grad = source.attribute(
        x, target=target, return_gradient=True, generator=torch.Generator().manual_seed(3), **kw
    )
    attack = SecondOrderAttack(net, source=source)
    radius = torch.tensor([0.1, 0.2, 0.3, 0.4])
    for extra in ({}, {"top_k": 2}, {"order": 1}):
        runs = [
            attack.perturb(x, radius=radius, generator=torch.Generator().manual_seed(3), **kw, **extra)
            for _ in range(2)
        ]
        assert torch.equal(runs[0], runs[1])
        step = (runs[0] - x).detach()
        assert bool((step.norm(dim=1) <= radius * (1 + 1e-6)).all())
        model = (step * grad).sum(1) + 0.5 * torch.einsum("bi,bij,bj->b", step, hess, step)
        assert bool((model <= 0).all())
    assert x.requires_grad and x.grad is None and not runs[0].requires_grad
    assert all(p.grad is None for p in net.parameters())


def test_attack_arguments_are_named() -> None:
    net = torch.nn.Linear(3, 2)
    with pytest.raises(TypeError, match=r"^forward_func"):
        SecondOrderAttack(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^source: .*the class SmoothHess"):
        SecondOrderAttack(net, source=SmoothHess)
    with pytest.raises(TypeError, match=r"^apply_softmax"):
        SecondOrderAttack(net, apply_softmax="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^dim"):
        ClassProbability(net, dim="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^model"):
        ClassProbability(None)  # type: ignore[arg-type]
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    attack = SecondOrderAttack(net, source=ExactHessian(ClassProbability(net)))
    # A NumPy scalar is a number.
    step = attack.perturb(x, radius=np.float32(0.25)) - x
    torch.testing.assert_close(step.norm(dim=1), torch.full((2,), 0.25))


# --------------------------------------------------------------------------- datasets


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seed": -1}, ValueError, r"^seed"),
        ({"seed": 2**32}, ValueError, r"^seed"),
        ({"seed": 1.0}, TypeError, r"^seed"),
        ({"test_size": "0.2"}, TypeError, r"^test_size"),
        ({"test_size": math.nan}, ValueError, r"^test_size"),
        ({"dtype": "float32"}, TypeError, r"^dtype"),
        ({"dtype": None}, TypeError, r"^dtype"),
        ({"dtype": torch.int64}, TypeError, r"^dtype"),
        ({"standardize": "no"}, TypeError, r"^standardize"),
    ],
)
def test_digits_bad_arguments_are_named(kwargs: dict, error: type, match: str) -> None:
    pytest.importorskip("sklearn")
    with pytest.raises(error, match=match):
        load_digits_tensors(**kwargs)


def test_digits_accept_numpy_scalars_and_stratify_any_split() -> None:
    pytest.importorskip("sklearn")
    a = load_digits_tensors(test_size=np.float32(0.2), seed=np.int64(7))
    b = load_digits_tensors(test_size=0.2, seed=7)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    n_test = math.ceil(0.2 * 1797)
    assert a.x_test.shape == (n_test, 64) and a.x_train.shape == (1797 - n_test, 64)
    full = torch.bincount(torch.cat([a.y_train, a.y_test]), minlength=10).double()
    test = torch.bincount(a.y_test, minlength=10).double()
    assert float((test - full * n_test / 1797).abs().max()) <= 1.0
    # The test digits are standardised with the training statistics, in the requested dtype.
    c = load_digits_tensors(test_size=0.2, seed=7, dtype=torch.float64)
    assert c.x_train.dtype == c.x_test.dtype == c.mean.dtype == torch.float64 and c.y_test.dtype == torch.long
    raw = load_digits_tensors(test_size=0.2, seed=7, standardize=False, dtype=torch.float64)
    torch.testing.assert_close(c.x_test, (raw.x_test - c.mean) / c.std)


def test_four_quadrant_bad_dtype_and_values_are_named() -> None:
    with pytest.raises(TypeError, match=r"^dtype"):
        four_quadrant(4, dtype="float32")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^values"):
        four_quadrant(4, values="abcd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^values"):
        four_quadrant(4, values=(1.0, None, 2.0, 3.0))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- command line


def _cli(args: list, capsys: pytest.CaptureFixture[str]) -> tuple:
    """Exit code, stdout and stderr of the command line, run in-process as the console script runs it."""
    try:
        code = main(args)
    except SystemExit as e:  # argparse: --help (0) and usage errors (2)
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_help_states_the_options_and_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    code, out, _ = _cli(["demo", "--help"], capsys)
    text = " ".join(out.split())
    assert code == 0 and "usage: captum-smoothhess demo [-h] [--out DIR] [--quick]" in text
    assert "(default: demo_output)" in text and "report.md" in text
    code, out, _ = _cli(["--help"], capsys)
    assert code == 0 and "``" not in out  # no reST markup in a terminal
    for bad in (["demo", "--bogus"], ["demo", "--out"], ["dmeo"], []):
        code, out, err = _cli(bad, capsys)
        assert code == 2 and "usage: captum-smoothhess" in err and out == "", bad
    assert list(tmp_path.iterdir()) == []


def test_run_demo_names_its_bad_arguments_before_any_work(tmp_path: Path) -> None:
    from captum_smoothhess.demo import run_demo

    (tmp_path / "afile").write_text("keep", encoding="utf-8")
    cases = [
        ({"out": str(tmp_path / "afile")}, ValueError, r"^out: .* not a folder"),
        ({"out": ""}, ValueError, r"^out"),
        ({"out": None}, TypeError, r"^out"),
        ({"out": str(tmp_path / "new"), "quick": "yes"}, TypeError, r"^quick"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            run_demo(**kwargs)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
