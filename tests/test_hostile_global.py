"""Hostile-user tests of global_interactions: loaders, labels, per-example arguments and failures.

Each test pins a defect found by running ``global_interactions`` the way users
feed it data: DataLoaders of ``(x, y)`` pairs for single-output models, methods
without a ``target``, per-example masks, baselines and forward arguments over
the whole dataset, shuffled loaders, worker processes after an exception, and
malformed batches.
"""

from __future__ import annotations

import multiprocessing
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
from helpers import TokenNet, gen, make_one_hidden
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from captum_smoothhess import LayerSmoothHess, NeuronSmoothHess, SmoothHess, global_interactions
from captum_smoothhess._sampling import seed_from
from captum_smoothhess.global_interactions import _batch_generator
from captum_smoothhess.tokens import word_feature_mask

EPS = 0.6
KW: Dict[str, Any] = {"stdevs": 0.5, "n_samples": 32}


def _multi(d: int = 4, out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, out)).eval()


def _reference(
    method: Any,
    batches: List[Tuple[Any, Dict[str, Any]]],
    seed_gen: torch.Generator,
    groups: Optional[int] = None,
) -> Tensor:
    """Mean over examples of ``method.attribute`` on ``(x, kwargs)`` batches, seeded as documented
    (batch ``i`` with ``_batch_generator(seed, i)``); group results zero-padded to ``groups``."""
    seed = seed_from(seed_gen)
    per = []
    for i, (x, kwargs) in enumerate(batches):
        h = method.attribute(x, generator=_batch_generator(seed, i), **kwargs)
        assert isinstance(h, Tensor)
        h = h.reshape(h.shape[0], int(h[0].numel() ** 0.5), -1).double()
        if groups is not None and h.shape[1] < groups:
            pad = groups - h.shape[1]
            h = torch.nn.functional.pad(h, (0, pad, 0, pad))
        per.append(h)
    return torch.cat(per).mean(0)


# --- Labels of single-output models (a binary classifier's logit, a regression) -------------------


def test_single_output_model_ignores_class_labels_of_a_loader() -> None:
    # A binary classifier with one logit, (B, 1), and 0/1 labels: the labels are not class indices of
    # its output, which needs no target. Before, labels 1 raised "target: ... does not select".
    model = make_one_hidden(4, 6, seed=2)
    x = 0.05 * torch.randn(24, 4, generator=gen(4))
    y = torch.randint(0, 2, (24,), generator=gen(5))
    sh = SmoothHess(model.net)
    ref = global_interactions(sh, x, batch_size=8, stdevs=EPS, n_samples=200, generator=gen(6))
    got = global_interactions(
        sh, DataLoader(TensorDataset(x, y), batch_size=8), stdevs=EPS, n_samples=200, generator=gen(6)
    )
    torch.testing.assert_close(got.mean, ref.mean, rtol=0, atol=0)
    torch.testing.assert_close(got.stderr, ref.stderr, rtol=0, atol=0)
    # ... and the result is the smoothed Hessian of the logit (closed form), within its standard errors.
    exact = model.gaussian_hessian(x, EPS).mean(0)
    assert float(((got.mean - exact) / got.stderr).abs().max()) < 4.5
    # Labels shaped (B, 1), bool labels, lists of ints: the same.
    for labels in (y[:, None], y.bool()):
        same = global_interactions(
            sh,
            DataLoader(TensorDataset(x, labels), batch_size=8),
            stdevs=EPS,
            n_samples=200,
            generator=gen(6),
        )
        torch.testing.assert_close(same.mean, ref.mean, rtol=0, atol=0)
    pairs = [(x[s : s + 8], y[s : s + 8].tolist()) for s in range(0, 24, 8)]
    listed = global_interactions(sh, pairs, stdevs=EPS, n_samples=200, generator=gen(6))
    torch.testing.assert_close(listed.mean, ref.mean, rtol=0, atol=0)


