"""Plots and tables for interactions and kernels, in the style of Captum.

Every plotting function takes a tensor or a NumPy array, draws on a new
figure (or on the ``(figure, axis)`` given as ``plt_fig_axis``, or on an axis
given alone) and returns ``(figure, axis)``, as :mod:`captum.attr.visualization`
does. A call that fails closes the pyplot figure it made. With
``use_pyplot=True`` (the default, as in Captum) the figure is created through
``matplotlib.pyplot`` and shown; with ``use_pyplot=False`` a bare
:class:`matplotlib.figure.Figure` is used and nothing is shown, which suits
scripts and servers. Images are drawn by Captum's own
:func:`captum.attr.visualization.visualize_image_attr`.

- :func:`visualize_interactions`: heatmap of a ``d x d`` (or group ``G x G``)
  interaction matrix, colours centred at zero;
- :func:`visualize_image_interactions`: the interactions of one pixel feature
  with every other feature, over the image (:func:`image_interaction_map`
  computes the map drawn);
- :func:`top_interactions`: the strongest pairs as a table;
- :func:`visualize_interaction_network`: the strongest pairs as edges between
  features on a circle (readable with hundreds of features);
- :func:`visualize_top_pairs`: the strongest pairs as a bar chart, with error
  bars from a :class:`~captum_smoothhess.GlobalInteractions` or given
  standard errors;
- :func:`visualize_token_interactions`: a sentence with arcs between its
  interacting tokens;
- :func:`visualize_kernels`: the 1-D densities of the smoothing kernels at a
  bandwidth (:func:`kernel_densities` computes the curves drawn).
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
import threading
import warnings
from typing import (
    Any,
    Callable,
    Iterable,
    List,
    NamedTuple,
    Optional,
    ParamSpec,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

import matplotlib
import matplotlib.patheffects as path_effects
import numpy as np
import numpy.typing as npt
import torch
from captum.attr import visualization as captum_viz
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure, FigureBase
from matplotlib.lines import Line2D
from matplotlib.patches import Arc, PathPatch, Rectangle
from matplotlib.path import Path as MplPath
from torch import Tensor

from ._validation import _check_positive_int, _refuse_meta
from .global_interactions import GlobalInteractions
from .kernels import Gaussian, Hyperbolic, Kernel, Poisson, Rect, Sigmoid, get_kernel

__all__ = [
    "Interaction",
    "InteractionTable",
    "image_interaction_map",
    "kernel_densities",
    "top_interactions",
    "visualize_image_interactions",
    "visualize_interaction_network",
    "visualize_interactions",
    "visualize_kernels",
    "visualize_token_interactions",
    "visualize_top_pairs",
]

ArrayLike = Union[Tensor, npt.NDArray[Any]]
FigAxis = Tuple[Figure, Axes]
# ``plt_fig_axis``: a ``(figure, axis)`` pair as in Captum, or an axis alone (drawn on in its figure).
FigAxisArg = Union[FigAxis, Axes]

_P = ParamSpec("_P")
_R = TypeVar("_R")

# The pyplot figures the plotting call running in this thread has created, closed if it fails.
_NEW_FIGURES = threading.local()


def _closes_figure_on_error(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Close the pyplot figure a plotting function made when it fails, so no figure leaks."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        outer = getattr(_NEW_FIGURES, "figures", None)
        _NEW_FIGURES.figures = []
        try:
            return func(*args, **kwargs)
        except BaseException:
            for fig in _NEW_FIGURES.figures:
                plt.close(fig)
            raise
        finally:
            _NEW_FIGURES.figures = outer

    return wrapper


# --------------------------------------------------------------------------- helpers


def _to_numpy(value: ArrayLike, argument: str) -> npt.NDArray[np.float64]:
    """A float64 NumPy copy of a tensor or array, finite, or a clear error."""
    if isinstance(value, Tensor):
        _refuse_meta(value, argument)
        if value.is_complex():
            raise TypeError(f"{argument}: expected real values, got dtype {value.dtype}")
        arr = value.detach().cpu().to(torch.float64).numpy()
    elif isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
            raise TypeError(f"{argument}: expected a numeric array, got dtype {value.dtype}")
        if np.issubdtype(value.dtype, np.complexfloating):
            raise TypeError(f"{argument}: expected real values, got dtype {value.dtype}")
        arr = np.asarray(value).astype(np.float64)  # np.asarray: a np.matrix as a plain array
    else:
        raise TypeError(f"{argument}: expected a torch.Tensor or a numpy.ndarray, got {type(value).__name__}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{argument}: contains NaN or Inf values")
    return arr


def _split_square(arr: npt.NDArray[np.float64], argument: str) -> Tuple[int, ...]:
    """Feature shape ``S`` of an array shaped ``(*S, *S)`` or ``(1, *S, *S)``."""
    shape = arr.shape
    if arr.ndim % 2 == 1 and arr.ndim > 1:
        if shape[0] != 1:
            raise ValueError(
                f"{argument}: expected the interactions of one example, shaped (d, d) or "
                f"(*S, *S), optionally with a leading batch dimension of 1; got shape "
                f"{tuple(shape)} (batch of {shape[0]}: select one example first)"
            )
        shape = shape[1:]
    half = len(shape) // 2
    if len(shape) < 2 or len(shape) % 2 or shape[:half] != shape[half:]:
        raise ValueError(
            f"{argument}: expected a square interaction matrix shaped (d, d) or (*S, *S) "
            f"(optionally with a leading batch dimension of 1), got shape {tuple(arr.shape)}"
        )
    if math.prod(shape[:half]) == 0:
        raise ValueError(f"{argument}: no features (got shape {tuple(arr.shape)})")
    return tuple(int(s) for s in shape[:half])


def _as_matrix(
    interactions: ArrayLike, argument: str = "interactions"
) -> Tuple[npt.NDArray[np.float64], Tuple[int, ...]]:
    """``(d, d)`` matrix and feature shape ``S`` from ``(*S, *S)`` or ``(1, *S, *S)``."""
    arr = _to_numpy(interactions, argument)
    feat_shape = _split_square(arr, argument)
    d = math.prod(feat_shape)
    return arr.reshape(d, d), feat_shape


def _feature_names(
    feature_names: Optional[Sequence[str]], feat_shape: Tuple[int, ...], argument: str = "feature_names"
) -> List[str]:
    """Given names (checked against the number of features) or default ones.

    Default names are the flat index for a vector of features, and the index
    tuple, e.g. ``(0, 3, 4)``, for features shaped like an image.
    """
    d = math.prod(feat_shape)
    if feature_names is None:
        if len(feat_shape) == 1:
            return [str(i) for i in range(d)]
        return [str(tuple(int(v) for v in idx)) for idx in np.ndindex(*feat_shape)]
    if isinstance(feature_names, str) or not isinstance(feature_names, Iterable):
        kind = "a single string" if isinstance(feature_names, str) else type(feature_names).__name__
        raise TypeError(f"{argument}: expected a sequence of names, got {kind}")
    names = [str(n) for n in feature_names]
    if len(names) != d:
        raise ValueError(f"{argument}: expected {d} names (one per feature), got {len(names)}")
    return names


def _check_fig_axis(plt_fig_axis: Optional[FigAxisArg]) -> Optional[FigAxis]:
    """``plt_fig_axis`` as a ``(figure, axis)`` pair (an axis alone: with its figure), checked."""
    if plt_fig_axis is None:
        return None
    if isinstance(plt_fig_axis, Axes):
        return plt_fig_axis.figure, plt_fig_axis  # type: ignore[return-value]
    if not (isinstance(plt_fig_axis, tuple) and len(plt_fig_axis) == 2):
        raise TypeError(
            f"plt_fig_axis: expected a (figure, axis) tuple or an axis, got {type(plt_fig_axis).__name__}"
        )
    fig, ax = plt_fig_axis
    if not isinstance(fig, FigureBase) or not isinstance(ax, Axes):
        raise TypeError(
            "plt_fig_axis: expected a (figure, axis) tuple of a matplotlib Figure and one Axes, got "
            f"({type(fig).__name__}, {type(ax).__name__})"
        )
    return plt_fig_axis


def _check_fig_size(fig_size: object) -> Tuple[float, float]:
    try:
        width, height = (float(v) for v in fig_size)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise TypeError(f"fig_size: expected a (width, height) pair in inches, got {fig_size!r}") from None
    if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
        raise ValueError(f"fig_size: expected a positive finite (width, height), got {fig_size!r}")
    return width, height


def _check_cmap(cmap: object, argument: str = "cmap") -> Colormap:
    """A colour map from a name or a ``Colormap``, or a clear error."""
    if isinstance(cmap, Colormap):
        return cmap
    if not isinstance(cmap, str):
        raise TypeError(f"{argument}: expected a colour map name or a Colormap, got {type(cmap).__name__}")
    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"{argument}: unknown colour map {cmap!r}") from None


def _create_figure(
    plt_fig_axis: Optional[FigAxisArg], use_pyplot: bool, fig_size: Tuple[float, float]
) -> FigAxis:
    """The given ``(figure, axis)`` or a new one (through pyplot or not)."""
    given = _check_fig_axis(plt_fig_axis)
    if given is not None:
        return given
    fig_size = _check_fig_size(fig_size)
    if use_pyplot:
        fig, ax = plt.subplots(figsize=fig_size)
        created = getattr(_NEW_FIGURES, "figures", None)
        if created is not None:
            created.append(fig)
        return fig, ax
    fig = Figure(figsize=fig_size)
    return fig, fig.subplots()


def _check_positive(value: float, argument: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{argument}: expected a number, got {type(value).__name__}") from None
    if not math.isfinite(out) or out <= 0:
        raise ValueError(f"{argument}: expected a positive finite number, got {value!r}")
    return out


# --------------------------------------------------------------------------- table


class Interaction(NamedTuple):
    """One pair of features and their interaction, a row of :class:`InteractionTable`.

    Attributes:
        i: Flat index of the first feature (``i < j``).
        j: Flat index of the second feature.
        name_i: Name of feature ``i``.
        name_j: Name of feature ``j``.
        value: The (symmetrised) interaction ``(H[i, j] + H[j, i]) / 2``.
    """

    i: int
    j: int
    name_i: str
    name_j: str
    value: float

    def __str__(self) -> str:
        return f"{self.name_i} x {self.name_j}: {self.value:+.4g}"


class InteractionTable(List[Interaction]):
    """A list of :class:`Interaction` rows that prints as a table.

    ``str(table)`` is a plain-text table; :meth:`format` also writes Markdown
    (for reports).
    """

    def format(self, style: str = "text", precision: int = 4) -> str:
        """Render the rows as a table.

        Args:
            style: ``"text"`` (aligned columns) or ``"markdown"``.
            precision: Significant digits of the values.

        Returns:
            The table, one line per row after the header.

        Raises:
            ValueError: Unknown ``style`` or negative ``precision``.
        """
        if style not in ("text", "markdown"):
            raise ValueError(f"style: expected 'text' or 'markdown', got {style!r}")
        precision = _check_positive_int(precision, "precision", 1)
        header = ["rank", "i", "j", "feature i", "feature j", "interaction"]
        body = [
            [str(r + 1), str(row.i), str(row.j), row.name_i, row.name_j, f"{row.value:+.{precision}g}"]
            for r, row in enumerate(self)
        ]
        if style == "markdown":
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(cells) + " |" for cells in body]
            return "\n".join(lines)
        widths = [max(len(c) for c in col) for col in zip(header, *body)]
        numeric = {0, 1, 2, 5}

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.rjust(w) if k in numeric else c.ljust(w) for k, (c, w) in enumerate(zip(cells, widths))
            ).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(header), rule, *(line(cells) for cells in body)])

    def __str__(self) -> str:
        return self.format("text")


def _ranked_pairs(
    matrix: npt.NDArray[np.float64],
) -> Tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Upper-triangle pairs ``i < j`` of the symmetrised matrix, strongest first.

    Ties in ``|value|`` keep row-major order of ``(i, j)``.
    """
    sym = 0.5 * (matrix + matrix.T)
    rows, cols = np.triu_indices(sym.shape[0], k=1)
    vals = sym[rows, cols]
    order = np.argsort(-np.abs(vals), kind="stable")
    return rows[order], cols[order], vals[order]


