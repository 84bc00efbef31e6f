"""Hostile-user tests of LayerSmoothHess and NeuronSmoothHess: awkward layers and models.

Each test pins a defect found by using the layer methods the way real models
are written: in-place activations after the layer, nested and dict
activations, layers called with keyword arguments, wrappers, batch norm behind
a plain function, and neuron selectors that do not select one unit.
"""

from __future__ import annotations

import math
import re
import threading
import warnings
from typing import Any, Dict, Tuple

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from captum_smoothhess import LayerSmoothHess, NeuronSmoothHess, SmoothHess
from captum_smoothhess.robust import ClassProbability

EPS = 0.4
N = 40


def _g(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(batch: int = 3, d: int = 4) -> Tensor:
    return torch.randn(batch, d, generator=_g(11), dtype=torch.float64)


def _close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def _inplace_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 2)).double()


def test_layer_followed_by_an_inplace_relu_equals_smoothhess_on_the_rest() -> None:
    """A ``ReLU(inplace=True)`` after the layer must neither fail nor change the activation."""
    net, x = _inplace_net(), _x()
    got, grad = LayerSmoothHess(net, net[0]).attribute(
        x, target=1, stdevs=EPS, n_samples=N, generator=_g(), baselines=0.0, return_gradient=True
    )
    with torch.no_grad():
        act = net[0](x) - net[0](torch.zeros_like(x))  # pre-ReLU values: a - b
    rest = nn.Sequential(nn.ReLU(), net[2])
    ref, ref_grad = SmoothHess(rest).attribute(
        net[0](x).detach(), target=1, stdevs=EPS, n_samples=N, generator=_g(), return_gradient=True
    )
    _close(got, ref * act[:, :, None] * act[:, None, :])
    _close(grad, ref_grad * act)


def test_neuron_of_a_linear_unit_before_an_inplace_relu_has_zero_hessian() -> None:
    """The unit is read before the model's in-place ReLU overwrites it: a linear unit, zero Hessian."""
    net, x = _inplace_net(), _x()
    got = NeuronSmoothHess(net, net[0]).attribute(
        x, neuron_selector=1, stdevs=EPS, n_samples=N, generator=_g()
    )
    assert float(got.abs().max()) == 0.0


class _LSTMNet(nn.Module):
    """Token ids -> embedding -> LSTM; the head reads the final hidden state ``h`` only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.emb = nn.Embedding(10, 3)
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.head = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
        self.double()

    def forward(self, ids: Tensor) -> Tensor:
        _, (h, _) = self.lstm(self.emb(ids))
        return self.head(h[-1])


def test_an_lstm_whose_state_is_not_batch_first_is_refused_not_silently_zero() -> None:
    """``(out, (h, c))``: the head reads ``h`` only; ``h`` is ``(layers, B, H)``, so the layer is refused.

    Attributing ``out`` alone would report a Hessian of exactly zero.
    """
    net = _LSTMNet()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match=r"^layer: activation 1 has shape \(1, 2, 4\)"):
        LayerSmoothHess(net, net.lstm).attribute(ids, target=0, stdevs=EPS, n_samples=N, generator=_g())


class _HeadOfH(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.inp = nn.Linear(4, 6)
        self.block = _Nested()
        self.head = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))

    def rest(self, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        return self.head(a * 0 + b * c)

    def forward(self, x: Tensor) -> Tensor:
        a, (b, c) = self.block(self.inp(x))
        return self.rest(a, b, c)


class _Nested(nn.Module):
    """``(a, (b, c))``, the shape of an LSTM's output."""

    def forward(self, h: Tensor) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        return h[:, :3], (h[:, 3:], h[:, :3] * 2)


def test_nested_tuple_output_equals_tuple_smoothhess_on_the_rest() -> None:
    net = _HeadOfH().double()
    x = _x()
    got = LayerSmoothHess(net, net.block).attribute(x, target=0, stdevs=EPS, n_samples=N, generator=_g())
    with torch.no_grad():
        a, (b, c) = net.block(net.inp(x))
    ref = SmoothHess(net.rest).attribute((a, b, c), target=0, stdevs=EPS, n_samples=N, generator=_g())
    assert isinstance(got, tuple) and len(got) == 3
    assert float(got[1][2].abs().max()) > 0  # the interaction of b and c is there
    for i in range(3):
        for j in range(3):
            _close(got[i][j], ref[i][j])


class _DictLayer(nn.Module):
    def forward(self, h: Tensor) -> Dict[str, Any]:
        return {"a": h[:, :3], "lengths": torch.ones(h.shape[0], dtype=torch.long), "b": h[:, 3:]}


class _DictNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.inp = nn.Linear(4, 6)
        self.block = _DictLayer()
        self.head = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))

    def rest(self, a: Tensor, b: Tensor) -> Tensor:
        return self.head(a * b)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(self.inp(x))
        assert out["lengths"].dtype == torch.long
        return self.rest(out["a"], out["b"])


