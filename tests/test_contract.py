"""The promises every attribution class of the package keeps (DESIGN section 7), one test each.

Each class is described once by a :class:`Spec` (how to build it on a model
and how to call it with a seed and a sample-chunk size); every test below runs
for every spec. A class added to the package gets a spec here, and with it
every test of the contract.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import torch
from captum.attr import Saliency
from torch import Tensor, nn

from captum_smoothhess import (
    CAFO,
    CASO,
    FusionGrad,
    KernelNoiseTunnel,
    LayerSmoothHess,
    NeuronSmoothHess,
    NoiseGrad,
    SmoothHess,
    _sampling,
)

D_A, D_B, CLASSES = 3, 2, 3


class TwoInputNet(nn.Module):
    """``(a, b) -> logits``: a ReLU MLP on the concatenated inputs, with a buffer and a flag to fail."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(D_A + D_B, 10), nn.ReLU(), nn.Linear(10, CLASSES))
        self.register_buffer("offset", torch.linspace(-0.1, 0.1, CLASSES))
        self.double()
        self.fail_at: Optional[int] = None

    def forward(self, a: Tensor, b: Optional[Tensor] = None) -> Tensor:
        if self.fail_at is not None:
            # Counted by name, not by object: a method may run a private copy of the model.
            _CALLS["forward"] = _CALLS.get("forward", 0) + 1
            if _CALLS["forward"] >= self.fail_at:
                raise _ModelError("the model failed")
        x = a if b is None else torch.cat([a, b], dim=1)
        return self.body(x) + self.offset


class _ModelError(RuntimeError):
    pass


class _TwoLogits(nn.Module):
    """The first two logits of a :class:`TwoInputNet`: with C = 2 outputs, 2 + 3 <= d = 5, so
    CASO finds the loss Hessian's range in one batched product (the range finder)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.train(net.training)

    def forward(self, a: Tensor, b: Optional[Tensor] = None) -> Tensor:
        return self.net(a, b)[:, :2]


def _two(target: Any) -> Any:
    """The contract's class indices folded onto the two logits (a bad one stays bad)."""
    if isinstance(target, list):
        return [t % 2 for t in target]
    return target % 2 if isinstance(target, int) and 0 <= target < CLASSES else target


# Forward calls per model, kept outside the model so that counting does not change it.
_CALLS: Dict[str, int] = {}


@dataclass
class Spec:
    """How one attribution class is built and called in these tests."""

    name: str
    make: Callable[[nn.Module], Any]
    call: Callable[..., Any]  # (method, inputs, target, seed, chunk) -> result
    sampled: bool = True  # takes a generator and a sample-chunk size
    kind: str = "input"  # "layer": results shaped by the layer; "neuron": a unit instead of a target
    target_arg: str = "target"  # the argument that the contract's `target` becomes
    extras: int = 0  # results appended after the attribution (gradient, SmoothHessError)


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _smoothhess(m: Any, x: Any, target: Any, seed: int, chunk: Optional[int]) -> Any:
    return m.attribute(
        x, target=target, stdevs=0.3, n_samples=24, n_samples_batch_size=chunk, generator=_g(seed)
    )


def _smoothhess_with(**options: Any) -> Callable[..., Any]:
    """SmoothHess called with extra options (sampling, errors, tolerance, baselines)."""

    kw = {"stdevs": 0.3, "n_samples": 24, **options}

    def call(m: Any, x: Any, target: Any, seed: int, chunk: Optional[int]) -> Any:
        return m.attribute(x, target=target, n_samples_batch_size=chunk, generator=_g(seed), **kw)

    return call


def _tunnel(m: Any, x: Any, target: Any, seed: int, chunk: Optional[int]) -> Any:
    return m.attribute(
        x, nt_samples=6, nt_samples_batch_size=chunk, stdevs=0.2, target=target, abs=False, generator=_g(seed)
    )


def _fusion(m: Any, x: Any, target: Any, seed: int, chunk: Optional[int]) -> Any:
    return m.attribute(
        x,
        nt_samples=6,
        nt_samples_batch_size=chunk,
        stdevs=0.2,
        input_stdevs=0.1,
        target=target,
        abs=False,
        generator=_g(seed),
    )


