"""The end-to-end demo behind ``python -m captum_smoothhess demo [--out DIR] [--quick]``.

Everything runs on data that ships offline (scikit-learn's bundled 8x8 digits
and the synthetic Four Quadrant data) with small ReLU networks trained here, in
a few seconds, from fixed seeds. The demo writes PNG figures and a
``report.md`` that embeds them into the output folder:

1. SmoothHess pixel interactions of a digit classifier, the strongest pairs,
   and group interactions between 2x2 image patches;
2. the Four Quadrant interaction at the origin as ``stdevs`` varies, next to
   its closed form, and the SoftPlus baseline as ``beta`` varies;
3. the five smoothing kernels and the smoothed gradients they give
   (:class:`~captum_smoothhess.KernelNoiseTunnel` over Captum's ``Saliency``);
4. CASO vs CAFO sparse saliency maps;
5. the perturbation-MSE comparison of first- and second-order Taylor models.

The global random state of the caller is left as it was (all draws use
private generators or a forked RNG), and figures are drawn on bare
``matplotlib.figure.Figure`` objects (Agg canvas), so no display is needed.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from captum.attr import Saliency
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from torch import Tensor, nn

from ._training import _fit
from .baselines import exact_hessian, softplus_surrogate
from .caso import CAFO, CASO
from .datasets import Digits, four_quadrant, four_quadrant_interaction, load_digits_tensors
from .kernels import Gaussian, Hyperbolic, Kernel, Poisson, Rect, Sigmoid
from .metrics import perturbation_mse
from .noise_tunnel import KernelNoiseTunnel
from .smoothhess import SmoothHess
from .visualization import (
    top_interactions,
    visualize_image_interactions,
    visualize_interactions,
    visualize_kernels,
)

__all__ = ["run_demo"]

_DPI = 110


@dataclass(frozen=True)
class _Settings:
    """Sizes of one demo run (the full run and the ``--quick`` smoke run)."""

    digits_epochs: int = 60
    fq_steps: int = 1500
    fq_points: int = 3000
    interaction_samples: int = 40000
    group_samples: int = 20000
    fq_samples: int = 20000
    fq_stdevs: Tuple[float, ...] = (0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
    fq_betas: Tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    nt_samples: int = 400
    caso_samples: int = 2000
    pmse_val: int = 10
    pmse_test: int = 30
    pmse_samples: int = 3000
    pmse_perturbations: int = 1000
    pmse_radii: Tuple[float, ...] = (0.5, 2.0)
    stdevs_grid: Tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    beta_grid: Tuple[float, ...] = (3.0, 10.0, 30.0, 100.0)


_FULL = _Settings()
_QUICK = _Settings(
    digits_epochs=20,
    fq_steps=300,
    fq_points=1000,
    interaction_samples=4000,
    group_samples=2000,
    fq_samples=2000,
    fq_stdevs=(0.05, 0.2, 0.5),
    fq_betas=(2.0, 10.0, 50.0),
    nt_samples=50,
    caso_samples=400,
    pmse_val=3,
    pmse_test=5,
    pmse_samples=600,
    pmse_perturbations=200,
    pmse_radii=(0.5,),
    stdevs_grid=(0.1, 0.4),
    beta_grid=(10.0, 30.0),
)

_KERNELS: Tuple[Tuple[str, Kernel], ...] = (
    ("Gaussian", Gaussian()),
    ("Poisson", Poisson()),
    ("Hyperbolic", Hyperbolic()),
    ("Sigmoid", Sigmoid()),
    ("Rect", Rect()),
)


_START = [time.perf_counter()]


def _log(message: str) -> None:
    print(f"[demo {time.perf_counter() - _START[0]:5.1f}s] {message}", flush=True)


def _save(fig: Figure, out: str, name: str) -> str:
    """Save ``fig`` as ``out/name`` and return ``name`` (the report's relative link)."""
    fig.savefig(os.path.join(out, name), dpi=_DPI, bbox_inches="tight")
    return name


def _bar_chunk(n_samples: int) -> int:
    """A sample batch size that makes SmoothHess's progress bar move in about ten steps."""
    return max(2, 2 * (n_samples // 20))


def _fmt(value: float) -> str:
    return f"{value:.3g}"


# --------------------------------------------------------------------------- models


def _digits_model(data: Digits, epochs: int) -> Tuple[nn.Sequential, float]:
    """A 64-128-128-10 ReLU MLP on ``(B, 1, 8, 8)`` digit images, and its test accuracy."""
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    x = data.x_train.reshape(-1, 1, 8, 8)
    _fit(net, x, data.y_train, nn.functional.cross_entropy, epochs, lr=1e-3, batch=128, seed=1)
    with torch.no_grad():
        acc = float((net(data.x_test.reshape(-1, 1, 8, 8)).argmax(1) == data.y_test).float().mean())
    return net, acc


def _four_quadrant_model(steps: int, n_points: int) -> Tuple[nn.Sequential, float]:
    """A 2-64-64-1 ReLU MLP fitted to ``sign(x1 x2)`` by full-batch Adam, and its training MSE."""
    x, y = four_quadrant(n_points, generator=torch.Generator().manual_seed(2))
    net = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    _fit(net, x, y[:, None], nn.functional.mse_loss, steps, lr=3e-3, batch=n_points, seed=3)
    with torch.no_grad():
        mse = float(nn.functional.mse_loss(net(x), y[:, None]))
    return net, mse


def _image(data: Digits, flat: Tensor) -> Tensor:
    """Standardised pixels ``(64,)`` back to a ``(1, 8, 8)`` image in ``[0, 1]``."""
    return ((flat * data.std + data.mean) / 16.0).clamp(0, 1).reshape(1, 8, 8)


# --------------------------------------------------------------------------- sections


def _interactions_section(
    out: str, net: nn.Module, data: Digits, s: _Settings, gen: torch.Generator
) -> List[str]:
    """Pixel and patch interactions of one test digit."""
    _log("SmoothHess pixel interactions of a test digit")
    x = data.x_test[:1].reshape(1, 1, 8, 8)
    label = int(data.y_test[0])
    stdevs = 0.5
    sh = SmoothHess(net)
    hess = sh.attribute(
        x,
        target=label,
        stdevs=stdevs,
        n_samples=s.interaction_samples,
        n_samples_batch_size=_bar_chunk(s.interaction_samples),
        generator=gen,
        show_progress=True,
    )
    assert isinstance(hess, Tensor)
    h = hess[0].reshape(64, 64)
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
        title="SmoothHess, all 64x64 pixel pairs",
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
    r_idx, c_idx = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    mask = ((r_idx // 2) * 4 + c_idx // 2).reshape(1, 1, 8, 8)
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
    patch_names = [f"P{pr}{pc}" for pr in range(4) for pc in range(4)]
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
    ax_m.imshow(_image(data, data.x_test[0])[0].numpy(), cmap="gray", vmin=0, vmax=1)
    for k, name in enumerate(patch_names):
        pr, pc = divmod(k, 4)
        ax_m.text(2 * pc + 0.5, 2 * pr + 0.5, name, ha="center", va="center", color="tab:orange", fontsize=11)
    for t in (1.5, 3.5, 5.5):
        ax_m.axhline(t, color="tab:orange", linewidth=1)
        ax_m.axvline(t, color="tab:orange", linewidth=1)
    ax_m.set_xticks([])
    ax_m.set_yticks([])
    ax_m.set_title(f"The digit ({label}) and its 16 patches")
    groups_png = _save(fig, out, "interactions_groups.png")
    group_table = top_interactions(groups[0], k=5, feature_names=patch_names).format("markdown")

    return [
        "## 1. SmoothHess pixel interactions",
        "",
        f"A ReLU MLP classifies scikit-learn's 8x8 digits. For the first test digit (class {label}), "
        f"SmoothHess estimates the Hessian of the class-{label} logit smoothed by a Gaussian of "
        f"`stdevs={stdevs}` (in standardised pixel units) from {s.interaction_samples} gradient calls. "
        "The network's own Hessian is zero almost everywhere; the smoothed one says which pairs of "
        "pixels act together: a positive entry means that raising both pixels raises the logit by "
        "more than the sum of raising each alone.",
        "",
        f"Middle: all pixel pairs (diagonal hidden, colours clipped at the 99th percentile, the three "
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


def _four_quadrant_section(out: str, s: _Settings, gen: torch.Generator) -> List[str]:
    """SmoothHess at the origin of the Four Quadrant model, vs stdevs, and SoftPlus vs beta."""
    _log("Four Quadrant: training a 2-64-64-1 ReLU MLP on sign(x1 x2)")
    net, mse = _four_quadrant_model(s.fq_steps, s.fq_points)
    origin = torch.zeros(1, 2)
    sh = SmoothHess(net)
    rows: List[Tuple[float, float, float]] = []
    _log("Four Quadrant: SmoothHess at the origin for each stdevs")
    for eps in s.fq_stdevs:
        h = sh.attribute(origin, target=0, stdevs=eps, n_samples=s.fq_samples, generator=gen)
        assert isinstance(h, Tensor)
        rows.append((eps, float(h[0, 0, 1]), four_quadrant_interaction(eps)))
    soft: List[Tuple[float, float]] = []
    for beta in s.fq_betas:
        h = exact_hessian(softplus_surrogate(net, beta), origin, target=0)
        assert isinstance(h, Tensor)
        soft.append((beta, float(h[0, 0, 1])))

    fig = Figure(figsize=(11.5, 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    grid = np.geomspace(min(s.fq_stdevs) * 0.9, max(s.fq_stdevs) * 1.1, 100)
    ax1.loglog(
        grid,
        [four_quadrant_interaction(float(e)) for e in grid],
        "k--",
        label="smoothed target, 2/(pi stdevs^2)",
    )
    ax1.loglog(
        [r[0] for r in rows],
        [abs(r[1]) for r in rows],
        "o-",
        color="tab:red",
        label="SmoothHess of the network",
    )
    ax1.set_xlabel("stdevs (Gaussian bandwidth, input units)")
    ax1.set_ylabel("|interaction H12| at the origin")
    ax1.set_title("SmoothHess: stdevs sets the scale")
    ax1.legend()
    ax1.grid(True, which="both", alpha=0.3)
    ax2.loglog(
        [b for b, _ in soft], [abs(v) for _, v in soft], "s-", color="tab:blue", label="SoftPlus Hessian H12"
    )
    ax2.set_xlabel("beta (SoftPlus sharpness, per neuron)")
    ax2.set_ylabel("|interaction H12| at the origin")
    ax2.set_title("SoftPlus baseline: beta has no input-space scale")
    ax2.legend()
    ax2.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    png = _save(fig, out, "four_quadrant.png")

    lines = [
        "## 2. Four Quadrant: the interaction at the origin",
        "",
        "The Four Quadrant target `y = sign(x1 x2)` is flat on every quadrant, so its whole "
        "interaction sits at the origin. A 2-64-64-1 ReLU MLP is fitted to it "
        f"(training MSE {_fmt(mse)}). Smoothed by a Gaussian of standard deviation `stdevs`, the target "
        "has the mixed derivative `2 / (pi stdevs^2)` at the origin. SmoothHess of the network follows "
        "that curve once `stdevs` is wider than the network's own transition: `stdevs` is a length in "
        "input space and states the scale of the interaction. The SoftPlus Hessian's `beta` acts on "
        "each neuron's pre-activation instead and has no such reading.",
        "",
        f"![four quadrant]({png})",
        "",
        "| stdevs | SmoothHess H12 | smoothed target |",
        "|---|---|---|",
    ]
    lines += [f"| {e} | {_fmt(v)} | {_fmt(t)} |" for e, v, t in rows]
    lines += ["", "| beta | SoftPlus Hessian H12 |", "|---|---|"]
    lines += [f"| {b} | {_fmt(v)} |" for b, v in soft]
    lines.append("")
    return lines


def _kernels_section(out: str, net: nn.Module, data: Digits, s: _Settings, seed: int) -> List[str]:
    """Kernel shapes and the smoothed gradients of the five kernels."""
    _log("Kernel-smoothed gradients (KernelNoiseTunnel over Saliency), one per kernel")
    stdevs = 1.0
    fig = Figure(figsize=(7.0, 4.2))
    ax = fig.subplots()
    visualize_kernels([k for _, k in _KERNELS], stdevs=stdevs, plt_fig_axis=(fig, ax), use_pyplot=False)
    shapes_png = _save(fig, out, "kernels.png")

    n_digits = 2
    x = data.x_test[:n_digits].reshape(-1, 1, 8, 8)
    labels = data.y_test[:n_digits]
    maps: Dict[str, Tensor] = {}
    sal = Saliency(net)
    maps["Gradient"] = sal.attribute(x.clone().requires_grad_(True), target=labels, abs=False).detach()
    for i, (name, kernel) in enumerate(_KERNELS):
        _log(f"  {name} kernel ({i + 1}/{len(_KERNELS)})")
        tunnel = KernelNoiseTunnel(sal, kernel=kernel)
        attr = tunnel.attribute(
            x,
            nt_samples=s.nt_samples,
            stdevs=stdevs,
            target=labels,
            abs=False,
            generator=torch.Generator().manual_seed(seed + i),
        )
        assert isinstance(attr, Tensor)
        maps[name] = attr.detach()

    names = list(maps)
    fig = Figure(figsize=(2.1 * (len(names) + 1), 2.4 * n_digits + 0.6))
    axes = fig.subplots(n_digits, len(names) + 1, squeeze=False)
    for r in range(n_digits):
        axes[r, 0].imshow(_image(data, data.x_test[r])[0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(f"digit (class {int(labels[r])})", fontsize=10)
        for c, name in enumerate(names):
            m = maps[name][r, 0].numpy()
            v = float(np.abs(m).max()) or 1.0
            im = axes[r, c + 1].imshow(m, cmap="RdBu_r", vmin=-v, vmax=v)
            axes[r, c + 1].set_title(name if c == 0 else f"{name} kernel", fontsize=10)
            fig.colorbar(im, ax=axes[r, c + 1], fraction=0.046, pad=0.03)
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(
        f"Gradient of the class logit, plain and smoothed by each kernel (stdevs={stdevs}, "
        f"{s.nt_samples} samples); red raises the logit, blue lowers it",
        fontsize=11,
    )
    maps_png = _save(fig, out, "kernel_gradients.png")

    base = maps["Gaussian"].flatten(1)
    sims = []
    for name in names:
        flat = maps[name].flatten(1)
        cos = torch.nn.functional.cosine_similarity(flat, base, dim=1).mean()
        sims.append(f"| {name} | {_fmt(float(flat.norm(dim=1).mean()))} | {float(cos):.3f} |")
    return [
        "## 3. Five kernels, five smoothed gradients",
        "",
        "SmoothGrad averages gradients under Gaussian input noise; `KernelNoiseTunnel` (a drop-in "
        "for Captum's `NoiseTunnel`) takes any kernel. At equal `stdevs` the unit-variance kernels "
        "add the same noise energy and differ only in shape (the Poisson kernel, whose variance is "
        "infinite, has unit scale instead):",
        "",
        f"![kernel shapes]({shapes_png})",
        "",
        f"Smoothed gradients of the class logit for two test digits (Captum `Saliency` with "
        f"`abs=False` under `KernelNoiseTunnel`, `stdevs={stdevs}`, {s.nt_samples} samples each; "
        "each panel has its own symmetric colour scale). The Rect kernel has no score and cannot "
        "drive SmoothHess, but it smooths gradients like the others.",
        "",
        f"![kernel gradients]({maps_png})",
        "",
        "| map | mean L2 norm | cosine similarity to the Gaussian map |",
        "|---|---|---|",
        *sims,
        "",
    ]


def _caso_section(out: str, net: nn.Module, data: Digits, s: _Settings, seed: int) -> List[str]:
    """CASO (two curvature sources) vs CAFO on a few test digits."""
    _log("CASO vs CAFO sparse saliency")
    n_digits = 3
    sparsity = 0.8
    # A confident classifier has a vanishing loss gradient (and curvature) on most digits; take
    # the first correctly classified test digits it is least sure about (probability < 0.95).
    x_all = data.x_test.reshape(-1, 1, 8, 8)
    with torch.no_grad():
        prob = net(x_all).softmax(1)
    unsure = (prob.argmax(1) == data.y_test) & (prob.max(1).values < 0.95)
    chosen = torch.nonzero(unsure).flatten()[:n_digits]
    if len(chosen) < n_digits:  # pragma: no cover - depends on the trained model
        chosen = torch.arange(n_digits)
    x = x_all[chosen]
    labels = data.y_test[chosen]
    cafo = CAFO(net).attribute(x, target=labels, sparsity=sparsity)
    caso, info = CASO(net).attribute(x, target=labels, sparsity=sparsity, return_info=True)
    caso_sh = CASO(net).attribute(
        x,
        target=labels,
        sparsity=sparsity,
        curvature="smoothhess",
        stdevs=0.5,
        n_samples=s.caso_samples,
        generator=torch.Generator().manual_seed(seed),
    )
    assert isinstance(cafo, Tensor) and isinstance(caso, Tensor) and isinstance(caso_sh, Tensor)
    maps = {"CAFO": cafo, "CASO (autograd H)": caso, "CASO (SmoothHess H)": caso_sh}

    fig = Figure(figsize=(2.7 * (len(maps) + 1) + 0.8, 2.6 * n_digits + 0.6))
    axes = fig.subplots(n_digits, len(maps) + 1, squeeze=False)
    im = None
    for r in range(n_digits):
        p_true = float(prob[chosen[r], labels[r]])
        axes[r, 0].imshow(_image(data, data.x_test[chosen[r]])[0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(f"digit (class {int(labels[r])}, p={p_true:.2f})", fontsize=10)
        for c, (name, d) in enumerate(maps.items()):
            m = d[r, 0].detach().numpy()
            v = float(np.abs(m).max()) or 1.0
            im = axes[r, c + 1].imshow(m / v, cmap="RdBu_r", vmin=-1, vmax=1)
            axes[r, c + 1].set_title(name, fontsize=10)
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    assert im is not None
    fig.colorbar(im, ax=axes[:, 1:].ravel().tolist(), fraction=0.03, pad=0.02, label="delta / max |delta|")
    fig.suptitle(
        f"Sparse loss-increasing perturbations, {int(sparsity * 100)}% of pixels exactly zero "
        "(red: raise the pixel, blue: lower it)",
        fontsize=11,
    )
    png = _save(fig, out, "caso_vs_cafo.png")

    # How much each perturbation, scaled to the same L2 norm, actually raises the loss.
    radius = 2.0
    with torch.no_grad():
        base = nn.functional.cross_entropy(net(x), labels, reduction="none")
        rows = []
        for name, d in maps.items():
            flat = d.flatten(1)
            step = (radius * flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(x.shape)
            gain = nn.functional.cross_entropy(net(x + step), labels, reduction="none") - base
            zeros = float((flat == 0).float().mean())
            rows.append(f"| {name} | {zeros:.2f} | {_fmt(float(gain.mean()))} |")
        overlap = []
        for r in range(n_digits):
            a, b = cafo[r].flatten() != 0, caso[r].flatten() != 0
            overlap.append(float((a & b).sum() / (a | b).sum()))
    return [
        "## 4. CASO vs CAFO",
        "",
        f"Three correctly classified test digits the model is least sure of (a confident classifier's "
        "loss has almost no gradient or curvature). CAFO is the sparse first-order saliency "
        "`soft(g, lambda1) / lambda2`; CASO adds the Hessian "
        "of the loss to the model it maximises, `g^T d + d^T H d / 2 - lambda1 |d|_1 - lambda2 |d|^2 / 2`, "
        f"solved by FISTA. `sparsity={sparsity}` picks `lambda1` so that {int(sparsity * 100)}% of the "
        "pixels are exactly zero. CASO's curvature comes either from exact Hessian-vector products "
        "(for a ReLU net and the cross-entropy this is the curvature of the softmax only) or from "
        "SmoothHess, which also sees the ReLUs' curvature.",
        "",
        f"![CASO vs CAFO]({png})",
        "",
        f"Each perturbation rescaled to L2 norm {radius} and applied to its digit: the mean increase "
        "of the cross-entropy loss (larger means a more loss-relevant set of pixels):",
        "",
        "| map | fraction of zeros | mean loss increase |",
        "|---|---|---|",
        *rows,
        "",
        f"Support overlap (Jaccard) of CASO and CAFO per digit: {', '.join(f'{o:.2f}' for o in overlap)}; "
        f"FISTA used {', '.join(str(int(v)) for v in info['hvps'])} Hessian-vector products per digit.",
        "",
    ]


def _pmse_section(out: str, net: nn.Module, data: Digits, s: _Settings, seed: int) -> List[str]:
    """Perturbation MSE of four Taylor models, knobs tuned on validation digits."""
    _log("Perturbation MSE: SmoothHess + SmoothGrad vs SmoothGrad vs SoftPlus Hessian vs gradient")
    x_val = data.x_test[: s.pmse_val].reshape(-1, 1, 8, 8)
    x_test = data.x_test[s.pmse_val : s.pmse_val + s.pmse_test].reshape(-1, 1, 8, 8)
    with torch.no_grad():
        t_val, t_test = net(x_val).argmax(1), net(x_test).argmax(1)
    methods = ["SmoothHess + SmoothGrad", "SmoothGrad", "SoftPlus Hessian + SoftPlus gradient", "Gradient"]

    def taylor(x: Tensor, t: Tensor, method: str, knob: float) -> Tuple[Tensor, Tensor | None]:
        if method in ("SmoothHess + SmoothGrad", "SmoothGrad"):
            hess, grad = SmoothHess(net).attribute(
                x,
                target=t,
                stdevs=knob,
                n_samples=s.pmse_samples,
                return_gradient=True,
                generator=torch.Generator().manual_seed(seed),
                show_progress=True,
            )
            assert isinstance(hess, Tensor) and isinstance(grad, Tensor)
            return grad, (hess if method.startswith("SmoothHess") else None)
        if method.startswith("SoftPlus"):
            hess, grad = exact_hessian(softplus_surrogate(net, knob), x, target=t, return_gradient=True)
            assert isinstance(hess, Tensor) and isinstance(grad, Tensor)
            return grad, hess
        grad = Saliency(net).attribute(x.clone().requires_grad_(True), target=t, abs=False).detach()
        return grad, None

    def pmse(x: Tensor, t: Tensor, model: Tuple[Tensor, Tensor | None], radius: float) -> Tensor:
        grad, hess = model
        return perturbation_mse(
            net,
            x,
            grad,
            hess,
            radius=radius,
            n_perturbations=s.pmse_perturbations,
            target=t,
            generator=torch.Generator().manual_seed(seed + 1),
        )

    def knobs(method: str) -> Sequence[float]:
        if method.startswith("Smooth"):
            return s.stdevs_grid
        if method.startswith("SoftPlus"):
            return s.beta_grid
        return (math.nan,)

    results: Dict[str, Dict[float, Tuple[float, float, float]]] = {m: {} for m in methods}
    cache: Dict[Tuple[str, str, float], Tuple[Tensor, Tensor | None]] = {}
    for method in methods:
        for k in knobs(method):
            cache[("val", method, k)] = taylor(x_val, t_val, method, k)
        for radius in s.pmse_radii:
            val = {
                k: float(pmse(x_val, t_val, cache[("val", method, k)], radius).mean()) for k in knobs(method)
            }
            best = min(val, key=lambda k: val[k])
            key = ("test", method, best)
            if key not in cache:
                cache[key] = taylor(x_test, t_test, method, best)
            err = pmse(x_test, t_test, cache[key], radius)
            results[method][radius] = (best, float(err.mean()), float(err.std() / math.sqrt(len(err))))

    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    width = 0.8 / len(s.pmse_radii)
    colors = ["tab:red", "tab:orange", "tab:blue", "tab:gray"]
    for j, radius in enumerate(s.pmse_radii):
        means = [results[m][radius][1] for m in methods]
        errs = [results[m][radius][2] for m in methods]
        pos = np.arange(len(methods)) + (j - (len(s.pmse_radii) - 1) / 2) * width
        hatch = None if j == 0 else "//"
        ax.bar(pos, means, width, yerr=errs, color=colors, hatch=hatch, edgecolor="k", capsize=3)
    handles = [
        Patch(facecolor="white", edgecolor="k", hatch=None if j == 0 else "//", label=f"radius r = {radius}")
        for j, radius in enumerate(s.pmse_radii)
    ]
    ax.legend(handles=handles, loc="upper left")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(methods)))
    ax.set_xticklabels(["SmoothHess\n+ SmoothGrad", "SmoothGrad", "SoftPlus Hessian\n+ gradient", "Gradient"])
    ax.set_ylabel("perturbation MSE (log scale, lower is better)")
    ax.set_title(f"Taylor-model error of the predicted logit, {len(x_test)} test digits")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    png = _save(fig, out, "pmse.png")

    header = (
        "| method | " + " | ".join(f"r = {r}: PMSE (± s.e.)" for r in s.pmse_radii) + " | knob per radius |"
    )
    lines = [
        "## 5. Perturbation MSE",
        "",
        "How well does a Taylor model built from each explanation predict the network near the input? "
        "For perturbations `delta` of norm uniform in `[0, r]`, the perturbation MSE is the mean of "
        "`(f(x + delta) - f(x) - g^T delta - delta^T H delta / 2)^2` (first-order methods drop the `H` "
        "term), `f` the predicted-class logit. Each method's knob (`stdevs` for SmoothHess/SmoothGrad, "
        f"SoftPlus `beta`) is picked per radius on {len(x_val)} validation digits from "
        f"{list(s.stdevs_grid)} / {list(s.beta_grid)}; the table reports {len(x_test)} other test digits.",
        "",
        header,
        "|---|" + "---|" * len(s.pmse_radii) + "---|",
    ]
    for m in methods:
        cells = [f"{_fmt(results[m][r][1])} (± {_fmt(results[m][r][2])})" for r in s.pmse_radii]
        kn = ", ".join("-" if math.isnan(results[m][r][0]) else f"{results[m][r][0]:g}" for r in s.pmse_radii)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {kn} |")
    lines += ["", f"![perturbation MSE]({png})", ""]
    return lines


# --------------------------------------------------------------------------- entry point


def run_demo(out: str = "demo_output", quick: bool = False) -> None:
    """Train small ReLU networks on offline data, explain them, and write figures and a report.

    Writes ``interactions_pixels.png``, ``interactions_groups.png``,
    ``four_quadrant.png``, ``kernels.png``, ``kernel_gradients.png``,
    ``caso_vs_cafo.png``, ``pmse.png`` and ``report.md`` (which embeds them by
    relative links) into ``out``, showing progress on the way, and prints
    where they are. Takes well under two minutes on two CPU cores; ``quick``
    uses fewer samples and training steps (a smoke run of a few seconds, with
    noisier numbers). The caller's global random state is left unchanged.

    Args:
        out: Output folder, created if needed.
        quick: Run with small sample counts (for tests and a first look).

    Raises:
        ImportError: scikit-learn, needed for the bundled digits, is missing
            (``pip install captum-smoothhess[demo]``).
    """
    s = _QUICK if quick else _FULL
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    _START[0] = start
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        _log(f"Training a ReLU MLP on scikit-learn's digits ({'quick' if quick else 'full'} run)")
        data = load_digits_tensors(seed=0)
        net, acc = _digits_model(data, s.digits_epochs)
        _log(f"  test accuracy {acc:.3f}")
        sections = _interactions_section(out, net, data, s, gen)
        sections += _four_quadrant_section(out, s, gen)
        sections += _kernels_section(out, net, data, s, seed=10)
        sections += _caso_section(out, net, data, s, seed=20)
        sections += _pmse_section(out, net, data, s, seed=30)
    elapsed = time.perf_counter() - start
    header = [
        "# captum-smoothhess demo",
        "",
        f"Generated by `python -m captum_smoothhess demo{' --quick' if quick else ''}` in {elapsed:.0f} s "
        f"(torch {torch.__version__}, CPU threads: {torch.get_num_threads()}). Every number and figure "
        "below is computed by that command on data that ships offline.",
        "",
        f"**Model.** A 64-128-128-10 ReLU MLP trained for {s.digits_epochs} epochs on scikit-learn's "
        f"bundled 8x8 digits (1347 training images, standardised pixels); test accuracy {acc:.3f} on "
        "450 held-out images."
        + (" This is the `--quick` smoke run: fewer samples, so the estimates are noisier." if quick else ""),
        "",
    ]
    report = os.path.join(out, "report.md")
    with open(report, "w", encoding="utf-8") as fh:
        fh.write("\n".join(header + sections))
    _log(f"done in {elapsed:.1f} s")
    print(f"Report: {os.path.abspath(report)}")
    print(f"Figures: {os.path.abspath(out)}/*.png")
