"""Tests of NoiseGrad and FusionGrad: oracles, plain-loop equivalence, model safety, errors."""

from __future__ import annotations

import copy
import threading
from typing import Any, Dict, List, Tuple

import pytest
import torch
from captum.attr import (
    GradientAttribution,
    InputXGradient,
    IntegratedGradients,
    LayerIntegratedGradients,
    Saliency,
)
from captum.log import log_usage
from captum.metrics import infidelity, sensitivity_max
from torch import Tensor, nn

from captum_smoothhess._sampling import seed_from
from captum_smoothhess.kernels import Gaussian, Hyperbolic, Rect, Sigmoid
from captum_smoothhess.noise_tunnel import _CALLS
from captum_smoothhess.noisegrad import FusionGrad, NoiseGrad, _WeightNoise


def _mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).to(dtype)


class _Scaled(nn.Module):
    """Two inputs and a per-example additional forward arg."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.a = nn.Linear(3, 8).double()
        self.b = nn.Linear(2, 8).double()
        self.head = nn.Linear(8, 2).double()

    def forward(self, x: Tensor, y: Tensor, scale: Tensor) -> Tensor:
        return self.head(torch.relu(self.a(x) + self.b(y))) * scale


def _snapshot(model: nn.Module) -> Dict[str, Any]:
    return {
        "params": {n: (p, p.detach().clone(), p.requires_grad, p.grad) for n, p in model.named_parameters()},
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "training": [m.training for m in model.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in model.modules()
        ],
    }


def _assert_untouched(model: nn.Module, snap: Dict[str, Any]) -> None:
    now = dict(model.named_parameters())
    assert now.keys() == snap["params"].keys()
    for n, (obj, val, rg, grad) in snap["params"].items():
        assert now[n] is obj, n  # the very same Parameter object
        assert torch.equal(now[n].detach(), val) and now[n].requires_grad == rg and now[n].grad is grad
    for n, b in model.named_buffers():
        assert torch.equal(b, snap["buffers"][n]), n
    assert [m.training for m in model.modules()] == snap["training"]
    assert [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()
    ] == snap["hooks"]
    assert _CALLS.get({}) == {}


def _loop_draws(
    model: nn.Module, names: List[str], kernel: Any, eps: float, mult: bool, seed: int, n: int
) -> List[nn.Module]:
    """Deep-copied models carrying exactly the weight draws NoiseGrad uses."""
    draws = _WeightNoise(model, names, kernel, eps, mult, seed).take(n)
    models = []
    for k in range(n):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name in draws:
                    p.copy_(draws[name][k])
        models.append(m)
    return models


# -- oracles -------------------------------------------------------------------


@pytest.mark.parametrize("method", [Saliency, InputXGradient, IntegratedGradients])
def test_zero_stdevs_equals_wrapped_method(method: Any) -> None:
    net = _mlp()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    expected = method(net).attribute(x, target=1)
    for cls in (NoiseGrad, FusionGrad):
        extra = {"input_stdevs": 0.0} if cls is FusionGrad else {}
        got = cls(method(net)).attribute(x, nt_samples=4, stdevs=0.0, target=1, **extra)
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kernel", [Gaussian(), Sigmoid(), Hyperbolic(), Rect()], ids=repr)
@pytest.mark.parametrize("noise", ["multiplicative", "additive"])
def test_vargrad_closed_form_linear_model(kernel: Any, noise: str) -> None:
    # f(x) = w^T x: the saliency is the perturbed w itself, so VarGrad is
    # eps^2 w^2 (multiplicative) or eps^2 (additive) for unit-variance kernels.
    torch.manual_seed(0)
    lin = nn.Linear(5, 1, bias=False).double()
    x = torch.randn(2, 5, dtype=torch.float64)
    eps, n = 0.3, 4000
    ng = NoiseGrad(Saliency(lin), kernel, noise=noise)
    kw = dict(nt_samples=n, stdevs=eps, abs=False, generator=torch.Generator().manual_seed(0))
    var = ng.attribute(x, nt_type="vargrad", **kw)
    mean = ng.attribute(x, nt_type="smoothgrad", **kw)
    w = lin.weight.detach()[0]
    expected = (eps * w) ** 2 if noise == "multiplicative" else torch.full_like(w, eps**2)
    torch.testing.assert_close(var, expected.expand(2, 5), rtol=0.12, atol=0)
    sd = eps * (float(w.abs().max()) if noise == "multiplicative" else 1.0)
    torch.testing.assert_close(mean, w.expand(2, 5), rtol=0, atol=6 * sd / n**0.5)


# -- equivalence with a plain loop over deep-copied, perturbed models ------------


@pytest.mark.parametrize("method", [Saliency, IntegratedGradients])
@pytest.mark.parametrize("noise", ["multiplicative", "additive"])
@pytest.mark.parametrize("nt_type", ["smoothgrad", "vargrad"])
def test_same_draws_as_plain_loop(method: Any, noise: str, nt_type: str) -> None:
    model = _Scaled()
    x, y = torch.randn(3, 3, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    scale = torch.rand(3, 1, dtype=torch.float64) + 0.5
    target = torch.tensor([0, 1, 1])
    n, eps = 7, 0.25
    ng = NoiseGrad(method(model), Hyperbolic(), noise=noise, param_filter=r"^(a|head)\.")
    got = ng.attribute(
        (x, y),
        nt_type=nt_type,
        nt_samples=n,
        nt_samples_batch_size=3,
        stdevs=eps,
        target=target,
        additional_forward_args=(scale,),
        generator=torch.Generator().manual_seed(9),
    )
    names = ["a.weight", "a.bias", "head.weight", "head.bias"]
    seed = seed_from(torch.Generator().manual_seed(9))
    outs = [
        method(m).attribute((x, y), target=target, additional_forward_args=(scale,))
        for m in _loop_draws(model, names, Hyperbolic(), eps, noise == "multiplicative", seed, n)
    ]
    for i in range(2):
        stack = torch.stack([o[i] for o in outs])
        expected = stack.mean(0) if nt_type == "smoothgrad" else (stack**2).mean(0) - stack.mean(0) ** 2
        torch.testing.assert_close(got[i], expected)


def test_monte_carlo_agreement_with_independent_loop() -> None:
    # NoiseGrad and FusionGrad against a plain loop with its own torch.randn draws.
    net = _mlp(3)
    x = torch.randn(2, 4, dtype=torch.float64)
    n, eps, in_eps = 1500, 0.2, 0.3
    torch.manual_seed(123)
    rows_ng, rows_fg = [], []
    for _ in range(n):
        m = copy.deepcopy(net)
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(1 + eps * torch.randn_like(p))
        rows_ng.append(Saliency(m).attribute(x.clone().requires_grad_(), target=0, abs=False))
        xn = (x + in_eps * torch.randn_like(x)).requires_grad_()
        rows_fg.append(Saliency(m).attribute(xn, target=0, abs=False))
    for cls, rows, extra in (
        (NoiseGrad, rows_ng, {}),
        (FusionGrad, rows_fg, {"input_stdevs": in_eps}),
    ):
        stack = torch.stack(rows)
        got = cls(Saliency(net)).attribute(
            x,
            nt_samples=n,
            stdevs=eps,
            target=0,
            abs=False,
            generator=torch.Generator().manual_seed(1),
            **extra,
        )
        se = (2 * stack.var(0) / n).sqrt()
        assert bool(((got - stack.mean(0)).abs() <= 5 * se + 1e-9).all()), cls.__name__


def test_batch_size_invariant_and_reproducible() -> None:
    net = _mlp()
    x = torch.randn(3, 4, dtype=torch.float64)

    def run(bs: Any, seed: int = 0) -> Tensor:
        return FusionGrad(IntegratedGradients(net), "poisson", "poisson").attribute(
            x,
            nt_samples=6,
            nt_samples_batch_size=bs,
            target=2,
            n_steps=8,
            generator=torch.Generator().manual_seed(seed),
        )

    a = run(None)
    assert torch.equal(run(None), a)
    torch.testing.assert_close(run(4), a)
    torch.testing.assert_close(run(1), a)
    assert not torch.equal(run(None, 1), a)
    torch.manual_seed(5)
    b = NoiseGrad(Saliency(net)).attribute(x, target=0)
    torch.manual_seed(5)
    assert torch.equal(NoiseGrad(Saliency(net)).attribute(x, target=0), b)


def test_param_filter_variants() -> None:
    net = _mlp()
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    plain = Saliency(net).attribute(x, target=0)
    # Noise on the last bias only cannot change the input gradient.
    for f in (r"^2\.bias$", lambda name: name == "2.bias", ["2.bias"]):
        got = NoiseGrad(Saliency(net), param_filter=f).attribute(x, stdevs=0.5, target=0)
        torch.testing.assert_close(got, plain)
    changed = NoiseGrad(Saliency(net), param_filter=["0.weight"]).attribute(x, stdevs=0.5, target=0)
    assert not torch.allclose(changed, plain)
    with pytest.raises(ValueError, match="param_filter"):
        NoiseGrad(Saliency(net), param_filter=["nope"]).attribute(x, target=0)
    with pytest.raises(ValueError, match="param_filter"):
        NoiseGrad(Saliency(net), param_filter="conv").attribute(x, target=0)


# -- the model is left exactly as found ------------------------------------------------


def test_model_untouched_batchnorm_dropout_train_mode_and_no_grad() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))
    net.train()
    snap = _snapshot(net)
    x = torch.randn(5, 4, requires_grad=True)
    with torch.no_grad():
        out = FusionGrad(IntegratedGradients(net)).attribute(
            x, nt_samples=3, target=1, n_steps=4, generator=torch.Generator().manual_seed(0)
        )
    assert out.shape == x.shape and out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert x.requires_grad and x.grad is None
    _assert_untouched(net, snap)


@pytest.mark.parametrize("fail_at", [1, 3])
def test_model_untouched_after_planted_exception(fail_at: int) -> None:
    calls = {"n": 0}

    class Flaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            calls["n"] += 1
            if calls["n"] >= fail_at:  # the model breaks midway and stays broken
                raise RuntimeError("planted failure")
            return self.lin(x)

    torch.manual_seed(0)
    net = Flaky()
    net.lin.weight.grad = torch.ones_like(net.lin.weight)
    snap = _snapshot(net)
    with pytest.raises(RuntimeError, match="planted failure"):
        NoiseGrad(Saliency(net)).attribute(torch.randn(2, 4), nt_samples=6, nt_samples_batch_size=2, target=0)
    _assert_untouched(net, snap)
    assert isinstance(net.lin.weight, nn.Parameter)


def test_model_untouched_when_wrapped_method_raises_midway() -> None:
    class Breaks(Saliency):
        count = 0

        @log_usage()
        def attribute(self, inputs: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            Breaks.count += 1
            out = Saliency.attribute.__wrapped__(self, inputs, **kwargs)  # type: ignore[attr-defined]
            if Breaks.count == 2:
                raise ValueError("planted in the method")
            return out

    net = _mlp()
    snap = _snapshot(net)
    with pytest.raises(ValueError, match="planted in the method"):
        FusionGrad(Breaks(net)).attribute(
            torch.randn(2, 4, dtype=torch.float64), nt_samples=6, nt_samples_batch_size=2, target=0
        )
    _assert_untouched(net, snap)


# -- Captum metrics ------------------------------------------------------------------


@pytest.mark.parametrize("cls", [NoiseGrad, FusionGrad])
def test_captum_metrics_run(cls: Any) -> None:
    net = _mlp(dtype=torch.float32)
    x = torch.randn(3, 4)
    expl = cls(Saliency(net))
    kw = dict(nt_samples=4, target=1, generator=torch.Generator().manual_seed(0))
    attr = expl.attribute(x, **kw)

    def perturb(inputs: Tensor) -> Tuple[Tensor, Tensor]:
        noise = 0.05 * torch.randn_like(inputs)
        return noise, inputs - noise

    inf = infidelity(net, perturb, x, attr, target=1, n_perturb_samples=4)
    sens = sensitivity_max(expl.attribute, x, n_perturb_samples=2, **kw)
    assert inf.shape == (3,) and bool(torch.isfinite(inf).all())
    assert sens.shape == (3,) and bool(torch.isfinite(sens).all())


# -- bad input ------------------------------------------------------------------


class _NoForward(GradientAttribution):
    @log_usage()
    def attribute(self, inputs: Tensor, **kwargs: Any) -> Tensor:  # type: ignore[override]
        return torch.zeros_like(inputs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        (dict(stdevs=-0.2), ValueError, "stdevs"),
        (dict(stdevs=float("inf")), ValueError, "stdevs"),
        (dict(input_stdevs=-1.0), ValueError, "input_stdevs"),
        (dict(input_stdevs=(0.1, 0.1)), ValueError, "input_stdevs"),
        (dict(nt_type="x"), ValueError, "nt_type"),
        (dict(nt_samples=0), ValueError, "nt_samples"),
        (dict(nt_samples_batch_size=-1), ValueError, "nt_samples_batch_size"),
        (dict(generator="seed"), TypeError, "generator"),
    ],
)
def test_bad_arguments(kwargs: dict, exc: type, name: str) -> None:
    fg = FusionGrad(Saliency(_mlp()))
    with pytest.raises(exc, match=name):
        fg.attribute(torch.randn(2, 4, dtype=torch.float64), **{"target": 0, **kwargs})


def test_bad_constructor_and_inputs() -> None:
    with pytest.raises(TypeError, match="attribution_method"):
        NoiseGrad(Saliency(lambda x: x.sum(1)))
    with pytest.raises(TypeError, match="attribution_method"):
        NoiseGrad(_mlp())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="noise"):
        NoiseGrad(Saliency(_mlp()), noise="gaussian")
    net0 = _mlp()
    with pytest.raises(TypeError, match="layer and neuron"):
        NoiseGrad(LayerIntegratedGradients(net0, net0[0]))
    with pytest.raises(ValueError, match="input_kernel"):
        FusionGrad(Saliency(_mlp()), input_kernel="laplace")
    with pytest.raises(ValueError, match="inputs"):
        NoiseGrad(Saliency(_mlp())).attribute(torch.full((1, 4), float("nan")), target=0)
    net = _mlp()
    with pytest.raises(RuntimeError, match="never called"):
        NoiseGrad(_NoForward(net)).attribute(torch.randn(2, 4, dtype=torch.float64))
    # The bound forward of a module is accepted as well.
    x = torch.randn(2, 4, dtype=torch.float64)
    a = NoiseGrad(Saliency(net.forward)).attribute(x, target=0, generator=torch.Generator().manual_seed(0))
    b = NoiseGrad(Saliency(net)).attribute(x, target=0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)


# -- two ways to run the draws, one set of numbers ------------------------------------


def _force(monkeypatch: pytest.MonkeyPatch, batched: bool) -> None:
    original = NoiseGrad._batch_draws

    def forced(self: NoiseGrad, n_weights: int) -> bool:
        assert original(self, n_weights) or not batched  # only force batching where it can run
        return batched

    monkeypatch.setattr(NoiseGrad, "_batch_draws", forced)


def _conv(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    ).double()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.mark.parametrize("method", [Saliency, IntegratedGradients])
def test_batched_and_draw_by_draw_paths_give_the_same_numbers(
    monkeypatch: pytest.MonkeyPatch, method: Any
) -> None:
    model = _Scaled()
    x, y = torch.randn(3, 3, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    scale = torch.rand(3, 1, dtype=torch.float64) + 0.5
    extra = {"return_convergence_delta": True, "n_steps": 6} if method is IntegratedGradients else {}

    def run(cls: Any, batched: bool, **kw: Any) -> Any:
        with monkeypatch.context() as m:
            _force(m, batched)
            return cls(method(model), Hyperbolic()).attribute(
                (x, y),
                nt_type="vargrad",
                nt_samples=7,
                stdevs=0.3,
                target=[0, 1, 1],
                additional_forward_args=(scale,),
                generator=torch.Generator().manual_seed(4),
                **extra,
                **kw,
            )

    for cls, kw in ((NoiseGrad, {}), (FusionGrad, {"input_stdevs": 0.2})):
        batched = run(cls, True, **kw)
        for size in (None, 3, 1):
            torch.testing.assert_close(run(cls, False, nt_samples_batch_size=size, **kw), batched)


def test_draw_by_draw_conv_net_equals_deep_copy_loop() -> None:
    # A conv net runs draw by draw on a private copy: the same numbers as deep copies.
    net = _conv()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    snap = _snapshot(net)
    ng = NoiseGrad(Saliency(net))
    assert not ng._batch_draws(sum(p.numel() for p in net.parameters()))
    got = ng.attribute(
        x, nt_samples=5, stdevs=0.3, target=2, abs=False, generator=torch.Generator().manual_seed(1)
    )
    names = [n for n, _ in net.named_parameters()]
    seed = seed_from(torch.Generator().manual_seed(1))
    outs = [
        Saliency(m).attribute(x.clone().requires_grad_(), target=2, abs=False)
        for m in _loop_draws(net, names, Gaussian(), 0.3, True, seed, 5)
    ]
    torch.testing.assert_close(got, torch.stack(outs).mean(0))
    _assert_untouched(net, snap)


def test_partitions_of_one_draw_when_the_model_is_large(monkeypatch: pytest.MonkeyPatch) -> None:
    # Memory bound: with nt_samples_batch_size=None the wrapped method never sees
    # more than one draw of the batch at once when draws x weights exceed the budget,
    # whatever nt_samples; the result does not depend on that split.
    seen: List[int] = []

    class Recording(Saliency):
        @log_usage()
        def attribute(self, inputs: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            seen.append(inputs.shape[0])
            return Saliency.attribute.__wrapped__(self, inputs, **kwargs)  # type: ignore[attr-defined]

    net = _conv()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    kw = dict(stdevs=0.2, target=0, abs=False)
    whole = NoiseGrad(Recording(net)).attribute(
        x, nt_samples=6, generator=torch.Generator().manual_seed(0), **kw
    )
    import captum_smoothhess.noisegrad as ng_module

    monkeypatch.setattr(ng_module, "_DRAW_ELEMENTS", 1)
    for n in (3, 12):
        seen.clear()
        NoiseGrad(Recording(net)).attribute(x, nt_samples=n, **kw)
        assert seen == [2] * n
    split = NoiseGrad(Recording(net)).attribute(
        x, nt_samples=6, generator=torch.Generator().manual_seed(0), **kw
    )
    torch.testing.assert_close(split, whole)


def test_user_forward_hooks_run_and_the_model_is_never_swapped() -> None:
    # A hook on the user's layer runs on every draw (on the private copy), and
    # the user's module holds its own parameters all along, on both paths.
    cases = [(_mlp(), torch.randn(2, 4)), (_conv(), torch.randn(2, 2, 5, 5))]
    for net, x in cases:
        own = {n: (p, p.detach().clone()) for n, p in net.named_parameters()}
        seen = {"calls": 0, "swapped": 0}

        def check() -> None:
            for n, p in net.named_parameters():  # noqa: B023 - used within the iteration
                if p is not own[n][0] or not torch.equal(p.detach(), own[n][1]):  # noqa: B023
                    seen["swapped"] += 1  # noqa: B023

        def hook(module: nn.Module, args: Any, out: Tensor) -> Tensor:
            seen["calls"] += 1  # noqa: B023
            check()
            return 2 * out

        class Checked(Saliency):
            @log_usage()
            def attribute(self, inputs: Any, **kwargs: Any) -> Any:  # type: ignore[override]
                check()
                return Saliency.attribute.__wrapped__(self, inputs, **kwargs)  # type: ignore[attr-defined]

        def run() -> Tensor:
            return NoiseGrad(Checked(net)).attribute(  # noqa: B023
                x.double(),  # noqa: B023
                nt_samples=4,
                target=0,
                abs=False,
                generator=torch.Generator().manual_seed(2),
            )

        unhooked = run()
        handle = net[-1].register_forward_hook(hook)
        try:
            hooked = run()
        finally:
            handle.remove()
        assert seen["swapped"] == 0 and seen["calls"] == 4
        # Doubling the output doubles the saliency.
        torch.testing.assert_close(hooked, 2 * unhooked)


# -- models parametrized with torch.nn.utils.parametrize ---------------------------------

_PARAMETRIZATIONS = {
    "weight_norm": torch.nn.utils.parametrizations.weight_norm,
    "spectral_norm": torch.nn.utils.parametrizations.spectral_norm,
    "orthogonal": torch.nn.utils.parametrizations.orthogonal,
}


def _parametrized(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    lin = _PARAMETRIZATIONS[kind](nn.Linear(5, 5).double())
    return nn.Sequential(lin, nn.Tanh(), nn.Linear(5, 3).double()).eval()


def _parametrized_snapshot(net: nn.Module) -> Dict[str, Any]:
    lin = net[0]
    plist = lin.parametrizations.weight
    return {
        "base": _snapshot(net),
        "state": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "class": type(lin),
        "plist": plist,
        "modules": list(plist),
        "originals": dict(plist._parameters),
        # In training mode spectral_norm's weight access runs a power iteration on its buffers.
        "weight": None if lin.training else lin.weight.detach().clone(),
    }


def _assert_parametrized_untouched(net: nn.Module, snap: Dict[str, Any]) -> None:
    _assert_untouched(net, snap["base"])
    state = net.state_dict()
    assert state.keys() == snap["state"].keys()
    for k, v in snap["state"].items():
        assert torch.equal(state[k], v), k
    lin = net[0]
    assert torch.nn.utils.parametrize.is_parametrized(lin, "weight")
    assert type(lin) is snap["class"]
    assert (
        lin.parametrizations.weight is snap["plist"] and list(lin.parametrizations.weight) == snap["modules"]
    )
    assert dict(lin.parametrizations.weight._parameters) == snap["originals"]
    assert "weight" not in lin._parameters and "weight" not in vars(lin)
    if snap["weight"] is not None:
        assert torch.equal(lin.weight.detach(), snap["weight"])
    for m in net.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


@pytest.mark.parametrize("kind", sorted(_PARAMETRIZATIONS))
def test_parametrized_zero_stdevs_equals_saliency(kind: str) -> None:
    net = _parametrized(kind)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    expected = Saliency(net).attribute(x, target=1, abs=False)
    for cls, extra in ((NoiseGrad, {}), (FusionGrad, {"input_stdevs": 0.0})):
        got = cls(Saliency(net)).attribute(x, nt_samples=3, stdevs=0.0, target=1, abs=False, **extra)
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("noise", ["multiplicative", "additive"])
@pytest.mark.parametrize("kind", sorted(_PARAMETRIZATIONS))
def test_parametrized_noise_on_originals_equals_deep_copy_loop(kind: str, noise: str) -> None:
    # The draws land on the originals (what named_parameters lists): the same numbers as
    # deep copies of the model whose originals carry them, the weight recomputed from them.
    net = _parametrized(kind, 1)
    snap = _parametrized_snapshot(net)
    names = [n for n, _ in net.named_parameters()]
    assert any(".parametrizations.weight.original" in n for n in names)
    assert not any(n.endswith("0.weight") for n in names)
    x = torch.randn(3, 5, dtype=torch.float64)
    n, eps, mult = 5, 0.3, noise == "multiplicative"
    seed = seed_from(torch.Generator().manual_seed(3))
    outs = [
        Saliency(m).attribute(x.clone().requires_grad_(), target=2, abs=False)
        for m in _loop_draws(net, names, Gaussian(), eps, mult, seed, n)
    ]
    expected = torch.stack(outs).mean(0)
    for cls, extra in ((NoiseGrad, {}), (FusionGrad, {"input_stdevs": 0.0})):
        got = cls(Saliency(net), noise=noise).attribute(
            x,
            nt_samples=n,
            stdevs=eps,
            target=2,
            abs=False,
            generator=torch.Generator().manual_seed(3),
            **extra,
        )
        torch.testing.assert_close(got, expected)
    # Noise on the original weight only (not the bias) changes the saliency, except
    # multiplicative noise on orthogonal's original: it is -I, and the map ignores its diagonal.
    plain = Saliency(net).attribute(x.clone().requires_grad_(), target=2, abs=False)
    ng = NoiseGrad(Saliency(net), noise=noise, param_filter=r"^0\.parametrizations\.")
    moved = ng.attribute(x, nt_samples=n, stdevs=eps, target=2, abs=False)
    assert torch.allclose(moved, plain) == (kind == "orthogonal" and mult)
    fused = FusionGrad(Saliency(net), noise=noise).attribute(
        x, nt_samples=n, stdevs=eps, input_stdevs=0.1, target=2
    )
    assert fused.shape == x.shape and bool(torch.isfinite(fused).all())
    _assert_parametrized_untouched(net, snap)


def test_weight_norm_magnitude_noise_closed_form() -> None:
    # f(x) = w^T x with w = g v / |v| (weight_norm): multiplicative noise on g alone
    # scales w by (1 + eps u), so SmoothGrad is w and VarGrad eps^2 w^2.
    torch.manual_seed(0)
    lin = torch.nn.utils.parametrizations.weight_norm(nn.Linear(5, 1, bias=False).double())
    x = torch.randn(2, 5, dtype=torch.float64)
    eps, n = 0.3, 4000
    ng = NoiseGrad(Saliency(lin), param_filter=["parametrizations.weight.original0"])
    kw = dict(nt_samples=n, stdevs=eps, abs=False, generator=torch.Generator().manual_seed(0))
    var = ng.attribute(x, nt_type="vargrad", **kw)
    mean = ng.attribute(x, nt_type="smoothgrad", **kw)
    w = lin.weight.detach()[0]
    torch.testing.assert_close(var, ((eps * w) ** 2).expand(2, 5), rtol=0.12, atol=0)
    sd = eps * float(w.abs().max())
    torch.testing.assert_close(mean, w.expand(2, 5), rtol=0, atol=6 * sd / n**0.5)


def test_parametrized_model_untouched_in_training_mode_and_under_cached() -> None:
    # spectral_norm's power iteration updates its buffers in training mode: the copy's, not
    # the user's. Under parametrize.cached() the copy computes its own weight: it neither
    # reads the user's cached weight nor leaves a perturbed one in the cache.
    net = _parametrized("spectral_norm", 2).train()
    snap = _parametrized_snapshot(net)
    x = torch.randn(3, 5, dtype=torch.float64)
    kw = dict(nt_samples=4, stdevs=0.3, target=0, abs=False)
    NoiseGrad(Saliency(net)).attribute(x, generator=torch.Generator().manual_seed(5), **kw)
    _assert_parametrized_untouched(net, snap)
    net.eval()
    snap = _parametrized_snapshot(net)
    with torch.no_grad():
        ref = net(x)
    expected = NoiseGrad(Saliency(net)).attribute(x, generator=torch.Generator().manual_seed(5), **kw)
    with torch.nn.utils.parametrize.cached():
        first = NoiseGrad(Saliency(net)).attribute(x, generator=torch.Generator().manual_seed(5), **kw)
        with torch.no_grad():
            assert torch.equal(net(x), ref)  # no perturbed weight cached for the user's module
        again = NoiseGrad(Saliency(net)).attribute(x, generator=torch.Generator().manual_seed(5), **kw)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(again, expected)
    _assert_parametrized_untouched(net, snap)


@pytest.mark.parametrize("kind", ["weight_norm", "orthogonal"])
def test_parametrized_model_unobserved_by_a_concurrent_thread(kind: str) -> None:
    net = _parametrized(kind, 3)
    snap = _parametrized_snapshot(net)
    x = torch.randn(4, 5, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x).clone()
    wrong: List[int] = []
    checks: List[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with torch.no_grad():
                if not torch.equal(net(x), ref):
                    wrong.append(1)
            checks.append(1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for cls in (NoiseGrad, FusionGrad):
            for seed in range(2):
                cls(Saliency(net)).attribute(
                    x, nt_samples=6, stdevs=0.5, target=0, generator=torch.Generator().manual_seed(seed)
                )
    finally:
        stop.set()
        watcher.join()
    assert checks and not wrong, f"another thread saw {len(wrong)} wrong output(s)"
    _assert_parametrized_untouched(net, snap)
