"""Hostile-user tests of KernelNoiseTunnel, NoiseGrad and FusionGrad.

Each test pins a defect found by using the tunnels the way a Captum user
might: models whose forward updates buffers in training mode, tied weights
named by their alias, malformed ``param_filter`` values, and kernels given
bad arguments or integer points.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict

import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam, Saliency
from torch import Tensor, nn
from torch.nn.utils import parametrizations
from torch.nn.utils import spectral_norm as hooked_spectral_norm

from captum_smoothhess import FusionGrad, KernelNoiseTunnel, NoiseGrad
from captum_smoothhess.kernels import Gaussian, Hyperbolic, Kernel, Poisson, Rect, Sigmoid, get_kernel


def _state(model: nn.Module) -> Dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model: nn.Module, before: Dict[str, Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k, v in after.items() if not torch.equal(v, before[k])]
    assert not changed, f"the user's model was modified: {changed}"


def _parametrized_sn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(parametrizations.spectral_norm(nn.Linear(4, 6)), nn.ReLU(), nn.Linear(6, 3))


def _hooked_sn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(hooked_spectral_norm(nn.Linear(4, 6)), nn.ReLU(), nn.Linear(6, 3))


# -- a forward that updates buffers in training mode (spectral norm's power iteration) ---


@pytest.mark.parametrize("make", [_parametrized_sn, _hooked_sn], ids=["parametrize", "hooks"])
@pytest.mark.parametrize("generator", [False, True], ids=["drop_in", "kernel_path"])
def test_tunnel_leaves_spectral_norm_buffers_in_training_mode(
    make: Callable[[int], nn.Module], generator: bool
) -> None:
    net = make(0).train()
    before = _state(net)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2) if generator else None
    out = KernelNoiseTunnel(Saliency(net)).attribute(
        x, nt_samples=4, nt_samples_batch_size=3, stdevs=0.1, target=0, abs=False, generator=gen
    )
    assert out.shape == x.shape and bool(torch.isfinite(out).all())
    _assert_same_state(net, before)
    assert all(m.training for m in net.modules())


def test_tunnel_on_spectral_norm_training_mode_is_the_same_as_on_a_fresh_copy() -> None:
    # The private copy starts from the user's buffers: two calls give the same numbers,
    # and they are those of a call on an identical model (the power iteration is not advanced).
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))

    def run(net: nn.Module) -> Tensor:
        tunnel = KernelNoiseTunnel(Saliency(net), kernel="sigmoid")
        out = tunnel.attribute(
            x, nt_samples=5, stdevs=0.2, target=1, abs=False, generator=torch.Generator().manual_seed(3)
        )
        assert isinstance(out, Tensor)
        return out

    net = _parametrized_sn(0).train()
    first, second = run(net), run(net)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, run(_parametrized_sn(0).train()), rtol=0, atol=0)


def test_tunnel_layer_method_on_spectral_norm_training_mode() -> None:
    net = _parametrized_sn(0).train()
    before = _state(net)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    out = KernelNoiseTunnel(LayerGradCam(net, net[0])).attribute(
        x, nt_samples=3, stdevs=0.1, target=0, generator=torch.Generator().manual_seed(0)
    )
    assert isinstance(out, Tensor) and bool(torch.isfinite(out).all())
    _assert_same_state(net, before)


# -- NoiseGrad's param_filter --------------------------------------------------------


class _Tied(nn.Module):
    """One linear layer registered under two names (``enc`` and ``alias``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(3, 3)
        self.alias = self.enc
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.alias(torch.tanh(self.enc(x)))))


@pytest.mark.parametrize(
    "alias_filter",
    [["alias.weight"], r"^alias\.weight$", lambda name: name == "alias.weight"],
    ids=["names", "regex", "predicate"],
)
def test_param_filter_accepts_the_alias_name_of_a_tied_weight(alias_filter: Any) -> None:
    net = _Tied()
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))

    def run(param_filter: Any) -> Tensor:
        out = NoiseGrad(Saliency(net), param_filter=param_filter).attribute(
            x, nt_samples=3, stdevs=0.3, target=0, abs=False, generator=torch.Generator().manual_seed(5)
        )
        assert isinstance(out, Tensor)
        return out

    # The alias names the same tensor as its canonical name: the same noise, the same result.
    torch.testing.assert_close(run(alias_filter), run(["enc.weight"]), rtol=0, atol=0)