def test_regression_model_with_a_flat_output_and_integer_labels() -> None:
    # A regression model returning (B,) with integer-valued labels (counts): no target.
    net = nn.Sequential(_multi(out=1), nn.Flatten(0))
    x = torch.randn(10, 4, generator=gen(7))
    counts = torch.randint(0, 5, (10,), generator=gen(8))
    ref = global_interactions(SmoothHess(net), x, batch_size=4, generator=gen(9), **KW)
    got = global_interactions(
        SmoothHess(net), DataLoader(TensorDataset(x, counts), batch_size=4), generator=gen(9), **KW
    )
    torch.testing.assert_close(got.mean, ref.mean, rtol=0, atol=0)
    # Labels that are no class indices at all (strings) are never targets.
    words = [(x[s : s + 4], ["cat"] * len(x[s : s + 4])) for s in range(0, 10, 4)]
    named = global_interactions(SmoothHess(net), words, generator=gen(9), **KW)
    torch.testing.assert_close(named.mean, ref.mean, rtol=0, atol=0)


def test_single_output_model_in_training_mode_is_left_as_found() -> None:
    # The model is run once to see its output: on a private copy, so batch norm's statistics stay.
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(8, 4, generator=gen(10))
    y = torch.ones(8, dtype=torch.long)
    with pytest.warns(RuntimeWarning, match="training mode"):
        gi = global_interactions(SmoothHess(net), DataLoader(TensorDataset(x, y), batch_size=4), **KW)
    assert gi.n_examples == 8 and net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_class_labels_of_a_multi_output_model_are_its_targets() -> None:
    net = _multi(out=2)
    x = torch.randn(12, 4, generator=gen(11))
    y = torch.randint(0, 2, (12,), generator=gen(12))
    ref = global_interactions(SmoothHess(net), x, target=y, batch_size=4, generator=gen(13), **KW)
    # bool labels (a binary task with two logits) and (B, 1) labels are class indices too.
    for labels in (y.bool(), y[:, None], y.int()):
        got = global_interactions(
            SmoothHess(net), DataLoader(TensorDataset(x, labels), batch_size=4), generator=gen(13), **KW
        )
        torch.testing.assert_close(got.mean, ref.mean, rtol=0, atol=0)