def _caso_sh(m: Any, x: Any, target: Any, seed: int, chunk: Optional[int]) -> Any:
    return m.attribute(
        x,
        target=target,
        lambda1=0.01,
        curvature="smoothhess",
        stdevs=0.3,
        n_samples=24,
        n_samples_batch_size=chunk,
        generator=_g(seed),
    )


def _neuron(m: Any, x: Any, target: Any, seed: int, chunk: Optional[int]) -> Any:
    # A list of per-example targets becomes a callable selector picking unit t_i of example i.
    def per_example(act: Tensor) -> Tensor:
        units = torch.tensor(target).repeat_interleave(act.shape[0] // len(target))
        return act[torch.arange(act.shape[0]), units]

    selector = per_example if isinstance(target, list) else target
    return m.attribute(
        x, neuron_selector=selector, stdevs=0.3, n_samples=24, n_samples_batch_size=chunk, generator=_g(seed)
    )


SPECS: List[Spec] = [
    Spec("SmoothHess", SmoothHess, _smoothhess),
    Spec("SmoothHess-poisson", lambda net: SmoothHess(net, kernel="poisson"), _smoothhess),
    Spec("SmoothHess-iid", SmoothHess, _smoothhess_with(sampling="iid")),
    Spec(
        "SmoothHess-error",
        SmoothHess,
        _smoothhess_with(n_samples=60, return_error=True, return_gradient=True),
        extras=2,
    ),
    Spec("SmoothHess-tolerance", SmoothHess, _smoothhess_with(n_samples=400, tolerance=0.3), extras=1),
    Spec("SmoothHess-baselines", SmoothHess, _smoothhess_with(baselines=0.5)),
    # Orthogonal blocks that share rotations and the dense sum in their coordinates (the threshold is
    # lowered for this spec, see _shared_rotations): 40 draws of d = 5, one group of 8 blocks.
    Spec("SmoothHess-shared", SmoothHess, _smoothhess_with(n_samples=80)),
    Spec(
        "SmoothHess-shared-poisson",
        lambda net: SmoothHess(net, kernel="poisson"),
        _smoothhess_with(n_samples=80),
    ),
    Spec("KernelNoiseTunnel", lambda net: KernelNoiseTunnel(Saliency(net), kernel="sigmoid"), _tunnel),
    Spec(
        "KernelNoiseTunnel-orthogonal",
        lambda net: KernelNoiseTunnel(Saliency(net), sampling="orthogonal_antithetic"),
        _tunnel,
    ),
    Spec("NoiseGrad", lambda net: NoiseGrad(Saliency(net)), _tunnel),
    Spec("FusionGrad", lambda net: FusionGrad(Saliency(net)), _fusion),
    Spec("CASO", CASO, lambda m, x, target, seed, chunk: m.attribute(x, target=target, lambda1=0.01), False),
    Spec("CASO-smoothhess", CASO, _caso_sh),
    Spec(
        "CASO-range",
        lambda net: CASO(_TwoLogits(net)),
        lambda m, x, target, seed, chunk: m.attribute(x, target=_two(target), lambda1=0.01),
        False,
    ),
    Spec("CAFO", CAFO, lambda m, x, target, seed, chunk: m.attribute(x, target=target, lambda1=0.01), False),
    Spec("LayerSmoothHess", lambda net: LayerSmoothHess(net, net.body[0]), _smoothhess, kind="layer"),
    Spec(
        "LayerSmoothHess-baselines-error",
        lambda net: LayerSmoothHess(net, net.body[0]),
        _smoothhess_with(n_samples=60, baselines=0.0, return_error=True),
        kind="layer",
        extras=1,
    ),
    Spec(
        "LayerSmoothHess-tolerance",
        lambda net: LayerSmoothHess(net, net.body[0]),
        _smoothhess_with(n_samples=400, tolerance=0.3),
        kind="layer",
        extras=1,
    ),
    Spec(
        "NeuronSmoothHess",
        lambda net: NeuronSmoothHess(net, net.body[2]),
        _neuron,
        kind="neuron",
        target_arg="neuron_selector",
    ),
]
IDS = [s.name for s in SPECS]


@pytest.fixture(autouse=True)
def _shared_rotations(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``-shared`` specs run with rotations shared from 2 features on (set before any thread starts)."""
    callspec = getattr(request.node, "callspec", None)
    spec = callspec.params.get("spec") if callspec is not None else None
    if isinstance(spec, Spec) and "-shared" in spec.name:
        monkeypatch.setattr(_sampling, "_SHARE_MIN_DIM", 2)


def _inputs(batch: int = 3, requires_grad: bool = False) -> Tuple[Tensor, Tensor]:
    gen = _g(5)
    a = torch.randn(batch, D_A, generator=gen, dtype=torch.float64).requires_grad_(requires_grad)
    b = torch.randn(batch, D_B, generator=gen, dtype=torch.float64).requires_grad_(requires_grad)
    return a, b


def _leaves(out: Any) -> List[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _leaves(o)]
    raise TypeError(type(out).__name__)


def _snapshot(net: nn.Module) -> Dict[str, Any]:
    return {
        "state": {k: v.detach().clone() for k, v in net.state_dict(keep_vars=True).items()},
        "ids": {k: id(v) for k, v in net.state_dict(keep_vars=True).items()},
        "requires_grad": {k: p.requires_grad for k, p in net.named_parameters()},
        "grad": {k: None if p.grad is None else p.grad.clone() for k, p in net.named_parameters()},
        "training": [m.training for m in net.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in net.modules()
        ],
    }


def _assert_untouched(net: nn.Module, before: Dict[str, Any]) -> None:
    after = _snapshot(net)
    assert after["ids"] == before["ids"], "a parameter or buffer object was replaced"
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), f"{k} changed"
    assert after["requires_grad"] == before["requires_grad"]
    for k, g in before["grad"].items():
        got = after["grad"][k]
        assert (g is None and got is None) or (g is not None and got is not None and torch.equal(g, got)), k
    assert after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_model_left_as_found(spec: Spec) -> None:
    net = TwoInputNet()
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5)  # a user's pending gradient must survive
    before = _snapshot(net)
    spec.call(spec.make(net), _inputs(), 1, 0, None)
    _assert_untouched(net, before)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_model_left_as_found_after_an_exception(spec: Spec) -> None:
    net = TwoInputNet()
    method = spec.make(net)
    net.fail_at = 2  # the first forward succeeds, a later one raises inside the method
    _CALLS.pop("forward", None)
    before = _snapshot(net)
    with pytest.raises(_ModelError):
        spec.call(method, _inputs(), 1, 0, 2)
    assert _CALLS["forward"] == 2, "the model's forward was run again after it raised"
    _assert_untouched(net, before)
    # The method is still usable once the model works again.
    net.fail_at = None
    spec.call(method, _inputs(), 1, 0, None)
    _assert_untouched(net, before)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_model_unobserved_by_a_concurrent_thread(spec: Spec) -> None:
    net = TwoInputNet().eval()
    x = _inputs()
    with torch.no_grad():
        ref = net(*x).clone()
    wrong: List[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with torch.no_grad():
                if not torch.equal(net(*x), ref):
                    wrong.append(1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        method = spec.make(net)
        for _ in range(3):
            spec.call(method, x, 1, 0, None)
    finally:
        stop.set()
        watcher.join()
    assert not wrong, f"another thread saw {len(wrong)} wrong output(s) while {spec.name} ran"


# --------------------------------------------------------------------------- inputs and outputs


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_inputs_keep_requires_grad_and_values(spec: Spec) -> None:
    for flag in (True, False):
        a, b = _inputs(requires_grad=flag)
        a0, b0 = a.detach().clone(), b.detach().clone()
        spec.call(spec.make(TwoInputNet()), (a, b), 1, 0, None)
        assert a.requires_grad is flag and b.requires_grad is flag
        assert a.grad is None and b.grad is None
        assert torch.equal(a.detach(), a0) and torch.equal(b.detach(), b0)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_tuple_in_tuple_out_tensor_in_tensor_out(spec: Spec) -> None:
    net = TwoInputNet()
    a, b = _inputs()
    out_tuple = spec.call(spec.make(net), (a, b), 1, 0, None)
    out_tensor = spec.call(spec.make(net), torch.cat([a, b], dim=1), 1, 0, None)
    if spec.extras:  # (attribution, *extras) either way; the attribution follows the rule
        assert isinstance(out_tuple, tuple) and isinstance(out_tensor, tuple)
        assert len(out_tuple) == len(out_tensor) == 1 + spec.extras
        out_tuple, out_tensor = out_tuple[0], out_tensor[0]
    if spec.kind == "layer":  # shaped by the layer's output (B, 10), whatever the inputs' form
        assert isinstance(out_tuple, Tensor) and isinstance(out_tensor, Tensor)
        assert out_tuple.shape == out_tensor.shape == (3, 10, 10)
        return
    assert isinstance(out_tuple, tuple) and len(out_tuple) == 2
    assert isinstance(out_tensor, Tensor)
    if spec.name.startswith("SmoothHess") or spec.kind == "neuron":  # a 2 x 2 nested tuple of Hessian blocks
        assert all(isinstance(row, tuple) and len(row) == 2 for row in out_tuple)
        assert out_tuple[0][1].shape == (3, D_A, D_B)
        assert out_tensor.shape == (3, D_A + D_B, D_A + D_B)
    else:
        assert out_tuple[0].shape == a.shape and out_tuple[1].shape == b.shape
        assert out_tensor.shape == (3, D_A + D_B)


# --------------------------------------------------------------------------- seeds and targets


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_same_seed_same_result_for_any_chunk_size(spec: Spec) -> None:
    net = TwoInputNet()
    x = _inputs()
    ref = _leaves(spec.call(spec.make(net), x, 1, 3, None))
    for chunk in (2, 4, 7) if spec.sampled else (None,):
        got = _leaves(spec.call(spec.make(net), x, 1, 3, chunk))
        for r, t in zip(ref, got):
            torch.testing.assert_close(t, r, rtol=1e-10, atol=1e-12)
    if spec.sampled:  # and a different seed gives a different result
        other = _leaves(spec.call(spec.make(net), x, 1, 4, None))
        assert any(not torch.allclose(r, t) for r, t in zip(ref, other))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_per_example_targets(spec: Spec) -> None:
    """Row ``i`` with ``target=[t_0, t_1, t_2]`` is row ``i`` of the batch with ``t_i`` for all."""
    net = TwoInputNet()
    x = _inputs()
    targets = [2, 0, 1]
    mixed = _leaves(spec.call(spec.make(net), x, targets, 0, None))
    for i, t in enumerate(targets):
        single = _leaves(spec.call(spec.make(net), x, t, 0, None))
        for m, s in zip(mixed, single):
            torch.testing.assert_close(m[i], s[i], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_wrapped_attribute_for_captum_composites(spec: Spec) -> None:
    """``@log_usage`` keeps ``attribute.__wrapped__``, which Captum's composites call."""
    net = TwoInputNet()
    method = spec.make(net)
    wrapped = type(method).attribute.__wrapped__

    class Unwrapped:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def attribute(self, *args: Any, **kwargs: Any) -> Any:
            return wrapped(self.inner, *args, **kwargs)

    got = _leaves(spec.call(Unwrapped(method), _inputs(), 1, 0, None))
    ref = _leaves(spec.call(method, _inputs(), 1, 0, None))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=0, atol=0)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_nan_inputs_named(spec: Spec) -> None:
    a, b = _inputs()
    a[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"^inputs"):
        spec.call(spec.make(TwoInputNet()), (a, b), 1, 0, None)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_missing_target_named(spec: Spec) -> None:
    with pytest.raises(ValueError, match=rf"^{spec.target_arg}"):
        spec.call(spec.make(TwoInputNet()), _inputs(), CLASSES + 4, 0, None)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.sampled], ids=[s.name for s in SPECS if s.sampled])
