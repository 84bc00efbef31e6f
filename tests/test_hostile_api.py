"""A hostile user of ``SmoothHess.attribute`` and of what it returns.

Each test pins a defect that a realistic call once hit: a silently wrong or
non-finite result, or an error that did not name the argument to fix.
"""

from __future__ import annotations

import copy
import pickle
import threading
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
from helpers import OneHiddenReLU, gen, make_one_hidden
from torch import Tensor

from captum_smoothhess import SmoothHess


@pytest.fixture(scope="module")
def relu5() -> OneHiddenReLU:
    return make_one_hidden(5, 12, seed=1)


@pytest.fixture(scope="module")
def x5() -> Tensor:
    return torch.randn(3, 5, generator=gen(2))


# --------------------------------------------------------------------------- bandwidth vs dtype


@pytest.mark.parametrize(
    ("dtype", "stdevs"),
    [
        (torch.float32, 1e-40),  # a positive float that is 0 (or subnormal) once in float32
        (torch.float32, 1e-50),
        (torch.float32, 1e39),  # beyond float32's range
        (torch.float16, 1e-5),  # 1 / stdevs overflows float16
    ],
)
def test_stdevs_out_of_the_inputs_dtype_range_named(
    relu5: OneHiddenReLU, x5: Tensor, dtype: torch.dtype, stdevs: float
) -> None:
    """These once returned NaN/Inf silently (or a bare overflow RuntimeError from torch)."""
    net = copy.deepcopy(relu5.net).to(dtype)
    with pytest.raises(ValueError, match=r"^stdevs"):
        SmoothHess(net).attribute(x5.to(dtype), stdevs=stdevs, n_samples=20, generator=gen(0))


def test_per_feature_stdevs_underflowing_named(relu5: OneHiddenReLU, x5: Tensor) -> None:
    stdevs = torch.tensor([0.5, 0.5, 1e-45, 0.5, 0.5], dtype=torch.float64)  # > 0 in float64, 0 in float32
    with pytest.raises(ValueError, match=r"^stdevs"):
        SmoothHess(relu5.net).attribute(x5, stdevs=stdevs, n_samples=20, generator=gen(0))


def test_stdevs_below_the_dtype_resolution_warns(relu5: OneHiddenReLU, x5: Tensor) -> None:
    """In float16 a bandwidth of 1e-3 at |x| ~ 1 rounds the perturbed points back to the inputs: the
    gradient differences vanish and the result was an exact 0 with a reported relative error 0."""
    net = copy.deepcopy(relu5.net).half()
    with pytest.warns(UserWarning, match=r"stdevs"):
        SmoothHess(net).attribute(x5.half(), stdevs=1e-3, n_samples=20, generator=gen(0))


# --------------------------------------------------------------------------- half precision sums


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_error_path_keeps_its_accuracy(
    relu5: OneHiddenReLU, x5: Tensor, dtype: torch.dtype
) -> None:
    """With ``return_error`` the group sums were kept in bfloat16: at 20,000 calls the Hessian was 48%
    off the float32 estimate of the same seed (without ``return_error``: 0.4%)."""
    kw: Dict[str, Any] = {"stdevs": 0.5, "n_samples": 8000, "return_error": True}
    ref, _ = SmoothHess(relu5.net).attribute(x5, generator=gen(0), **kw)
    net = copy.deepcopy(relu5.net).to(dtype)
    h, err = SmoothHess(net).attribute(x5.to(dtype), generator=gen(0), **kw)
    assert h.dtype == err.stderr.dtype == err.relative.dtype == dtype
    rel = float((h.float() - ref).norm() / ref.norm())
    assert rel < 0.03, rel
    assert bool(torch.isfinite(err.stderr).all())


def test_half_precision_hessian_sum_does_not_overflow() -> None:
    """``f = 100 |x_0|`` at 0: the gradients cancel (their sum stays small) but every pair adds about
    ``160`` to the raw sum ``sum_i s_i d_i^T``, which left float16's range at about 400 pairs although
    the mean, ``H_00 ~ 200 phi(0) / eps``, fits easily: the sums accumulate in float32."""
    net = torch.nn.Sequential(
        torch.nn.Linear(3, 2, bias=False), torch.nn.ReLU(), torch.nn.Linear(2, 1, bias=False)
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]))
        net[2].weight.fill_(100.0)
    x = torch.zeros(2, 3)
    kw: Dict[str, Any] = {"stdevs": 0.5, "n_samples": 2000, "sampling": "iid"}
    for extra in ({}, {"feature_mask": torch.tensor([0, 1, 1])}):
        ref = SmoothHess(net).attribute(x, generator=gen(0), **kw, **extra)
        h = SmoothHess(copy.deepcopy(net).half()).attribute(x.half(), generator=gen(0), **kw, **extra)
        assert h.dtype == torch.float16 and bool(torch.isfinite(h).all())
        assert float((h.float() - ref).norm() / ref.norm()) < 0.01