def test_labels_the_output_does_not_have_say_they_came_from_the_batches() -> None:
    net = _multi(out=3)
    x = torch.randn(8, 4, generator=gen(14))
    y = torch.tensor([0, 1, 2, 7, 0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"^target: is None, so the labels of batch 0 were taken as class"):
        global_interactions(SmoothHess(net), DataLoader(TensorDataset(x, y), batch_size=4), **KW)


def test_a_failing_model_raises_once_and_is_run_once() -> None:
    calls = []

    class Failing(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            calls.append(x.shape[0])
            raise KeyError("the user's own error")

    x = torch.randn(8, 4, generator=gen(15))
    loader = DataLoader(TensorDataset(x, torch.zeros(8, dtype=torch.long)), batch_size=4)
    with pytest.raises(KeyError, match="the user's own error"):
        global_interactions(SmoothHess(Failing()), loader, **KW)
    assert calls == [4]


# --- Methods without a target ----------------------------------------------------------------------


def test_neuron_method_takes_no_target_and_ignores_the_labels() -> None:
    # NeuronSmoothHess.attribute has no `target`: before, every call raised a TypeError.
    net = _multi()
    x = torch.randn(10, 4, generator=gen(16))
    y = torch.randint(0, 3, (10,), generator=gen(17))
    nsh = NeuronSmoothHess(net, net[1])
    kw: Dict[str, Any] = dict(KW, neuron_selector=3)
    ref = _reference(nsh, [(x[s : s + 4], kw) for s in range(0, 10, 4)], gen(18))
    gi = global_interactions(nsh, x, batch_size=4, generator=gen(18), **kw)
    torch.testing.assert_close(gi.mean, ref.float(), rtol=1e-6, atol=1e-8)
    via_loader = global_interactions(
        nsh, DataLoader(TensorDataset(x, y), batch_size=4), generator=gen(18), **kw
    )
    torch.testing.assert_close(via_loader.mean, gi.mean, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^target: NeuronSmoothHess.attribute takes no target"):
        global_interactions(nsh, x, target=0, **kw)


# --- Per-example feature masks, baselines and forward arguments over the dataset --------------------


class _Recorder:
    """Keeps each batch's inputs, keyword arguments and per-example results."""

    def __init__(self, method: SmoothHess) -> None:
        self.method = method
        self.calls: List[Tuple[Tensor, Dict[str, Any], Tensor]] = []

    def attribute(self, inputs: Tensor, target: Any = None, **kwargs: Any) -> Tensor:
        out = self.method.attribute(inputs, target=target, **kwargs)
        assert isinstance(out, Tensor)
        self.calls.append((inputs, kwargs, out))
        return out


def _masks(n: int) -> Tensor:
    """Per-example groups of 4 features: three patterns, the last one using 3 groups, the others 2."""
    patterns = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0], [0, 1, 2, 2]])
    return patterns[torch.arange(n) * 3 // n]


def test_per_example_masks_and_baselines_give_the_grouped_taylor_terms() -> None:
    # f = sum_k a_k relu(w_k x + b_k): example n's group value is M_n^T diag(w_n) H_n diag(w_n) M_n,
    # H_n the closed-form smoothed Hessian, w_n = x_n - baseline_n. Before: "feature_mask: shape (N, 4)
    # does not fit input of shape (B, 4)".
    model = make_one_hidden(4, 6, seed=3)
    n = 24
    x = torch.randn(n, 4, generator=gen(19))
    base = 0.3 * torch.randn(n, 4, generator=gen(20))
    masks = _masks(n)
    rec = _Recorder(SmoothHess(model.net))
    gi = global_interactions(
        rec, x, batch_size=5, feature_mask=masks, baselines=base, stdevs=EPS, n_samples=600, generator=gen(21)
    )
    assert gi.mean.shape == (3, 3) and gi.n_examples == n
    # Every call got its examples' rows (the last batch has 4).
    assert [c[0].shape[0] for c in rec.calls] == [5, 5, 5, 5, 4]
    start = 0
    for inputs, kwargs, _ in rec.calls:
        stop = start + inputs.shape[0]
        assert torch.equal(kwargs["feature_mask"], masks[start:stop])
        assert torch.equal(kwargs["baselines"], base[start:stop])
        start = stop
    w = x - base
    one_hot = torch.nn.functional.one_hot(masks, 3).float()  # (n, 4, 3), unused groups zero
    exact = torch.einsum("nig,ni,nij,nj,njh->ngh", one_hot, w, model.gaussian_hessian(x, EPS), w, one_hot)
    est = torch.cat(
        [torch.nn.functional.pad(c[2], (0, 3 - c[2].shape[1], 0, 3 - c[2].shape[1])) for c in rec.calls]
    )
    torch.testing.assert_close(gi.mean, est.mean(0), rtol=1e-5, atol=1e-6)
    # The mean against the mean of the exact values, in units of the Monte-Carlo standard error.
    resid = (est - exact).double()
    mc_stderr = resid.std(0) / n**0.5 + 1e-12
    assert float(((gi.mean - exact.mean(0)) / mc_stderr).abs().max()) < 4.5
    # ... which tells the examples' own masks from misaligned ones (rolled by one batch).
    rolled = torch.nn.functional.one_hot(masks.roll(5, 0), 3).float()
    wrong = torch.einsum("nig,ni,nij,nj,njh->ngh", rolled, w, model.gaussian_hessian(x, EPS), w, rolled)
    assert float(((gi.mean - wrong.mean(0)) / mc_stderr).abs().max()) > 10
    # Batches of the first two patterns have 2 groups: their third row and column are zero.
    assert rec.calls[0][2].shape[1:] == (2, 2)


def test_per_example_arguments_through_a_loader_and_a_list_of_batches() -> None:
    net = _multi()
    x = torch.randn(10, 4, generator=gen(22))
    y = torch.randint(0, 3, (10,), generator=gen(23))
    masks = _masks(10)
    base = 0.1 * torch.randn(10, 4, generator=gen(24))
    sh = SmoothHess(net)
    kw: Dict[str, Any] = dict(KW, feature_mask=masks, baselines=base)
    batches = [
        (
            x[s : s + 4],
            dict(KW, target=y[s : s + 4], feature_mask=masks[s : s + 4], baselines=base[s : s + 4]),
        )
        for s in range(0, 10, 4)
    ]
    ref = _reference(sh, batches, gen(25), groups=3).float()
    tensor = global_interactions(sh, x, target=y, batch_size=4, generator=gen(25), **kw)
    torch.testing.assert_close(tensor.mean, ref, rtol=1e-6, atol=1e-7)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    torch.testing.assert_close(global_interactions(sh, loader, generator=gen(25), **kw).mean, tensor.mean)
    pairs = [(x[s : s + 4], y[s : s + 4]) for s in range(0, 10, 4)]
    torch.testing.assert_close(global_interactions(sh, pairs, generator=gen(25), **kw).mean, tensor.mean)
    # A tuple of inputs: one mask and one baseline per input, each sliced.
    two = SmoothHess(lambda a, b: net(torch.cat([a, b], dim=1)))
    parts = (x[:, :2], x[:, 2:])
    split = global_interactions(
        two,
        parts,
        target=y,
        batch_size=4,
        generator=gen(25),
        feature_mask=(masks[:, :2], masks[:, 2:]),
        baselines=(base[:, :2], base[:, 2:]),
        **KW,
    )
    torch.testing.assert_close(split.mean, tensor.mean, rtol=1e-5, atol=1e-6)


def test_shared_and_per_batch_arguments_are_passed_unchanged() -> None:
    net = _multi()
    x = torch.randn(12, 4, generator=gen(26))
    sh = SmoothHess(net)
    shared = torch.tensor([[0, 0, 1, 1]])
    rec = _Recorder(sh)
    global_interactions(rec, x, target=0, batch_size=4, feature_mask=shared, baselines=0.5, **KW)
    assert all(c[1]["feature_mask"] is shared and c[1]["baselines"] == 0.5 for c in rec.calls)
    # A (B, ...) mask for batches of B examples (Captum's per-batch form) still fits every batch.
    per_batch = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]])
    rec = _Recorder(sh)
    global_interactions(rec, x, target=0, batch_size=4, feature_mask=per_batch, **KW)
    assert all(c[1]["feature_mask"] is per_batch for c in rec.calls)
    # Where the number of examples is not known before the run (a generator), nothing is sliced.
    with pytest.raises(ValueError, match=r"^feature_mask: shape \(12, 4\) does not fit"):
        global_interactions(sh, (b for b in x.split(4)), target=0, feature_mask=_masks(12), **KW)


