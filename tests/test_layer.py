"""LayerSmoothHess, NeuronSmoothHess, baselines weighting and token masks.

The oracles are equivalences: for the same seed, a layer method must give
exactly what SmoothHess gives on the function that takes the layer's
activation (or returns the selected unit), and baselines must weight the
dense estimate as ``diag(a - b) H diag(a - b)``.
"""

from __future__ import annotations

from typing import Any, Tuple

import pytest
import torch
from torch import Tensor, nn

from captum_smoothhess import LayerSmoothHess, NeuronSmoothHess, SmoothHess
from captum_smoothhess.tokens import fold_interactions, token_feature_mask, word_feature_mask

EPS, N = 0.3, 40


def _g(seed: int = 2) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()


def _x(batch: int = 3) -> Tensor:
    return torch.randn(batch, 4, generator=_g(9), dtype=torch.float64)


# --------------------------------------------------------------------------- LayerSmoothHess


@pytest.mark.parametrize("chunk", [None, 6])
def test_layer_output_equals_smoothhess_on_the_rest(chunk: Any) -> None:
    net, x = _mlp(), _x()
    got, grad = LayerSmoothHess(net, net[2]).attribute(
        x, target=1, stdevs=EPS, n_samples=N, n_samples_batch_size=chunk, generator=_g(), return_gradient=True
    )
    with torch.no_grad():
        h = net[:3](x)
    ref, ref_grad = SmoothHess(net[3:]).attribute(
        h, target=1, stdevs=EPS, n_samples=N, generator=_g(), return_gradient=True
    )
    assert got.shape == (3, 5, 5) and grad.shape == (3, 5)
    _close(got, ref)
    _close(grad, ref_grad)
    assert got.abs().sum() > 0


def test_layer_input_equals_smoothhess_on_the_rest() -> None:
    net, x = _mlp(), _x()
    got = LayerSmoothHess(net, net[2]).attribute(
        x, target=[0, 2, 1], stdevs=EPS, n_samples=N, generator=_g(), attribute_to_layer_input=True
    )
    with torch.no_grad():
        h = net[:2](x)
    ref = SmoothHess(net[2:]).attribute(h, target=[0, 2, 1], stdevs=EPS, n_samples=N, generator=_g())
    assert got.shape == (3, 6, 6)
    _close(got, ref)


class _Split(nn.Module):
    """Returns a tuple with a non-tensor entry: ``(h[:, :2], None, h[:, 2:] * 2)``."""

    def forward(self, h: Tensor) -> Tuple[Any, ...]:
        return h[:, :2], None, h[:, 2:] * 2


class _TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.inp = nn.Linear(4, 5)
        self.split = _Split()
        self.head = nn.Linear(5, 2)

    def rest(self, a: Tensor, b: Tensor) -> Tensor:
        return self.head(torch.relu(torch.cat([a * b.sum(1, keepdim=True), b], dim=1)))

    def forward(self, x: Tensor) -> Tensor:
        a, _, b = self.split(self.inp(x))
        return self.rest(a, b)


def test_tuple_layer_output_gives_nested_blocks_equal_to_tuple_smoothhess() -> None:
    net = _TupleNet().double()
    x = _x()
    got = LayerSmoothHess(net, net.split).attribute(x, target=0, stdevs=EPS, n_samples=N, generator=_g())
    with torch.no_grad():
        a, _, b = net.split(net.inp(x))
    ref = SmoothHess(net.rest).attribute((a, b), target=0, stdevs=EPS, n_samples=N, generator=_g())
    assert isinstance(got, tuple) and len(got) == 2 and got[0][1].shape == (3, 2, 3)
    for i in range(2):
        for j in range(2):
            _close(got[i][j], ref[i][j])


class _TokenNet(nn.Module):
    """Token ids ``(B, T)`` -> embedding ``(B, T, E)`` -> a ReLU MLP on the flattened tokens."""

    def __init__(self, vocab: int = 12, seq: int = 4, emb: int = 3) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.emb = nn.Embedding(vocab, emb)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(seq * emb, 16), nn.ReLU(), nn.Linear(16, 2))
        self.double()

    def forward(self, ids: Tensor) -> Tensor:
        return self.body(self.emb(ids))


def _ids() -> Tensor:
    return torch.tensor([[1, 5, 7, 0], [3, 3, 9, 11]])


