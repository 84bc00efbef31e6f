"""Visualisation: the data drawn, the colour scales, the tables and the errors."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from captum_smoothhess import GlobalInteractions
from captum_smoothhess.kernels import Gaussian, Hyperbolic, Poisson, Rect, Sigmoid
from captum_smoothhess.visualization import (
    Interaction,
    InteractionTable,
    image_interaction_map,
    kernel_densities,
    top_interactions,
    visualize_image_interactions,
    visualize_interaction_network,
    visualize_interactions,
    visualize_kernels,
    visualize_token_interactions,
    visualize_top_pairs,
)


def _sym(d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return a + a.T


def _hand_matrix() -> torch.Tensor:
    # Off-diagonal pairs: (0,1)=-5, (0,2)=1, (0,3)=0.5, (1,2)=3, (1,3)=-0.1, (2,3)=4; big diagonal.
    h = torch.tensor(
        [
            [9.0, -5.0, 1.0, 0.5],
            [-5.0, -8.0, 3.0, -0.1],
            [1.0, 3.0, 7.0, 4.0],
            [0.5, -0.1, 4.0, 0.0],
        ]
    )
    return h


# ---------------------------------------------------------------- top_interactions


def test_top_interactions_hand_matrix() -> None:
    table = top_interactions(_hand_matrix(), k=3, feature_names=["a", "b", "c", "d"])
    assert isinstance(table, InteractionTable)
    assert all(isinstance(row, Interaction) for row in table)
    assert [(r.i, r.j, r.name_i, r.name_j, r.value) for r in table] == [
        (0, 1, "a", "b", -5.0),
        (2, 3, "c", "d", 4.0),
        (1, 2, "b", "c", 3.0),
    ]


def test_top_interactions_k_larger_than_pairs_and_default_names() -> None:
    table = top_interactions(_hand_matrix().numpy(), k=100)
    assert len(table) == 6  # 4 * 3 / 2 pairs, diagonal never listed
    assert all(r.i < r.j for r in table)
    assert [abs(r.value) for r in table] == sorted((abs(r.value) for r in table), reverse=True)
    assert table[-1].name_i == "1" and table[-1].name_j == "3" and table[-1].value == pytest.approx(-0.1)


def test_top_interactions_symmetrises_and_accepts_batch_of_one() -> None:
    h = torch.zeros(1, 3, 3)
    h[0, 0, 2], h[0, 2, 0] = 2.0, 0.0  # asymmetric: average is 1
    h[0, 1, 2] = h[0, 2, 1] = -0.5
    table = top_interactions(h, k=1)
    assert (table[0].i, table[0].j, table[0].value) == (0, 2, 1.0)


def test_top_interactions_image_shaped_names() -> None:
    h = torch.zeros(1, 2, 2, 1, 2, 2)
    h[0, 0, 1, 0, 1, 0] = h[0, 1, 0, 0, 0, 1] = 3.0
    row = top_interactions(h, k=1)[0]
    assert (row.i, row.j) == (1, 2)
    assert (row.name_i, row.name_j) == ("(0, 0, 1)", "(0, 1, 0)")


def test_interaction_table_formats() -> None:
    table = top_interactions(_hand_matrix(), k=2, feature_names=["age", "dose", "c", "d"])
    text = str(table)
    lines = text.splitlines()
    assert len(lines) == 4 and "feature i" in lines[0]
    assert "age" in lines[2] and "dose" in lines[2] and "-5" in lines[2]
    md = table.format("markdown")
    assert md.splitlines()[1].startswith("|---")
    assert md.count("\n") == 3
    assert str(table[0]) == "age x dose: -5"
    with pytest.raises(ValueError, match="style"):
        table.format("html")


@pytest.mark.parametrize(
    ("kwargs", "match", "exc"),
    [
        ({"interactions": torch.zeros(3, 4)}, "interactions", ValueError),
        ({"interactions": torch.zeros(2, 3, 3)}, "interactions", ValueError),
        ({"interactions": torch.full((2, 2), math.nan)}, "interactions", ValueError),
        ({"interactions": [[1.0, 0.0], [0.0, 1.0]]}, "interactions", TypeError),
        ({"interactions": torch.zeros(3, 3), "k": 0}, "k", ValueError),
        ({"interactions": torch.zeros(3, 3), "feature_names": ["a", "b"]}, "feature_names", ValueError),
    ],
)
def test_top_interactions_errors(kwargs: dict, match: str, exc: type) -> None:
    kwargs.setdefault("k", 2)
    with pytest.raises(exc, match=match):
        top_interactions(**kwargs)


# ---------------------------------------------------------------- matrix heatmap


def test_visualize_interactions_types_and_centred_norm() -> None:
    h = _sym(5) + 3.0  # mostly positive: the scale must still be centred at zero
    fig, ax = visualize_interactions(h, use_pyplot=False)
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    norm = ax.images[0].norm
    assert norm.vmin == pytest.approx(-norm.vmax)
    assert norm.vmax == pytest.approx(np.abs(h).max())
    assert norm(0.0) == pytest.approx(0.5)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), h)


def test_visualize_interactions_clipping_sets_limits() -> None:
    h = _sym(8, seed=1)
    h[0, 1] = h[1, 0] = 100.0  # an outlier
    _, ax_full = visualize_interactions(h, use_pyplot=False)
    _, ax_clip = visualize_interactions(h, clip_percentile=90, use_pyplot=False)
    expected = np.percentile(np.abs(h), 90)
    assert ax_full.images[0].norm.vmax == pytest.approx(100.0)
    assert ax_clip.images[0].norm.vmax == pytest.approx(expected)
    assert ax_clip.images[0].norm.vmin == pytest.approx(-expected)
    assert expected < 100.0


def test_visualize_interactions_hidden_diagonal_sets_scale_off_diagonal() -> None:
    h = _hand_matrix()
    _, ax = visualize_interactions(h, show_diagonal=False, use_pyplot=False)
    assert ax.images[0].norm.vmax == pytest.approx(5.0)  # not the diagonal's 9
    data = ax.images[0].get_array()
    assert bool(np.all(np.ma.getmaskarray(data)[np.diag_indices(4)]))


def test_visualize_interactions_labels_and_top_k() -> None:
    names = ["a", "b", "c", "d"]
    fig, ax = visualize_interactions(_hand_matrix()[None], names, top_k=2, title="T", use_pyplot=False)
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert ax.get_title() == "T" and ax.get_xlabel() == "feature" and ax.get_ylabel() == "feature"
    texts = {(t.get_position(), t.get_text()) for t in ax.texts}
    assert texts == {((1, 0), "-5"), ((3, 2), "4")}  # (x=j, y=i) of the two strongest pairs
    assert len(ax.patches) == 4  # both symmetric cells of each pair outlined
    assert len(fig.axes) == 2  # the colour bar
    assert fig.axes[1].get_ylabel() == "interaction"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"interactions": torch.zeros(3, 4)}, "interactions"),
        ({"interactions": torch.zeros(2, 3, 3)}, "interactions"),
        ({"interactions": torch.zeros(3, 3), "feature_names": ["a"]}, "feature_names"),
        ({"interactions": torch.zeros(3, 3), "clip_percentile": 0}, "clip_percentile"),
        ({"interactions": torch.zeros(3, 3), "clip_percentile": 101}, "clip_percentile"),
        ({"interactions": torch.zeros(3, 3), "top_k": -1}, "top_k"),
    ],
)
def test_visualize_interactions_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        visualize_interactions(**kwargs, use_pyplot=False)


def test_visualize_interactions_all_zero_is_drawn() -> None:
    _, ax = visualize_interactions(torch.zeros(3, 3), use_pyplot=False)
    assert ax.images[0].norm.vmin == -ax.images[0].norm.vmax > -math.inf


def test_plt_fig_axis_is_used() -> None:
    fig = Figure()
    ax = fig.subplots()
    out = visualize_interactions(_hand_matrix(), plt_fig_axis=(fig, ax), use_pyplot=False)
    assert out[0] is fig and out[1] is ax


# ---------------------------------------------------------------- image interactions


def _image_hessian(c: int = 2, hgt: int = 3, wid: int = 4) -> torch.Tensor:
    """H[i, j] = 1000 * flat(i) + flat(j): every row is recognisable."""
    d = c * hgt * wid
    i = torch.arange(d, dtype=torch.float64)
    return (1000 * i[:, None] + i[None, :]).reshape(c, hgt, wid, c, hgt, wid)


def test_image_interaction_map_picks_row_and_sums_channels() -> None:
    h = _image_hessian()
    index = (1, 2, 3)
    flat = 1 * 12 + 2 * 4 + 3
    row = (1000 * flat + np.arange(24, dtype=np.float64)).reshape(2, 3, 4)
    expected = row.sum(axis=0)
    got_all = image_interaction_map(h, index, exclude_self=False)
    np.testing.assert_allclose(got_all, expected)
    # Flat index and negative indices name the same feature.
    np.testing.assert_allclose(image_interaction_map(h, flat, exclude_self=False), expected)
    np.testing.assert_allclose(image_interaction_map(h, (-1, -1, -1), exclude_self=False), expected)
    # Without self: only the feature's own entry (channel 1 of pixel (2, 3)) drops out.
    got = image_interaction_map(h, index)
    diff = expected - got
    assert diff[2, 3] == pytest.approx(1000 * flat + flat)
    diff[2, 3] = 0
    assert np.all(diff == 0)


def test_image_interaction_map_batch_and_grayscale() -> None:
    h = _image_hessian(1, 3, 4)
    np.testing.assert_allclose(
        image_interaction_map(h[None], (0, 1, 2)), image_interaction_map(h.reshape(3, 4, 3, 4), (1, 2))
    )


def test_visualize_image_interactions_draws_the_map() -> None:
    h = _image_hessian()
    image = torch.rand(2, 3, 4)
    fig, ax = visualize_image_interactions(
        h[None], image, (0, 1, 2), method="heat_map", outlier_perc=0, use_pyplot=False
    )
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    drawn = np.asarray(ax.images[-1].get_array())
    heat = image_interaction_map(h, (0, 1, 2))
    # With no outliers Captum divides by the largest |value|: the map itself, scaled.
    np.testing.assert_allclose(drawn, heat / np.abs(heat).max())
    assert ax.images[-1].norm.vmin == -1 and ax.images[-1].norm.vmax == 1
    # The chosen pixel (row 1, col 2) is outlined.
    marks = [p for p in ax.patches if p.get_xy() == (1.5, 0.5)]
    assert len(marks) == 1
    assert "(0, 1, 2)" in ax.get_title()


def test_visualize_image_interactions_all_zero_warns() -> None:
    with pytest.warns(UserWarning, match="no nonzero interaction"):
        _, ax = visualize_image_interactions(
            torch.zeros(1, 2, 2, 1, 2, 2), torch.rand(1, 2, 2), (0, 0, 0), use_pyplot=False
        )
    assert isinstance(ax, Axes)


@pytest.mark.parametrize(
    ("h_shape", "image_shape", "index", "match", "exc"),
    [
        ((2, 3, 4, 2, 3, 4), (3, 3, 4), (0, 0, 0), "original_image", ValueError),
        ((2, 3, 4, 2, 3, 4), (2, 3, 4), (2, 0, 0), "feature_index", IndexError),
        ((2, 3, 4, 2, 3, 4), (2, 3, 4), (0, 0, 4), "feature_index", IndexError),
        ((2, 3, 4, 2, 3, 4), (2, 3, 4), 24, "feature_index", IndexError),
        ((2, 3, 4, 2, 3, 4), (2, 3, 4), (0, 0), "feature_index", ValueError),
        ((2, 3, 4, 2, 3, 5), (2, 3, 4), (0, 0, 0), "interactions", ValueError),
        ((2, 2, 3, 4, 2, 3, 4), (2, 3, 4), (0, 0, 0), "interactions", ValueError),
        ((2, 3, 4, 2, 3, 4), (5, 2, 3, 4), (0, 0, 0), "original_image", ValueError),
    ],
)
def test_visualize_image_interactions_errors(
    h_shape: tuple, image_shape: tuple, index: object, match: str, exc: type
) -> None:
    with pytest.raises(exc, match=match):
        visualize_image_interactions(torch.zeros(h_shape), torch.zeros(image_shape), index, use_pyplot=False)


def test_image_interaction_map_names_image_shape() -> None:
    """Called directly, a wrong ``image_shape`` is named as such (the overlay names its original_image)."""
    with pytest.raises(ValueError, match=r"^image_shape: shape \(3, 3, 2\) does not match"):
        image_interaction_map(torch.zeros(2, 3, 3, 2, 3, 3), 0, image_shape=(3, 3, 2))


# ---------------------------------------------------------------- kernels


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid rule (numpy 1.x, which captum 0.8 requires, has no ``np.trapezoid``)."""
    return float(torch.trapezoid(torch.as_tensor(y), torch.as_tensor(x)))