def test_per_example_additional_forward_args_are_sliced() -> None:
    # Captum's additional tensors are batch first: (N, 1) per-example scales, before refused by the model.
    net = _multi()
    x = torch.randn(10, 4, generator=gen(27))
    scale = 0.5 + torch.rand(10, 1, generator=gen(28))

    def scaled(a: Tensor, s: Tensor, flag: str) -> Tensor:
        assert flag == "on"
        return net(a * s)

    sh = SmoothHess(scaled)
    batches = [
        (x[s : s + 4], dict(KW, target=1, additional_forward_args=(scale[s : s + 4], "on")))
        for s in range(0, 10, 4)
    ]
    ref = _reference(sh, batches, gen(29)).float()
    gi = global_interactions(
        sh, x, target=1, batch_size=4, additional_forward_args=(scale, "on"), generator=gen(29), **KW
    )
    torch.testing.assert_close(gi.mean, ref, rtol=1e-6, atol=1e-8)


V, T, E = 12, 5, 3


def test_per_example_word_masks_through_a_layer_method() -> None:
    # Each sentence has its own word boundaries: word_feature_mask gives an (N, T, E) mask, and a
    # batch whose sentences have fewer words gets zero rows for the words it lacks.
    net = TokenNet(V, T, E).eval()
    ids = torch.randint(0, V, (6, T), generator=gen(30))
    word_ids = torch.tensor(
        [[0, 0, 1, 1, 2], [0, 1, 1, 1, 2], [0, 0, 0, 1, 1], [0, 1, 1, 2, 3]] + [[0, 1, 2, 3, 3]] * 2
    )
    masks = word_feature_mask(word_ids, E)
    pad_ids = torch.zeros(6, T, dtype=torch.long)
    lsh = LayerSmoothHess(net, net.emb)
    kw: Dict[str, Any] = {"stdevs": 0.3, "n_samples": 32}
    batches = [
        (ids[s : s + 3], dict(kw, target=2, feature_mask=masks[s : s + 3], baselines=pad_ids[s : s + 3]))
        for s in (0, 3)
    ]
    ref = _reference(lsh, batches, gen(31), groups=4).float()
    gi = global_interactions(
        lsh, ids, target=2, batch_size=3, feature_mask=masks, baselines=pad_ids, generator=gen(31), **kw
    )
    assert gi.mean.shape == (4, 4)
    torch.testing.assert_close(gi.mean, ref, rtol=1e-6, atol=1e-8)
    assert float(gi.mean_abs[3].abs().sum()) > 0  # word 3 exists in the second batch only


