"""KernelNoiseTunnel against Captum's NoiseTunnel, as a hostile Captum user would compare them.

With the Gaussian kernel and the default sampling, every call NoiseTunnel completes must give the
same result bit for bit (values, dtypes, tensor/tuple structure, convergence deltas) and leave the
global RNGs (PyTorch's and NumPy's) in the same state. Where NoiseTunnel raises, KernelNoiseTunnel
raises too. The other kernels and samplings must run wherever the drop-in does and give results of
the same structure.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import pytest
import torch
from captum.attr import (
    LRP,
    Deconvolution,
    DeepLift,
    DeepLiftShap,
    FeatureAblation,
    GradientShap,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    LayerConductance,
    LayerGradCam,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    NeuronGradient,
    NeuronIntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from captum.attr._utils.attribution import Attribution
from torch import Tensor, nn

from captum_smoothhess.noise_tunnel import KernelNoiseTunnel

Inputs = Any  # a tensor or a tuple of tensors
MakeMethod = Callable[[], Attribution]


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Weights from ``seed``, the global RNG left as found."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class _MLP(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        with _seeded(0):
            self.l1 = nn.Linear(5, 6)
            self.act = nn.ReLU()
            self.l2 = nn.Linear(6, 3)
        self.to(dtype)

    def forward(self, x: Tensor, scale: Optional[Tensor] = None) -> Tensor:
        out = self.l2(self.act(self.l1(x)))
        return out if scale is None else out * scale


class _TwoInput(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        with _seeded(1):
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(4, 4)
            self.act = nn.ReLU()
            self.head = nn.Linear(4, 2)
        self.to(dtype)

    def forward(self, x: Tensor, y: Tensor, scale: Any = 1.0) -> Tensor:
        return self.head(self.act(self.a(x) + self.b(y.reshape(y.shape[0], -1)))) * scale


class _CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        with _seeded(2):
            self.conv = nn.Conv2d(1, 2, 3)
            self.act = nn.ReLU()
            self.fc = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.act(self.conv(x)).flatten(1))


class _Text(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        with _seeded(3):
            self.emb = nn.Embedding(10, 4)
            self.fc = nn.Linear(4, 2)

    def forward(self, ids: Tensor) -> Tensor:
        return self.fc(self.emb(ids).mean(1))


def _run(
    tunnel: NoiseTunnel, inputs: Inputs, kwargs: Dict[str, Any], seed: int
) -> Tuple[Any, Tuple[float, float]]:
    """The tunnel's result after seeding both global RNGs, and a draw of each RNG after the call."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - Captum draws baselines from NumPy's global RNG
    out = tunnel.attribute(inputs, **kwargs)
    return out, (torch.rand(1).item(), float(np.random.rand()))  # noqa: NPY002


def _same(got: Any, want: Any) -> None:
    """Same structure, dtypes and bits."""
    assert type(got) is type(want)
    if isinstance(want, tuple):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _same(g, w)
    else:
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want), (got.double() - want.double()).abs().max()


def _shape(out: Any) -> Any:
    return tuple(_shape(t) for t in out) if isinstance(out, tuple) else ("tensor", tuple(out.shape))


def _parity(make: MakeMethod, inputs: Inputs, seed: int = 7, **kwargs: Any) -> Any:
    """Assert KernelNoiseTunnel == NoiseTunnel bit for bit, RNG states after included; the result."""
    want, rng_want = _run(NoiseTunnel(make()), inputs, kwargs, seed)
    got, rng_got = _run(KernelNoiseTunnel(make()), inputs, kwargs, seed)
    _same(got, want)
    assert rng_got == rng_want
    return got


_NET = _MLP()
_NET64 = _MLP(torch.float64)
_TWO = _TwoInput()
_CNN_NET = _CNN()
_X = torch.randn(3, 5, generator=torch.Generator().manual_seed(10))
_XT = (
    torch.randn(3, 3, generator=torch.Generator().manual_seed(11)),
    torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(12)),
)
_BASES = torch.randn(4, 5, generator=torch.Generator().manual_seed(13))
_BASES_T = (
    torch.randn(4, 3, generator=torch.Generator().manual_seed(14)),
    torch.randn(4, 2, 2, generator=torch.Generator().manual_seed(15)),
)