@pytest.mark.parametrize("cls", [NoiseGrad, FusionGrad])
@pytest.mark.parametrize(
    ("bad", "error"),
    [(3, TypeError), (["0.weight", 3], TypeError), ("(", ValueError), (b"weight", TypeError)],
    ids=["int", "non_string_name", "bad_regex", "bytes"],
)
def test_bad_param_filter_is_refused_at_construction_naming_it(cls: type, bad: Any, error: type) -> None:
    net = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(error, match="param_filter"):
        cls(Saliency(net), param_filter=bad)


def test_batch_norm_warning_points_at_the_users_call() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match="BatchNorm|normalise") as record:
        KernelNoiseTunnel(Saliency(net)).attribute(x, nt_samples=2, stdevs=0.1, target=0)
    assert {w.filename for w in record} == {__file__}


class _Locked(nn.Module):
    """A model in training mode with a constant buffer and an attribute ``copy.deepcopy`` cannot copy."""

    def __init__(self, norm: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3)
        self.norm = nn.BatchNorm1d(3) if norm else nn.Identity()
        self.register_buffer("scale", torch.ones(()))
        self.lock = threading.Lock()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.lin(x)) * self.scale


def test_only_models_whose_buffers_change_are_copied_and_an_uncopyable_one_is_named() -> None:
    """A training-mode model whose buffers no forward writes runs as it is (a deep copy per call would
    double its memory; this one cannot even be copied); one with batch norm must run on a private copy,
    and a model that cannot be copied gets an error naming forward_func."""
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    plain = _Locked(norm=False).train()
    torch.manual_seed(3)
    got = KernelNoiseTunnel(Saliency(plain)).attribute(x, nt_samples=3, target=0)
    torch.manual_seed(3)
    want = KernelNoiseTunnel(Saliency(plain.eval())).attribute(x, nt_samples=3, target=0)
    assert torch.equal(got, want)
    normed = _Locked(norm=True).train()
    with pytest.raises(TypeError, match=r"forward_func: .*training mode.*model\.eval\(\)"):
        KernelNoiseTunnel(Saliency(normed)).attribute(x, nt_samples=2, target=0)
    assert float(normed.norm.num_batches_tracked) == 0.0


# -- kernels: bad arguments and integer points ----------------------------------------


@pytest.mark.parametrize("kernel", [Gaussian(), Poisson(), Hyperbolic(), Sigmoid(), Rect()], ids=repr)
def test_marginal_cdf_of_integer_points_is_floating(kernel: Kernel) -> None:
    t = torch.tensor([-1, 0, 1])
    got = kernel.marginal_cdf(t)
    assert got.dtype == torch.get_default_dtype()
    torch.testing.assert_close(got, kernel.marginal_cdf(t.to(torch.get_default_dtype())))
    assert 0.0 < float(got[0]) < 0.5 < float(got[2]) < 1.0


@pytest.mark.parametrize("kernel", [Gaussian(), Poisson(), Hyperbolic(), Sigmoid(), Rect()], ids=repr)
@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"n": -1}, ValueError, "n"),
        ({"n": 2.0}, TypeError, "n"),
        ({"n": True}, TypeError, "n"),
        ({"dim": -2}, ValueError, "dim"),
        ({"dim": "3"}, TypeError, "dim"),
        ({"generator": 3}, TypeError, "generator"),
    ],
    ids=["n_negative", "n_float", "n_bool", "dim_negative", "dim_str", "generator_int"],
)
def test_sample_refuses_bad_arguments_naming_them(
    kernel: Kernel, kwargs: Dict[str, Any], error: type, argument: str
) -> None:
    args: Dict[str, Any] = {"n": 3, "dim": 2, **kwargs}
    with pytest.raises(error, match=rf"^{argument}: "):
        kernel.sample(args.pop("n"), args.pop("dim"), **args)


def test_sample_accepts_numpy_integers() -> None:
    got = Gaussian().sample(np.int64(3), np.int32(2), generator=torch.Generator().manual_seed(0))
    assert got.shape == (3, 2)


@pytest.mark.parametrize(("alpha", "error"), [(True, TypeError), ("1", TypeError), (None, TypeError)])
def test_hyperbolic_alpha_must_be_a_number(alpha: Any, error: type) -> None:
    with pytest.raises(error, match=r"^alpha: "):
        Hyperbolic(alpha)


def test_get_kernel_given_a_class_says_to_instantiate_it() -> None:
    with pytest.raises(TypeError, match=r"kernel: .*Gaussian\(\)"):
        get_kernel(Gaussian)  # type: ignore[arg-type]