def test_dict_output_is_a_tuple_layout_in_key_order() -> None:
    net = _DictNet().double()
    x = _x()
    got = LayerSmoothHess(net, net.block).attribute(x, target=1, stdevs=EPS, n_samples=N, generator=_g())
    with torch.no_grad():
        out = net.block(net.inp(x))
    ref = SmoothHess(net.rest).attribute(
        (out["a"], out["b"]), target=1, stdevs=EPS, n_samples=N, generator=_g()
    )
    for i in range(2):
        for j in range(2):
            _close(got[i][j], ref[i][j])
    sel = NeuronSmoothHess(net, net.block).attribute(
        x, neuron_selector=lambda act: act[0][:, 0] * act[1][:, 1], stdevs=EPS, n_samples=N, generator=_g()
    )
    assert sel.shape == (3, 4, 4)


class _KeywordNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.inp = nn.Linear(4, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(input=torch.relu(self.inp(x)))


def test_layer_input_passed_by_keyword_is_attributed() -> None:
    net = _KeywordNet().double()
    x = _x()
    got = LayerSmoothHess(net, net.head).attribute(
        x, target=0, stdevs=EPS, n_samples=N, generator=_g(), attribute_to_layer_input=True
    )
    # The head is linear in its input: the Hessian is zero, and so is everything but the shape.
    assert got.shape == (3, 5, 5) and float(got.abs().max()) == 0.0
    with torch.no_grad():
        h = torch.relu(net.inp(x))
    grad_ref = net.head.weight[0].detach().expand(3, 5)
    _, grad = LayerSmoothHess(net, net.head).attribute(
        x,
        target=0,
        stdevs=EPS,
        n_samples=N,
        generator=_g(),
        attribute_to_layer_input=True,
        return_gradient=True,
    )
    _close(grad, grad_ref)
    assert h.shape == (3, 5)


def test_a_layer_that_is_not_a_module_is_refused_naming_layer() -> None:
    net = _inplace_net()
    for bad in ("0", None, net[0].weight):
        with pytest.raises(TypeError, match=r"^layer"):
            LayerSmoothHess(net, bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"^layer"):
            NeuronSmoothHess(net, bad)  # type: ignore[arg-type]


def test_a_layer_inside_torchscript_is_refused_with_the_reason() -> None:
    torch.manual_seed(0)
    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)))
    with pytest.raises(ValueError, match=r"^layer: .*TorchScript"):
        LayerSmoothHess(scripted, scripted[1]).attribute(_x().float(), target=0, n_samples=4)


class _Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(9)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x)).flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("selector", [0, (1, 2), -1, lambda act: act, lambda act: act.sum()])
def test_a_selector_of_more_than_one_unit_per_example_names_neuron_selector(selector: Any) -> None:
    net = _Conv()
    x = torch.randn(2, 1, 4, 4, generator=_g())
    with pytest.raises(ValueError, match=r"^neuron_selector") as err:
        NeuronSmoothHess(net, net.act).attribute(x, neuron_selector=selector, n_samples=4)
    assert "target" not in str(err.value)


def test_a_selector_callable_returning_a_tuple_names_neuron_selector() -> None:
    net = _HeadOfH().double()
    with pytest.raises(TypeError, match=r"^neuron_selector"):
        NeuronSmoothHess(net, net.block).attribute(_x(), neuron_selector=lambda act: act, n_samples=4)