def _methods(net: _MLP) -> Dict[str, Tuple[MakeMethod, Dict[str, Any]]]:
    """Captum methods on ``net``, each with the arguments it needs besides the tunnel's."""
    bases = _BASES.to(net.l1.weight.dtype)
    return {
        "Saliency": (lambda: Saliency(net), {"target": 1}),
        "IntegratedGradients": (lambda: IntegratedGradients(net), {"target": 1, "n_steps": 3}),
        "IntegratedGradients-delta": (
            lambda: IntegratedGradients(net),
            {"target": 1, "n_steps": 3, "return_convergence_delta": True},
        ),
        "IntegratedGradients-ibs": (
            lambda: IntegratedGradients(net),
            {"target": 1, "n_steps": 3, "internal_batch_size": 4},
        ),
        "InputXGradient": (lambda: InputXGradient(net), {"target": 1}),
        "DeepLift-delta": (lambda: DeepLift(net), {"target": 1, "return_convergence_delta": True}),
        "DeepLiftShap": (
            lambda: DeepLiftShap(net),
            {"target": 1, "baselines": bases, "draw_baseline_from_distrib": True},
        ),
        "GradientShap-delta": (
            lambda: GradientShap(net),
            {
                "target": 1,
                "baselines": bases,
                "n_samples": 2,
                "draw_baseline_from_distrib": True,
                "return_convergence_delta": True,
            },
        ),
        "GuidedBackprop": (lambda: GuidedBackprop(net), {"target": 1}),
        "Deconvolution": (lambda: Deconvolution(net), {"target": 1}),
        "LayerConductance-delta": (
            lambda: LayerConductance(net, net.l1),
            {"target": 1, "n_steps": 3, "return_convergence_delta": True},
        ),
        "LayerIntegratedGradients": (
            lambda: LayerIntegratedGradients(net, net.l1),
            {"target": 1, "n_steps": 3},
        ),
        "LayerGradientXActivation": (lambda: LayerGradientXActivation(net, net.l1), {"target": 1}),
        "NeuronGradient": (lambda: NeuronGradient(net, net.l1), {"neuron_selector": 2}),
        "NeuronIntegratedGradients": (
            lambda: NeuronIntegratedGradients(net, net.l1),
            {"neuron_selector": 2, "n_steps": 3},
        ),
        "FeatureAblation": (
            lambda: FeatureAblation(net),
            {"target": 1, "feature_mask": torch.tensor([[0, 0, 1, 1, 2]])},
        ),
        "Occlusion": (lambda: Occlusion(net), {"target": 1, "sliding_window_shapes": (2,)}),
        "LRP-delta": (lambda: LRP(net), {"target": 1, "return_convergence_delta": True}),
    }


_METHOD_NAMES = list(_methods(_NET))
_CONV_METHODS: Dict[str, MakeMethod] = {
    "GuidedGradCam": lambda: GuidedGradCam(_CNN_NET, _CNN_NET.conv),
    "LayerGradCam": lambda: LayerGradCam(_CNN_NET, _CNN_NET.conv),
    "Occlusion": lambda: Occlusion(_CNN_NET),
}


# -- the parity matrix: methods x nt_type x partitions x dtype --------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch_size", [None, 1, 2])
@pytest.mark.parametrize("name", _METHOD_NAMES)
def test_methods_match_noise_tunnel(name: str, batch_size: Optional[int], dtype: torch.dtype) -> None:
    net = _NET if dtype == torch.float32 else _NET64
    make, extra = _methods(net)[name]
    _parity(
        make,
        _X.to(dtype),
        nt_type="vargrad",
        nt_samples=5,
        nt_samples_batch_size=batch_size,
        stdevs=0.3,
        **extra,
    )


@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("name", ["Saliency", "IntegratedGradients-delta", "FeatureAblation", "LRP-delta"])
def test_nt_types_match_noise_tunnel(name: str, nt_type: str) -> None:
    make, extra = _methods(_NET)[name]
    _parity(make, _X, nt_type=nt_type, nt_samples=5, nt_samples_batch_size=3, stdevs=0.2, **extra)


@pytest.mark.parametrize("name", list(_CONV_METHODS))
def test_conv_methods_match_noise_tunnel(name: str) -> None:
    extra: Dict[str, Any] = {"sliding_window_shapes": (1, 2, 2)} if name == "Occlusion" else {}
    images = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(4))
    _parity(_CONV_METHODS[name], images, nt_samples=3, nt_samples_batch_size=2, stdevs=0.2, target=1, **extra)