def test_kernel_densities_integrate_to_one() -> None:
    eps = 0.7
    t = np.linspace(-60 * eps, 60 * eps, 240001)
    _, curves = kernel_densities(stdevs=eps, points=t)
    assert [type(k) for k, _ in curves] == [Gaussian, Poisson, Hyperbolic, Sigmoid, Rect]
    for kernel, dens in curves:
        mass = _trapezoid(dens, t)
        tail = 1 - 2 / math.pi * math.atan(60) if isinstance(kernel, Poisson) else 0.0
        assert mass == pytest.approx(1 - tail, abs=2e-3), kernel
        # Unit variance for all but the Cauchy, at bandwidth eps: variance eps^2.
        if not isinstance(kernel, Poisson):
            assert _trapezoid(dens * t**2, t) == pytest.approx(eps**2, rel=5e-3), kernel


def test_kernel_densities_values() -> None:
    t, curves = kernel_densities(
        ["gaussian", "poisson", "rect"], stdevs=2.0, points=np.array([0.0, 2.0, 4.0])
    )
    g, p, r = (c[1] for c in curves)
    np.testing.assert_allclose(g, np.exp(-0.5 * (t / 2) ** 2) / (2 * math.sqrt(2 * math.pi)))
    np.testing.assert_allclose(p, 1 / (math.pi * 2 * (1 + (t / 2) ** 2)))
    np.testing.assert_allclose(r, [1 / (4 * math.sqrt(3)), 1 / (4 * math.sqrt(3)), 0.0])