def test_a_shuffling_loader_refuses_per_example_arguments() -> None:
    # Rows in dataset order cannot be matched to shuffled batches: before, the target was silently
    # applied to the wrong examples.
    net = _multi()
    x = torch.randn(8, 4, generator=gen(32))
    y = torch.randint(0, 3, (8,), generator=gen(33))
    loader = DataLoader(TensorDataset(x), batch_size=4, shuffle=True, generator=gen(34))
    with pytest.raises(ValueError, match=r"^target: .*RandomSampler reorders \(or splits\) them"):
        global_interactions(SmoothHess(net), loader, target=y, **KW)
    with pytest.raises(ValueError, match=r"^feature_mask: .*RandomSampler reorders \(or splits\) them"):
        global_interactions(SmoothHess(net), loader, target=0, feature_mask=_masks(8), **KW)
    # Labels in the batches follow the shuffle: fine.
    shuffled = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, generator=gen(34))
    assert global_interactions(SmoothHess(net), shuffled, **KW).n_examples == 8


def test_per_example_rows_must_match_the_examples_the_loader_yields() -> None:
    # A collate function dropping one example per batch: the sampler's 8 examples become 6.
    net = _multi()
    x = torch.randn(8, 4, generator=gen(35))

    def drop_last_row(rows: List[Tuple[Tensor]]) -> Tensor:
        return torch.stack([r[0] for r in rows[:-1]])

    loader = DataLoader(TensorDataset(x), batch_size=4, collate_fn=drop_last_row)
    with pytest.raises(ValueError, match=r"^baselines: has 8 rows \(one per example\) for the 6 examples"):
        global_interactions(SmoothHess(net), loader, target=0, baselines=torch.zeros(8, 4), **KW)


# --- Loader state after an exception ---------------------------------------------------------------


def test_loader_workers_stop_when_the_model_raises_midway() -> None:
    # The exception's traceback kept the loader's iterator, and so its worker processes, alive for as
    # long as the user held the exception (in a notebook: until the next error).
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    params = [p.detach().clone() for p in net.parameters()]
    calls = []

    def flaky(x: Tensor) -> Tensor:
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("model failed on batch 1")
        return net(x)

    x = torch.randn(16, 4, generator=gen(36))
    loader = DataLoader(TensorDataset(x), batch_size=4, num_workers=1, multiprocessing_context="fork")
    before = set(multiprocessing.active_children())
    held: List[BaseException] = []
    try:
        global_interactions(
            SmoothHess(flaky), loader, target=0, stdevs=0.5, n_samples=2, n_samples_batch_size=2
        )
    except RuntimeError as err:
        held.append(err)  # the user keeps the exception (and its traceback)
        assert set(multiprocessing.active_children()) <= before
    assert len(held) == 1 and str(held[0]) == "model failed on batch 1"
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), params))
    # The loader works again afterwards.
    assert sum(b[0].shape[0] for b in loader) == 16


# --- Arguments and batches ---------------------------------------------------------------------------


def test_show_progress_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match=r"^show_progress: expected True or False"):
        global_interactions(SmoothHess(_multi()), torch.randn(4, 4), target=0, show_progress="no", **KW)