@pytest.mark.parametrize("stdevs", [0.3, (0.2, 0.4)], ids=["float", "tuple"])
@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("Saliency", {}),
        ("IntegratedGradients", {"n_steps": 3, "return_convergence_delta": True}),
        ("DeepLift", {}),
        ("GradientShap", {"baselines": _BASES_T, "draw_baseline_from_distrib": True}),
        ("IntegratedGradients", {"n_steps": 3, "baselines": _BASES_T, "draw_baseline_from_distrib": True}),
        (
            "IntegratedGradients",
            {"n_steps": 3, "baselines": (_BASES_T[0], 0.5), "draw_baseline_from_distrib": True},
        ),
        ("FeatureAblation", {}),
        ("Occlusion", {"sliding_window_shapes": ((1,), (1, 2))}),
    ],
    ids=[
        "Saliency",
        "IG-delta",
        "DeepLift",
        "GradientShap",
        "IG-distrib",
        "IG-distrib-mixed",
        "FA",
        "Occlusion",
    ],
)
def test_tuple_inputs_match_noise_tunnel(name: str, extra: Dict[str, Any], stdevs: Any) -> None:
    """Tuple inputs, per-input stdevs, per-example targets, additional_forward_args, baselines drawn from
    tensors and tuples of a tensor and a number."""
    method = {
        "Saliency": Saliency,
        "IntegratedGradients": IntegratedGradients,
        "DeepLift": DeepLift,
        "GradientShap": GradientShap,
        "FeatureAblation": FeatureAblation,
        "Occlusion": Occlusion,
    }[name]
    scale = torch.rand(3, 1, generator=torch.Generator().manual_seed(5)) + 0.5
    got = _parity(
        lambda: method(_TWO),
        _XT,
        nt_samples=5,
        nt_samples_batch_size=2,
        stdevs=stdevs,
        target=torch.tensor([0, 1, 0]),
        additional_forward_args=(scale,),
        **extra,
    )
    attributions = got[0] if extra.get("return_convergence_delta") else got
    assert isinstance(attributions, tuple) and len(attributions) == 2


@pytest.mark.parametrize("target", [[0, 2, 1], torch.tensor([0, 2, 1]), torch.tensor(1), (1,)], ids=repr)
def test_targets_match_noise_tunnel(target: Any) -> None:
    _parity(lambda: Saliency(_NET), _X, nt_samples=4, nt_samples_batch_size=3, stdevs=0.2, target=target)
    _parity(
        lambda: IntegratedGradients(_NET),
        _X,
        nt_samples=4,
        nt_samples_batch_size=3,
        stdevs=0.2,
        target=target,
        n_steps=3,
        return_convergence_delta=True,
    )


def test_call_contexts_match_noise_tunnel() -> None:
    """Inputs requiring grad, ``torch.no_grad()`` outside, a tuple of one tensor, a training-mode model
    with dropout (its draws interleave with the noise) and with batch norm (run on a private copy)."""
    x = _X.clone().requires_grad_()
    _parity(lambda: Saliency(_NET), x, nt_samples=3, stdevs=0.2, target=0)
    _parity(lambda: FeatureAblation(_NET), x, nt_samples=3, stdevs=0.2, target=0)
    assert x.requires_grad and x.grad is None
    with torch.no_grad():
        _parity(lambda: IntegratedGradients(_NET), _X, nt_samples=3, stdevs=0.2, target=0, n_steps=3)
    _parity(lambda: Saliency(_NET), (_X,), nt_samples=3, nt_samples_batch_size=2, stdevs=(0.2,), target=0)
    torch.manual_seed(6)
    dropout = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 3)).train()
    with pytest.warns(RuntimeWarning):
        _parity(lambda: Saliency(dropout), _X, nt_samples=3, nt_samples_batch_size=2, stdevs=0.2, target=0)
    normed = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)).train()
    with pytest.warns(RuntimeWarning):
        _parity(lambda: Saliency(normed), _X, nt_samples=3, stdevs=0.2, target=0)


_TEXT = _Text()


