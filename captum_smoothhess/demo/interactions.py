"""Demo section 1: SmoothHess pixel interactions of one test digit, and patch (group) interactions."""

from __future__ import annotations

from typing import List

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from ..datasets import Digits
from ..smoothhess import SmoothHess
from ..visualization import top_interactions, visualize_image_interactions, visualize_interactions
from ._common import _PATCH_NAMES, _bar_chunk, _draw_patches, _image, _log, _patch_mask, _save, _Settings


def section(out: str, net: nn.Module, data: Digits, s: _Settings, gen: torch.Generator) -> List[str]:
    """Pixel and patch interactions of one test digit."""
    _log("SmoothHess pixel interactions of a test digit")
    x = data.x_test[:1].reshape(1, 1, 8, 8)
    label = int(data.y_test[0])
    stdevs = 0.5
    sh = SmoothHess(net)
    # Sample until the estimated relative error is at most the tolerance (n_samples is the cap).
    hess_all, err = sh.attribute(
        x,
        target=label,
        stdevs=stdevs,
        n_samples=s.interaction_samples,
        tolerance=s.interaction_tolerance,
        generator=gen,
        show_progress=True,
    )
    calls, rel_err = int(err.n_samples[0]), float(err.relative[0])
    if rel_err <= s.interaction_tolerance:
        stopped = (
            f"sampling with `tolerance={s.interaction_tolerance}` until its estimated relative error "
            f"was {rel_err:.3f}"
        )
    else:  # the cap n_samples was reached first
        stopped = (
            f"sampling with `tolerance={s.interaction_tolerance}` up to its cap of {s.interaction_samples} "
            f"samples, where its estimated relative error was still {rel_err:.3f}"
        )
    h_all = hess_all[0].reshape(64, 64)
    # Significant pairs: |H| above twice its standard error; the others are blanked.
    significant = h_all.abs() > 2 * err.stderr[0].reshape(64, 64)
    n_sig = int(torch.triu(significant, diagonal=1).sum())
    h = torch.where(significant, h_all, torch.zeros_like(h_all))
    hess = h.reshape(hess_all.shape)
    off = h - torch.diag(torch.diagonal(h))
    pixel = int(off.abs().sum(1).argmax())
    row, col = divmod(pixel, 8)
    names = [f"({r},{c})" for r in range(8) for c in range(8)]

    fig = Figure(figsize=(16.5, 5.2))
    ax_digit, ax_heat, ax_img = fig.subplots(1, 3, gridspec_kw={"width_ratios": [0.8, 1.35, 1]})
    ax_digit.imshow(_image(data, data.x_test[0])[0].numpy(), cmap="gray", vmin=0, vmax=1)
    ax_digit.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="lime", linewidth=2.5))
    ax_digit.set_xticks(range(8))
    ax_digit.set_yticks(range(8))
    ax_digit.set_xlabel("col")
    ax_digit.set_ylabel("row")
    ax_digit.set_title(f"Test digit (class {label}), pixel ({row}, {col}) boxed")
    visualize_interactions(
        h,
        clip_percentile=99,
        show_diagonal=False,
        top_k=3,
        title="SmoothHess, pixel pairs with |H| > 2 stderr",
        axis_label="pixel index (8 row + col)",
        plt_fig_axis=(fig, ax_heat),
        use_pyplot=False,
    )
    visualize_image_interactions(
        hess[0],
        _image(data, data.x_test[0]),
        (0, row, col),
        title=f"Interactions of pixel ({row}, {col}) with the others",
        plt_fig_axis=(fig, ax_img),
        use_pyplot=False,
    )
    pixels_png = _save(fig, out, "interactions_pixels.png")
    table = top_interactions(h, k=8, feature_names=names).format("markdown")

    _log("SmoothHess group interactions between 2x2 patches")
    mask = _patch_mask()
    groups = sh.attribute(
        x,
        target=label,
        stdevs=stdevs,
        n_samples=s.group_samples,
        n_samples_batch_size=_bar_chunk(s.group_samples),
        feature_mask=mask,
        generator=gen,
        show_progress=True,
    )
    assert isinstance(groups, Tensor)
    patch_names = list(_PATCH_NAMES)
    fig = Figure(figsize=(11.5, 5.0))
    ax_g, ax_m = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    visualize_interactions(
        groups[0],
        feature_names=patch_names,
        top_k=3,
        title="Group interactions between 2x2 patches",
        axis_label="patch P(row)(col)",
        plt_fig_axis=(fig, ax_g),
        use_pyplot=False,
    )
    _draw_patches(ax_m, _image(data, data.x_test[0])[0], f"The digit ({label}) and its 16 patches")
    groups_png = _save(fig, out, "interactions_groups.png")
    group_table = top_interactions(groups[0], k=5, feature_names=patch_names).format("markdown")

    return [
        "## 1. SmoothHess pixel interactions",
        "",
        f"A ReLU MLP classifies scikit-learn's 8x8 digits. For the first test digit (class {label}), "
        f"SmoothHess estimates the Hessian of the class-{label} logit smoothed by a Gaussian of "
        f"`stdevs={stdevs}` (in standardised pixel units), {stopped}: {calls} gradient "
        f"calls (orthogonal sampling; `return_error` standard errors). {n_sig} of the 2016 pixel pairs are "
        "significant (|H| > 2 standard errors); the others are blanked in the figure and the table. "
        "The network's own Hessian is zero almost everywhere; the smoothed one says which pairs of "
        "pixels act together: a positive entry means that raising both pixels raises the logit by "
        "more than the sum of raising each alone.",
        "",
        f"Middle: the significant pixel pairs (diagonal hidden, colours clipped at the 99th percentile, "
        "the three "
        f"strongest pairs outlined, numbered by rank). Right: the row of the most interacting pixel "
        f"({row}, {col}) over the image (green box), drawn by Captum's `visualize_image_attr`: red pixels "
        "strengthen its effect on the logit, blue ones weaken it.",
        "",
        f"![pixel interactions]({pixels_png})",
        "",
        "The strongest pairs (`top_interactions`):",
        "",
        table,
        "",
        "### Group interactions",
        "",
        "With a Captum-style `feature_mask` SmoothHess returns the interactions between groups of "
        "features directly (here the 16 patches of 2x2 pixels), without forming the 64x64 matrix.",
        "",
        f"![group interactions]({groups_png})",
        "",
        group_table,
        "",
    ]
