"""Demo section 3: the five smoothing kernels and the smoothed gradients they give."""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
from captum.attr import Saliency
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..datasets import Digits
from ..kernels import Gaussian, Hyperbolic, Kernel, Poisson, Rect, Sigmoid
from ..noise_tunnel import KernelNoiseTunnel
from ..visualization import visualize_kernels
from ._common import _fmt, _image, _log, _save, _Settings

_KERNELS: Tuple[Tuple[str, Kernel], ...] = (
    ("Gaussian", Gaussian()),
    ("Poisson", Poisson()),
    ("Hyperbolic", Hyperbolic()),
    ("Sigmoid", Sigmoid()),
    ("Rect", Rect()),
)


def section(out: str, net: nn.Module, data: Digits, s: _Settings, seed: int) -> List[str]:
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