@pytest.mark.parametrize(
    ("make", "inputs", "kwargs", "captum_error", "our_error"),
    [
        (
            lambda: LayerIntegratedGradients(_TEXT, _TEXT.emb),
            torch.tensor([[1, 2, 3]]),
            {"n_steps": 2},
            RuntimeError,
            TypeError,
        ),
        (lambda: GradientShap(_NET), _X, {"baselines": 0.5}, AssertionError, AssertionError),
        (lambda: DeepLiftShap(_NET), _X, {"baselines": _BASES}, AssertionError, AssertionError),
        (lambda: Saliency(_NET), _X, {"stdevs": -0.1}, RuntimeError, ValueError),
        (lambda: Saliency(_NET), _X, {"nt_type": "meangrad"}, AssertionError, ValueError),
        (lambda: Saliency(_NET), _X, {"stdevs": (0.1, 0.2)}, AssertionError, ValueError),
    ],
    ids=["token-ids", "GradientShap-number", "DeepLiftShap-undrawn", "stdevs<0", "nt_type", "stdevs-length"],
)
def test_where_noise_tunnel_raises_so_does_kernel_noise_tunnel(
    make: MakeMethod, inputs: Inputs, kwargs: Any, captum_error: type, our_error: type
) -> None:
    kwargs = {"nt_samples": 2, "stdevs": 0.1, "target": 1, **kwargs}
    with pytest.raises(captum_error):
        NoiseTunnel(make()).attribute(inputs, **kwargs)
    with pytest.raises(our_error):
        KernelNoiseTunnel(make()).attribute(inputs, **kwargs)


# -- defects: stdevs NoiseTunnel takes in its own dtype ---------------------------------------


def test_numpy_float64_stdevs_draw_float64_noise_as_noise_tunnel() -> None:
    """``np.float64`` is a ``float`` to NoiseTunnel, which draws float64 noise for it (float32 for a
    Python float). The stdevs used to be turned into Python floats: other noise, other numbers."""
    _parity(
        lambda: Saliency(_NET64),
        _X.double(),
        nt_samples=4,
        nt_samples_batch_size=3,
        stdevs=np.float64(0.3),
        target=1,
    )
    two64 = _TwoInput(torch.float64)
    _parity(
        lambda: IntegratedGradients(two64),
        tuple(t.double() for t in _XT),
        nt_samples=4,
        stdevs=(np.float64(0.3), 0.2),
        target=1,
        n_steps=3,
    )


@pytest.mark.parametrize(
    "stdevs",
    [
        (torch.tensor(0.3), torch.tensor(0.2)),
        (torch.tensor([0.3]), 0.2),
        (torch.tensor([[0.3]]), torch.tensor(0.2, dtype=torch.float64)),
    ],
    ids=["0-d", "1-element", "float64"],
)
def test_one_element_tensor_stdevs_in_a_tuple_as_noise_tunnel(stdevs: Tuple[Any, ...]) -> None:
    """``stdevs=(x.std() * 0.15, ...)``: NoiseTunnel takes one-element tensors in a tuple and draws in
    their dtype from the global RNG. They used to take the kernel path (other noise), and with
    ``draw_baseline_from_distrib`` other baselines too. (A float64 model: float64 noise is no mismatch.)"""
    two64 = _TwoInput(torch.float64)
    xt64 = tuple(t.double() for t in _XT)
    _parity(lambda: Saliency(two64), xt64, nt_samples=4, nt_samples_batch_size=3, stdevs=stdevs, target=1)
    _parity(
        lambda: IntegratedGradients(two64),
        xt64,
        nt_samples=4,
        nt_samples_batch_size=3,
        stdevs=stdevs,
        target=1,
        n_steps=2,
        baselines=tuple(b.double() for b in _BASES_T),
        draw_baseline_from_distrib=True,
    )
    _parity(lambda: Saliency(_NET64), _X.double(), nt_samples=3, stdevs=stdevs[:1], target=1)


# -- defects: inputs NoiseTunnel takes ------------------------------------------------------------


def _from_pixels(x: Tensor) -> Tensor:
    """A model normalising raw integer pixels itself (the noisy ones are floating)."""
    return (x.float() / 255.0 - 0.5).pow(2).flatten(1).sum(1)


@pytest.mark.parametrize(
    "inputs",
    [
        torch.randint(0, 256, (2, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(8)),
        torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(8)),
        torch.arange(10).reshape(2, 5) % 3 == 0,
    ],
    ids=["uint8", "int64", "bool"],
)
def test_integer_inputs_as_noise_tunnel(inputs: Tensor) -> None:
    """NoiseTunnel adds its float noise to integer inputs (raw pixels), which become floating point;
    they used to be refused with a TypeError."""
    got = _parity(lambda: Saliency(_from_pixels), inputs, nt_samples=3, nt_samples_batch_size=2, stdevs=2.0)
    assert got.dtype == torch.float32
    _parity(lambda: FeatureAblation(_from_pixels), inputs, nt_samples=3, stdevs=2.0)
    mixed = (_XT[0], inputs[:, :4].reshape(2, 2, 2).repeat(2, 1, 1)[:3])
    _parity(
        lambda: InputXGradient(lambda a, b: a.sum(1) * b.float().flatten(1).sum(1)),
        mixed,
        nt_samples=3,
        stdevs=0.5,
    )
    for kernel, sampling in (("poisson", "iid"), ("gaussian", "orthogonal_antithetic")):
        out = KernelNoiseTunnel(Saliency(_from_pixels), kernel, sampling).attribute(
            inputs, nt_samples=4, stdevs=2.0, generator=torch.Generator().manual_seed(0)
        )
        assert out.shape == inputs.shape and out.dtype == torch.float32 and bool((out != 0).any())