def top_interactions(
    interactions: ArrayLike, k: int = 10, feature_names: Optional[Sequence[str]] = None
) -> InteractionTable:
    """The ``k`` strongest pairwise interactions ``(i < j)``, by absolute value.

    The matrix is symmetrised first, ``(H + H^T) / 2`` (SmoothHess already
    returns symmetric matrices), and the diagonal (a feature with itself) is
    left out. Ties keep the row-major order of the pairs.

    Args:
        interactions: Interactions of one example: a ``(d, d)`` or group
            ``(G, G)`` matrix, or SmoothHess's ``(*S, *S)`` for features shaped
            ``S`` (flattened in row-major order), optionally with a leading
            batch dimension of 1. Tensor or array.
        k: Number of pairs; if larger than the ``d (d - 1) / 2`` pairs there
            are, all of them are returned.
        feature_names: Optional ``d`` names. Default: the flat index, or the
            index tuple such as ``(0, 3, 4)`` for features shaped ``S``.

    Returns:
        An :class:`InteractionTable` (a list of :class:`Interaction` rows
        ``(i, j, name_i, name_j, value)``, strongest first); ``str()`` of it is
        a text table.

    Raises:
        ValueError: ``interactions`` is not square, is a batch of several
            examples or holds NaN/Inf; ``k`` < 1; ``feature_names`` has the
            wrong length.
        TypeError: ``interactions`` is neither a tensor nor an array.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.visualization import top_interactions
        >>> h = torch.tensor([[1.0, -3.0, 0.5], [-3.0, 2.0, 1.0], [0.5, 1.0, 0.0]])
        >>> table = top_interactions(h, k=2, feature_names=["age", "dose", "bmi"])
        >>> [(row.name_i, row.name_j, row.value) for row in table]
        [('age', 'dose', -3.0), ('dose', 'bmi', 1.0)]
        >>> print(table)
        rank  i  j  feature i  feature j  interaction
        ----  -  -  ---------  ---------  -----------
           1  0  1  age        dose                -3
           2  1  2  dose       bmi                 +1
    """
    matrix, feat_shape = _as_matrix(interactions)
    k = _check_positive_int(k, "k")
    names = _feature_names(feature_names, feat_shape)
    rows, cols, vals = _ranked_pairs(matrix)
    table = InteractionTable()
    for i, j, v in zip(rows[:k], cols[:k], vals[:k]):
        table.append(Interaction(int(i), int(j), names[i], names[j], float(v)))
    return table


# --------------------------------------------------------------------------- matrix heatmap