def test_bad_generator_named(spec: Spec) -> None:
    method = spec.make(TwoInputNet())
    kwargs: Dict[str, Any] = {"generator": 123}
    if spec.name.startswith("CASO"):
        kwargs["curvature"] = "smoothhess"
    with pytest.raises(TypeError, match=r"^generator"):
        if spec.kind == "neuron":
            method.attribute(_inputs(), neuron_selector=1, stdevs=0.3, n_samples=4, **kwargs)
        elif spec.name.startswith(("SmoothHess", "CASO")) or spec.kind == "layer":
            method.attribute(_inputs(), target=1, stdevs=0.3, n_samples=4, **kwargs)
        else:
            method.attribute(_inputs(), nt_samples=2, stdevs=0.1, target=1, **kwargs)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_no_grad_outside_and_float32(spec: Spec) -> None:
    net = TwoInputNet()
    x = _inputs()
    ref = _leaves(spec.call(spec.make(net), x, 1, 0, None))
    with torch.no_grad():
        got = _leaves(spec.call(spec.make(net), x, 1, 0, None))
    for r, g in zip(ref, got):
        assert torch.equal(r, g)
    net32 = TwoInputNet().float()
    out32 = _leaves(spec.call(spec.make(net32), tuple(t.float() for t in x), 1, 0, None))
    floating = [t for t in out32 if t.is_floating_point()]  # (SmoothHessError counts calls in int64)
    assert floating and all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in floating)
    assert all(t.dtype == torch.int64 for t in out32 if not t.is_floating_point())