def test_visualize_kernels_lines_integrate_to_one() -> None:
    eps = 1.5
    fig, ax = visualize_kernels(stdevs=eps, use_pyplot=False)
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    lines = ax.get_lines()
    assert len(lines) == 5
    for line in lines:
        x, y = (np.asarray(v, dtype=float) for v in line.get_data())
        assert x[0] == pytest.approx(-4 * eps) and x[-1] == pytest.approx(4 * eps)
        mass = _trapezoid(y, x)
        if line.get_label() == "Poisson()":
            # Standard Cauchy over [-4, 4] in units of eps.
            assert mass == pytest.approx(2 / math.pi * math.atan(4), abs=1e-3)
        else:
            assert mass == pytest.approx(1.0, abs=5e-3), line.get_label()
    assert ax.get_legend() is not None
    assert ax.get_xlabel() and ax.get_ylabel() and "1.5" in ax.get_title()


def test_visualize_kernels_custom_kernel_without_log_prob() -> None:
    class Half(Rect):
        """A Rect that only knows its CDF."""

        def log_prob(self, u: torch.Tensor) -> torch.Tensor:
            raise NotImplementedError

    t, curves = kernel_densities([Half()], points=np.linspace(-3, 3, 6001))
    assert _trapezoid(curves[0][1], t) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stdevs": 0.0}, "stdevs"),
        ({"stdevs": -1.0}, "stdevs"),
        ({"kernels": ["nope"]}, "kernels"),
        ({"x_range": (1.0, -1.0)}, "x_range"),
        ({"n_points": 1}, "n_points"),
    ],
)
def test_visualize_kernels_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        visualize_kernels(**kwargs, use_pyplot=False)