def test_training_batch_norm_behind_a_plain_function_is_refused_and_left_as_found() -> None:
    """A lambda hides the model: no private copy is possible, so the running statistics must not move."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).double().train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for method in (LayerSmoothHess(lambda z: net(z), net[2]), NeuronSmoothHess(lambda z: net(z), net[2])):
        with pytest.raises(ValueError, match=r"^forward_func: .*BatchNorm1d"):
            if isinstance(method, LayerSmoothHess):
                method.attribute(_x(), target=0, n_samples=4)
            else:
                method.attribute(_x(), neuron_selector=0, n_samples=4)
        for k, v in net.state_dict().items():
            assert torch.equal(v, state[k]), k
    # The module itself (or a bound method) gets the private copy and a warning instead.
    with pytest.warns(RuntimeWarning, match="training mode"):
        LayerSmoothHess(net.forward, net[2]).attribute(_x(), target=0, n_samples=4)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_a_layer_of_a_model_held_by_class_probability_in_training_mode() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).double().train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = LayerSmoothHess(ClassProbability(net), net[2]).attribute(
            _x(), target=0, n_samples=4, generator=_g()
        )
    assert got.shape == (3, 6, 6) and bool(torch.isfinite(got).all())
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert math.isfinite(float(got.sum()))


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(12)
        self.emb = nn.Embedding(10, 3)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(9, 4), nn.ReLU(), nn.Linear(4, 2))

    def forward(self, ids: Tensor) -> Tensor:
        return self.body(self.emb(ids))


@pytest.mark.parametrize("baselines", [0.5, torch.tensor(1.5), (float("nan"),), np.float32(0.5)])
def test_a_fractional_baseline_for_token_ids_is_refused_not_truncated(baselines: Any) -> None:
    net, ids = _Tokens(), torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match=r"^baselines: input 0 holds integers"):
        LayerSmoothHess(net, net.emb).attribute(ids, target=0, n_samples=4, baselines=baselines)
    # An integer-valued float is a pad id like any other.
    got = LayerSmoothHess(net, net.emb).attribute(ids, target=0, n_samples=4, baselines=0.0, generator=_g())
    ref = LayerSmoothHess(net, net.emb).attribute(ids, target=0, n_samples=4, baselines=0, generator=_g())
    _close(got, ref)


def test_hooks_of_one_thread_do_not_reach_another_running_the_same_model() -> None:
    """Two threads attribute and one runs the plain model, all at once: each sees only its own hooks."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).double().eval()
    x = _x()

    def layer() -> Tensor:
        return LayerSmoothHess(net, net[1]).attribute(
            x, target=0, stdevs=EPS, n_samples=N, n_samples_batch_size=4, generator=_g()
        )

    def neuron() -> Tensor:
        return NeuronSmoothHess(net, net[1]).attribute(
            x, neuron_selector=2, stdevs=EPS, n_samples=N, n_samples_batch_size=4, generator=_g()
        )

    expected = {"layer": layer(), "neuron": neuron(), "plain": net(x).detach()}
    got: Dict[str, list] = {"layer": [], "neuron": [], "plain": []}
    errors: list = []

    def run(name: str) -> None:
        try:
            for _ in range(3 if name != "plain" else 60):
                value = {"layer": layer, "neuron": neuron, "plain": lambda: net(x).detach()}[name]()
                got[name].append(value)
        except Exception as err:  # reported below, in the main thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("layer", "neuron", "plain")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name, values in got.items():
        assert values and all(torch.equal(v, expected[name]) for v in values), name
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


class _InstanceNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(13)
        self.inp = nn.Linear(4, 12)
        self.norm = nn.InstanceNorm1d(3, track_running_stats=True)
        self.act = nn.ReLU()
        self.head = nn.Linear(12, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.norm(self.inp(x).view(-1, 3, 4)).flatten(1)))


def test_instance_norm_tracking_statistics_in_training_mode_keeps_its_buffers() -> None:
    """Instance norm with ``track_running_stats=True`` updates its buffers in training mode, as batch norm."""
    net = _InstanceNormNet().double().train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    LayerSmoothHess(net, net.act).attribute(_x(), n_samples=4, generator=_g())
    NeuronSmoothHess(net, net.act).attribute(_x(), neuron_selector=0, n_samples=4, generator=_g())
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(ValueError, match=r"^forward_func: .*InstanceNorm1d"):
        LayerSmoothHess(lambda z: net(z), net.act).attribute(_x(), n_samples=4)
    assert net.training and net.norm.training


class _Bypass(nn.Module):
    """The output does not depend on ``side`` (called, but its result unused)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(14)
        self.side = nn.Linear(4, 6)
        self.main = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        self.side(x)
        return self.main(x)


@pytest.mark.parametrize("frozen", [False, True])
def test_a_layer_the_output_does_not_depend_on_gives_zero_whatever_requires_grad(frozen: bool) -> None:
    """Zero Hessian and gradient, also for a frozen model (``requires_grad_(False)``), left frozen."""
    net = _Bypass().double().requires_grad_(not frozen)
    hess, grad = LayerSmoothHess(net, net.side).attribute(
        _x(), target=0, n_samples=4, generator=_g(), return_gradient=True
    )
    assert float(hess.abs().max()) == 0.0 and float(grad.abs().max()) == 0.0
    const = nn.Sequential(nn.Linear(4, 3)).double().requires_grad_(not frozen)
    unit = NeuronSmoothHess(lambda z: const(torch.zeros_like(z)), const[0]).attribute(
        _x(), neuron_selector=0, n_samples=4, generator=_g()
    )
    assert float(unit.abs().max()) == 0.0
    assert all(p.requires_grad is not frozen for p in [*net.parameters(), *const.parameters()])


def test_a_meta_baseline_for_token_ids_is_named() -> None:
    net, ids = _Tokens(), torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match=r"^baselines: a meta tensor"):
        LayerSmoothHess(net, net.emb).attribute(
            ids, target=0, n_samples=4, baselines=torch.zeros(3, device="meta")
        )


@pytest.mark.parametrize("to_input", [False, True])
def test_a_layer_feature_mask_that_does_not_fit_names_the_layer_tensor(to_input: bool) -> None:
    """The mask is over the layer's activation (or input), not the model's input: the message says so."""
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(2, 6)
    shape = "(2, 8)" if to_input else "(2, 2)"
    what = "layer input" if to_input else "layer activation"
    with pytest.raises(ValueError, match=rf"feature_mask: .* {what} of shape {re.escape(shape)}"):
        LayerSmoothHess(net, net[2]).attribute(
            x,
            target=0,
            n_samples=8,
            feature_mask=torch.zeros(1, 5, dtype=torch.long),
            attribute_to_layer_input=to_input,
        )