def test_token_ids_refused_by_the_embedding_are_named() -> None:
    """Noisy token ids are floats, which an embedding refuses (NoiseTunnel fails with PyTorch's bare
    message); the error names ``inputs`` and says what to do."""
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(RuntimeError):
        NoiseTunnel(LayerIntegratedGradients(_TEXT, _TEXT.emb)).attribute(ids, nt_samples=2, target=1)
    for kernel in ("gaussian", "poisson"):
        with pytest.raises(TypeError, match=r"^inputs: integer tensor \(token ids\?\).*embeddings"):
            KernelNoiseTunnel(LayerIntegratedGradients(_TEXT, _TEXT.emb), kernel).attribute(
                ids, nt_samples=2, stdevs=0.0, target=1, n_steps=2
            )


# -- defects: noise wider than the input ---------------------------------------------------------


def test_wider_noise_widens_the_inputs_of_a_function_as_noise_tunnel() -> None:
    """Float64 noise (np.float64 stdevs, or float64 as the default dtype) makes NoiseTunnel's noisy
    float32 inputs float64. A function takes them and NoiseTunnel returns attributions in float64; the
    noisy inputs used to be rounded back to float32, so the numbers and the dtype differed. (A model
    with weights in the input's dtype, and half-precision inputs, whose model NoiseTunnel's float32
    noise would fail, still get them rounded back: below and tests/test_noise_tunnel.py.)"""

    def square(t: Tensor) -> Tensor:
        return (t**2).sum(1)

    kw: Dict[str, Any] = dict(nt_samples=4, nt_samples_batch_size=3)
    assert _parity(lambda: Saliency(square), _X, stdevs=np.float64(0.3), **kw).dtype == torch.float64
    parameterless = nn.Softplus()
    assert _parity(
        lambda: InputXGradient(parameterless), _X, stdevs=np.float64(0.3), target=1, **kw
    ).dtype == (torch.float64)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert _parity(lambda: Saliency(square), _X, stdevs=0.3, **kw).dtype == torch.float64
    finally:
        torch.set_default_dtype(default)


def test_wider_noise_on_a_model_in_the_inputs_dtype_is_rounded_back() -> None:
    """NoiseTunnel fails there (float64 inputs into float32 weights); KernelNoiseTunnel runs. So does a
    half-precision model behind a function, whose inputs are rounded back from NoiseTunnel's float32."""
    with pytest.raises(RuntimeError):
        NoiseTunnel(Saliency(_NET)).attribute(_X, nt_samples=2, stdevs=np.float64(0.3), target=1)
    out = KernelNoiseTunnel(Saliency(_NET)).attribute(_X, nt_samples=2, stdevs=np.float64(0.3), target=1)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    half = copy.deepcopy(_NET).half()
    out = KernelNoiseTunnel(Saliency(lambda t: half(t))).attribute(
        _X.half(), nt_samples=2, stdevs=0.3, target=1
    )
    assert out.dtype == torch.float16 and bool(torch.isfinite(out).all())


# -- defects: the kernel path's convergence deltas ------------------------------------------------


@pytest.mark.parametrize("kernel", ["gaussian", "poisson"])
def test_kernel_path_deltas_do_not_depend_on_the_partitions(kernel: str) -> None:
    """NoiseTunnel concatenates the deltas partition by partition; on the kernel path (whose result must
    not depend on nt_samples_batch_size) they used to come in that order, so they moved with it."""
    results = []
    for size in (None, 2, 1):
        results.append(
            KernelNoiseTunnel(IntegratedGradients(_NET), kernel).attribute(
                _X,
                nt_samples=5,
                nt_samples_batch_size=size,
                stdevs=0.3,
                target=1,
                n_steps=3,
                return_convergence_delta=True,
                generator=torch.Generator().manual_seed(0),
            )
        )
    for attributions, delta in results[1:]:
        assert delta.shape == (15,)
        torch.testing.assert_close(attributions, results[0][0])
        torch.testing.assert_close(delta, results[0][1])