class _BatchNormNet(TwoInputNet):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(D_A + D_B, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, CLASSES)
        ).double()


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_training_mode_warns_and_leaves_buffers(spec: Spec) -> None:
    net = _BatchNormNet().train()
    before = _snapshot(net)
    with pytest.warns(RuntimeWarning, match="training mode"):
        spec.call(spec.make(net), _inputs(4), 1, 0, None)
    _assert_untouched(net, before)


class _DropoutNet(TwoInputNet):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(D_A + D_B, 10), nn.ReLU(), nn.Dropout(0.3), nn.Linear(10, CLASSES)
        ).double()


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_training_mode_dropout_warns(spec: Spec) -> None:
    """Dropout draws from the global RNG: the same seed does not repeat the result, and a warning says so
    (pointing at the caller's line); nothing of the model changes."""
    net = _DropoutNet().train()
    before = _snapshot(net)
    with pytest.warns(RuntimeWarning, match="drop\\(s\\) units at random") as record:
        spec.call(spec.make(net), _inputs(4), 1, 0, None)
    assert any(w.filename == __file__ for w in record if "drop(s)" in str(w.message)), [
        w.filename for w in record
    ]
    _assert_untouched(net, before)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_nan_gradients_are_refused(spec: Spec) -> None:
    """A model whose gradient is NaN at (perturbed) inputs gets an error, never a NaN result."""

    class Sqrt(TwoInputNet):
        def forward(self, a: Tensor, b: Optional[Tensor] = None) -> Tensor:
            x = a if b is None else torch.cat([a, b], dim=1)
            return self.body(torch.sqrt(x))

    with pytest.raises(ValueError, match=r"^(forward_func|loss_func|inputs|layer)"):
        spec.call(spec.make(Sqrt()), _inputs(), 1, 0, None)