# --------------------------------------------------------------------------- argument types


@pytest.mark.parametrize("argument", ["antithetic", "return_gradient", "return_error", "show_progress"])
@pytest.mark.parametrize("value", [None, "no", 1])
def test_flags_must_be_booleans(relu5: OneHiddenReLU, x5: Tensor, argument: str, value: object) -> None:
    """``antithetic=None`` silently meant no antithetic pairs, ``return_error="no"`` returned an error."""
    with pytest.raises(TypeError, match=rf"^{argument}"):
        SmoothHess(relu5.net).attribute(x5, stdevs=0.5, n_samples=20, **{argument: value})


def test_numpy_booleans_are_flags(relu5: OneHiddenReLU, x5: Tensor) -> None:
    h, g = SmoothHess(relu5.net).attribute(
        x5, stdevs=0.5, n_samples=20, return_gradient=np.True_, antithetic=np.bool_(True), generator=gen(0)
    )
    assert h.shape == (3, 5, 5) and g.shape == (3, 5)


def test_n_samples_beyond_int64_named(relu5: OneHiddenReLU, x5: Tensor) -> None:
    """With a tolerance the call sampled to the end, then failed with a bare OverflowError."""
    with pytest.raises(ValueError, match=r"^n_samples: must be at most"):
        SmoothHess(relu5.net).attribute(x5, stdevs=0.5, n_samples=10**30, tolerance=0.3, generator=gen(0))
    from captum_smoothhess import LayerSmoothHess

    with pytest.raises(ValueError, match=r"^n_samples: must be at most"):  # the layer methods too
        LayerSmoothHess(relu5.net, relu5.net[0]).attribute(x5, stdevs=0.5, n_samples=10**30, tolerance=0.3)


def test_list_inputs_named(relu5: OneHiddenReLU, x5: Tensor) -> None:
    with pytest.raises(TypeError, match=r"^inputs"):
        SmoothHess(relu5.net).attribute([x5], stdevs=0.5, n_samples=20)  # type: ignore[call-overload]


# --------------------------------------------------------------------------- the factors object


@pytest.fixture(scope="module")
def factors(relu5: OneHiddenReLU, x5: Tensor) -> Any:
    return SmoothHess(relu5.net).attribute(
        x5, stdevs=0.5, n_samples=20, generator=gen(0), output="factors", return_error=True
    )


@pytest.mark.parametrize(
    ("v", "exc"),
    [
        (np.ones((3, 5), dtype=np.float32), TypeError),  # named a shape mismatch before
        (torch.ones(3, 5, dtype=torch.complex64), TypeError),  # imaginary part dropped with a warning
        (torch.full((3, 5), float("nan")), ValueError),  # returned NaN
        (torch.ones(3, 5, device="meta"), ValueError),  # NotImplementedError from torch
        (torch.ones(1, 5), ValueError),
        (torch.ones(3, 4), ValueError),
    ],
    ids=["numpy", "complex", "nan", "meta", "batch-1", "short"],
)
def test_matvec_bad_vectors_named(factors: Any, v: Any, exc: type) -> None:
    with pytest.raises(exc, match=r"^v"):
        factors.matvec(v)


def test_matvec_takes_other_real_dtypes(factors: Any) -> None:
    v = torch.randn(3, 5, generator=gen(3), dtype=torch.float64)
    dense = factors.to_dense()
    out = factors.matvec(v)
    assert out.dtype == dense.dtype
    torch.testing.assert_close(out, (dense @ v.float()[:, :, None])[..., 0], rtol=1e-5, atol=1e-5)


def test_group_without_a_mask_named(factors: Any) -> None:
    """``group(None)`` raised "'NoneType' object is not iterable"."""
    with pytest.raises(TypeError, match=r"^feature_mask"):
        factors.group(None)