# ---------------------------------------------------------------- rendering


def test_render_all_to_png(tmp_path: os.PathLike) -> None:
    out = os.fspath(tmp_path)
    rng = np.random.default_rng(0)
    h = _sym(6)
    figures = {
        "matrix": visualize_interactions(
            h, [f"x{i}" for i in range(6)], top_k=3, clip_percentile=95, use_pyplot=False
        )[0],
        "image": visualize_image_interactions(
            _sym(3 * 8 * 8).reshape(3, 8, 8, 3, 8, 8), rng.random((3, 8, 8)), (1, 4, 5), use_pyplot=False
        )[0],
        "kernels": visualize_kernels(use_pyplot=False)[0],
    }
    for name, fig in figures.items():
        path = os.path.join(out, f"{name}.png")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. tight-layout or glyph warnings
            fig.savefig(path, dpi=60)
        assert os.path.getsize(path) > 1000


def test_use_pyplot_registers_figure() -> None:
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    fig, _ = visualize_kernels(["gaussian"])
    try:
        assert fig.number in set(plt.get_fignums()) - before
    finally:
        plt.close(fig)


def test_top_k_on_many_features_lists_pairs_instead_of_cell_labels() -> None:
    h = np.zeros((30, 30))
    h[3, 17] = h[17, 3] = 5.0
    h[4, 5] = h[5, 4] = -2.0
    fig, ax = visualize_interactions(h, top_k=2, use_pyplot=False)
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["strongest pairs: #1 (3, 17): 5;  #2 (4, 5): -2"]
    fig.clf()


# ---------------------------------------------------------------- pair plots