class _Hidden:
    """A function object calling a model that the package cannot see (not a module, nor a bound method)."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.body = net.body  # (the layer specs name a layer of it)
        self.training = net.training

    def __call__(self, a: Tensor, b: Optional[Tensor] = None) -> Tensor:
        return self.net(a, b)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_training_mode_norm_behind_a_function_is_refused(spec: Spec) -> None:
    """A batch norm in training mode that a function hides cannot be copied privately: every method
    refuses it, naming ``forward_func`` (weight-space methods need the module itself), before its
    running statistics change."""
    net = _BatchNormNet().train()
    before = _snapshot(net)
    with pytest.raises((ValueError, TypeError), match=r"^(forward_func|attribution_method)"):
        spec.call(spec.make(_Hidden(net)), _inputs(4), 1, 0, None)
    _assert_untouched(net, before)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_list_inputs_named(spec: Spec) -> None:
    """A list of tensors (Captum takes tuples) gets a TypeError naming ``inputs``, not an assertion
    (which ``python -O`` would remove) from inside Captum."""
    with pytest.raises(TypeError, match=r"^inputs"):
        spec.call(spec.make(TwoInputNet()), list(_inputs()), 1, 0, None)


def _call_with(spec: Spec, **options: Any) -> Any:
    """``spec``'s method on the contract's net and inputs, with its sampling arguments, then ``options``."""
    method = spec.make(TwoInputNet())
    kwargs: Dict[str, Any] = {"stdevs": 0.3, "n_samples": 4}
    if spec.name.startswith("CASO"):
        kwargs.update(curvature="smoothhess", lambda1=0.01)
    if spec.kind == "neuron":
        kwargs["neuron_selector"] = 1
    elif spec.name.startswith(("SmoothHess", "CASO")) or spec.kind == "layer":
        kwargs["target"] = 1
    else:  # the noise tunnels
        kwargs = {"nt_samples": 2, "stdevs": 0.1, "target": 1}
    kwargs.update(options)
    return method.attribute(_inputs(), **kwargs)


_SAMPLED = [s for s in SPECS if s.sampled]
_TUNNELS = ("KernelNoiseTunnel", "NoiseGrad", "FusionGrad")


@pytest.mark.parametrize("spec", _SAMPLED, ids=[s.name for s in _SAMPLED])
def test_bad_stdevs_named(spec: Spec) -> None:
    """``stdevs`` <= 0 where the method divides by it (the Stein estimators); < 0 for the noise
    tunnels, where 0 means no noise as in Captum's NoiseTunnel."""
    tunnel = spec.name.startswith(_TUNNELS)
    for bad in [-0.1] if tunnel else [0.0, -0.1, float("nan")]:
        with pytest.raises(ValueError, match=r"^stdevs"):
            _call_with(spec, stdevs=bad)
    if tunnel:
        _call_with(spec, stdevs=0.0)