@_closes_figure_on_error
def visualize_interactions(
    interactions: ArrayLike,
    feature_names: Optional[Sequence[str]] = None,
    *,
    clip_percentile: Optional[float] = None,
    show_diagonal: bool = True,
    top_k: int = 0,
    cmap: Union[str, Colormap] = "RdBu_r",
    show_colorbar: bool = True,
    colorbar_label: str = "interaction",
    title: Optional[str] = "Feature interactions",
    axis_label: str = "feature",
    plt_fig_axis: Optional[FigAxisArg] = None,
    fig_size: Tuple[float, float] = (7.0, 6.0),
    use_pyplot: bool = True,
) -> FigAxis:
    """Heatmap of an interaction matrix, with colours centred at zero.

    Positive interactions are red, negative blue, zero white (with the
    default ``cmap``): the colour limits are always symmetric, ``[-v, v]``.
    Without clipping ``v`` is the largest absolute value shown; with
    ``clip_percentile=p`` it is the ``p``-th percentile of the absolute
    values shown, and stronger entries saturate (useful when a few entries,
    often on the diagonal, dwarf the rest).

    Args:
        interactions: Interactions of one example: ``(d, d)``, group
            ``(G, G)``, or ``(*S, *S)`` as SmoothHess returns them (flattened
            row-major), optionally with a leading batch dimension of 1.
            Tensor or array.
        feature_names: Optional names of the ``d`` features, used as tick
            labels. Default: indices.
        clip_percentile: Optional percentile in ``(0, 100]`` of ``|values|``
            at which the colour scale saturates. Default: no clipping.
        show_diagonal: If ``False``, the diagonal (each feature with itself)
            is greyed out and does not set the colour scale.
        top_k: Outline and label the ``top_k`` strongest off-diagonal pairs
            (see :func:`top_interactions`); 0 for none.
        cmap: A diverging colour map.
        show_colorbar: Draw a colour bar.
        colorbar_label: Label of the colour bar.
        title: Title, or ``None`` for none.
        axis_label: Label of both axes (the names are on the ticks).
        plt_fig_axis: Optional ``(figure, axis)`` to draw on, or an axis alone.
        fig_size: Size of a new figure, in inches.
        use_pyplot: Create the figure through pyplot and show it (Captum's
            convention); ``False`` returns a bare figure without showing it.

    Returns:
        ``(figure, axis)`` of the plot.

    Raises:
        ValueError: ``interactions`` is not square, is a batch of several
            examples or holds NaN/Inf; ``feature_names`` has the wrong
            length; ``clip_percentile`` is outside ``(0, 100]``; ``top_k`` < 0.
        TypeError: ``interactions`` is neither a tensor nor an array.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.visualization import visualize_interactions
        >>> h = torch.tensor([[0.5, -2.0, 0.1], [-2.0, 0.0, 1.0], [0.1, 1.0, -0.3]])
        >>> fig, ax = visualize_interactions(h, ["a", "b", "c"], top_k=2, use_pyplot=False)
        >>> ax.images[0].norm.vmin, ax.images[0].norm.vmax
        (-2.0, 2.0)
    """
    matrix, feat_shape = _as_matrix(interactions)
    d = matrix.shape[0]
    names = _feature_names(feature_names, feat_shape)
    if clip_percentile is not None:
        clip_percentile = _check_positive(clip_percentile, "clip_percentile")
        if clip_percentile > 100:
            raise ValueError(f"clip_percentile: expected a percentile in (0, 100], got {clip_percentile}")
    top_k = _check_positive_int(top_k, "top_k", 0)
    colour_map = _check_cmap(cmap).with_extremes(bad="0.8")

    hidden = np.zeros((d, d), dtype=bool)
    if not show_diagonal:
        hidden[np.diag_indices(d)] = True
    shown = np.ma.masked_array(matrix, mask=hidden)
    visible = np.abs(shown.compressed())
    if visible.size == 0:
        limit = 0.0
    elif clip_percentile is None:
        limit = float(visible.max())
    else:
        limit = float(np.percentile(visible, clip_percentile))
    if limit <= 0:
        limit = 1.0  # all zero: any symmetric scale shows white
    norm = Normalize(vmin=-limit, vmax=limit, clip=False)

    fig, ax = _create_figure(plt_fig_axis, use_pyplot, fig_size)
    image = ax.imshow(shown, cmap=colour_map, norm=norm, interpolation="nearest")

    if feature_names is not None or d <= 30:
        font = 10 if d <= 12 else max(4.0, 10 - 0.15 * (d - 12))
        ax.set_xticks(np.arange(d))
        ax.set_yticks(np.arange(d))
        ax.set_xticklabels(
            names, rotation=45 if d > 4 else 0, ha="right" if d > 4 else "center", fontsize=font
        )
        ax.set_yticklabels(names, fontsize=font)
    ax.set_xlabel(axis_label)
    ax.set_ylabel(axis_label)
    if title:
        ax.set_title(title)

    if top_k:
        rows, cols, vals = _ranked_pairs(matrix)
        text_size = max(6.0, min(10.0, 100.0 / d))
        outline = [path_effects.withStroke(linewidth=2.5, foreground="white")]
        listing = []
        for rank, (i, j, v) in enumerate(zip(rows[:top_k], cols[:top_k], vals[:top_k])):
            for r, c in ((i, j), (j, i)):
                ax.add_patch(
                    Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5)
                )
            if d <= 20:
                ax.text(
                    j,
                    i,
                    f"{v:.2g}",
                    ha="center",
                    va="center",
                    fontsize=text_size,
                    color="black",
                    path_effects=outline,
                )
            else:
                listing.append(f"#{rank + 1} ({names[i]}, {names[j]}): {v:.2g}")
        if listing:
            # Cells are too small for labels: list the outlined pairs under the axes instead.
            ax.text(
                0.0,
                -0.14,
                "strongest pairs: " + ";  ".join(listing),
                transform=ax.transAxes,
                ha="left",
                va="top",
                fontsize=8,
                wrap=True,
            )
    if show_colorbar:
        extend = "neither"
        if visible.size and clip_percentile is not None and float(visible.max()) > limit:
            extend = "both"
        cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, extend=extend)
        cbar.set_label(colorbar_label)
    if use_pyplot and plt_fig_axis is None:
        plt.show()
    return fig, ax


# --------------------------------------------------------------------------- image interactions


def _image_to_hwc(original_image: ArrayLike) -> Tuple[npt.NDArray[np.float64], Tuple[int, ...]]:
    """``(C, H, W)`` or ``(H, W)`` image (optionally batch 1) -> HWC array and its feature shape."""
    img = _to_numpy(original_image, "original_image")
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 2:
        return img[:, :, None], tuple(img.shape)
    if img.ndim != 3:
        raise ValueError(
            f"original_image: expected one example shaped (C, H, W) or (H, W) "
            f"(optionally with a leading batch dimension of 1), got shape {tuple(np.shape(original_image))}"
        )
    return np.transpose(img, (1, 2, 0)), tuple(img.shape)


