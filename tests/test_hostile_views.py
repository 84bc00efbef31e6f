"""Hostile-user checks of the dataset-level views, the plots and the token helpers.

Each test pins one defect found by feeding the public functions odd but realistic input: the
error must name the argument (not surface as a bare torch/numpy/matplotlib traceback), nothing
may silently come back NaN or truncated, and a failed plot must not leave a pyplot figure open.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from typing import Any, Callable

import numpy as np
import pytest
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from torch import Tensor, nn

from captum_smoothhess import SmoothHess, global_interactions
from captum_smoothhess.kernels import Gaussian
from captum_smoothhess.tokens import fold_interactions, token_feature_mask, word_feature_mask
from captum_smoothhess.visualization import (
    image_interaction_map,
    kernel_densities,
    top_interactions,
    visualize_image_interactions,
    visualize_interaction_network,
    visualize_interactions,
    visualize_token_interactions,
    visualize_top_pairs,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sym(d: int, seed: int = 0) -> Tensor:
    a = torch.randn(d, d, generator=_gen(seed))
    return a + a.T


class _Constant:
    """An interaction 'method' that returns a fixed per-example matrix (to probe the summation)."""

    def __init__(self, value: Tensor) -> None:
        self.value = value

    def attribute(self, inputs: Tensor, target: Any = None, **kwargs: Any) -> Tensor:
        return self.value.expand(inputs.shape[0], *self.value.shape).clone()


# ---------------------------------------------------------------- global_interactions


def test_global_interactions_refuses_non_finite_results_naming_method() -> None:
    h = torch.zeros(3, 3)
    h[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"^method: .*NaN or Inf.*batch 0"):
        global_interactions(_Constant(h), torch.randn(4, 3, generator=_gen(0)))


def test_global_interactions_integer_results_are_averaged_not_truncated() -> None:
    x = torch.randn(2, 3, generator=_gen(0))

    class Alternating:
        def __init__(self) -> None:
            self.calls = 0

        def attribute(self, inputs: Tensor, target: Any = None, **kwargs: Any) -> Tensor:
            self.calls += 1
            return torch.full((inputs.shape[0], 3, 3), self.calls, dtype=torch.long)

    gi = global_interactions(Alternating(), x, batch_size=1)
    assert gi.mean.is_floating_point()
    torch.testing.assert_close(gi.mean, torch.full((3, 3), 1.5, dtype=torch.float64))


def test_global_interactions_refuses_complex_results_naming_method() -> None:
    with pytest.raises(TypeError, match=r"^method: .*complex"):
        global_interactions(_Constant(torch.ones(3, 3, dtype=torch.complex64)), torch.randn(2, 3))


def _regression_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1), nn.Flatten(0))


def test_regression_pairs_with_float_labels_use_no_target() -> None:
    """A DataLoader of (x, y) with real-valued y (regression): y can never be a Captum target."""
    x, y = torch.randn(6, 4, generator=_gen(1)), torch.randn(6, generator=_gen(2))
    kw: dict[str, Any] = {"stdevs": 0.5, "n_samples": 8, "generator": _gen(3)}
    net = _regression_net()
    from_pairs = global_interactions(SmoothHess(net), [(x[:3], y[:3]), (x[3:], y[3:])], **kw)
    kw["generator"] = _gen(3)
    from_x = global_interactions(SmoothHess(net), [x[:3], x[3:]], **kw)
    torch.testing.assert_close(from_pairs.mean, from_x.mean)


def test_numpy_targets_are_taken_per_example_and_as_one_class() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(6, 4, generator=_gen(1)), torch.randint(0, 3, (6,), generator=_gen(2))
    kw: dict[str, Any] = {"stdevs": 0.5, "n_samples": 8, "batch_size": 4}
    ref = global_interactions(SmoothHess(net), x, target=y, generator=_gen(0), **kw)
    got = global_interactions(SmoothHess(net), x, target=y.numpy(), generator=_gen(0), **kw)
    torch.testing.assert_close(got.mean, ref.mean)
    one = global_interactions(SmoothHess(net), x, target=1, generator=_gen(0), **kw)
    got_one = global_interactions(SmoothHess(net), x, target=np.int64(1), generator=_gen(0), **kw)
    torch.testing.assert_close(got_one.mean, one.mean)


# ---------------------------------------------------------------- plots: arguments named


def _leaves_no_figure(call: Callable[[], Any], exc: type, match: str) -> None:
    before = set(plt.get_fignums())
    with pytest.raises(exc, match=match):
        call()
    leaked = set(plt.get_fignums()) - before
    for num in leaked:
        plt.close(num)
    assert not leaked, "a failed plot left a pyplot figure open"


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: visualize_interactions(_sym(3), cmap="no-such-map"), ValueError, "^cmap"),
        (lambda: visualize_interactions(_sym(3), cmap=3), TypeError, "^cmap"),
        (lambda: visualize_interactions(_sym(3), fig_size=(0, -1)), ValueError, "^fig_size"),
        (lambda: visualize_interactions(_sym(3), fig_size="big"), TypeError, "^fig_size"),
        (lambda: visualize_interaction_network(torch.ones(0, 0)), ValueError, "^interactions"),
        (lambda: visualize_interactions(torch.ones(1, 0, 0)), ValueError, "^interactions"),
        (
            lambda: visualize_image_interactions(
                torch.randn(1, 3, 3, 1, 3, 3), torch.rand(1, 3, 3), (0, 1, 1), method="foo"
            ),
            ValueError,
            "^method",
        ),
        (
            lambda: visualize_image_interactions(
                torch.randn(1, 3, 3, 1, 3, 3), torch.rand(1, 3, 3), (0, 1, 1), sign="foo"
            ),
            ValueError,
            "^sign",
        ),
        (
            lambda: visualize_image_interactions(
                torch.randn(1, 3, 3, 1, 3, 3), torch.rand(1, 3, 3), (0, 1, 1), method="masked_image"
            ),
            ValueError,
            "^sign",
        ),
        (
            lambda: visualize_image_interactions(
                torch.randn(1, 3, 3, 1, 3, 3), torch.rand(1, 3, 3), (0, 1, 1), outlier_perc=100
            ),
            ValueError,
            "^outlier_perc",
        ),
        (
            lambda: visualize_image_interactions(
                torch.randn(1, 3, 3, 1, 3, 3), torch.rand(1, 3, 3), (0, 1, 1), cmap="no-such-map"
            ),
            ValueError,
            "^cmap",
        ),
    ],
)
def test_bad_plot_arguments_are_named_and_leave_no_figure(
    call: Callable[[], Any], exc: type, match: str
) -> None:
    _leaves_no_figure(call, exc, match)


def test_figure_created_before_a_failure_inside_drawing_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever fails after pyplot made the figure (here the colour bar), the figure is closed."""

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("colorbar failed")

    monkeypatch.setattr(Figure, "colorbar", broken)
    _leaves_no_figure(lambda: visualize_interactions(_sym(3)), RuntimeError, "colorbar failed")