def _rendered(fig: Figure) -> np.ndarray:
    """The figure drawn on an Agg canvas, as an (H, W, 3) array in [0, 1]."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3] / 255.0


def _assert_drawn(fig: Figure, min_ink: float = 0.01) -> None:
    pixels = _rendered(fig)
    ink = float((pixels.min(axis=2) < 0.9).mean())  # fraction of non-white pixels
    assert ink > min_ink and float(pixels.var()) > 1e-3, ink


def _bars(ax: Axes) -> BarContainer:
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    return bars


def _texts(ax: Axes) -> list:
    return [t.get_text() for t in ax.texts]


def _pairs_matrix(d: int, pairs: dict) -> np.ndarray:
    h = np.zeros((d, d))
    for (i, j), v in pairs.items():
        h[i, j] = h[j, i] = v
    return h


def test_network_draws_top_k_edges_width_by_magnitude_colour_by_sign() -> None:
    h = _pairs_matrix(6, {(0, 3): 4.0, (1, 2): -2.0, (4, 5): 1.0, (0, 1): 0.5})
    names = ["a", "b", "c", "d", "e", "f"]
    fig, ax = visualize_interaction_network(h, names, top_k=3, use_pyplot=False, max_width=8.0)
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    edges = ax.patches
    assert len(edges) == 3  # the weakest pair (0, 1) is left out
    by_width = sorted(edges, key=lambda e: -e.get_linewidth())
    assert [e.get_linewidth() for e in by_width] == [8.0, 4.0, 2.0]  # proportional to |value|
    assert by_width[0].get_edgecolor()[:3] == to_rgba("tab:red")[:3]
    assert by_width[1].get_edgecolor()[:3] == to_rgba("tab:blue")[:3]
    assert set(_texts(ax)) == set(names)  # few features: all labelled
    assert ax.get_title() == "Strongest interactions"
    _assert_drawn(fig)


def test_network_with_hundreds_of_features_labels_only_the_endpoints() -> None:
    h = 1e-3 * _sym(300)
    h[10, 250] = h[250, 10] = 5.0
    h[11, 12] = h[12, 11] = -4.0
    fig, ax = visualize_interaction_network(h, [f"f{k}" for k in range(300)], top_k=2, use_pyplot=False)
    assert len(ax.patches) == 2
    assert sorted(_texts(ax)) == ["f10", "f11", "f12", "f250"]
    _assert_drawn(fig)


def test_network_accepts_global_interactions_and_skips_zero_pairs() -> None:
    mean = torch.from_numpy(_pairs_matrix(4, {(0, 2): 1.0})).float()
    gi = GlobalInteractions(mean, mean.abs(), torch.full((4, 4), 0.1), 5)
    _, ax = visualize_interaction_network(gi, top_k=5, use_pyplot=False)
    assert len(ax.patches) == 1
    _, ax = visualize_interaction_network(np.zeros((4, 4)), use_pyplot=False)
    assert len(ax.patches) == 0 and ax.get_legend() is None  # nothing to draw, still a figure


def test_top_pairs_bars_and_error_bars_from_global_interactions() -> None:
    mean = torch.from_numpy(_pairs_matrix(4, {(0, 1): -3.0, (1, 2): 2.0, (2, 3): 1.0, (0, 3): 0.5})).float()
    stderr = torch.from_numpy(_pairs_matrix(4, {(0, 1): 0.3, (1, 2): 0.2, (2, 3): 0.1, (0, 3): 0.05})).float()
    gi = GlobalInteractions(mean, mean.abs(), stderr, 20)
    fig, ax = visualize_top_pairs(gi, ["a", "b", "c", "d"], top_k=3, error_scale=2.0, use_pyplot=False)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a x b", "b x c", "c x d"]
    assert [b.get_width() for b in ax.patches] == pytest.approx([-3.0, 2.0, 1.0])
    assert ax.patches[0].get_facecolor()[:3] == to_rgba("tab:blue")[:3]
    assert ax.patches[1].get_facecolor()[:3] == to_rgba("tab:red")[:3]
    bars = _bars(ax)
    assert bars.errorbar is not None
    segments = bars.errorbar.lines[2][0].get_segments()
    half_widths = [(seg[1][0] - seg[0][0]) / 2 for seg in segments]
    assert half_widths == pytest.approx([0.6, 0.4, 0.2])  # 2 standard errors either side
    assert "s.e." in ax.get_xlabel()
    _assert_drawn(fig)


def test_top_pairs_matrix_with_and_without_stderr() -> None:
    h = _pairs_matrix(3, {(0, 1): 1.0, (1, 2): -2.0})
    fig, ax = visualize_top_pairs(h, use_pyplot=False)
    assert _bars(ax).errorbar is None and len(ax.patches) == 3  # all 3 pairs
    assert [t.get_text() for t in ax.get_yticklabels()][:2] == ["1 x 2", "0 x 1"]
    fig, ax = visualize_top_pairs(h, top_k=2, stderr=np.full((3, 3), 0.5), use_pyplot=False)
    assert _bars(ax).errorbar is not None
    # One example: no standard errors to draw.
    one = GlobalInteractions(torch.tensor(h), torch.tensor(h), torch.full((3, 3), float("nan")), 1)
    fig, ax = visualize_top_pairs(one, use_pyplot=False)
    assert _bars(ax).errorbar is None
    _assert_drawn(fig)


def test_token_arcs_between_interacting_tokens() -> None:
    tokens = ["the", "film", "is", "not", "bad", "at", "all"]
    h = _pairs_matrix(7, {(3, 4): -2.0, (3, 6): 1.0, (0, 1): 0.1})
    fig, ax = visualize_token_interactions(tokens, h, top_k=2, use_pyplot=False, title="sentence")
    assert _texts(ax) == tokens
    arcs = ax.patches
    assert len(arcs) == 2
    strongest = max(arcs, key=lambda a: a.get_linewidth())
    assert strongest.get_edgecolor()[:3] == to_rgba("tab:blue")[:3]
    widest = max(arcs, key=lambda a: a.width)  # "not" ... "all" spans farther, and is drawn higher
    assert widest.height > min(arcs, key=lambda a: a.width).height
    colours = {t.get_text(): t.get_color() for t in ax.texts}
    assert colours["not"] == "black" and colours["the"] != "black"  # (0, 1) is not among the top 2
    _assert_drawn(fig, min_ink=0.005)


def test_token_interactions_sum_embedding_dimensions() -> None:
    full = _sym(4 * 3).reshape(4, 3, 4, 3)
    grouped = full.sum(axis=(1, 3))
    tokens = ["a", "b", "c", "d"]
    _, ax_full = visualize_token_interactions(tokens, full[None], top_k=3, use_pyplot=False)
    _, ax_grp = visualize_token_interactions(tokens, grouped, top_k=3, use_pyplot=False)
    assert [a.get_linewidth() for a in ax_full.patches] == pytest.approx(
        [a.get_linewidth() for a in ax_grp.patches]
    )


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: visualize_interaction_network(np.eye(3), top_k=0, use_pyplot=False), ValueError, "^top_k"),
        (
            lambda: visualize_interaction_network(np.eye(3), ["a"], use_pyplot=False),
            ValueError,
            "^feature_names",
        ),
        (
            lambda: visualize_interaction_network(np.ones((2, 3)), use_pyplot=False),
            ValueError,
            "^interactions",
        ),
        (
            lambda: visualize_interaction_network(np.eye(3), max_width=0, use_pyplot=False),
            ValueError,
            "^max_width",
        ),
        (lambda: visualize_top_pairs(np.eye(3), stderr=np.eye(2), use_pyplot=False), ValueError, "^stderr"),
        (lambda: visualize_top_pairs(np.eye(3), stderr=-np.eye(3), use_pyplot=False), ValueError, "^stderr"),
        (
            lambda: visualize_top_pairs(np.eye(3), error_scale=-1, use_pyplot=False),
            ValueError,
            "^error_scale",
        ),
        (
            lambda: visualize_top_pairs(
                GlobalInteractions(torch.eye(3), torch.eye(3), torch.eye(3), 4),
                stderr=np.eye(3),
                use_pyplot=False,
            ),
            ValueError,
            "^stderr",
        ),
        (lambda: visualize_top_pairs("matrix", use_pyplot=False), TypeError, "^interactions"),
        (
            lambda: visualize_token_interactions(["a", "b"], np.eye(3), use_pyplot=False),
            ValueError,
            "^interactions",
        ),
        (lambda: visualize_token_interactions("ab", np.eye(2), use_pyplot=False), TypeError, "^tokens"),
        (lambda: visualize_token_interactions([], np.eye(2), use_pyplot=False), ValueError, "^tokens"),
        (
            lambda: visualize_token_interactions(["a", "b"], np.eye(2), fontsize=0, use_pyplot=False),
            ValueError,
            "^fontsize",
        ),
    ],
)
def test_pair_plot_errors(call: Any, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        call()