@pytest.mark.parametrize("spec", _SAMPLED, ids=[s.name for s in _SAMPLED])
def test_bad_sample_counts_named(spec: Spec) -> None:
    """``n_samples`` < 1, or odd with antithetic pairs (the default); ``nt_samples`` < 1."""
    if spec.name.startswith(_TUNNELS):
        with pytest.raises(ValueError, match=r"^nt_samples"):
            _call_with(spec, nt_samples=0)
        return
    for bad in (0, 5):
        with pytest.raises(ValueError, match=r"^n_samples"):
            _call_with(spec, n_samples=bad)
    if not spec.name.startswith("CASO"):  # (CASO always draws antithetic pairs)
        _call_with(spec, n_samples=5, antithetic=False)


_TARGETED = [s for s in SPECS if s.kind != "neuron" and not s.name.startswith(("CASO", "CAFO"))]


@pytest.mark.parametrize("spec", _TARGETED, ids=[s.name for s in _TARGETED])
def test_non_scalar_output_without_target_named(spec: Spec) -> None:
    """Three logits and no ``target``: which output to explain is the user's choice, named. (CASO and
    CAFO take the predicted class, a neuron method its ``neuron_selector``.)"""
    with pytest.raises(ValueError, match=r"^target"):
        _call_with(spec, target=None)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_one_method_called_from_threads_at_once(spec: Spec) -> None:
    """The same method object (and model) used by four threads at once gives each call the result it
    gives alone: no state of a call leaks into another's."""
    net = TwoInputNet()
    method = spec.make(net)
    xs = [tuple(t * (1 + 0.1 * i) for t in _inputs()) for i in range(4)]
    alone = [_leaves(spec.call(method, x, 1, 7, None)) for x in xs]
    together: List[Any] = [None] * 4
    errors: List[BaseException] = []
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(2):
                together[i] = _leaves(spec.call(method, xs[i], 1, 7, None))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for a, b in zip(alone, together):
        assert all(torch.equal(p, q) for p, q in zip(a, b))