def test_top_pairs_of_one_feature_explained(relu5: OneHiddenReLU) -> None:
    one = make_one_hidden(1, 6, seed=3)
    fac = SmoothHess(one.net).attribute(torch.randn(2, 1), stdevs=0.5, n_samples=20, output="factors")
    with pytest.raises(ValueError, match=r"^k: .*1 feature"):
        fac.top_pairs(1)


# --------------------------------------------------------------------------- what was fine (kept fine)


def test_factors_pickle_and_copy_round_trip(factors: Any) -> None:
    dense = factors.to_dense()
    for clone in (pickle.loads(pickle.dumps(factors)), copy.deepcopy(factors)):
        assert torch.equal(clone.to_dense(), dense)
        assert torch.equal(clone.error().stderr, factors.error().stderr)
    err = factors.error()
    assert torch.equal(pickle.loads(pickle.dumps(err)).relative, err.relative)


def test_same_seed_in_four_threads(relu5: OneHiddenReLU, x5: Tensor) -> None:
    out: List[Any] = [None] * 4

    def run(i: int) -> None:
        out[i] = SmoothHess(relu5.net).attribute(
            x5, stdevs=0.5, n_samples=40, generator=gen(7), return_error=True
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for h, err in out[1:]:
        assert torch.equal(h, out[0][0]) and torch.equal(err.stderr, out[0][1].stderr)


def test_generator_reuse_advances_and_reseeding_repeats(relu5: OneHiddenReLU, x5: Tensor) -> None:
    g = gen(0)
    first = SmoothHess(relu5.net).attribute(x5, stdevs=0.5, n_samples=20, generator=g)
    second = SmoothHess(relu5.net).attribute(x5, stdevs=0.5, n_samples=20, generator=g)
    again = SmoothHess(relu5.net).attribute(x5, stdevs=0.5, n_samples=20, generator=gen(0))
    assert not torch.equal(first, second) and torch.equal(first, again)


def test_requires_grad_inputs_kept_and_inference_mode_same_numbers(relu5: OneHiddenReLU, x5: Tensor) -> None:
    x = x5.clone().requires_grad_(True)
    h = SmoothHess(relu5.net).attribute(x, stdevs=0.5, n_samples=20, generator=gen(0))
    assert x.requires_grad and x.grad is None and not h.requires_grad
    with torch.inference_mode():
        hi = SmoothHess(relu5.net).attribute(x5, stdevs=0.5, n_samples=20, generator=gen(0))
    assert torch.equal(h, hi)


@pytest.mark.parametrize("kwargs", [{}, {"baselines": 0.5}, {"antithetic": False, "n_samples": 21}])
def test_factors_grouped_and_dense_agree(relu5: OneHiddenReLU, x5: Tensor, kwargs: Dict[str, Any]) -> None:
    kw: Dict[str, Any] = {"stdevs": 0.5, "n_samples": 40, **kwargs}
    mask = torch.tensor([0, 0, 1, 1, 2])
    fac = SmoothHess(relu5.net).attribute(x5, generator=gen(0), output="factors", **kw)
    dense = SmoothHess(relu5.net).attribute(x5, generator=gen(0), **kw)
    grouped = SmoothHess(relu5.net).attribute(x5, generator=gen(0), feature_mask=mask, **kw)
    assert torch.equal(fac.to_dense(), dense) and torch.equal(fac.group(mask), grouped)
    m = torch.nn.functional.one_hot(mask).to(dense.dtype)
    torch.testing.assert_close(m.T @ dense @ m, grouped, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampling", ["iid", "orthogonal"])
def test_stderr_covers_the_oracle_and_relative_matches(sampling: str) -> None:
    """Gaussian oracle, d = 8, 16 error groups: +-2 stderr covers about 95% of the entries, and the
    reported relative error is within a factor 2 of the actual one for most runs."""
    relu = make_one_hidden(8, 16, seed=1, dtype=torch.float64)
    x = torch.randn(4, 8, generator=gen(2), dtype=torch.float64)
    truth = relu.gaussian_hessian(x, 0.7)
    cover, ratios = [], []
    for seed in range(10):
        h, err = SmoothHess(relu.net).attribute(
            x, stdevs=0.7, n_samples=256, sampling=sampling, return_error=True, generator=gen(100 + seed)
        )
        cover.append(float(((h - truth).abs() <= 2 * err.stderr).double().mean()))
        actual = (h - truth).flatten(1).norm(dim=1) / truth.flatten(1).norm(dim=1)
        ratios.append(err.relative / actual)
    ratio = torch.cat(ratios)
    assert 0.9 < sum(cover) / len(cover) < 0.99
    assert float(((ratio > 0.5) & (ratio < 2)).double().mean()) > 0.85


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("return_error", [False, True])
def test_half_precision_gradient_sums_are_kept_in_float32(dtype: torch.dtype, return_error: bool) -> None:
    """The smoothed gradient's sums were kept in the inputs' dtype: float16's raw sum over the calls
    overflowed (refused as a NaN/Inf gradient of the model), bfloat16's group sums lost their digits
    with return_error. Now within rounding of the float32 estimate with the same seed, in the inputs'
    dtype."""
    net = torch.nn.Sequential(make_one_hidden(5, 12).net, torch.nn.Linear(1, 1, bias=False))
    torch.nn.init.constant_(net[1].weight, 100.0)  # gradients of about 100: float16's sum overflows early
    x = torch.randn(2, 5, generator=gen(0))
    kw: Dict[str, Any] = dict(stdevs=0.5, n_samples=4000, return_gradient=True, return_error=return_error)
    want = SmoothHess(copy.deepcopy(net).float()).attribute(x, generator=gen(1), **kw)[1]
    got = SmoothHess(copy.deepcopy(net).to(dtype)).attribute(x.to(dtype), generator=gen(1), **kw)
    assert got[1].dtype == dtype
    if return_error:
        assert got[-1].gradient_stderr.dtype == dtype
    rel = float((got[1].float() - want).norm() / want.norm())
    assert rel < (1e-2 if dtype == torch.bfloat16 else 2e-3), rel


@pytest.mark.parametrize("style", ["parametrization", "hook"])
def test_spectral_norm_buffers_left_as_found_in_training_mode(style: str) -> None:
    """spectral_norm's power iteration (its _u, _v or weight_u, weight_v buffers) advanced at every
    forward of SmoothHess's calls; such a model in training mode now runs on a private copy."""
    from torch.nn.utils import parametrizations, spectral_norm

    torch.manual_seed(0)
    wrap = parametrizations.spectral_norm if style == "parametrization" else spectral_norm
    net = torch.nn.Sequential(wrap(torch.nn.Linear(4, 6)), torch.nn.Softplus(), torch.nn.Linear(6, 3)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    SmoothHess(net).attribute(torch.randn(2, 4, generator=gen(0)), target=0, n_samples=8, stdevs=0.1)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_training_batch_norm_hidden_behind_a_function_is_refused_before_it_runs() -> None:
    """SmoothHess(lambda z: net(z)) updated the running statistics of net's batch norm: the private copy
    is made of a module it finds, and a function hides it."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 3)
    )
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"^forward_func: it runs a BatchNorm1d in training mode"):
        SmoothHess(lambda z: net(z)).attribute(torch.randn(4, 4), target=0, n_samples=8, stdevs=0.1)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    net.eval()
    SmoothHess(lambda z: net(z)).attribute(torch.randn(4, 4), target=0, n_samples=8, stdevs=0.1)


def test_counts_accept_0d_integer_tensors_and_name_other_types() -> None:
    """One integer check for every count of the package: a 0-d integer tensor counts as its int (the
    token helpers took it, the methods refused it); a float, bool or 1-d tensor is a TypeError."""
    from captum_smoothhess.tokens import token_feature_mask
    from captum_smoothhess.visualization import visualize_interaction_network

    net = make_one_hidden(5, 12, seed=1).net
    x = torch.randn(2, 5, generator=gen(0))
    sh = SmoothHess(net)
    got = sh.attribute(x, n_samples=torch.tensor(8), stdevs=0.3, generator=gen(1))
    torch.testing.assert_close(got, sh.attribute(x, n_samples=8, stdevs=0.3, generator=gen(1)))
    for bad in (torch.tensor(8.0), torch.tensor(True), torch.tensor([8])):
        with pytest.raises(TypeError, match=r"^n_samples"):
            sh.attribute(x, n_samples=bad, stdevs=0.3)
    assert token_feature_mask(torch.tensor(2), 3).shape == (1, 2, 3)
    visualize_interaction_network(np.eye(3), top_k=torch.tensor(2), use_pyplot=False)
    with pytest.raises(TypeError, match=r"^top_k"):
        visualize_interaction_network(np.eye(3), top_k=2.0, use_pyplot=False)