@pytest.mark.parametrize(
    "bad",
    [
        lambda fig, ax: (ax, fig),  # swapped
        lambda fig, ax: (fig, np.array([ax, ax])),  # plt.subplots(1, 2)
        lambda fig, ax: (fig, None),
    ],
)
def test_plt_fig_axis_of_the_wrong_kinds_is_named(bad: Callable[[Figure, Any], Any]) -> None:
    fig = Figure()
    ax = fig.subplots()
    with pytest.raises(TypeError, match=r"^plt_fig_axis"):
        visualize_top_pairs(_sym(3), plt_fig_axis=bad(fig, ax), use_pyplot=False)


def test_a_bare_axis_is_drawn_on_and_no_figure_is_made() -> None:
    fig = Figure()
    ax = fig.subplots()
    before = set(plt.get_fignums())
    out = visualize_interaction_network(_sym(4), plt_fig_axis=ax)
    assert out[0] is fig and out[1] is ax and len(ax.patches) > 0
    assert set(plt.get_fignums()) == before


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: top_interactions(torch.ones(3, 3, device="meta")), ValueError, "^interactions"),
        (lambda: top_interactions(torch.ones(3, 3, dtype=torch.complex64)), TypeError, "^interactions"),
        (lambda: top_interactions(np.ones((3, 3), dtype=complex)), TypeError, "^interactions"),
        (lambda: top_interactions(_sym(3), feature_names=5), TypeError, "^feature_names"),
        (lambda: top_interactions(_sym(3)).format(precision="x"), TypeError, "^precision"),
        (lambda: top_interactions(_sym(3)).format(precision=2.5), TypeError, "^precision"),
        (
            lambda: image_interaction_map(torch.randn(3, 4, 3, 4), (1, 2), image_shape=12),
            TypeError,
            "^image_shape",
        ),
        (
            lambda: image_interaction_map(torch.randn(1, 3, 3, 1, 3, 3), (0, 1.5, 1)),
            TypeError,
            "^feature_index",
        ),
        (lambda: image_interaction_map(torch.randn(1, 3, 3, 1, 3, 3), "012"), TypeError, "^feature_index"),
        (lambda: visualize_token_interactions(None, _sym(2), use_pyplot=False), TypeError, "^tokens"),
    ],
)
def test_bad_values_name_their_argument(call: Callable[[], Any], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_np_matrix_and_zero_dim_index_tensor_are_taken() -> None:
    table = top_interactions(np.matrix([[0.0, 2.0], [2.0, 0.0]]))
    assert [(r.i, r.j, r.value) for r in table] == [(0, 1, 2.0)]
    h = torch.arange(81.0).reshape(1, 3, 3, 1, 3, 3)
    np.testing.assert_array_equal(
        image_interaction_map(h, torch.tensor(4)), image_interaction_map(h, (0, 1, 1))
    )


def test_kernel_densities_takes_one_kernel_or_one_name() -> None:
    t = np.array([0.0, 1.0])
    ref = kernel_densities([Gaussian()], points=t)[1][0][1]
    for one in (Gaussian(), "gaussian"):
        _, curves = kernel_densities(one, points=t)
        assert len(curves) == 1
        np.testing.assert_allclose(curves[0][1], ref)


@pytest.mark.parametrize("method", ["alpha_scaling", "masked_image", "original_image"])
@pytest.mark.parametrize("channels", [1, 2])
def test_image_methods_draw_grey_and_two_channel_images(method: str, channels: int) -> None:
    h = _sym(9 * channels, seed=1).reshape(channels, 3, 3, channels, 3, 3)
    image = torch.rand(channels, 3, 3, generator=_gen(2))
    sign = "all" if method == "original_image" else "absolute_value"
    fig, ax = visualize_image_interactions(h, image, (0, 1, 1), method=method, sign=sign, use_pyplot=False)
    assert isinstance(fig, Figure) and len(ax.images) >= 1
    fig.canvas.draw()


def test_a_sign_with_nothing_to_show_warns_and_draws_the_image() -> None:
    """sign="positive" on a map with no positive entry: Captum cannot scale it (it asserts)."""
    h = -torch.ones(9, 9).reshape(1, 3, 3, 1, 3, 3)
    with pytest.warns(UserWarning, match="positive"):
        _, ax = visualize_image_interactions(
            h, torch.rand(1, 3, 3, generator=_gen(0)), (0, 1, 1), sign="positive", use_pyplot=False
        )
    assert len(ax.images) == 1


# ---------------------------------------------------------------- tokens


def test_word_ids_from_a_tokenizer_list_numpy_or_zero_dim_sizes() -> None:
    ref = word_feature_mask(torch.tensor([0, 1, 1, 2]), 2)
    torch.testing.assert_close(word_feature_mask([0, 1, 1, 2], 2), ref)
    torch.testing.assert_close(word_feature_mask(np.array([0, 1, 1, 2]), 2), ref)
    folded = fold_interactions(torch.ones(1, 4, 4), [0, 1, 1, 2])
    torch.testing.assert_close(folded, fold_interactions(torch.ones(1, 4, 4), torch.tensor([0, 1, 1, 2])))
    torch.testing.assert_close(token_feature_mask(torch.tensor(3), np.int64(2)), token_feature_mask(3, 2))


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: word_feature_mask([0, None, 1], 2), ValueError, "^word_ids: .*special tokens"),
        (lambda: word_feature_mask(torch.tensor([True, False]), 2), TypeError, "^word_ids"),
        (lambda: word_feature_mask(torch.tensor([0, 1], device="meta"), 2), ValueError, "^word_ids"),
        (lambda: word_feature_mask(torch.tensor([], dtype=torch.long), 2), ValueError, "^word_ids"),
        (lambda: word_feature_mask([0.5, 1.0], 2), TypeError, "^word_ids"),
        (lambda: fold_interactions(np.ones((1, 3, 3)), torch.tensor([0, 0, 1])), TypeError, "^matrix"),
        (
            lambda: fold_interactions(torch.ones(1, 3, 3, dtype=torch.bool), torch.tensor([0, 0, 1])),
            TypeError,
            "^matrix",
        ),
        (
            lambda: fold_interactions(torch.ones(1, 3, 3, device="meta"), torch.tensor([0, 0, 1])),
            ValueError,
            "^matrix",
        ),
        (lambda: token_feature_mask(2, 3, device="nonsense"), ValueError, "^device"),
        (lambda: token_feature_mask(torch.tensor(2.0), 3), TypeError, "^seq_len"),
    ],
)
def test_token_helpers_name_bad_arguments(call: Callable[[], Any], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        call()