def _display_image(hwc: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Image values Captum draws correctly: [0, 1] floats or 0..255 integers, else min-max scaled."""
    lo, hi = float(hwc.min()), float(hwc.max())
    if lo >= 0 and hi <= 1:
        return hwc
    if lo >= 0 and hi <= 255 and np.all(hwc == np.round(hwc)):
        return hwc
    return (hwc - lo) / (hi - lo) if hi > lo else np.zeros_like(hwc)


# Captum's image methods and signs, and the part of the map each sign shows.
_IMAGE_METHODS = ("heat_map", "blended_heat_map", "original_image", "masked_image", "alpha_scaling")
_SIGN_FILTERS: dict[str, Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]] = {
    "all": lambda m: m,
    "positive": lambda m: np.maximum(m, 0.0),
    "negative": lambda m: np.minimum(m, 0.0),
    "absolute_value": np.abs,
}


def _check_image_options(
    method: object, sign: object, outlier_perc: object, alpha_overlay: object, cmap: object
) -> None:
    """Captum's options of :func:`visualize_image_interactions`, checked before anything is drawn."""
    if method not in _IMAGE_METHODS:
        raise ValueError(f"method: expected one of {list(_IMAGE_METHODS)}, got {method!r}")
    if sign not in _SIGN_FILTERS:
        raise ValueError(f"sign: expected one of {list(_SIGN_FILTERS)}, got {sign!r}")
    if sign == "all" and method in ("masked_image", "alpha_scaling"):
        raise ValueError(
            f"sign: method={method!r} cannot show both signs; choose 'positive', 'negative' or "
            "'absolute_value'"
        )
    for name, value, high in (("outlier_perc", outlier_perc, 100.0), ("alpha_overlay", alpha_overlay, 1.0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
        ok = 0 <= float(value) < high if name == "outlier_perc" else 0 <= float(value) <= high
        if not ok:
            interval = "[0, 100)" if name == "outlier_perc" else "[0, 1]"
            raise ValueError(f"{name}: expected a number in {interval}, got {value!r}")
    if cmap is not None:
        _check_cmap(cmap)


def _flat_feature_index(
    feature_index: Union[int, Sequence[int]], feat_shape: Tuple[int, ...]
) -> Tuple[int, Tuple[int, ...]]:
    """Flat index and index tuple of ``feature_index`` in ``feat_shape`` (negatives as in NumPy)."""
    if isinstance(feature_index, Tensor) and feature_index.dim() == 0:
        feature_index = feature_index.item()
    if isinstance(feature_index, (int, np.integer)) and not isinstance(feature_index, bool):
        idx = [int(feature_index)]
        n = math.prod(feat_shape)
        if not -n <= idx[0] < n:
            raise IndexError(f"feature_index: flat index {idx[0]} is out of range for {n} features")
        flat = idx[0] % n
        return flat, tuple(int(v) for v in np.unravel_index(flat, feat_shape))
    if isinstance(feature_index, Tensor):
        feature_index = [int(v) for v in feature_index.reshape(-1).tolist()]
    try:
        if isinstance(feature_index, (bool, str)):
            raise TypeError
        idx = [_integer(v) for v in feature_index]
    except TypeError:
        raise TypeError(
            f"feature_index: expected an int or a tuple of {len(feat_shape)} ints, "
            f"got {type(feature_index).__name__}"
        ) from None
    if len(idx) != len(feat_shape):
        raise ValueError(
            f"feature_index: expected {len(feat_shape)} indices for features shaped {feat_shape}, "
            f"got {tuple(idx)}"
        )
    for axis, (v, size) in enumerate(zip(idx, feat_shape)):
        if not -size <= v < size:
            raise IndexError(
                f"feature_index: index {v} is out of range for dimension {axis} of size {size} "
                f"(features shaped {feat_shape})"
            )
    norm = tuple(v % size for v, size in zip(idx, feat_shape))
    return int(np.ravel_multi_index(norm, feat_shape)), norm


def _integer(value: object) -> int:
    """An integer index (Python, NumPy or a 0-d integer tensor), else ``TypeError``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError
    return operator.index(value)  # type: ignore[arg-type]


def _check_image_shape(shape: Sequence[int], feat_shape: Tuple[int, ...], argument: str) -> None:
    """``shape`` (given as ``argument``) must be the feature shape ``S`` of the interactions."""
    try:
        shape = tuple(_integer(s) for s in shape)
    except TypeError:
        raise TypeError(f"{argument}: expected a shape, a sequence of ints, got {shape!r}") from None
    if tuple(int(s) for s in shape) != feat_shape:
        raise ValueError(
            f"{argument}: shape {tuple(int(s) for s in shape)} does not match the feature shape "
            f"{feat_shape} of interactions (expected interactions shaped (*S, *S) with S the shape of "
            "one example)"
        )


def image_interaction_map(
    interactions: ArrayLike,
    feature_index: Union[int, Sequence[int]],
    image_shape: Optional[Sequence[int]] = None,
    *,
    exclude_self: bool = True,
) -> npt.NDArray[np.float64]:
    """The ``(H, W)`` map of one feature's interactions with every other feature.

    For the chosen feature ``i = (c, h, w)`` this is its row of the Hessian,
    ``H[c, h, w, :, :, :]``, shaped ``(C, H, W)``, summed over channels:
    ``map[y, x] = sum_k H[i, (k, y, x)]``. The sum keeps the sign and equals
    the interaction of feature ``i`` with a joint change of all channels of
    pixel ``(y, x)``. With ``exclude_self`` the entry ``H[i, i]`` (the
    curvature of the feature with itself) is left out of the sum; the other
    channels of the same pixel still count.

    Args:
        interactions: SmoothHess interactions of one example, ``(*S, *S)``
            with ``S = (C, H, W)`` or ``(H, W)``, optionally with a leading
            batch dimension of 1. Tensor or array.
        feature_index: The feature, as an index tuple into ``S`` (e.g.
            ``(channel, row, col)``) or a flat row-major index.
        image_shape: Optional shape ``S`` of one example, checked against
            ``interactions``.
        exclude_self: Leave out the feature's interaction with itself.

    Returns:
        Array of shape ``(H, W)``.

    Raises:
        ValueError: ``interactions`` is not ``(*S, *S)`` with ``S`` of 2 or 3
            dimensions, or does not match ``image_shape``; ``feature_index``
            has the wrong number of indices.
        IndexError: ``feature_index`` is out of range.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.visualization import image_interaction_map
        >>> h = torch.zeros(2, 3, 3, 2, 3, 3)
        >>> h[1, 0, 2, 0, 1, 1] = 5.0
        >>> h[1, 0, 2, 1, 1, 1] = -1.0
        >>> float(image_interaction_map(h, (1, 0, 2))[1, 1])
        4.0
    """
    matrix, feat_shape = _as_matrix(interactions)
    if image_shape is not None:
        _check_image_shape(image_shape, feat_shape, "image_shape")
    if len(feat_shape) not in (2, 3):
        raise ValueError(
            f"interactions: expected features shaped like an image, (C, H, W) or (H, W), got "
            f"feature shape {feat_shape}"
        )
    flat, _ = _flat_feature_index(feature_index, feat_shape)
    row = matrix[flat].copy()
    if exclude_self:
        row[flat] = 0.0
    row = row.reshape(feat_shape)
    return row.sum(axis=0) if len(feat_shape) == 3 else row


@_closes_figure_on_error
def visualize_image_interactions(
    interactions: ArrayLike,
    original_image: ArrayLike,
    feature_index: Union[int, Sequence[int]],
    *,
    method: str = "blended_heat_map",
    sign: str = "all",
    exclude_self: bool = True,
    outlier_perc: Union[int, float] = 2,
    cmap: Optional[Union[str, Colormap]] = "RdBu_r",
    alpha_overlay: float = 0.5,
    show_colorbar: bool = True,
    mark_color: str = "lime",
    title: Optional[str] = None,
    plt_fig_axis: Optional[FigAxisArg] = None,
    fig_size: Tuple[float, float] = (6.0, 6.0),
    use_pyplot: bool = True,
) -> FigAxis:
    """Interactions of one feature with every other feature, over the image.

    The map drawn is :func:`image_interaction_map` (the feature's Hessian row,
    summed over channels, its own entry left out by default), handed to
    Captum's :func:`~captum.attr.visualization.visualize_image_attr`, which
    scales it by its ``outlier_perc`` rule; with ``sign="all"`` the colours
    run from ``-1`` to ``1`` and zero sits in the middle of the colour map. The
    chosen pixel is outlined in ``mark_color``. The image is shown as Captum
    shows it (grey-scale under a blended heat map); values outside
    ``[0, 1]`` that are not 0..255 integers (e.g. normalised inputs) are
    min-max scaled to ``[0, 1]`` first.

    Args:
        interactions: SmoothHess interactions of one example, ``(*S, *S)``
            with ``S = (C, H, W)`` (or ``(H, W)``), optionally with a leading
            batch dimension of 1. Tensor or array.
        original_image: The example, shaped ``S`` (channels first, as the
            model takes it; optionally with a leading batch dimension of 1).
        feature_index: The feature, as ``(channel, row, col)`` (``(row, col)``
            without channels) or a flat row-major index.
        method: Captum's visualisation method, e.g. ``"blended_heat_map"``
            or ``"heat_map"``.
        sign: Captum's sign option; ``"all"`` shows both signs.
        exclude_self: Leave out the feature's interaction with itself.
        outlier_perc: Captum's outlier percentage for the colour scale.
        cmap: Colour map (``None``: Captum's default for ``sign``).
        alpha_overlay: Opacity of the heat map over the image.
        show_colorbar: Draw Captum's colour bar below the image.
        mark_color: Colour of the outline of the chosen pixel.
        title: Title; default names the feature.
        plt_fig_axis: Optional ``(figure, axis)`` to draw on, or an axis alone.
        fig_size: Size of a new figure, in inches.
        use_pyplot: Create the figure through pyplot and show it;
            ``False`` returns a bare figure without showing it.

    Returns:
        ``(figure, axis)`` of the plot.

    Raises:
        ValueError: ``interactions`` is not ``(*S, *S)`` for the shape ``S`` of
            ``original_image``, or either holds NaN/Inf; ``feature_index`` has
            the wrong number of indices.
        IndexError: ``feature_index`` is out of range.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.visualization import visualize_image_interactions
        >>> image = torch.rand(1, 4, 4)
        >>> h = torch.randn(16, 16)
        >>> h = (h + h.T).reshape(1, 4, 4, 1, 4, 4)
        >>> fig, ax = visualize_image_interactions(h, image, (0, 1, 2), use_pyplot=False)
        >>> ax.get_title()
        'Interactions of feature (0, 1, 2)'
    """
    hwc, image_shape = _image_to_hwc(original_image)
    _check_image_shape(image_shape, _as_matrix(interactions)[1], "original_image")
    heat = image_interaction_map(interactions, feature_index, image_shape, exclude_self=exclude_self)
    _, index = _flat_feature_index(feature_index, image_shape)
    row, col = index[-2], index[-1]
    _check_image_options(method, sign, outlier_perc, alpha_overlay, cmap)

    fig, ax = _create_figure(plt_fig_axis, use_pyplot, fig_size)
    shown_image = _display_image(hwc)
    if shown_image.shape[2] != 3:
        # Captum draws an RGB image (or its grey mean): show any other number of channels in grey.
        shown_image = np.repeat(shown_image.mean(axis=2, keepdims=True), 3, axis=2)
    if np.any(_SIGN_FILTERS[sign](heat) != 0):
        axes_before = list(fig.axes)
        captum_viz.visualize_image_attr(
            heat[:, :, None],  # (H, W, 1): captum 0.8 needs a channel axis
            shown_image,
            method=method,
            sign=sign,
            plt_fig_axis=(fig, ax),
            outlier_perc=outlier_perc,
            cmap=cmap,
            alpha_overlay=alpha_overlay,
            show_colorbar=show_colorbar,
            use_pyplot=False,
        )
        added = [a for a in fig.axes if a not in axes_before]
        if show_colorbar and added:
            added[-1].set_xlabel("interaction (scaled by Captum to [-1, 1])")
    else:
        # Captum cannot scale an all-zero map; show the image and say so.
        kind = "nonzero" if sign in ("all", "absolute_value") else sign
        warnings.warn(
            f"interactions: feature {index} has no {kind} interaction with the others; "
            "drawing the image only",
            stacklevel=3,  # the caller's line, through the figure-closing wrapper
        )
        ax.imshow(np.mean(shown_image, axis=2), cmap="gray")
        ax.set_xticks([])
        ax.set_yticks([])
    ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor=mark_color, linewidth=2.5))
    size = max(hwc.shape[0], hwc.shape[1])
    if size > 16:
        # A one-pixel box is hard to see on a large image: add a ring around it.
        ax.plot(
            [col],
            [row],
            marker="o",
            markersize=14,
            markerfacecolor="none",
            markeredgecolor=mark_color,
            markeredgewidth=2,
        )
    ax.set_xlim(-0.5, hwc.shape[1] - 0.5)
    ax.set_ylim(hwc.shape[0] - 0.5, -0.5)
    ax.set_title(title if title is not None else f"Interactions of feature {index}")
    if use_pyplot and plt_fig_axis is None:
        plt.show()
    return fig, ax


# --------------------------------------------------------------------------- pair plots


def _summary_matrix(
    interactions: Union[ArrayLike, GlobalInteractions], argument: str = "interactions"
) -> Tuple[npt.NDArray[np.float64], Tuple[int, ...], Optional[npt.NDArray[np.float64]]]:
    """Matrix, feature shape and (for a GlobalInteractions of several examples) standard errors."""
    if isinstance(interactions, GlobalInteractions):
        matrix, feat_shape = _as_matrix(interactions.mean, argument)
        stderr = None
        if interactions.n_examples > 1:
            stderr = _to_numpy(interactions.stderr, f"{argument}.stderr").reshape(matrix.shape)
        return matrix, feat_shape, stderr
    matrix, feat_shape = _as_matrix(interactions, argument)
    return matrix, feat_shape, None


def _strongest(
    matrix: npt.NDArray[np.float64], top_k: int
) -> Tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """The ``top_k`` strongest nonzero pairs ``i < j`` of the symmetrised matrix, strongest first."""
    rows, cols, vals = _ranked_pairs(matrix)
    keep = np.flatnonzero(vals != 0)[:top_k]
    return rows[keep], cols[keep], vals[keep]


def _line_widths(values: npt.NDArray[np.float64], max_width: float) -> npt.NDArray[np.float64]:
    """Widths proportional to ``|value|``, the strongest ``max_width``, none thinner than 0.5."""
    mags = np.abs(values)
    top = float(mags.max()) if mags.size else 1.0
    return np.maximum(0.5, max_width * mags / top)


def _sign_legend(ax: Axes, positive_color: str, negative_color: str, outside: bool = False) -> None:
    """A legend of the two sign colours: in the lower right corner, or outside the axes on the right."""
    handles = [
        Line2D([], [], color=positive_color, linewidth=3, label="positive"),
        Line2D([], [], color=negative_color, linewidth=3, label="negative"),
    ]
    if outside:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False)
    else:
        ax.legend(handles=handles, loc="lower right", fontsize=9, frameon=False)


@_closes_figure_on_error
def visualize_interaction_network(
    interactions: Union[ArrayLike, GlobalInteractions],
    feature_names: Optional[Sequence[str]] = None,
    top_k: int = 20,
    *,
    positive_color: str = "tab:red",
    negative_color: str = "tab:blue",
    max_width: float = 6.0,
    label_all: Optional[bool] = None,
    title: Optional[str] = "Strongest interactions",
    show_legend: bool = True,
    plt_fig_axis: Optional[FigAxisArg] = None,
    fig_size: Tuple[float, float] = (7.0, 7.0),
    use_pyplot: bool = True,
) -> FigAxis:
    """The strongest pairs as a network: features on a circle, one edge per pair.

    Features sit on a circle clockwise from the top, in order; the ``top_k``
    strongest pairs ``i < j`` of the symmetrised matrix are drawn as curved
    edges, their width proportional to ``|value|`` and their colour by sign.
    Only those edges and their endpoints' labels are drawn (the other
    features are small grey dots), so the plot stays readable with hundreds
    of features.

    Args:
        interactions: Interactions of one example, ``(d, d)``, group
            ``(G, G)`` or ``(*S, *S)`` (optionally with a leading batch
            dimension of 1), or a
            :class:`~captum_smoothhess.GlobalInteractions` (its ``mean`` is
            drawn). Tensor or array.
        feature_names: Optional ``d`` names. Default: indices (index tuples
            for features shaped ``S``).
        top_k: Number of pairs drawn (fewer if fewer are nonzero).
        positive_color: Colour of positive interactions.
        negative_color: Colour of negative interactions.
        max_width: Line width of the strongest edge, in points.
        label_all: Label every feature, not only the edges' endpoints.
            Default: only when there are at most 24 features.
        title: Title, or ``None`` for none.
        show_legend: Draw a legend of the two colours.
        plt_fig_axis: Optional ``(figure, axis)`` to draw on, or an axis alone.
        fig_size: Size of a new figure, in inches.
        use_pyplot: Create the figure through pyplot and show it (Captum's
            convention); ``False`` returns a bare figure without showing it.

    Returns:
        ``(figure, axis)`` of the plot.

    Raises:
        ValueError: ``interactions`` is not square, is a batch of several
            examples or holds NaN/Inf; ``feature_names`` has the wrong
            length; ``top_k`` < 1; ``max_width`` is not positive.
        TypeError: ``interactions`` is of another type.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.visualization import visualize_interaction_network
        >>> h = torch.zeros(100, 100)
        >>> h[3, 40] = h[40, 3] = 2.0
        >>> h[7, 8] = h[8, 7] = -1.0
        >>> fig, ax = visualize_interaction_network(h, top_k=5, use_pyplot=False)
        >>> len(ax.patches), sorted(t.get_text() for t in ax.texts)
        (2, ['3', '40', '7', '8'])
    """
    matrix, feat_shape, _ = _summary_matrix(interactions)
    d = matrix.shape[0]
    names = _feature_names(feature_names, feat_shape)
    top_k = _check_positive_int(top_k, "top_k", 1)
    max_width = _check_positive(max_width, "max_width")
    rows, cols, vals = _strongest(matrix, top_k)

    fig, ax = _create_figure(plt_fig_axis, use_pyplot, fig_size)
    angles = np.pi / 2 - 2 * np.pi * np.arange(d) / d
    pos = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    ends = sorted(set(rows.tolist()) | set(cols.tolist()))
    ax.scatter(pos[:, 0], pos[:, 1], s=max(2.0, min(30.0, 1500.0 / d)), color="0.75", zorder=2)
    if ends:
        ax.scatter(pos[ends, 0], pos[ends, 1], s=40, color="0.15", zorder=4)
    widths = _line_widths(vals, max_width)
    for i, j, v, w in reversed(list(zip(rows, cols, vals, widths))):  # strongest on top
        control = 0.35 * (pos[i] + pos[j]) / 2  # pulled towards the centre: a chord-diagram curve
        path = MplPath([pos[i], control, pos[j]], [MplPath.MOVETO, MplPath.CURVE3, MplPath.CURVE3])
        colour = positive_color if v > 0 else negative_color
        ax.add_patch(PathPatch(path, facecolor="none", edgecolor=colour, linewidth=w, alpha=0.85, zorder=3))
    labelled = range(d) if (label_all if label_all is not None else d <= 24) else ends
    font = 10 if len(labelled) <= 24 else max(5.0, 10 - 0.1 * (len(labelled) - 24))
    for k in labelled:
        angle = float(np.degrees(angles[k])) % 360
        left = 90 < angle < 270
        ax.text(
            1.07 * pos[k, 0],
            1.07 * pos[k, 1],
            names[k],
            rotation=angle - 180 if left else angle,
            rotation_mode="anchor",
            ha="right" if left else "left",
            va="center",
            fontsize=font,
        )
    ax.set_xlim(-1.45, 1.45)
    ax.set_ylim(-1.45, 1.45)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title)
    if show_legend and len(vals):
        _sign_legend(ax, positive_color, negative_color)
    if use_pyplot and plt_fig_axis is None:
        plt.show()
    return fig, ax


@_closes_figure_on_error
def visualize_top_pairs(
    interactions: Union[ArrayLike, GlobalInteractions],
    feature_names: Optional[Sequence[str]] = None,
    top_k: int = 10,
    *,
    stderr: Optional[ArrayLike] = None,
    error_scale: float = 1.0,
    positive_color: str = "tab:red",
    negative_color: str = "tab:blue",
    title: Optional[str] = "Strongest interactions",
    xlabel: str = "interaction",
    plt_fig_axis: Optional[FigAxisArg] = None,
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = True,
) -> FigAxis:
    """Horizontal bar chart of the strongest pairs, with error bars when standard errors are known.

    The ``top_k`` pairs ``i < j`` with the largest ``|value|`` of the
    symmetrised matrix, strongest at the top, each bar its signed value,
    coloured by sign. Standard errors come from a
    :class:`~captum_smoothhess.GlobalInteractions` (of two or more examples)
    or from ``stderr``; the bars then carry ``error_scale`` standard errors
    either side.

    Args:
        interactions: A :class:`~captum_smoothhess.GlobalInteractions`, or the
            interactions of one example, ``(d, d)``, ``(G, G)`` or
            ``(*S, *S)`` (optionally with a leading batch dimension of 1).
        feature_names: Optional ``d`` names. Default: indices (index tuples
            for features shaped ``S``).
        top_k: Number of pairs (fewer if there are fewer pairs).
        stderr: Standard errors of a matrix ``interactions``, shaped like it
            (not with a ``GlobalInteractions``, which carries its own).
        error_scale: Multiple of the standard error drawn, e.g. 1.96 for
            approximate 95% intervals.
        positive_color: Colour of positive interactions.
        negative_color: Colour of negative interactions.
        title: Title, or ``None`` for none.
        xlabel: Label of the value axis.
        plt_fig_axis: Optional ``(figure, axis)`` to draw on, or an axis alone.
        fig_size: Size of a new figure, in inches; default grows with ``top_k``.
        use_pyplot: Create the figure through pyplot and show it (Captum's
            convention); ``False`` returns a bare figure without showing it.

    Returns:
        ``(figure, axis)`` of the plot.

    Raises:
        ValueError: ``interactions`` is not square, is a batch of several
            examples or holds NaN/Inf; ``stderr`` does not match it, is
            negative or is given with a ``GlobalInteractions``;
            ``feature_names`` has the wrong length; ``top_k`` < 1;
            ``error_scale`` is not positive.
        TypeError: ``interactions`` or ``stderr`` is of another type.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.visualization import visualize_top_pairs
        >>> h = torch.tensor([[0.0, -3.0, 1.0], [-3.0, 0.0, 2.0], [1.0, 2.0, 0.0]])
        >>> fig, ax = visualize_top_pairs(h, ["age", "dose", "bmi"], top_k=2,
        ...                               stderr=torch.full((3, 3), 0.2), use_pyplot=False)
        >>> [t.get_text() for t in ax.get_yticklabels()]
        ['age x dose', 'dose x bmi']
        >>> [float(b.get_width()) for b in ax.patches]
        [-3.0, 2.0]
    """
    matrix, feat_shape, errors = _summary_matrix(interactions)
    if stderr is not None:
        if isinstance(interactions, GlobalInteractions):
            raise ValueError("stderr: a GlobalInteractions carries its own standard errors")
        errors = _to_numpy(stderr, "stderr")
        if errors.size != matrix.size:
            raise ValueError(
                f"stderr: shape {tuple(errors.shape)} does not match interactions of "
                f"{matrix.shape[0]} features"
            )
        errors = errors.reshape(matrix.shape)
        if np.any(errors < 0):
            raise ValueError("stderr: standard errors must be non-negative")
    names = _feature_names(feature_names, feat_shape)
    top_k = _check_positive_int(top_k, "top_k", 1)
    error_scale = _check_positive(error_scale, "error_scale")
    rows, cols, vals = _ranked_pairs(matrix)
    rows, cols, vals = rows[:top_k], cols[:top_k], vals[:top_k]

    k = len(vals)
    fig, ax = _create_figure(plt_fig_axis, use_pyplot, fig_size or (7.0, 1.2 + 0.38 * max(k, 1)))
    xerr = None
    if errors is not None:
        sym_err = 0.5 * (errors + errors.T)
        xerr = error_scale * sym_err[rows, cols]
    colours = [positive_color if v > 0 else negative_color for v in vals]
    ax.barh(
        np.arange(k), vals, xerr=xerr, color=colours, edgecolor="0.2", linewidth=0.5, capsize=3, height=0.7
    )
    ax.axvline(0.0, color="0.3", linewidth=0.8)
    ax.set_yticks(np.arange(k))
    ax.set_yticklabels([f"{names[i]} x {names[j]}" for i, j in zip(rows, cols)])
    ax.set_ylim(k - 0.5, -0.5)  # strongest at the top
    ax.set_xlabel(xlabel if xerr is None else f"{xlabel} (± {error_scale:g} s.e.)")
    ax.grid(True, axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    if use_pyplot and plt_fig_axis is None:
        plt.show()
    return fig, ax


def _token_matrix(
    interactions: Union[ArrayLike, GlobalInteractions], n_tokens: int
) -> npt.NDArray[np.float64]:
    """``(T, T)`` token interactions; ``(T, *E, T, *E)`` summed over the embedding dimensions."""
    matrix, feat_shape, _ = _summary_matrix(interactions)
    if feat_shape[0] != n_tokens:
        raise ValueError(
            f"interactions: {feat_shape[0]} features along the first dimension for {n_tokens} tokens "
            "(expected (T, T), or (T, *E, T, *E) per embedding dimension)"
        )
    per = math.prod(feat_shape[1:])
    return matrix.reshape(n_tokens, per, n_tokens, per).sum(axis=(1, 3))


@_closes_figure_on_error
def visualize_token_interactions(
    tokens: Sequence[str],
    interactions: Union[ArrayLike, GlobalInteractions],
    top_k: int = 10,
    *,
    positive_color: str = "tab:red",
    negative_color: str = "tab:blue",
    max_width: float = 5.0,
    fontsize: float = 12.0,
    title: Optional[str] = None,
    show_legend: bool = True,
    plt_fig_axis: Optional[FigAxisArg] = None,
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = True,
) -> FigAxis:
    """A sentence as a row of tokens, with arcs between the most interacting tokens.

    Each of the ``top_k`` strongest token pairs ``i < j`` (of the symmetrised
    matrix) gets an arc above the text, from token ``i`` to token ``j``: its
    width is proportional to ``|value|``, its colour gives the sign, its
    height grows with the distance, so nested arcs do not overlap. Tokens in
    a drawn pair are black, the others grey.

    Args:
        tokens: The ``T`` tokens, as strings, in order.
        interactions: ``(T, T)`` token interactions (e.g. SmoothHess with a
            ``feature_mask`` of one group per token), or ``(T, *E, T, *E)``
            interactions of the token embeddings, summed over the embedding
            dimensions (which equals the grouped result), optionally with a
            leading batch dimension of 1; or a
            :class:`~captum_smoothhess.GlobalInteractions` over tokens.
        top_k: Number of arcs (fewer if fewer pairs are nonzero).
        positive_color: Colour of positive interactions.
        negative_color: Colour of negative interactions.
        max_width: Line width of the strongest arc, in points.
        fontsize: Font size of the tokens.
        title: Title, or ``None`` for none.
        show_legend: Draw a legend of the two colours.
        plt_fig_axis: Optional ``(figure, axis)`` to draw on, or an axis alone.
        fig_size: Size of a new figure, in inches; default grows with the text.
        use_pyplot: Create the figure through pyplot and show it (Captum's
            convention); ``False`` returns a bare figure without showing it.

    Returns:
        ``(figure, axis)`` of the plot.

    Raises:
        ValueError: ``tokens`` is empty; ``interactions`` does not have one
            row per token, is not square or holds NaN/Inf; ``top_k`` < 1;
            ``max_width`` or ``fontsize`` is not positive.
        TypeError: ``tokens`` is a single string; ``interactions`` is of
            another type.

    Examples:
        >>> import torch
        >>> from captum_smoothhess.visualization import visualize_token_interactions
        >>> tokens = ["not", "very", "good", "at", "all"]
        >>> h = torch.zeros(5, 5)
        >>> h[0, 2] = h[2, 0] = -1.5
        >>> h[1, 2] = h[2, 1] = 0.5
        >>> fig, ax = visualize_token_interactions(tokens, h, top_k=3, use_pyplot=False)
        >>> len(ax.patches), [t.get_text() for t in ax.texts]
        (2, ['not', 'very', 'good', 'at', 'all'])
    """
    if isinstance(tokens, str):
        raise TypeError("tokens: expected a sequence of token strings, got a single string")
    if not isinstance(tokens, Iterable):
        raise TypeError(f"tokens: expected a sequence of token strings, got {type(tokens).__name__}")
    if isinstance(tokens, Tensor):  # token ids: label them by their values, not "tensor(7)"
        tokens = tokens.reshape(-1).tolist()
    words = [str(t) for t in tokens]
    if not words:
        raise ValueError("tokens: expected at least one token")
    matrix = _token_matrix(interactions, len(words))
    top_k = _check_positive_int(top_k, "top_k", 1)
    max_width = _check_positive(max_width, "max_width")
    fontsize = _check_positive(fontsize, "fontsize")
    rows, cols, vals = _strongest(matrix, top_k)

    # Token centres in character units, one space between tokens.
    lengths = np.array([max(1, len(w)) for w in words], dtype=np.float64)
    starts = np.concatenate([[0.0], np.cumsum(lengths + 1.0)[:-1]])
    centres = starts + lengths / 2
    total = float(starts[-1] + lengths[-1])
    span = max((float(abs(centres[j] - centres[i])) for i, j in zip(rows, cols)), default=1.0)
    height = 0.45 * span  # the highest arc, in character units
    unit = 0.7 * fontsize / 72  # inches per character unit, the same along both axes
    size = fig_size or (min(30.0, max(4.0, unit * (total + 2.0) + 0.4)), unit * (height + 3.0) + 0.8)
    fig, ax = _create_figure(plt_fig_axis, use_pyplot, size)

    ends = set(rows.tolist()) | set(cols.tolist())
    for k, (word, x) in enumerate(zip(words, centres)):
        ax.text(
            x, 0.0, word, ha="center", va="top", fontsize=fontsize, color="black" if k in ends else "0.55"
        )
    widths = _line_widths(vals, max_width)
    for i, j, v, w in reversed(list(zip(rows, cols, vals, widths))):  # strongest on top
        a, b = float(centres[i]), float(centres[j])
        ax.add_patch(
            Arc(
                ((a + b) / 2, 0.3),
                abs(b - a),
                2 * height * abs(b - a) / span,
                theta1=0,
                theta2=180,
                edgecolor=positive_color if v > 0 else negative_color,
                linewidth=w,
                alpha=0.85,
            )
        )
    ax.set_xlim(-1.0, total + 1.0)
    ax.set_ylim(-2.0, height + 1.0)
    ax.axis("off")
    if title:
        ax.set_title(title)
    if show_legend and len(vals):
        _sign_legend(ax, positive_color, negative_color, outside=True)
    if use_pyplot and plt_fig_axis is None:
        plt.show()
    return fig, ax


# --------------------------------------------------------------------------- kernels


def _default_kernels() -> List[Kernel]:
    return [Gaussian(), Poisson(), Hyperbolic(), Sigmoid(), Rect()]


def kernel_densities(
    kernels: Optional[Union[Kernel, str, Sequence[Union[Kernel, str]]]] = None,
    stdevs: float = 1.0,
    points: Optional[ArrayLike] = None,
) -> Tuple[npt.NDArray[np.float64], List[Tuple[Kernel, npt.NDArray[np.float64]]]]:
    """1-D densities ``k_eps(t) = k(t / eps) / eps`` of kernels at bandwidth ``eps``.

    The density of a kernel is its ``log_prob`` on points of shape ``(n, 1)``,
    i.e. the kernel on R^1: a coordinate's marginal for the product kernels
    and, for the Poisson kernel, the standard Cauchy density (which is also
    the 1-D marginal of the multivariate Cauchy). A kernel without
    ``log_prob`` falls back to the numerical derivative of its
    ``marginal_cdf``.

    Args:
        kernels: Kernels or their names (or one kernel or name). Default:
            ``Gaussian()``, ``Poisson()``, ``Hyperbolic()``, ``Sigmoid()``,
            ``Rect()``.
        stdevs: The bandwidth ``eps``, positive.
        points: Optional 1-D grid of ``t``. Default: 1001 points on
            ``[-4 eps, 4 eps]``.

    Returns:
        ``(t, [(kernel, density), ...])``, NumPy arrays of the grid's length.

    Raises:
        ValueError: ``stdevs`` is not positive; ``points`` is not 1-D; a
            kernel is unknown or defines neither ``log_prob`` nor
            ``marginal_cdf``.

    Examples:
        >>> import numpy as np
        >>> from captum_smoothhess.visualization import kernel_densities
        >>> t, curves = kernel_densities(["gaussian"], stdevs=2.0, points=np.array([0.0]))
        >>> round(float(curves[0][1][0]), 4)  # 1 / (2 sqrt(2 pi))
        0.1995
    """
    eps = _check_positive(stdevs, "stdevs")
    if points is None:
        t = np.linspace(-4 * eps, 4 * eps, 1001)
    else:
        t = _to_numpy(points, "points")
        if t.ndim != 1 or t.size == 0:
            raise ValueError(f"points: expected a non-empty 1-D grid, got shape {t.shape}")
    if isinstance(kernels, (str, Kernel)):
        kernels = [kernels]
    chosen = _default_kernels() if kernels is None else [get_kernel(k, "kernels") for k in kernels]
    u = torch.from_numpy(t / eps).to(torch.float64)
    curves: List[Tuple[Kernel, npt.NDArray[np.float64]]] = []
    for kernel in chosen:
        try:
            dens = kernel.log_prob(u.reshape(-1, 1)).exp().numpy() / eps
        except NotImplementedError:
            if t.size < 2:
                raise ValueError(
                    f"kernels: {kernel!r} has no log_prob, and its density cannot be derived from "
                    "marginal_cdf on a single point"
                ) from None
            try:
                cdf = kernel.marginal_cdf(u).numpy()
            except NotImplementedError:
                raise ValueError(
                    f"kernels: {kernel!r} defines neither log_prob nor marginal_cdf, so its density "
                    "cannot be drawn"
                ) from None
            dens = np.gradient(cdf, t)
        curves.append((kernel, np.asarray(dens, dtype=np.float64)))
    return t, curves


@_closes_figure_on_error
def visualize_kernels(
    kernels: Optional[Union[Kernel, str, Sequence[Union[Kernel, str]]]] = None,
    stdevs: float = 1.0,
    *,
    x_range: Optional[Tuple[float, float]] = None,
    n_points: int = 1001,
    title: Optional[str] = None,
    plt_fig_axis: Optional[FigAxisArg] = None,
    fig_size: Tuple[float, float] = (7.0, 4.5),
    use_pyplot: bool = True,
) -> FigAxis:
    """The 1-D densities of smoothing kernels at one bandwidth, one line each.

    At equal ``stdevs`` the unit-variance kernels (all but Poisson, whose
    variance is infinite and which has unit scale instead) add the same noise
    energy and differ only in shape: compare the Gaussian's light tails, the
    Cauchy tails of the Poisson kernel and the flat top of ``Rect``. The
    curves are those of :func:`kernel_densities`.

    Args:
        kernels: Kernels or their names (or one). Default: all five, ``Gaussian()``,
            ``Poisson()``, ``Hyperbolic()``, ``Sigmoid()``, ``Rect()``.
        stdevs: The bandwidth ``eps``, positive.
        x_range: ``(low, high)`` of the plot. Default: ``(-4 eps, 4 eps)``.
        n_points: Number of grid points (at least 2).
        title: Title; default states the bandwidth.
        plt_fig_axis: Optional ``(figure, axis)`` to draw on, or an axis alone.
        fig_size: Size of a new figure, in inches.
        use_pyplot: Create the figure through pyplot and show it;
            ``False`` returns a bare figure without showing it.

    Returns:
        ``(figure, axis)`` of the plot.

    Raises:
        ValueError: ``stdevs`` is not positive, ``x_range`` is not an
            increasing pair, ``n_points`` < 2, or a kernel is unknown.

    Examples:
        >>> from captum_smoothhess.visualization import visualize_kernels
        >>> fig, ax = visualize_kernels(stdevs=0.5, use_pyplot=False)
        >>> [line.get_label() for line in ax.get_lines()]
        ['Gaussian()', 'Poisson()', 'Hyperbolic(alpha=1.0)', 'Sigmoid()', 'Rect()']
    """
    eps = _check_positive(stdevs, "stdevs")
    if x_range is None:
        low, high = -4 * eps, 4 * eps
    else:
        try:
            low, high = (float(v) for v in x_range)
        except (TypeError, ValueError):
            raise ValueError(f"x_range: expected a (low, high) pair of numbers, got {x_range!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"x_range: expected finite low < high, got {x_range!r}")
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 2:
        raise ValueError(f"n_points: expected an integer of at least 2, got {n_points!r}")
    t, curves = kernel_densities(kernels, eps, np.linspace(low, high, int(n_points)))

    fig, ax = _create_figure(plt_fig_axis, use_pyplot, fig_size)
    for kernel, dens in curves:
        ax.plot(t, dens, label=repr(kernel), linewidth=1.8)
    ax.set_xlim(low, high)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("t (one coordinate of the noise)")
    ax.set_ylabel(r"density $k_\varepsilon(t) = k(t/\varepsilon)/\varepsilon$")
    ax.set_title(title if title is not None else f"Smoothing kernels, stdevs = {eps:g}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=9)
    if use_pyplot and plt_fig_axis is None:
        plt.show()
    return fig, ax