def test_batches_without_a_batch_dimension_name_the_batch() -> None:
    sh = SmoothHess(_multi())
    with pytest.raises(ValueError, match=r"^inputs \(batch 1\): expected batch-first tensors"):
        global_interactions(sh, [torch.randn(2, 4), torch.tensor(1.0)], target=0, **KW)
    with pytest.raises(ValueError, match=r"^inputs \(batch 0\): expected batch-first tensors"):
        global_interactions(sh, [((), torch.zeros(2))], target=0, **KW)


def test_dict_batches_and_consumed_generators_say_what_to_do() -> None:
    sh = SmoothHess(_multi())
    x = torch.randn(4, 4, generator=gen(37))
    with pytest.raises(TypeError, match=r"^inputs: batch 0 is a dict; .*map batches of dicts to pairs"):
        global_interactions(sh, [{"x": x, "y": torch.zeros(4)}], target=0, **KW)
    batches = (b for b in x.split(2))
    global_interactions(sh, batches, target=0, **KW)
    with pytest.raises(ValueError, match=r"^inputs: no examples .*already consumed"):
        global_interactions(sh, batches, target=0, **KW)


class _Cast:
    """A method returning the interactions of each batch in that batch's dtype."""

    def attribute(self, inputs: Tensor, target: Any = None, **kwargs: Any) -> Tensor:
        return torch.eye(inputs.shape[1], dtype=inputs.dtype).expand(inputs.shape[0], -1, -1)


def test_batches_of_several_dtypes_give_the_promoted_dtype() -> None:
    # Before: the first batch's dtype, float16 for a float16 batch followed by float64 ones.
    batches = [torch.ones(2, 3, dtype=torch.float16), torch.ones(3, 3, dtype=torch.float64)]
    gi = global_interactions(_Cast(), batches)
    assert gi.mean.dtype == gi.stderr.dtype == gi.mean_abs.dtype == torch.float64
    assert isinstance(gi.n_examples, int) and gi.n_examples == 5
    assert global_interactions(_Cast(), batches[:1]).mean.dtype == torch.float16


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype: torch.dtype) -> None:
    net = _multi()
    x = torch.randn(9, 4, generator=gen(38))
    ref = global_interactions(SmoothHess(net), x, target=1, batch_size=4, generator=gen(39), **KW)
    half = _multi().to(dtype)
    gi = global_interactions(SmoothHess(half), x.to(dtype), target=1, batch_size=4, generator=gen(39), **KW)
    assert gi.mean.dtype == gi.stderr.dtype == dtype and gi.n_examples == 9
    assert bool(gi.stderr.isfinite().all())
    scale = float(ref.mean_abs.max())
    torch.testing.assert_close(gi.mean.float(), ref.mean, rtol=0, atol=0.1 * scale)


def test_last_batch_of_one_and_a_batch_larger_than_the_data() -> None:
    net = _multi()
    x = torch.randn(9, 4, generator=gen(40))
    rec = _Recorder(SmoothHess(net))
    gi = global_interactions(rec, x, target=0, batch_size=4, generator=gen(41), **KW)
    assert [c[0].shape[0] for c in rec.calls] == [4, 4, 1] and gi.n_examples == 9
    rec = _Recorder(SmoothHess(net))
    big = global_interactions(rec, x, target=0, batch_size=100, generator=gen(41), **KW)
    assert [c[0].shape[0] for c in rec.calls] == [9] and big.n_examples == 9


@pytest.mark.parametrize("layer", [nn.BatchNorm1d(8), nn.Dropout(0.2)], ids=["batch_norm", "dropout"])
def test_training_mode_warnings_point_at_the_users_call(layer: nn.Module) -> None:
    # The method runs inside global_interactions: its warning names the line that called that.
    net = nn.Sequential(nn.Linear(4, 8), layer, nn.ReLU(), nn.Linear(8, 3)).train()
    x = torch.randn(16, 4, generator=gen(0))
    with pytest.warns(RuntimeWarning, match="training mode") as record:
        global_interactions(SmoothHess(net), x, target=0, batch_size=8, n_samples=16, generator=gen(1))
    assert {w.filename for w in record if "training mode" in str(w.message)} == {__file__}
