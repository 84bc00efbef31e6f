"""global_interactions: streamed means and standard errors over examples, inputs of every kind."""

from __future__ import annotations

import math
from typing import Any, List

import numpy as np
import pytest
import torch
from helpers import TokenNet, gen, make_one_hidden
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from captum_smoothhess import GlobalInteractions, LayerSmoothHess, SmoothHess, global_interactions
from captum_smoothhess._sampling import seed_from
from captum_smoothhess.global_interactions import _batch_generator
from captum_smoothhess.tokens import token_feature_mask

N, D = 40, 5
KW: dict[str, Any] = {"stdevs": 0.5, "n_samples": 64}


def _net(d: int = D, out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, out))


def _data(n: int = N, d: int = D, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = gen(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, 3, (n,), generator=g)


class Recorder:
    """Wraps a method and keeps every per-batch result (to check the streamed statistics)."""

    def __init__(self, method: SmoothHess) -> None:
        self.method = method
        self.results: List[Tensor] = []
        self.batch_sizes: List[int] = []

    def attribute(self, inputs: Tensor, target: Any = None, **kwargs: Any) -> Tensor:
        out = self.method.attribute(inputs, target=target, **kwargs)
        assert isinstance(out, Tensor)
        self.results.append(out.reshape(out.shape[0], -1))
        self.batch_sizes.append(inputs.shape[0])
        return out


def test_mean_mean_abs_and_stderr_are_those_of_the_per_example_results() -> None:
    net = _net()
    x, y = _data()
    rec = Recorder(SmoothHess(net))
    gi = global_interactions(rec, x, target=y, batch_size=7, generator=gen(3), **KW)
    assert isinstance(gi, GlobalInteractions)
    assert gi.n_examples == N and rec.batch_sizes == [7, 7, 7, 7, 7, 5]
    per = torch.cat(rec.results).reshape(N, D, D).double().numpy()
    torch.testing.assert_close(gi.mean, torch.from_numpy(per.mean(0)).float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        gi.mean_abs, torch.from_numpy(np.abs(per).mean(0)).float(), rtol=1e-5, atol=1e-7
    )
    stderr = per.std(0, ddof=1) / math.sqrt(N)
    torch.testing.assert_close(gi.stderr, torch.from_numpy(stderr).float(), rtol=1e-5, atol=1e-7)
    assert gi.mean.dtype == torch.float32 and bool((gi.stderr > 0).all())

    # A plain loop over the same batches with the documented per-batch seeds gives the same examples.
    seed = seed_from(gen(3))
    plain = []
    for i, start in enumerate(range(0, N, 7)):
        h = SmoothHess(net).attribute(
            x[start : start + 7], target=y[start : start + 7], generator=_batch_generator(seed, i), **KW
        )
        assert isinstance(h, Tensor)
        plain.append(h)
    torch.testing.assert_close(torch.cat(plain).mean(0), gi.mean, rtol=1e-5, atol=1e-7)


def test_mean_lies_within_its_standard_errors_of_the_closed_form() -> None:
    # One-hidden-layer ReLU net: the Gaussian-smoothed Hessian of every example is known exactly.
    # Examples close together, so that the standard error is mostly the Monte-Carlo noise.
    model = make_one_hidden(4, 6, seed=2)
    x = 0.05 * torch.randn(N, 4, generator=gen(4))
    exact = model.gaussian_hessian(x, 0.7).mean(0)
    gi = global_interactions(SmoothHess(model.net), x, stdevs=0.7, n_samples=400, generator=gen(5))
    z = ((gi.mean - exact) / gi.stderr).abs()
    assert float(z.max()) < 4.5, z
    # ... and the standard error is not vacuous: it is small next to the interactions.
    assert float(gi.stderr.max()) < 0.05 * float(exact.abs().max())


def test_dataloader_of_pairs_equals_tensor_inputs_with_target() -> None:
    net = _net()
    x, y = _data()
    ref = global_interactions(SmoothHess(net), x, target=y, batch_size=8, generator=gen(6), **KW)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    got = global_interactions(SmoothHess(net), loader, generator=gen(6), **KW)
    torch.testing.assert_close(got.mean, ref.mean)
    torch.testing.assert_close(got.stderr, ref.stderr)
    assert got.n_examples == N
    # An explicit target wins over the batches' labels; a list of plain tensors works too.
    fixed = global_interactions(SmoothHess(net), loader, target=2, generator=gen(6), **KW)
    plain = global_interactions(SmoothHess(net), list(x.split(8)), target=2, generator=gen(6), **KW)
    ones = global_interactions(SmoothHess(net), x, target=2, batch_size=8, generator=gen(6), **KW)
    torch.testing.assert_close(fixed.mean, ones.mean)
    torch.testing.assert_close(plain.mean, ones.mean)
    assert not torch.allclose(fixed.mean, ref.mean)
    # A per-example target list is sliced with the batches of an iterable as well.
    listed = global_interactions(
        SmoothHess(net), (b for b in x.split(8)), target=y.tolist(), generator=gen(6), **KW
    )
    torch.testing.assert_close(listed.mean, ref.mean)


def test_tuple_inputs_give_the_flat_matrix_over_the_concatenated_features() -> None:
    net = _net()
    x, y = _data()

    def two_inputs(a: Tensor, b: Tensor) -> Tensor:
        return net(torch.cat([a, b], dim=1))

    flat = global_interactions(SmoothHess(net), x, target=y, batch_size=16, generator=gen(7), **KW)
    parts = (x[:, :2], x[:, 2:])
    split = global_interactions(
        SmoothHess(two_inputs), parts, target=y, batch_size=16, generator=gen(7), **KW
    )
    assert split.mean.shape == (D, D)
    torch.testing.assert_close(split.mean, flat.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(split.stderr, flat.stderr, rtol=1e-5, atol=1e-6)
    # The same through a loader of ((x1, x2), y) batches.
    loader = DataLoader(TensorDataset(*parts, y), batch_size=16, collate_fn=lambda rows: _collate_pairs(rows))
    via_loader = global_interactions(SmoothHess(two_inputs), loader, generator=gen(7), **KW)
    torch.testing.assert_close(via_loader.mean, split.mean)


def _collate_pairs(rows: List[tuple[Tensor, Tensor, Tensor]]) -> tuple[tuple[Tensor, Tensor], Tensor]:
    a, b, y = (torch.stack(c) for c in zip(*rows))
    return (a, b), y


def test_image_inputs_and_feature_mask_groups() -> None:
    net = nn.Sequential(nn.Flatten(), _net(d=12))
    x = torch.randn(10, 1, 3, 4, generator=gen(8))
    dense = global_interactions(SmoothHess(net), x, target=0, batch_size=4, generator=gen(9), **KW)
    assert dense.mean.shape == (12, 12)
    mask = torch.arange(12).reshape(1, 3, 4) // 4  # the three rows
    grouped = global_interactions(
        SmoothHess(net), x, target=0, batch_size=4, feature_mask=mask, generator=gen(9), **KW
    )
    assert grouped.mean.shape == (3, 3) and grouped.n_examples == 10


def test_same_seed_same_result_different_seed_different() -> None:
    net = _net()
    x, y = _data(12)
    a = global_interactions(SmoothHess(net), x, target=y, batch_size=5, generator=gen(1), **KW)
    b = global_interactions(
        SmoothHess(net), x, target=y, batch_size=5, generator=gen(1), show_progress=True, **KW
    )
    c = global_interactions(SmoothHess(net), x, target=y, batch_size=5, generator=gen(2), **KW)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.stderr, b.stderr)
    assert not torch.equal(a.mean, c.mean)


def test_one_example_has_nan_stderr() -> None:
    x, y = _data(1)
    gi = global_interactions(SmoothHess(_net()), x, target=y, generator=gen(0), **KW)
    assert gi.n_examples == 1 and bool(gi.stderr.isnan().all()) and bool(gi.mean.isfinite().all())


def test_top_pairs_order_and_stderr() -> None:
    mean = torch.tensor(
        [[9.0, -5.0, 1.0, 0.5], [-5.0, 9.0, 3.0, -1.0], [1.0, 3.0, 9.0, -3.0], [0.5, -1.0, -3.0, 9.0]]
    )
    stderr = torch.arange(16.0).reshape(4, 4)
    gi = GlobalInteractions(mean, mean.abs(), stderr, 10)
    top = gi.top_pairs(4)
    # |values| 5, 3, 3 (tie: row-major order, (1, 2) before (2, 3)), then 1 (tie: (0, 2) before (1, 3)).
    assert top.values.tolist() == [-5.0, 3.0, -3.0, 1.0]
    assert list(zip(top.index_i.tolist(), top.index_j.tolist())) == [(0, 1), (1, 2), (2, 3), (0, 2)]
    assert top.stderr.tolist() == [1.0, 6.0, 11.0, 2.0]  # stderr[i, j] of each pair
    assert len(gi.top_pairs(100).values) == 6  # all pairs i < j
    with pytest.raises(ValueError, match=r"^k:"):
        gi.top_pairs(0)


def test_bad_arguments_name_themselves() -> None:
    net = _net()
    x, y = _data(6)
    sh = SmoothHess(net)
    with pytest.raises(ValueError, match=r"^batch_size:"):
        global_interactions(sh, x, target=y, batch_size=0)
    with pytest.raises(TypeError, match=r"^method:"):
        global_interactions(net, x, target=y)
    with pytest.raises(ValueError, match=r"^inputs:"):
        global_interactions(sh, x[:0], target=0)
    with pytest.raises(ValueError, match=r"^inputs:"):
        global_interactions(sh, [], target=0)
    with pytest.raises(TypeError, match=r"^inputs:"):
        global_interactions(sh, 3.0)
    with pytest.raises(TypeError, match=r"^inputs:"):
        global_interactions(sh, [(x, y, y)])
    with pytest.raises(ValueError, match=r"^target:"):
        global_interactions(sh, x, target=y[:4])
    with pytest.raises(ValueError, match=r"^target:"):
        global_interactions(sh, list(x.split(2)), target=y[:4].tolist(), **KW)
    with pytest.raises(TypeError, match=r"^generator:"):
        global_interactions(sh, x, target=y, generator=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^process_group:"):
        global_interactions(sh, x, target=y, process_group=None)
    with pytest.raises(ValueError, match=r"^return_gradient:"):
        global_interactions(sh, x, target=y, return_gradient=True)
    with pytest.raises(ValueError, match=r"^output:"):
        global_interactions(sh, x, target=y, output="factors")
    # The per-batch Monte-Carlo errors are not what is averaged: the standard errors are computed here.
    with pytest.raises(
        ValueError, match=r"^return_error: global_interactions reports its own standard errors"
    ):
        global_interactions(sh, x, target=y, return_error=True, **KW)
    with pytest.raises(ValueError, match=r"^tolerance: global_interactions reports its own standard errors"):
        global_interactions(sh, x, target=y, tolerance=0.1, **KW)
    with pytest.raises(ValueError, match=r"^tolerance:"):
        global_interactions(sh, list(x.split(2)), target=0, tolerance=0.1, **KW)
    # Falsy values ask for nothing and are passed through.
    quiet = global_interactions(sh, x, target=y, return_error=False, tolerance=None, generator=gen(0), **KW)
    plain = global_interactions(sh, x, target=y, generator=gen(0), **KW)
    torch.testing.assert_close(quiet.mean, plain.mean)
    with pytest.raises(ValueError, match=r"^n_samples:"):  # the method's own checks still apply
        global_interactions(sh, x, target=y, n_samples=3)


class _Gradients:
    def attribute(self, inputs: Tensor, target: Any = None) -> Tensor:
        return inputs.clone()


def test_a_method_returning_no_interactions_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"^method:"):
        global_interactions(_Gradients(), torch.randn(4, 3))


V, T, E = 12, 4, 3


def _token_data(n: int = 10) -> tuple[Tensor, Tensor]:
    g = gen(11)
    return torch.randint(0, V, (n, T), generator=g), torch.randint(0, 3, (n,), generator=g)


def _per_batch_mean(
    method: Any, x: Tensor, y: Tensor, batch: int, seed_gen: torch.Generator, **kw: Any
) -> Tensor:
    """The mean over examples of ``method.attribute`` on the batches, seeded as global_interactions does."""
    seed = seed_from(seed_gen)
    per = []
    for i, start in enumerate(range(0, x.shape[0], batch)):
        h = method.attribute(
            x[start : start + batch],
            target=y[start : start + batch],
            generator=_batch_generator(seed, i),
            **kw,
        )
        assert isinstance(h, Tensor)
        per.append(h.reshape(h.shape[0], -1).double())
    return torch.cat(per).mean(0)


def test_token_ids_through_a_layer_method_as_a_tensor_and_a_dataloader() -> None:
    net = TokenNet(V, T, E).eval()
    ids, y = _token_data()
    assert ids.dtype == torch.int64
    lsh = LayerSmoothHess(net, net.emb)
    kw: dict[str, Any] = {"stdevs": 0.3, "n_samples": 40, "feature_mask": token_feature_mask(T, E)}
    ref = _per_batch_mean(lsh, ids, y, 4, gen(12), **kw).reshape(T, T).float()

    tensor = global_interactions(lsh, ids, target=y, batch_size=4, generator=gen(12), **kw)
    assert tensor.n_examples == 10 and tensor.mean.shape == (T, T) and tensor.mean.dtype == torch.float32
    torch.testing.assert_close(tensor.mean, ref, rtol=1e-6, atol=1e-8)
    assert bool(tensor.stderr.isfinite().all()) and bool((tensor.mean_abs >= tensor.mean.abs() - 1e-6).all())

    loader = DataLoader(TensorDataset(ids, y), batch_size=4)
    via_loader = global_interactions(lsh, loader, generator=gen(12), **kw)
    assert via_loader.n_examples == 10
    torch.testing.assert_close(via_loader.mean, ref, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(via_loader.stderr, tensor.stderr)
    assert len(via_loader.top_pairs(3).values) == 3


def test_token_ids_without_a_mask_give_the_dense_embedding_interactions() -> None:
    # LayerSmoothHess returns (B, T, E, T, E): flattened over the activation, not over the (B, T) ids.
    net = TokenNet(V, T, E).eval()
    ids, y = _token_data(6)
    lsh = LayerSmoothHess(net, net.emb)
    kw: dict[str, Any] = {"stdevs": 0.3, "n_samples": 40}
    gi = global_interactions(lsh, ids, target=y, batch_size=4, generator=gen(13), **kw)
    assert gi.mean.shape == (T * E, T * E)
    ref = _per_batch_mean(lsh, ids, y, 4, gen(13), **kw).reshape(T * E, T * E).float()
    torch.testing.assert_close(gi.mean, ref, rtol=1e-6, atol=1e-8)


class _Split(nn.Module):
    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return h[:, :2], h[:, 2:]


class _TupleNet(nn.Module):
    """A layer with a tuple activation of 2 + 3 units, behind a 4-feature input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.inp = nn.Linear(4, 5)
        self.split = _Split()
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(5, 2))

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.split(self.inp(x))
        return self.head(torch.cat([a * b.sum(1, keepdim=True), b], dim=1))


def test_a_layer_with_a_tuple_activation_gives_the_flat_matrix_over_its_units() -> None:
    net = _TupleNet()
    x = torch.randn(6, 4, generator=gen(14))
    lsh = LayerSmoothHess(net, net.split)
    kw: dict[str, Any] = {"stdevs": 0.3, "n_samples": 40}
    gi = global_interactions(lsh, x, target=0, batch_size=4, generator=gen(15), **kw)
    assert gi.mean.shape == (5, 5)  # the 2 + 3 units of the activation, not the 4 input features
    seed = seed_from(gen(15))
    per = []
    for i, start in enumerate(range(0, 6, 4)):
        blocks = lsh.attribute(x[start : start + 4], target=0, generator=_batch_generator(seed, i), **kw)
        assert isinstance(blocks, tuple)
        b = blocks[0][0].shape[0]
        rows = [torch.cat([blk.reshape(b, blk.shape[1], -1) for blk in row], dim=2) for row in blocks]
        per.append(torch.cat(rows, dim=1).double())
    torch.testing.assert_close(gi.mean, torch.cat(per).mean(0).float(), rtol=1e-6, atol=1e-8)


def test_float_only_methods_refuse_token_ids_naming_inputs() -> None:
    net = TokenNet(V, T, E).eval()
    ids, y = _token_data(6)

    def on_floats(x: Tensor) -> Tensor:
        return net.body(x.reshape(x.shape[0], T, E))

    sh = SmoothHess(on_floats)
    with pytest.raises(TypeError, match=r"^inputs: expected a floating-point tensor, got dtype torch.int64"):
        global_interactions(sh, ids, target=y, **KW)
    with pytest.raises(TypeError, match=r"^inputs \(batch 0\): expected a floating-point tensor"):
        global_interactions(sh, DataLoader(TensorDataset(ids, y), batch_size=4), **KW)
    # A wrapper that is not a Captum attribution checks its inputs itself: the method's own error.
    with pytest.raises(TypeError, match=r"^inputs: expected a floating-point tensor"):
        global_interactions(Recorder(sh), ids, target=y, **KW)
    # Integer inputs stay refused for a layer method's non-integer kinds (complex values are no ids).
    lsh = LayerSmoothHess(net, net.emb)
    with pytest.raises(TypeError, match=r"^inputs: expected a floating-point tensor"):
        global_interactions(lsh, ids.to(torch.complex64), target=y, **KW)