def test_integer_token_inputs_through_the_embedding() -> None:
    net, ids = _TokenNet(), _ids()
    lsh = LayerSmoothHess(net, net.emb)
    got = lsh.attribute(ids, target=1, stdevs=EPS, n_samples=N, generator=_g())
    with torch.no_grad():
        e = net.emb(ids)
    ref = SmoothHess(net.body).attribute(e, target=1, stdevs=EPS, n_samples=N, generator=_g())
    assert got.shape == (2, 4, 3, 4, 3)
    _close(got, ref)
    # The token mask gives (B, T, T) = M^T H M of the dense estimate, for the same seed.
    tokens = lsh.attribute(
        ids, target=1, stdevs=EPS, n_samples=N, generator=_g(), feature_mask=token_feature_mask(4, 3)
    )
    dense = got.reshape(2, 4, 3, 4, 3).sum(dim=(2, 4))
    assert tokens.shape == (2, 4, 4)
    _close(tokens, dense)


def test_pad_id_baselines_weight_by_the_embedding_difference() -> None:
    net, ids = _TokenNet(), _ids()
    lsh = LayerSmoothHess(net, net.emb)
    mask = token_feature_mask(4, 3)
    dense = lsh.attribute(ids, target=1, stdevs=EPS, n_samples=N, generator=_g()).reshape(2, 12, 12)
    got = lsh.attribute(
        ids, target=1, stdevs=EPS, n_samples=N, generator=_g(), baselines=0, feature_mask=mask
    )
    with torch.no_grad():
        w = (net.emb(ids) - net.emb(torch.zeros_like(ids))).reshape(2, 12)
    m = nn.functional.one_hot(mask.reshape(-1), 4).double()
    ref = m.T @ (w[:, :, None] * dense * w[:, None, :]) @ m
    _close(got, ref)
    # The pad position itself (id 0 in example 0) has a zero weight: zero row and column.
    assert got[0, 3].abs().max() == 0 and got[0, :, 3].abs().max() == 0
    # Dense weighted result and the weighted gradient.
    hess, grad = lsh.attribute(
        ids, target=1, stdevs=EPS, n_samples=N, generator=_g(), baselines=0, return_gradient=True
    )
    _close(hess.reshape(2, 12, 12), w[:, :, None] * dense * w[:, None, :])
    _, plain_grad = lsh.attribute(
        ids, target=1, stdevs=EPS, n_samples=N, generator=_g(), return_gradient=True
    )
    _close(grad, plain_grad * w.reshape(2, 4, 3))


def test_word_mask_equals_folding_token_interactions() -> None:
    net, ids = _TokenNet(), _ids()
    lsh = LayerSmoothHess(net, net.emb)
    word_ids = torch.tensor([[0, 1, 1, 2], [0, 0, 1, 2]])
    kw: Any = dict(target=0, stdevs=EPS, n_samples=N, baselines=0)
    words = lsh.attribute(ids, generator=_g(), feature_mask=word_feature_mask(word_ids, 3), **kw)
    tokens = lsh.attribute(ids, generator=_g(), feature_mask=token_feature_mask(4, 3), **kw)
    assert words.shape == (2, 3, 3)
    _close(words, fold_interactions(tokens, word_ids))


def test_layer_errors_name_the_argument() -> None:
    net, x = _mlp(), _x()
    with pytest.raises(ValueError, match=r"^layer"):
        LayerSmoothHess(net, nn.Linear(2, 2)).attribute(x, target=0, n_samples=4)
    with pytest.raises(ValueError, match=r"^target"):
        LayerSmoothHess(net, net[2]).attribute(x, target=7, n_samples=4)
    with pytest.raises(ValueError, match=r"^baselines"):
        LayerSmoothHess(net, net[2]).attribute(x, target=0, n_samples=4, baselines=torch.zeros(2, 4))
    with pytest.raises(TypeError, match=r"^layer"):  # an integer activation cannot be perturbed
        tok = _TokenNet()
        LayerSmoothHess(tok, tok.emb).attribute(_ids(), target=0, n_samples=4, attribute_to_layer_input=True)
    with pytest.raises(ValueError, match=r"^inputs"):
        LayerSmoothHess(net, net[2]).attribute(x.new_full((1, 4), float("nan")), target=0, n_samples=4)