# -- the other kernels and samplings run where the drop-in does, with its structure ----------------


@pytest.mark.parametrize(
    ("kernel", "sampling"), [("poisson", "iid"), ("sigmoid", "iid"), ("gaussian", "orthogonal_antithetic")]
)
@pytest.mark.parametrize("name", _METHOD_NAMES)
def test_kernel_paths_run_with_the_drop_in_structure(name: str, kernel: str, sampling: str) -> None:
    make, extra = _methods(_NET)[name]
    kw: Dict[str, Any] = dict(nt_type="vargrad", nt_samples=4, nt_samples_batch_size=3, stdevs=0.3, **extra)
    torch.manual_seed(0)
    want = KernelNoiseTunnel(make()).attribute(_X, **kw)
    got = KernelNoiseTunnel(make(), kernel, sampling).attribute(
        _X, generator=torch.Generator().manual_seed(0), **kw
    )
    assert _shape(got) == _shape(want)
    leaves = got if isinstance(got, tuple) else (got,)
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in leaves)


@pytest.mark.parametrize(("kernel", "sampling"), [("poisson", "iid"), ("gaussian", "orthogonal_antithetic")])
def test_kernel_paths_run_on_tuple_inputs_and_conv_methods(kernel: str, sampling: str) -> None:
    kw: Dict[str, Any] = dict(
        nt_samples=4, nt_samples_batch_size=3, target=1, generator=torch.Generator().manual_seed(0)
    )
    out = KernelNoiseTunnel(IntegratedGradients(_TWO), kernel, sampling).attribute(
        _XT, stdevs=(0.2, 0.4), n_steps=2, baselines=_BASES_T, draw_baseline_from_distrib=True, **kw
    )
    assert _shape(out) == (("tensor", (3, 3)), ("tensor", (3, 2, 2)))
    images = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(4))
    for make in _CONV_METHODS.values():
        extra = {"sliding_window_shapes": (1, 2, 2)} if isinstance(make(), Occlusion) else {}
        torch.manual_seed(0)
        want = NoiseTunnel(make()).attribute(images, nt_samples=2, stdevs=0.2, target=1, **extra)
        got = KernelNoiseTunnel(make(), kernel, sampling).attribute(images, stdevs=0.2, **extra, **kw)
        assert _shape(got) == _shape(want)


def test_half_inputs_to_a_float32_model_are_widened_as_noise_tunnel() -> None:
    """NoiseTunnel's float32 noise makes half-precision inputs float32, which a float32 model takes:
    KernelNoiseTunnel gives the same numbers (only a half-precision model, or one behind a function,
    gets them rounded back)."""
    out = _parity(lambda: Saliency(_NET), _X.half(), stdevs=0.3, nt_samples=3, target=1)
    assert out.dtype == torch.float32


def test_an_index_error_inside_the_model_reaches_the_user_unchanged() -> None:
    """Only PyTorch's refusal of floating indices is explained; an index out of range in an embedding
    (here of ids passed as an additional argument, next to integer inputs) is the model's own error."""

    class _Flags(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(3, 5)
            self.lin = nn.Linear(5, 2)

        def forward(self, x: Tensor, flags: Tensor, ids: Tensor) -> Tensor:
            return self.lin(x + self.emb(ids)) + flags.float().sum(1, keepdim=True)

    model = _Flags()
    flags = torch.ones(3, 2, dtype=torch.long)
    bad_ids = torch.tensor([0, 1, 7])
    with pytest.raises(IndexError):
        KernelNoiseTunnel(Saliency(model)).attribute(
            (_X, flags), nt_samples=2, stdevs=0.1, target=0, additional_forward_args=(bad_ids,)
        )


def test_nested_attributions_run_on_the_private_copy() -> None:
    """GuidedGradCam runs a LayerGradCam and a GuidedBackprop of its own: on a training-mode batch-norm
    model both must run on the private copy, or the user's running statistics change."""
    from captum.attr import GuidedGradCam

    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, padding=1)
    model = nn.Sequential(conv, nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match="training mode"):
        out = KernelNoiseTunnel(GuidedGradCam(model, conv)).attribute(x, nt_samples=2, stdevs=0.1, target=0)
    assert out.shape == x.shape
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
