"""Demo section 6: which patch pairs of the digits interact across the test set, with standard errors."""

from __future__ import annotations

from typing import List

import torch
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..datasets import Digits
from ..global_interactions import global_interactions
from ..smoothhess import SmoothHess
from ..visualization import visualize_interaction_network, visualize_top_pairs
from ._common import _PATCH_NAMES, _draw_patches, _fmt, _log, _patch_mask, _save, _Settings

_STDEVS = 0.5


def section(out: str, net: nn.Module, data: Digits, s: _Settings, seed: int) -> List[str]:
    """Mean group interactions between 2x2 patches over test digits, each for its true class."""
    n = min(s.global_examples, len(data.y_test))
    _log(f"Interactions across {n} test digits (global_interactions over a DataLoader)")
    images = data.x_test[:n].reshape(-1, 1, 8, 8)
    loader = DataLoader(TensorDataset(images, data.y_test[:n]), batch_size=64)
    gi = global_interactions(
        SmoothHess(net),
        loader,  # (x, y) batches: each digit is explained for the logit of its own label
        stdevs=_STDEVS,
        n_samples=s.global_samples,
        feature_mask=_patch_mask(),
        generator=torch.Generator().manual_seed(seed),
        show_progress=True,
    )
    names = list(_PATCH_NAMES)
    top_k = 10

    fig = Figure(figsize=(17.5, 5.6))
    ax_bar, ax_net, ax_img = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.15, 1.0, 0.75]})
    visualize_top_pairs(
        gi,
        names,
        top_k=top_k,
        error_scale=2.0,
        title=f"Strongest mean patch interactions, {n} test digits",
        xlabel="mean interaction",
        plt_fig_axis=(fig, ax_bar),
        use_pyplot=False,
    )
    visualize_interaction_network(
        gi,
        names,
        top_k=top_k,
        title="The same pairs between patches",
        plt_fig_axis=(fig, ax_net),
        use_pyplot=False,
    )
    mean_digit = ((data.x_test[:n] * data.std + data.mean) / 16.0).clamp(0, 1).mean(0).reshape(8, 8)
    _draw_patches(ax_img, mean_digit, "The 16 patches (over the mean test digit)")
    fig.tight_layout()
    png = _save(fig, out, "interactions_dataset.png")

    top = gi.top_pairs(top_k)
    rows = [
        f"| {names[int(i)]} x {names[int(j)]} | {_fmt(float(v))} | {_fmt(float(e))} | "
        f"{_fmt(float(gi.mean_abs[i, j]))} |"
        for v, e, i, j in zip(top.values, top.stderr, top.index_i, top.index_j)
    ]
    iu = torch.triu_indices(len(names), len(names), offset=1)
    z = gi.mean[iu[0], iu[1]].abs() / gi.stderr[iu[0], iu[1]]
    n_sig = int((z > 2).sum())
    return [
        "## 6. Across the test set",
        "",
        "Which patches act together for the classifier in general, not only on one digit? "
        f"`global_interactions` runs SmoothHess (`stdevs={_STDEVS}`, {s.global_samples} samples, the "
        f"16 patches as `feature_mask` groups) over a `DataLoader` of {n} test digits, each explained "
        "for the logit of its own label (the loader's `(x, y)` batches carry the targets), and streams "
        "the mean interaction, the mean absolute interaction and the standard error of the mean over "
        "the digits; memory does not grow with their number.",
        "",
        "Left: the strongest mean pair interactions, with bars of two standard errors either side. "
        "Middle: the same pairs as a network (edge width by magnitude, red positive, blue negative). "
        "Right: where the 16 patches lie, over the mean test digit.",
        "",
        f"![interactions across the test set]({png})",
        "",
        "| patch pair | mean interaction | standard error | mean absolute interaction |",
        "|---|---|---|---|",
        *rows,
        "",
        f"{n_sig} of the {len(z)} patch pairs have a mean more than two standard errors from zero. "
        "Where the mean absolute interaction is much larger than the mean, the pair interacts "
        "strongly but with a sign that changes from digit to digit (e.g. between classes).",
        "",
    ]
