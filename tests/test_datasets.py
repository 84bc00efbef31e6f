"""Four Quadrant data and its closed-form smoothed Hessian; the digits loader."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from captum_smoothhess.datasets import (
    four_quadrant,
    four_quadrant_interaction,
    four_quadrant_smoothed_hessian,
    load_digits_tensors,
)


def test_four_quadrant_shapes_values_and_determinism() -> None:
    vals = (3.0, -1.0, 0.5, 2.0)
    x, y = four_quadrant(500, values=vals, extent=2.0, generator=torch.Generator().manual_seed(0))
    x2, y2 = four_quadrant(500, values=vals, extent=2.0, generator=torch.Generator().manual_seed(0))
    assert x.shape == (500, 2) and y.shape == (500,) and x.dtype == torch.float32
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert float(x.abs().max()) <= 2.0 and float(x.abs().max()) > 1.5
    q1 = (x[:, 0] > 0) & (x[:, 1] > 0)
    q2 = (x[:, 0] < 0) & (x[:, 1] > 0)
    q3 = (x[:, 0] < 0) & (x[:, 1] < 0)
    q4 = (x[:, 0] > 0) & (x[:, 1] < 0)
    for mask, v in zip((q1, q2, q3, q4), vals):
        assert bool(mask.any()) and bool((y[mask] == v).all())
    gen = torch.Generator().manual_seed(0)
    _, noisy = four_quadrant(500, values=vals, extent=2.0, noise=0.1, generator=gen)
    assert 0.05 < float((noisy - y).std()) < 0.2


def _smoothed(x: torch.Tensor, s: float, vals: tuple) -> torch.Tensor:
    p = torch.special.ndtr(x / s)
    c1, c2, c3, c4 = vals
    p1, p2 = p[..., 0], p[..., 1]
    return c1 * p1 * p2 + c2 * (1 - p1) * p2 + c3 * (1 - p1) * (1 - p2) + c4 * p1 * (1 - p2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_four_quadrant_half_precision_keeps_points_off_the_axes(dtype: torch.dtype) -> None:
    """Drawn in float32 and rounded: no point on an axis (float16's own rand grid put 1 in 2048 there), so
    y = sign(x1 x2) as documented."""
    x, y = four_quadrant(100_000, generator=torch.Generator().manual_seed(0), dtype=dtype)
    assert x.dtype == y.dtype == dtype and not bool((x == 0).any())
    assert bool((y == torch.sign(x[:, 0].float() * x[:, 1].float()).to(dtype)).all())


def test_smoothed_hessian_matches_autograd_of_smoothed_target_and_monte_carlo() -> None:
    vals = (3.0, -1.0, 0.5, 2.0)
    s = 0.4
    x = torch.tensor([[0.0, 0.0], [0.3, -0.2], [-0.5, 0.1]], dtype=torch.float64)
    ref = torch.stack([torch.autograd.functional.hessian(lambda z: _smoothed(z, s, vals), xi) for xi in x])
    torch.testing.assert_close(four_quadrant_smoothed_hessian(x, s, vals), ref)
    assert four_quadrant_interaction(s, vals) == pytest.approx(float(ref[0, 0, 1]))
    # The smoothed target is the Gaussian average of the raw target.
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(200_000, 2, generator=gen, dtype=torch.float64) * s
    pts = x[1] + u
    right = pts[:, 0] >= 0
    raw = torch.where(pts[:, 1] >= 0, torch.where(right, 3.0, -1.0), torch.where(right, 2.0, 0.5))
    assert float(raw.mean()) == pytest.approx(float(_smoothed(x[1], s, vals)), abs=0.01)
    assert four_quadrant_interaction(1.0) == pytest.approx(2 / math.pi)


def test_four_quadrant_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n"):
        four_quadrant(0)
    with pytest.raises(ValueError, match="values"):
        four_quadrant(10, values=(1.0, 2.0))
    with pytest.raises(ValueError, match="extent"):
        four_quadrant(10, extent=0.0)
    with pytest.raises(ValueError, match="noise"):
        four_quadrant(10, noise=-1.0)
    with pytest.raises(ValueError, match="stdevs"):
        four_quadrant_interaction(0.0)
    with pytest.raises(ValueError, match="x"):
        four_quadrant_smoothed_hessian(torch.zeros(3), 1.0)


def test_digits_split_standardised_stratified_and_seeded() -> None:
    pytest.importorskip("sklearn")
    a = load_digits_tensors(seed=0)
    b = load_digits_tensors(seed=0)
    c = load_digits_tensors(seed=1)
    assert a.x_train.shape == (1347, 64) and a.x_test.shape == (450, 64)
    assert a.y_train.dtype == torch.long and set(a.y_test.tolist()) == set(range(10))
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert float(a.x_train.mean(0).abs().max()) < 1e-5
    std = a.x_train.std(0)
    assert bool((((std - 1).abs() < 1e-4) | (std == 0)).all())
    # stratified: class proportions in the test set within one example of the full set's
    counts = torch.bincount(a.y_test, minlength=10).float()
    full = torch.bincount(torch.cat([a.y_train, a.y_test]), minlength=10).float() * 0.25
    assert float((counts - full).abs().max()) <= 1.0
    raw = load_digits_tensors(standardize=False, dtype=torch.float64)
    assert raw.x_train.dtype == torch.float64 and float(raw.x_train.max()) == 16.0
    torch.testing.assert_close((raw.x_test - raw.mean) / raw.std, a.x_test.double(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="test_size"):
        load_digits_tensors(test_size=1.5)


@pytest.mark.parametrize("test_size", [0.001, 0.995, 0.999])
def test_digits_split_too_small_for_the_classes_is_named(test_size: float) -> None:
    pytest.importorskip("sklearn")
    with pytest.raises(ValueError, match=r"^test_size: .*at least one example of each of the 10 classes"):
        load_digits_tensors(test_size=test_size)


def test_reproduce_paper_quick_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reproduction script's --quick mode runs end to end and writes its report and figures."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_paper.py"
    monkeypatch.syspath_prepend(str(script.parent))  # as `python benchmarks/reproduce_paper.py` has it
    spec = importlib.util.spec_from_file_location("reproduce_paper", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    out = Path(str(tmp_path))
    results = module.main(["--quick", "--out", str(out)])
    report = (out / "reproduction.md").read_text()
    assert "| SmoothHess + SmoothGrad |" in report and "post-hoc accuracy" in report
    for name in ("pmse.png", "attack.png", "four_quadrant.png"):
        assert (out / "figures" / name).stat().st_size > 1000
    assert results["accuracy"] > 0.5
    for per_radius in results["pmse"].values():
        assert all(math.isfinite(v[1]) and v[1] >= 0 for v in per_radius.values())