def test_hooks_removed_and_model_untouched_after_an_exception() -> None:
    net, x = _mlp(), _x()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    calls = {"n": 0}

    def flaky(inp: Tensor) -> Tensor:
        calls["n"] += 1
        if calls["n"] >= 2:
            raise KeyError("boom")
        return net(inp)

    for method in (LayerSmoothHess(flaky, net[2]), NeuronSmoothHess(flaky, net[2])):
        calls["n"] = 0
        with pytest.raises(KeyError, match="boom"):
            if isinstance(method, LayerSmoothHess):
                method.attribute(x, target=0, n_samples=4)
            else:
                method.attribute(x, neuron_selector=0, n_samples=4)
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k])


def test_a_layer_called_twice_per_forward_is_refused() -> None:
    lin = nn.Linear(4, 4).double()

    def twice(x: Tensor) -> Tensor:
        return lin(torch.relu(lin(x))).sum(1)

    with pytest.raises(ValueError, match=r"^layer: it is called more than once"):
        LayerSmoothHess(twice, lin).attribute(_x(), n_samples=4)
    with pytest.raises(ValueError, match=r"^layer: it is called more than once"):
        NeuronSmoothHess(twice, lin).attribute(_x(), neuron_selector=0, n_samples=4)
    assert not lin._forward_hooks


def test_token_helpers_take_numpy_integers_and_refuse_no_tokens() -> None:
    np = pytest.importorskip("numpy")
    assert torch.equal(token_feature_mask(np.int64(3), np.int32(2)), token_feature_mask(3, 2))
    assert torch.equal(
        word_feature_mask(torch.tensor([0, 1, 1]), np.int64(2)), word_feature_mask(torch.tensor([0, 1, 1]), 2)
    )
    with pytest.raises(ValueError, match=r"^word_ids: no tokens"):
        fold_interactions(torch.ones(1, 0, 0), torch.zeros(0, dtype=torch.long))


# --------------------------------------------------------------------------- tolerance: uneven stops


def _close_all(got: Tuple[Any, ...], ref: Tuple[Any, ...]) -> None:
    """Equal results, gradients and errors (all fields), for results ending in a SmoothHessError."""
    assert len(got) == len(ref)
    for a, b in zip(got[:-1], ref[:-1]):
        _close(a, b)
    err, ref_err = got[-1], ref[-1]
    assert torch.equal(err.n_samples, ref_err.n_samples)
    # The examples stopped at different sample counts: some left the batch before others.
    assert len(set(err.n_samples.tolist())) > 1, err.n_samples
    _close(err.stderr, ref_err.stderr)
    _close(err.relative, ref_err.relative)
    _close(err.gradient_stderr, ref_err.gradient_stderr)


def _uneven_x() -> Tensor:
    """Four examples of different difficulty: they reach the tolerance at different sample counts."""
    x = _x(4)
    x[1] *= 5
    x[3] *= 0.2
    return x


@pytest.mark.parametrize("target", [1, [0, 2, 1, 1], torch.tensor([2, 0, 1, 2])])
@pytest.mark.parametrize("sampling", ["iid", "orthogonal"])
def test_layer_tolerance_with_examples_leaving_equals_smoothhess_on_the_rest(
    target: Any, sampling: str
) -> None:
    net, x = _mlp(), _uneven_x()
    kw: Any = dict(
        target=target, stdevs=EPS, n_samples=4000, tolerance=0.05, sampling=sampling, return_gradient=True
    )
    got = LayerSmoothHess(net, net[2]).attribute(x, generator=_g(), return_error=True, **kw)
    with torch.no_grad():
        h = net[:3](x)
    ref = SmoothHess(net[3:]).attribute(h, generator=_g(), return_error=True, **kw)
    assert got[0].shape == (4, 5, 5)
    _close_all(got, ref)


def test_layer_tolerance_with_per_example_additional_forward_args() -> None:
    net, x = _mlp(), _uneven_x()
    scale = torch.tensor([[1.0], [0.5], [2.0], [3.0]], dtype=torch.float64)

    def model(inp: Tensor, s: Tensor) -> Tensor:
        return net(inp) * s

    kw: Any = dict(target=[0, 2, 1, 1], stdevs=EPS, n_samples=4000, tolerance=0.05, return_error=True)
    got = LayerSmoothHess(model, net[2]).attribute(x, additional_forward_args=scale, generator=_g(), **kw)
    with torch.no_grad():
        h = net[:3](x)
    ref = SmoothHess(lambda a, s: net[3:](a) * s).attribute(
        h, additional_forward_args=scale, generator=_g(), **kw
    )
    _close_all(got, ref)


def _uneven_ids() -> Tensor:
    return torch.tensor([[1, 5, 7, 0], [3, 3, 9, 11], [2, 4, 6, 8]])


@pytest.mark.parametrize("target", [1, [0, 1, 1]])
@pytest.mark.parametrize("baselines", [None, 0])
def test_layer_tolerance_on_token_ids_with_a_token_mask_equals_smoothhess(
    target: Any, baselines: Any
) -> None:
    net, ids = _TokenNet(), _uneven_ids()
    mask = token_feature_mask(4, 3)
    kw: Any = dict(
        target=target, stdevs=EPS, n_samples=4000, tolerance=0.1, feature_mask=mask, return_gradient=True
    )
    lsh = LayerSmoothHess(net, net.emb)
    got = lsh.attribute(ids, baselines=baselines, generator=_g(), return_error=True, **kw)
    with torch.no_grad():
        e = net.emb(ids)
        base = None if baselines is None else net.emb(torch.full_like(ids, baselines))
    ref = SmoothHess(net.body).attribute(e, baselines=base, generator=_g(), return_error=True, **kw)
    assert got[0].shape == (3, 4, 4)
    _close_all(got, ref)


def test_layer_evaluator_subset_keeps_the_rows_and_leaves_the_original_cache() -> None:
    from captum_smoothhess.layer import _LayerEvaluator, layer_activation

    net, ids = _TokenNet(), _uneven_ids()
    act, _, _ = layer_activation(net, net.emb, (ids,), None, False, None)
    evaluate = _LayerEvaluator(net, net.emb, (ids,), act, [0, 1, 1], None, False, None)
    points = act[0].reshape(3, 1, 12).expand(3, 2, 12)
    full = evaluate(points)
    cache = dict(evaluate._copies)
    index = torch.tensor([2, 0])
    sub = evaluate.subset(index)
    assert torch.equal(sub.model_inputs[0], ids[index]) and sub.target == [1, 0]
    assert sub._copies is not evaluate._copies and not sub._copies
    _close(sub(points[index]), full[index])
    # The original (the one every later subset is cut from) is untouched.
    assert evaluate._copies.keys() == cache.keys() and evaluate.target == [0, 1, 1]
    assert torch.equal(evaluate._copies[2][0][0], cache[2][0][0])
    _close(evaluate(points), full)


# --------------------------------------------------------------------------- NeuronSmoothHess


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv1d(1, 2, 3)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.conv(x[:, None])).flatten(1))


@pytest.mark.parametrize(
    "selector, unit",
    [
        ((1, 2), lambda h: h[:, 1, 2]),
        ((0, slice(1, 3)), lambda h: h[:, 0, 1:3].sum(1)),
        (lambda h: h[:, 0, 0] * h[:, 1, 3], lambda h: h[:, 0, 0] * h[:, 1, 3]),
    ],
)
def test_neuron_selectors_equal_smoothhess_of_the_unit(selector: Any, unit: Any) -> None:
    net = _ConvNet().double()
    x = torch.randn(3, 6, generator=_g(7), dtype=torch.float64)
    got = NeuronSmoothHess(net, net.act).attribute(
        x, neuron_selector=selector, stdevs=1.0, n_samples=N, n_samples_batch_size=8, generator=_g()
    )
    ref = SmoothHess(lambda z: unit(net.act(net.conv(z[:, None])))).attribute(
        x, stdevs=1.0, n_samples=N, generator=_g()
    )
    assert got.shape == (3, 6, 6) and got.abs().sum() > 0
    _close(got, ref)


def test_neuron_int_selector_and_input_side() -> None:
    net, x = _mlp(), _x()
    got = NeuronSmoothHess(net, net[3]).attribute(
        x, neuron_selector=2, stdevs=EPS, n_samples=N, generator=_g()
    )
    ref = SmoothHess(lambda z: net[:4](z)[:, 2]).attribute(x, stdevs=EPS, n_samples=N, generator=_g())
    _close(got, ref)
    got_in = NeuronSmoothHess(net, net[3]).attribute(
        x, neuron_selector=4, stdevs=EPS, n_samples=N, generator=_g(), attribute_to_neuron_input=True
    )
    ref_in = SmoothHess(lambda z: net[:3](z)[:, 4]).attribute(x, stdevs=EPS, n_samples=N, generator=_g())
    _close(got_in, ref_in)
    with pytest.raises(ValueError, match=r"^neuron_selector"):
        NeuronSmoothHess(net, net[3]).attribute(x, neuron_selector=9, n_samples=4)


# --------------------------------------------------------------------------- baselines on SmoothHess


@pytest.mark.parametrize("baselines", [0.5, "tensor", "batch"])
def test_smoothhess_baselines_weight_the_dense_and_grouped_estimates(baselines: Any) -> None:
    net, x = _mlp(), _x()
    b = {
        "tensor": torch.linspace(-1, 1, 4, dtype=torch.float64),
        "batch": torch.randn(3, 4, generator=_g(1), dtype=torch.float64),
    }.get(baselines, baselines)
    sh = SmoothHess(net)
    dense = sh.attribute(x, target=2, stdevs=EPS, n_samples=N, generator=_g())
    w = x - (torch.as_tensor(b, dtype=torch.float64).expand_as(x))
    weighted = sh.attribute(x, target=2, stdevs=EPS, n_samples=N, generator=_g(), baselines=b)
    _close(weighted, w[:, :, None] * dense * w[:, None, :])
    mask = torch.tensor([0, 1, 1, 0])
    grouped = sh.attribute(
        x, target=2, stdevs=EPS, n_samples=N, generator=_g(), baselines=b, feature_mask=mask
    )
    m = nn.functional.one_hot(mask, 2).double()
    _close(grouped, m.T @ weighted @ m)


def test_smoothhess_tuple_baselines_and_factors() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(5, 1).double()

    def f(a: Tensor, b: Tensor) -> Tensor:
        return lin(torch.relu(torch.cat([a, b], 1) * 2)).sum(1) ** 2

    a, c = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64)
    sh = SmoothHess(f)
    base = (0.0, torch.ones(1, 2, dtype=torch.float64))
    w = torch.cat([a, c - 1], 1)
    plain = sh.attribute((a, c), stdevs=EPS, n_samples=N, generator=_g())
    got = sh.attribute((a, c), stdevs=EPS, n_samples=N, generator=_g(), baselines=base)
    flat = torch.cat([torch.cat(list(row), 2) for row in plain], 1)
    ref = w[:, :, None] * flat * w[:, None, :]
    _close(torch.cat([torch.cat(list(row), 2) for row in got], 1), ref)
    fac = sh.attribute((a, c), stdevs=EPS, n_samples=N, generator=_g(), baselines=base, output="factors")
    _close(torch.cat([torch.cat(list(row), 2) for row in fac.to_dense()], 1), ref)
    with pytest.raises(ValueError, match=r"^baselines"):
        sh.attribute((a, c), n_samples=4, baselines=(0.0,))
    with pytest.raises(ValueError, match=r"^baselines\[1\]"):
        sh.attribute((a, c), n_samples=4, baselines=(0.0, torch.zeros(3)))


# --------------------------------------------------------------------------- token helpers


def test_token_helpers_validate() -> None:
    assert token_feature_mask(2, 3).shape == (1, 2, 3)
    with pytest.raises(ValueError, match=r"^seq_len"):
        token_feature_mask(0, 3)
    with pytest.raises(ValueError, match=r"^word_ids"):
        word_feature_mask(torch.tensor([0, -1]), 2)
    with pytest.raises(ValueError, match=r"^matrix"):
        fold_interactions(torch.zeros(1, 3, 3), torch.tensor([0, 1]))


class _Pair(nn.Module):
    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.relu(a * b.sum(1, keepdim=True) + a).sum(1)


class _PairNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.inp = nn.Linear(4, 5)
        self.pair = _Pair()

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        return self.pair(h[:, :3], h[:, 3:])


def test_layer_input_with_two_tensor_arguments_is_a_tuple_layout_also_under_no_grad() -> None:
    net = _PairNet().double()
    x = _x()
    with torch.no_grad():
        got = LayerSmoothHess(net, net.pair).attribute(
            x, stdevs=EPS, n_samples=N, generator=_g(), attribute_to_layer_input=True
        )
        h = net.inp(x)
    ref = SmoothHess(net.pair).attribute((h[:, :3], h[:, 3:]), stdevs=EPS, n_samples=N, generator=_g())
    assert got[0][1].shape == (3, 3, 2)
    for i in range(2):
        for j in range(2):
            _close(got[i][j], ref[i][j])
